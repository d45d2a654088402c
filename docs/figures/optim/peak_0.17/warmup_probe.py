"""What the 1,000-step horizon loses before the soap switch. Per held-out task and seed (steps only, one thread):
tuned Adam at the lr the committed sitting of seeds 99-107 chose (spike_cut_0.17/held_out_1000_seeds_99_107), then
GMNOptimizer(model) (0.16) with its estimate d and largest estimate so far (the peak d climbs towards) every 20 steps
up to its switch, then SOAP from step 1 at the lr that run switched to (outer_train.soap.SOAP, the switch's betas,
sides and blocks), and the same run with SoapSwitch(settle_on="peak"). Writes warmup_probe.json / .md beside this file.

    python docs/figures/optim/peak_0.17/warmup_probe.py 99 100 101
"""
import json
import statistics
import sys
from pathlib import Path

import torch

from inner_tasks import build_task
from inner_tasks.tasks.collections import HELD_OUT_TASKS, held_out_suite
from metaopt.optim import GMNOptimizer, SoapSwitch
from metaopt.optim.optimizer import DISTANCE, DISTANCE_PEAK, SOAP_LR, STEPS_TAKEN
from outer_train.evaluate import run_optimizer, steps_to
from outer_train.soap import SOAP

torch.set_num_threads(1)
HERE = Path(__file__).parent
SITTING = HERE.parent / "spike_cut_0.17" / "held_out_1000_seeds_99_107" / "summary.json"
STEPS = 1000
seeds = tuple(int(s) for s in sys.argv[1:]) or (99, 100, 101)
adam_lr = {r["task"]: r["results"]["adam"]["lr"] for r in json.loads(SITTING.read_text())["runs"]}
rows = []
for spec in held_out_suite(seeds, STEPS):
    task, seed = build_task(spec), int(spec.name.rsplit("/s", 1)[1])
    adam = run_optimizer(task, lambda m: torch.optim.Adam(m.parameters(), lr=adam_lr[spec.name]), STEPS, seed)
    target, row = adam["final_loss"], {"task": spec.name, "adam_lr": adam_lr[spec.name], "adam_final": adam["final_loss"]}
    for label, switch in (("default", None), ("peak", SoapSwitch(settle_on="peak"))):
        box, trace = {}, []

        def make(model, switch=switch, box=box, trace=trace):
            opt = box["opt"] = GMNOptimizer(model) if switch is None else GMNOptimizer(model, soap_switch=switch)
            def watch(opt, args, kwargs):  # d and the peak every 20 steps until the switch
                steps = int(opt.state[STEPS_TAKEN])
                if steps % 20 == 0 and not opt.soap_switched_at:
                    trace.append([steps, float(opt.state[DISTANCE]), float(opt.state[DISTANCE_PEAK])])
            opt.register_step_post_hook(watch)
            return opt
        run = run_optimizer(task, make, STEPS, seed)
        opt = box["opt"]
        row[label] = {"steps": steps_to(run["curve"], target), "final": run["final_loss"],
                      "switched_at": opt.soap_switched_at, "declined_at": opt.soap_declined_at,
                      "soap_lr": float(opt.state[SOAP_LR]) if opt.soap_switched_at else None, "trace": trace}
    lr = row["default"]["soap_lr"]
    if lr is not None:
        sw = SoapSwitch()
        run = run_optimizer(task, lambda m: SOAP(m.parameters(), lr=lr, betas=sw.betas, sides=sw.sides, block=sw.block),
                            STEPS, seed)
        row["soap_from_step_1"] = {"steps": steps_to(run["curve"], target), "final": run["final_loss"]}
    rows.append(row)
    print(json.dumps({k: v if not isinstance(v, dict) else {a: b for a, b in v.items() if a != "trace"}
                      for k, v in row.items()}), flush=True)

name = f"warmup_probe_seeds_{'_'.join(map(str, seeds))}"
(HERE / f"{name}.json").write_text(json.dumps({"seeds": seeds, "steps": STEPS, "rows": rows}, indent=1))


def speed(steps):
    return "never" if steps is None else f"{STEPS / steps:.2f}x"


lines = [f"Held-out seeds {', '.join(map(str, seeds))}, {STEPS} steps: steps to tuned Adam's final loss as speedups "
         "(1,000 / steps), per task the median over seeds (never-reached runs count as 0); the step each switch came "
         "after (declined: the SIREN's decline rule).", "",
         "| task | 0.16 switches after (d there / peak) | 0.16 | SOAP from step 1 at 0.16's switched lr | settle_on=\"peak\" switches after | settle_on=\"peak\" |",
         "|---|---|---:|---:|---|---:|"]
for task in HELD_OUT_TASKS:
    mine = [r for r in rows if r["task"].rsplit("/", 1)[0] == task]
    if not mine:
        continue

    def med(key, sub="steps"):
        vals = [STEPS / r[key][sub] if key in r and r[key][sub] else 0.0 for r in mine]
        return f"{statistics.median(vals):.2f}x"

    def when(key):
        return ", ".join(str(r[key]["switched_at"]) if r[key]["switched_at"] else f"declined {r[key]['declined_at']}"
                         for r in mine)
    at_peak_switch = []  # 0.16's d / peak at the step settle_on="peak" switched
    for r in mine:
        tr = [t for t in r["default"]["trace"] if t[0] <= (r["peak"]["switched_at"] or 0)]
        at_peak_switch.append(f"{tr[-1][1]:.1e} / {tr[-1][2]:.1e}" if tr else "-")
    lines.append(f"| {task} | {when('default')} ({'; '.join(at_peak_switch)} at the peak's switch) | {med('default')} | "
                 f"{med('soap_from_step_1') if all('soap_from_step_1' in r for r in mine) else '-'} | {when('peak')} | {med('peak')} |")
(HERE / f"{name}.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
