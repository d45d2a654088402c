"""Probe (not in the package): an early settle undone. Wherever a settled estimate's peak (its largest d_hat so far)
runs more than R times ahead of d, the estimate is unsettled: d takes the peak and grows freely again until its next
settle (every estimate, the network's and each tensor's, through a patched `core._next_estimate`). Dev suite, 1,000
steps, seeds 20-23, one thread; steps to tuned Adam's loss against the tuned-Adam and 0.16 (`d12+lrfree`) rows of
dev_1000_seeds_20_23/summary.json. Writes unsettle_r<R>_dev_1000.{json,md} beside this file.

    python docs/figures/optim/peak_0.17/unsettle_probe.py 30
"""
import dataclasses
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

from inner_tasks import build_task
from inner_tasks.tasks.collections import DEV_TASKS, dev_suite
from metaopt.optim import GMNOptimizer, core
from outer_train.evaluate import run_optimizer, steps_to

torch.set_num_threads(1)
HERE = Path(__file__).parent
R = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
sitting = {r["task"]: r["results"] for r in json.loads((HERE / "dev_1000_seeds_20_23" / "summary.json").read_text())["runs"]}
original, undone = core._next_estimate, [0]


def next_estimate(est, dot, norm, w, decay, h, span):  # noqa: ANN001, ANN202
    new = original(est, dot, norm, w, decay, h, span)
    if new.settled and new.peak > R * new.d:
        undone[0] += 1
        return dataclasses.replace(new, d=new.peak, settled=False)
    return new


core._next_estimate = next_estimate
rows = []
for seed in (20, 21, 22, 23):
    for spec in dev_suite(seed, 1000):
        task, undone[0] = build_task(spec), 0
        run = run_optimizer(task, GMNOptimizer, 1000, spec.seed)
        adam, base = sitting[spec.name]["adam"], sitting[spec.name]["d12+lrfree"]
        steps = steps_to(run["curve"], adam["final_loss"])
        rows.append({"task": spec.name, "speedup": adam["steps_to_adam"] / steps if steps else 0.0,
                     "final": run["final_loss"], "unsettled": undone[0], "base_speedup": base["speedup"],
                     "base_final": base["final_loss"]})
        print(json.dumps(rows[-1]), flush=True)
(HERE / f"unsettle_r{R:g}_dev_1000.json").write_text(json.dumps(rows, indent=1))
by = defaultdict(list)
for r in rows:
    by[r["task"].rsplit("/", 1)[0]].append(r)
lines = [f"Dev suite, 1,000 steps, seeds 20-23: steps to tuned Adam's loss (speedup) and final loss, median over seeds; "
         f"an early settle undone where the peak is > {R:g}x d.", "",
         "| task | undone (runs' counts) | speedup | 0.16 | final loss | 0.16 |", "|---|---|---:|---:|---:|---:|"]
med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
for task in DEV_TASKS:
    rs = by[task]
    lines.append(f"| {task} | {', '.join(str(r['unsettled']) for r in rs)} | {med(rs, 'speedup'):.2f}x | "
                 f"{med(rs, 'base_speedup'):.2f}x | {med(rs, 'final'):.3g} | {med(rs, 'base_final'):.3g} |")
lines.append(f"| **median over tasks** | | **{statistics.median(med(by[t], 'speedup') for t in DEV_TASKS):.2f}x** | "
             f"**{statistics.median(med(by[t], 'base_speedup') for t in DEV_TASKS):.2f}x** | | |")
(HERE / f"unsettle_r{R:g}_dev_1000.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
