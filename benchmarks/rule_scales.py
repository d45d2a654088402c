"""What a shipped rule does to the step size: quantiles of its lr scale over training.

    python -m benchmarks.rule_scales --rule default --tasks mlp_digits_deep cnn_shapes siren_shapes \
        --steps 1000 --out docs/figures/optim

Trains each held-out task (seed 0) with ``GMNOptimizer(model, rule=...)`` at the default lr and
records the 5%, 50% and 95% quantiles of the per-parameter lr scale after every refresh. Writes
``rule_scales.json`` and ``rule_scales.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from inner_tasks import build_task
from inner_tasks.tasks import train_task
from inner_tasks.tasks.collections import held_out_suite
from metaopt.optim import GMNOptimizer

QUANTILES = (0.05, 0.5, 0.95)


class ScaleRecorder(GMNOptimizer):
    """GMNOptimizer that keeps the quantiles of its lr scale after each refresh."""

    def _refresh(self, entries, device):  # type: ignore[override]
        super()._refresh(entries, device)
        q = torch.quantile(self._buffers["lr_scale"], torch.tensor(QUANTILES, device=device))
        self.history.append((int(self.state["steps_taken"]), [round(float(x), 4) for x in q]))


def record(rule: str, task_name: str, steps: int) -> list[tuple[int, list[float]]]:
    (spec,) = [s for s in held_out_suite((0,), steps) if s.name.split("/")[0] == task_name]
    task = build_task(spec)
    opts: list[ScaleRecorder] = []

    def make(model):
        opt = ScaleRecorder(model, rule=rule)
        opt.history = []
        opts.append(opt)
        return opt

    train_task(task, make, steps, spec.seed, init_seed=spec.seed)
    return opts[0].history


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rule", default="default")
    ap.add_argument("--tasks", nargs="+", default=["mlp_digits_deep", "cnn_shapes", "siren_shapes"])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = {t: record(a.rule, t, a.steps) for t in a.tasks}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "rule_scales.json").write_text(json.dumps({"rule": a.rule, "steps": a.steps, "scales": result}, indent=1))
    lines = [f"lr scale of rule {a.rule!r} after each refresh (quantiles 5% / 50% / 95% over parameters):", "",
             "| task | " + " | ".join(f"step {s}" for s, _ in next(iter(result.values()))) + " |",
             "|---|" + "---:|" * len(next(iter(result.values())))]
    for t, hist in result.items():
        lines.append(f"| {t} | " + " | ".join(f"{q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f}" for _, q in hist) + " |")
    md = "\n".join(lines) + "\n"
    (a.out / "rule_scales.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
