"""What the switched step costs, by part: `soap_step` alone on random gradients (one thread), its variants run
interleaved in rounds so that each sees the same machine. Rows: the held-out tasks' parameter shapes (seed 0) and
`benchmarks/bench_step`'s 100k and 1M MLPs; columns: `SoapHyper` as `GMNOptimizer(model)` switches to it (0.16:
the input side in blocks of 64, refreshed every 10 steps, statistics every step), with ``statistics_every=2``, and
with ``precondition_every=20``. Then the fixed cost of a matrix: N same-shaped small matrices against one matrix
of the same rows stacked (the same products' flops, one call each instead of N).

    python docs/figures/optim/stats2_0.17/step_probe.py OUT_STEM     -> OUT_STEM.json, OUT_STEM.md
"""
import dataclasses
import json
import math
import statistics
import sys
import time

import torch

from benchmarks.bench_step import mlp_of_size
from inner_tasks import build_task
from inner_tasks.tasks.collections import held_out_suite
from metaopt.optim import eigenbasis as E

ROUNDS, STEPS = 15, 20
BASE = E.SoapHyper(1e-3, (0.95, 0.99), 1e-8, sides="columns", block=64)
VARIANTS = {"0.16": BASE, "statistics_every=2": dataclasses.replace(BASE, statistics_every=2),
            "precondition_every=20": dataclasses.replace(BASE, precondition_every=20)}


def stepper(shapes: list[tuple[int, ...]], h: E.SoapHyper):
    """n -> None: n more SOAP steps on fixed random gradients of these shapes (state kept between calls)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-2 for s in shapes]
    as_mat = [(s[0], math.prod(s[1:])) if len(s) > 1 else s for s in shapes]
    m, v = [torch.zeros(s) for s in as_mat], [torch.zeros(s) for s in as_mat]
    bases = [None if len(s) < 2 else {} for s in shapes]
    t = [0]

    def run(n: int) -> None:
        with E.flushing_denormals():
            for _ in range(n):
                t[0] += 1
                E.soap_step(params, grads, m, v, bases, t[0], h)
    return run


def interleaved(runs: dict) -> dict[str, float]:
    """Median ms a step of each run over ROUNDS rounds of STEPS steps, the runs taking turns."""
    times = {k: [] for k in runs}
    for run in runs.values():
        run(STEPS)  # the first bases and a refresh outside the clock
    for _ in range(ROUNDS):
        for k, run in runs.items():
            t0 = time.perf_counter()
            run(STEPS)
            times[k].append((time.perf_counter() - t0) / STEPS * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    torch.set_num_threads(1)
    stem = sys.argv[1]
    cases = {spec.name: [tuple(p.shape) for p in build_task(spec).model.parameters()]
             for spec in held_out_suite((0,), 300)}
    for size in (1e5, 1e6):
        cases[f"bench_step {size:.0e}"] = [tuple(p.shape) for p in mlp_of_size(size).parameters()]
    rows = []
    for name, shapes in cases.items():
        ms = interleaved({k: stepper(shapes, h) for k, h in VARIANTS.items()})
        rows.append({"case": name, "params": sum(math.prod(s) for s in shapes), "ms": ms})
        print(rows[-1], flush=True)
    fixed = []
    for n, rows_, cols in ((12, 32, 32), (4, 64, 64)):
        ms = interleaved({"separate": stepper([(rows_, cols)] * n, BASE), "stacked": stepper([(n * rows_, cols)], BASE)})
        fixed.append({"matrices": n, "shape": [rows_, cols], "ms": ms,
                      "us_per_matrix": (ms["separate"] - ms["stacked"]) * 1e3 / (n - 1)})
        print(fixed[-1], flush=True)
    json.dump({"rows": rows, "fixed_cost": fixed, "rounds": ROUNDS, "steps": STEPS}, open(f"{stem}.json", "w"), indent=1)
    names = list(VARIANTS)
    lines = [f"| case | params | " + " | ".join(f"ms: {k}" for k in names) + " |", "|---|---:|" + "---:|" * len(names)]
    for r in rows:
        base = r["ms"]["0.16"]
        lines.append(f"| {r['case']} | {r['params']:,} | " + " | ".join(
            f"{r['ms'][k]:.3f}" + ("" if k == "0.16" else f" ({r['ms'][k] / base:.2f})") for k in names) + " |")
    lines += ["", "| matrices | ms a step: separate / stacked into one | fixed cost a matrix (us) |", "|---|---:|---:|"]
    for f in fixed:
        lines.append(f"| {f['matrices']} x {f['shape'][0]} x {f['shape'][1]} | {f['ms']['separate']:.3f} / "
                     f"{f['ms']['stacked']:.3f} | {f['us_per_matrix']:.0f} |")
    open(f"{stem}.md", "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
