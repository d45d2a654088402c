"""A probe of the lead in docs/optim.md ("A lead for the SIREN's stall"): after the switch, SOAP's second beta rising
with the run as Adafactor's, ``max(0.99, 1 - t^-0.8)`` (t the steps taken: 0.99 up to step ~316, 0.996 at 1,000,
0.9989 at 5,000), against 0.16's constant 0.99. The probe swaps the switch's betas before each switched step (the
bias correction stays the constant-beta formula's, about 1 after the first 100 switched steps); not a mode of the
package. Held-out or dev runs as `outer_train.evaluate` makes them; final loss, lowest loss and where.

    python docs/figures/optim/switch_default_0.16/siren_trace/beta2_rising.py OUT_STEM SUITE:TASK:STEPS:SEED ...
        -> OUT_STEM.json, OUT_STEM.md
"""
import dataclasses
import json
import sys

import torch

from inner_tasks import build_task
from inner_tasks.tasks.collections import dev_suite, held_out_suite
from inner_tasks.tasks.training import train_task
from metaopt.optim import GMNOptimizer


def rising(opt: GMNOptimizer) -> GMNOptimizer:
    """``opt`` whose switched steps run at the second beta max(0.99, 1 - t^-0.8)."""
    step = opt._soap_step

    def with_rising_beta(*args, **kwargs):
        t = int(opt.state["steps_taken"])
        opt.soap_switch = dataclasses.replace(opt.soap_switch, betas=(0.95, max(0.99, 1 - t ** -0.8)))
        return step(*args, **kwargs)
    opt._soap_step = with_rising_beta
    return opt


def main() -> None:
    torch.set_num_threads(1)
    stem, rows = sys.argv[1], []
    for item in sys.argv[2:]:
        suite, name, steps, seed = item.split(":")
        steps, seed = int(steps), int(seed)
        specs = held_out_suite((seed,), steps) if suite == "held_out" else dev_suite(seed, steps)
        spec = next(s for s in specs if s.name.split("/")[0] == name)
        for variant in ("0.99", "rising"):
            make = (lambda m: GMNOptimizer(m)) if variant == "0.99" else (lambda m: rising(GMNOptimizer(m)))
            losses = train_task(build_task(spec), make, steps, seed, init_seed=seed).losses
            low = min(range(steps), key=losses.__getitem__)
            rows.append({"run": f"{suite} {spec.name}", "steps": steps, "second_beta": variant, "final_loss": losses[-1],
                         "min_loss": losses[low], "min_at": low, "last_200_max": max(losses[-200:])})
            print(rows[-1], flush=True)
    json.dump(rows, open(f"{stem}.json", "w"), indent=1)
    lines = ["| run | steps | second beta | final loss | lowest loss (step) | largest loss, last 200 steps |",
             "|---|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['steps']} | {r['second_beta']} | {r['final_loss']:.2e} | {r['min_loss']:.2e} "
                     f"({r['min_at']}) | {r['last_200_max']:.2e} |")
    open(f"{stem}.md", "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
