"""Where a schedule-free run stands: the training loss at ``y`` (what the loop sees) and at the average ``x``.

    python -m benchmarks.trace_schedule_free --task siren_shapes --seed 0 --steps 5000 \
        --out docs/figures/optim/schedule_free/trace

Trains one held-out task with ``GMNOptimizer(model, rule="lrfree_sf")`` as the evaluation does (same
init, same batches) and at logarithmically spaced steps records the loss on that step's batch at ``y``
(the parameters the step left), at ``x`` (`GMNOptimizer.averaged`) and the estimate ``d``. Writes
``trace_<task>_s<seed>.json`` and ``.md`` to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.common import held_out_model
from metaopt.optim import GMNOptimizer


def trace(task_name: str, seed: int, steps: int, points: int = 25) -> dict[str, Any]:
    """The losses at y and x and ``d`` at about ``points`` log-spaced steps of one run."""
    task, model = held_out_model(task_name, seed, steps, "trace_schedule_free")
    opt = GMNOptimizer(model, rule="lrfree_sf", example_inputs=(task.example_inputs(),))
    marks = set(np.unique(np.geomspace(1, steps, points).astype(int)).tolist())
    rows = []
    for t, batch in enumerate(tqdm(list(islice(task.train_batches(seed), steps)), desc=f"{task_name} s{seed}"), 1):
        loss = task.loss(model(batch[0]), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if t in marks:
            with torch.no_grad():
                at_y = float(task.loss(model(batch[0]), batch))
                with opt.averaged():
                    at_x = float(task.loss(model(batch[0]), batch))
            rows.append({"step": t, "loss_y": at_y, "loss_x": at_x, "d": opt.distance})
    return {"task": task_name, "seed": seed, "steps": steps, "rows": rows,
            "command": " ".join(["python -m benchmarks.trace_schedule_free", *sys.argv[1:]])}


def to_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Schedule-free run of {result['task']} (seed {result['seed']}, {result['steps']} steps)", "",
             "Loss on the step's batch after the step, at y (the parameters) and at the average x; d the estimate.", "",
             "| step | loss at y | loss at x | d |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['step']} | {r['loss_y']:.3g} | {r['loss_x']:.3g} | {r['d']:.3g} |" for r in result["rows"]]
    return "\n".join(lines + ["", f"Command: `{result['command']}`", ""])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = trace(a.task, a.seed, a.steps)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"trace_{a.task}_s{a.seed}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    main()
