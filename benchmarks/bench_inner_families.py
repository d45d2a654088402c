"""Per task family: parameter count and Adam's loss after N steps (the README's inner-task table).

    python -m benchmarks.bench_inner_families --out out/inner_families [--steps 300] [--seeds 0 1 2]
    python -m benchmarks.bench_inner_families --out out/held_out --suite held_out --steps 1000

Prints a Markdown table and writes results.json + results.md under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from inner_tasks.tasks import build_task, held_out_suite, make_task_spec, train_with_adam  # noqa: E402

_D8 = {"dataset": "digits", "image_size": 8}
_CNN = {**_D8, "kernel_size": 3, "activation": "relu", "dim": 2, "batch_size": 64}

# One representative per family (meta-training sizes), plus the CNN variants the families cover.
REPRESENTATIVES: dict[str, tuple[str, dict]] = {
    "mlp digits (w64 d2)": ("mlp_classification", {**_D8, "width": 64, "depth": 2, "activation": "relu", "norm": "none", "batch_size": 64}),
    "mlp shapes16 (w64 d2, LN)": ("mlp_classification", {"dataset": "shapes", "image_size": 16, "width": 64, "depth": 2, "activation": "gelu", "norm": "layernorm", "batch_size": 64}),
    "cnn digits (c16-32)": ("cnn_classification", {**_CNN, "width": 16, "depth": 2, "norm": "none", "residual": False}),
    "cnn digits (c8-16, BN, residual)": ("cnn_classification", {**_CNN, "width": 8, "depth": 2, "norm": "batch", "residual": True}),
    "cnn1d digits (c8-16, GN)": ("cnn_classification", {**_CNN, "width": 8, "depth": 2, "norm": "group", "residual": False, "dim": 1}),
    "transformer LM stdlib (d32 L2 ctx32)": ("transformer_lm", {"width": 32, "depth": 2, "heads": 2, "context": 32, "activation": "gelu", "batch_size": 32}),
    "siren INR digits28 (w24 d3)": ("siren_inr", {"dataset": "digits", "image_size": 28, "width": 24, "depth": 3, "w0": 30.0, "batch_size": 784}),
    "siren INR shapes28 (w24 d3)": ("siren_inr", {"dataset": "shapes", "image_size": 28, "width": 24, "depth": 3, "w0": 30.0, "batch_size": 784}),
    "deepsets sum (w32)": ("deepsets", {"target": "sum", "set_size": 16, "width": 32, "depth": 2, "pool": "mean", "activation": "relu", "batch_size": 64}),
    "deepsets distribution (w32)": ("deepsets", {"target": "distribution", "set_size": 16, "width": 32, "depth": 2, "pool": "mean", "activation": "relu", "batch_size": 64}),
    "teacher-student (w32 d2)": ("teacher_student", {"in_dim": 8, "width": 32, "depth": 2, "activation": "tanh", "norm": "none", "batch_size": 64}),
}


def _specs(suite: str, seeds: list[int], steps: int) -> list[tuple[str, object]]:
    if suite == "families":
        return [(f"{name}", make_task_spec(fam, knobs, seed, steps)) for name, (fam, knobs) in REPRESENTATIVES.items() for seed in seeds]
    return [(s.name.rsplit("/", 1)[0], s) for s in held_out_suite(seeds=tuple(seeds), horizon=steps)]


def run(suite: str, steps: int, seeds: list[int], lr: float | None) -> list[dict]:
    """Train every spec with Adam and collect one row per (task, seed)."""
    rows = []
    for name, spec in tqdm(_specs(suite, seeds, steps), desc="tasks"):
        task = build_task(spec)
        t0 = time.perf_counter()
        losses = train_with_adam(task, steps, lr=lr)
        seconds = time.perf_counter() - t0
        ev = task.evaluate()
        rows.append({
            "task": name, "family": spec.family, "seed": spec.seed, "params": task.num_params,
            "lr": spec.reference_lr if lr is None else lr, "steps": steps,
            "loss_start": losses[0], "loss_end": sum(losses[-10:]) / len(losses[-10:]),
            "diverged": len(losses) < steps or not all(math.isfinite(v) for v in losses),
            "eval_loss": ev["loss"], "metric": task.metric_name, "metric_value": ev[task.metric_name],
            "ms_per_step": 1000 * seconds / max(1, len(losses)),
        })
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over seeds per task."""
    out = []
    for name in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == name]
        m = lambda k: statistics.fmean(r[k] for r in rs)  # noqa: E731
        out.append({"task": name, "family": rs[0]["family"], "params": rs[0]["params"], "lr": rs[0]["lr"], "seeds": len(rs),
                    "loss_start": m("loss_start"), "loss_end": m("loss_end"), "metric": rs[0]["metric"],
                    "metric_value": m("metric_value"), "diverged": sum(r["diverged"] for r in rs)})
    return out


def to_markdown(summary: list[dict], steps: int) -> str:
    """The table for docs/README."""
    lines = [
        f"| task | family | params | Adam lr | loss at step 0 | loss after {steps} steps | held-out metric |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for s in summary:
        lines.append(f"| {s['task']} | {s['family']} | {s['params']:,} | {s['lr']:g} | {s['loss_start']:.4g} | "
                     f"{s['loss_end']:.4g} | {s['metric']} {s['metric_value']:.4g} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder for results.json and results.md")
    p.add_argument("--suite", choices=("families", "held_out"), default="families")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--lr", type=float, default=None, help="Adam lr for every task (default: each spec's reference_lr)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these tiny models)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(args.suite, args.steps, args.seeds, args.lr)
    summary = summarise(rows)
    md = to_markdown(summary, args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                                        "runs": rows}, indent=2))
    (args.out / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
