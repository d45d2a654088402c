"""Why the search from d0=1e-4 lost the held-out shapes CNN (seeds 108 and 110 of the d0 sitting, which never reached
tuned Adam's loss there): per run, the estimate d every 40 steps, the step the soap switch came after, SOAP's lr, the
loss along the way and at the end, for 0.16's GMNOptimizer(model) (rule="lrfree_soap"), d0=1e-4, d0=1e-4 with SoapSwitch(follow=True) and
d0=1e-4 with SoapSwitch(window=150). Steps only, one thread. Writes plateau_switch_probe.json / .md beside this file.

    python docs/figures/optim/window_0.17/plateau_switch_probe.py
"""
import dataclasses
import json
import sys
from pathlib import Path

import torch

from inner_tasks import build_task
from inner_tasks.tasks.collections import held_out_suite
from metaopt.optim import GMNOptimizer, SoapSwitch
from metaopt.optim.optimizer import DISTANCE, SOAP_LR, STEPS_TAKEN
from outer_train.evaluate import run_optimizer

torch.set_num_threads(1)
HERE = Path(__file__).parent
STEPS, TASK = 1000, "cnn_shapes"
seeds = tuple(int(s) for s in sys.argv[1:]) or (108, 110)
RUNS = {"0.16": ({}, {}), "d0=1e-4": ({"d0": 1e-4}, {}), "d0=1e-4, follow": ({"d0": 1e-4}, {"follow": True}),
        "d0=1e-4, window 150": ({"d0": 1e-4}, {"window": 150})}
LOSS_AT = (80, 160, 320, 640, 999)
rows = []
for spec in held_out_suite(seeds, STEPS):
    if spec.name.split("/")[0] != TASK:
        continue
    task, seed = build_task(spec), int(spec.name.rsplit("/s", 1)[1])
    for label, (options, switch) in RUNS.items():
        box, trace = {}, []

        def make(model, options=options, switch=switch, box=box, trace=trace):
            # 0.16's mode (rule="lrfree_soap", d0 1e-6, SoapSwitch() its recorded switch), with the changes of the row
            opt = box["opt"] = GMNOptimizer(model, rule="lrfree_soap", d0=options.get("d0", 1e-6),
                                            soap_switch=dataclasses.replace(SoapSwitch(), **switch))

            def watch(opt, args, kwargs):
                steps = int(opt.state[STEPS_TAKEN])
                if steps % 40 == 1:
                    trace.append([steps, float(opt.state[DISTANCE])])
            opt.register_step_post_hook(watch)
            return opt
        run = run_optimizer(task, make, STEPS, seed)
        opt = box["opt"]
        rows.append({"task": spec.name, "run": label, "switched_at": opt.soap_switched_at,
                     "soap_lr": float(opt.state[SOAP_LR]), "final": run["final_loss"],
                     "loss_at": {t: run["curve"][t] for t in LOSS_AT}, "d_every_40": trace})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "d_every_40"}), flush=True)

name = "plateau_switch_probe"
(HERE / f"{name}.json").write_text(json.dumps({"seeds": seeds, "steps": STEPS, "rows": rows}, indent=1) + "\n")
lines = [f"Held-out `{TASK}`, seeds {', '.join(map(str, seeds))}, {STEPS} steps (`python {Path(__file__).relative_to(Path.cwd()).as_posix()}`): "
         "the step the switch came after, SOAP's lr, the loss at steps " + ", ".join(map(str, LOSS_AT))
         + ", and d at steps 1, 81, 161, ... (every 80th).", "",
         "| task | run | switched after | SOAP's lr | loss | d |", "|---|---|---:|---:|---|---|"]
for r in rows:
    lines.append(f"| {r['task']} | {r['run']} | {r['switched_at']} | {r['soap_lr']:.2g} | "
                 + " / ".join(f"{v:.3g}" for v in r["loss_at"].values()) + " | "
                 + " ".join(f"{d:.2g}" for _, d in r["d_every_40"][::2]) + " |")
(HERE / f"{name}.md").write_text("\n".join(lines) + "\n")
