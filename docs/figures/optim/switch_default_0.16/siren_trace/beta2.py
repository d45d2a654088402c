"""The SIREN's bounce after the switch against SOAP's second beta: `GMNOptimizer(model, soap_switch=SoapSwitch(betas=
(0.95, b2)))` for b2 in 0.99 (0.16's), 0.995 and 0.999, on held-out runs as `outer_train.evaluate` makes them (same
batches, same init): the lowest loss and where, the minibatch loss's range over steps 500-1,000, 1,000-2,000 and the
last 200 steps, the final loss.

    python docs/figures/optim/switch_default_0.16/siren_trace/beta2.py TASK STEPS OUT_STEM SEED...  -> OUT_STEM.json, .md
"""
import json
import sys

import torch

from inner_tasks import build_task
from inner_tasks.tasks.collections import held_out_suite
from inner_tasks.tasks.training import train_task
from metaopt.optim import GMNOptimizer, SoapSwitch

BETA2 = (0.99, 0.995, 0.999)


def main() -> None:
    torch.set_num_threads(1)
    name, steps, stem, seeds = sys.argv[1], int(sys.argv[2]), sys.argv[3], [int(s) for s in sys.argv[4:]]
    rows = []
    for seed in seeds:
        spec = next(s for s in held_out_suite((seed,), steps) if s.name.split("/")[0] == name)
        for b2 in BETA2:
            held = {}

            def make(model, b2=b2):
                held["opt"] = GMNOptimizer(model, soap_switch=SoapSwitch(betas=(0.95, b2)))
                return held["opt"]
            losses = train_task(build_task(spec), make, steps, seed, init_seed=seed).losses
            low = min(range(steps), key=losses.__getitem__)
            spans = {f"{a}-{b}": [min(losses[a:b]), max(losses[a:b])] for a, b in ((500, 1000), (1000, 2000), (steps - 200, steps))}
            rows.append({"task": spec.name, "beta2": b2, "switched_at": held["opt"].soap_switched_at,
                         "min_loss": losses[low], "min_at": low, "spans": spans, "final_loss": losses[-1]})
            print(rows[-1], flush=True)
    json.dump(rows, open(f"{stem}.json", "w"), indent=1)
    keys = list(rows[0]["spans"])
    lines = ["| run | second beta | switched after | lowest loss (step) | " + " | ".join(f"loss over {k}" for k in keys)
             + " | final loss |", "|---|---:|---:|---:|" + "---|" * len(keys) + "---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['beta2']} | {r['switched_at']} | {r['min_loss']:.2e} ({r['min_at']}) | "
                     + " | ".join(f"{lo:.1e} .. {hi:.1e}" for lo, hi in r["spans"].values()) + f" | {r['final_loss']:.2e} |")
    open(f"{stem}.md", "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
