"""A held-out run of `GMNOptimizer(model)` traced: the run `outer_train.evaluate` makes (same batches, same init),
with the minibatch loss over windows, the largest relative update of a weight matrix, the gradient norm and the
plateau decay's cuts and doublings at the start of each window. Written for the SIREN's late stall at 5,000 steps.

    python docs/figures/optim/switch_default_0.16/siren_trace/trace.py TASK SEED STEPS OUT_STEM  -> OUT_STEM.json, .md
"""
import json
import math
import sys

import torch

from inner_tasks import build_task
from inner_tasks.tasks.collections import held_out_suite
from inner_tasks.tasks.training import train_task
from metaopt.optim import GMNOptimizer


def main() -> None:
    torch.set_num_threads(1)
    name, seed, steps, stem = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    spec = next(s for s in held_out_suite((seed,), steps) if s.name.split("/")[0] == name)
    task, rows, held = build_task(spec), [], {}

    def make(model):
        opt = held["opt"] = GMNOptimizer(model)
        step, weights = opt.step, [p for p in model.parameters() if p.ndim > 1]

        def traced(*args, **kwargs):
            before = [p.detach().clone() for p in weights]
            out = step(*args, **kwargs)
            rows.append({"relative_update": max(float((p.detach() - b).norm() / b.norm()) for p, b in zip(weights, before)),
                         "grad_norm": math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None)),
                         "plateau_cuts": int(opt.state["plateau_cuts"]), "plateau_boosts": int(opt.state["plateau_boosts"])})
            return out
        opt.step = traced
        return opt

    losses = train_task(task, make, steps, seed, init_seed=seed).losses
    window = max(1, steps // 40)
    table = []
    for i in range(0, steps, window):
        part = losses[i:i + window]
        table.append({"step": i, "loss_min": min(part), "loss_max": max(part), **rows[i]})
    out = {"task": spec.name, "steps": steps, "switched_at": held["opt"].soap_switched_at,
           "declined_at": held["opt"].soap_declined_at, "final_loss": losses[-1],
           "min_loss": min(losses), "min_at": losses.index(min(losses)), "windows": table}
    json.dump(out, open(f"{stem}.json", "w"), indent=1)
    lines = [f"{spec.name}, {steps} steps: switched after step {out['switched_at']} (declined: {out['declined_at']}), "
             f"lowest loss {out['min_loss']:.3g} at step {out['min_at']}, final {out['final_loss']:.3g}", "",
             "| steps | minibatch loss min .. max | largest relative update of a weight | gradient norm | plateau cuts | doublings |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['step']}-{r['step'] + window - 1} | {r['loss_min']:.2e} .. {r['loss_max']:.2e} | "
                     f"{r['relative_update']:.1e} | {r['grad_norm']:.1e} | {r['plateau_cuts']} | {r['plateau_boosts']} |")
    open(f"{stem}.md", "w").write("\n".join(lines) + "\n")
    print("\n".join(lines[:1]))


if __name__ == "__main__":
    main()
