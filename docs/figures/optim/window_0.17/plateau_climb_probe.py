"""Can a climb of the estimate after the switch tell a switch made in a plateau from one made in a fit? Per run of
GMNOptimizer(model) (0.17) on the shapes tasks (dev seeds 20-23; held-out cnn_shapes seeds 108 and 110, which switch
in the plateau, and mlp_shapes 117 and 118): the step the switch came after, the loss at 1,000 steps frozen (0.17),
with SoapSwitch(follow=True), and with SoapSwitch(follow_climb=6) (SOAP's lr frozen until the estimate run on has
climbed 6-fold, then following it); the largest climb of SOAP's lr under follow, and where follow_climb's came;
the loss over the 10 steps before the switch as a fraction of the first loss (frozen run).
Steps only, one thread. Writes plateau_climb_probe.json / .md beside this file.

    python docs/figures/optim/window_0.17/plateau_climb_probe.py
"""
import dataclasses
import json
from pathlib import Path

import torch

from inner_tasks import build_task
from inner_tasks.tasks.collections import dev_suite, held_out_suite
from metaopt.optim import GMNOptimizer
from metaopt.optim.optimizer import SOAP_LR
from outer_train.evaluate import run_optimizer

torch.set_num_threads(1)
HERE = Path(__file__).parent
STEPS = 1000
RUNS = {"frozen (0.17)": {}, "follow": {"follow": True}, "follow_climb=6": {"follow_climb": 6.0}}
specs = [s for k in range(4) for s in dev_suite(20 + k, STEPS) if "shapes" in s.name and "siren" not in s.name]
specs += [s for s in held_out_suite((108, 110), STEPS) if s.name.startswith("cnn_shapes")]
specs += [s for s in held_out_suite((117, 118), STEPS) if s.name.startswith(("mlp_shapes", "cnn_shapes"))]
rows = []
for spec in specs:
    task, seed = build_task(spec), int(spec.name.rsplit("/s", 1)[1])
    row = {"task": spec.name}
    for label, switch in RUNS.items():
        box, lrs = {}, []

        def make(model, switch=switch, box=box, lrs=lrs):
            shipped = GMNOptimizer(model).soap_switch  # 0.17's: window 150, frozen
            opt = box["opt"] = GMNOptimizer(model, rule="lrfree_soap_1e4",
                                            soap_switch=dataclasses.replace(shipped, **switch))
            opt.register_step_post_hook(lambda opt, args, kwargs: lrs.append(float(opt.state[SOAP_LR])))
            return opt
        run = run_optimizer(task, make, STEPS, seed)
        opt = box["opt"]
        row[label] = {"final": run["final_loss"], "switched_at": opt.soap_switched_at,
                      "climbed_at": opt.soap_climbed_at}
        t = opt.soap_switched_at
        if t:
            row[label]["loss_at_switch_over_first"] = sum(run["curve"][t - 10:t]) / 10 / run["curve"][0]
        if label == "follow" and t:
            row[label]["largest_climb"] = max(lrs) / lrs[opt.soap_switched_at]
    rows.append(row)
    print(json.dumps(row), flush=True)

name = "plateau_climb_probe"
(HERE / f"{name}.json").write_text(json.dumps({"steps": STEPS, "rows": rows}, indent=1) + "\n")
lines = [f"Shapes tasks, {STEPS} steps (`python {Path(__file__).relative_to(Path.cwd()).as_posix()}`): the step the "
         "switch came after, the loss at the end frozen (0.17), with follow=True and with follow_climb=6, the largest "
         "climb of SOAP's lr under follow (x its value at the switch) and the step follow_climb's lr began to follow "
         "(0: never); the loss at the switch (mean of the 10 steps before it) over the first loss.", "",
         "| task | switched after | loss there / first | frozen (0.17) | follow | largest climb | follow_climb=6 "
         "| climbed at |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    f, c, z = r["follow"], r["follow_climb=6"], r["frozen (0.17)"]
    lines.append(f"| {r['task']} | {z['switched_at']} | {z.get('loss_at_switch_over_first', float('nan')):.2f} | "
                 f"{z['final']:.3g} | {f['final']:.3g} | "
                 f"{f.get('largest_climb', float('nan')):.1f}x | {c['final']:.3g} | {c['climbed_at']} |")
(HERE / f"{name}.md").write_text("\n".join(lines) + "\n")
