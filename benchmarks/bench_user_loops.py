"""What a user sees: `GMNOptimizer(model)` with nothing passed, in plain training loops, against tuned Adam.

    python -m benchmarks.bench_user_loops --out docs/figures/optim/user_loops --steps 300 1000

Five small models written the way a user writes them (plain `nn.Module`s, none from the project's task
families, the meta-training distribution or the held-out suite): logistic regression and an autoencoder
on scikit-learn's digits, an MLP on the breast-cancer table (scikit-learn's bundled copy), a BatchNorm CNN
on digits and a byte-level GRU language model on Python's standard-library sources. Each trains in the
usual loop (forward, loss, ``zero_grad``, ``backward``, ``step``) on batches drawn before the clock
starts; the clock covers the whole loop, the optimizer's construction included (`GMNOptimizer` builds
the model's graph there).

Adam is tuned over 7 log-spaced lrs (1e-4 .. 1e-1) on each task's first seed and run at that lr on the
others; `GMNOptimizer(model)` is run as shipped (no lr: the lr-free default). Per task and seed the
table gives the steps and seconds each takes to reach tuned Adam's final loss (mean of its last
`outer_train.evaluate.WINDOW` losses, the held-out evaluation's definition; "never" if it does not),
and the speedups in steps and in wall-clock. ``--variants`` runs others beside it (`VARIANTS`: the
default without per-tensor estimates; the lr-free GMN rule, alone and with its scale per tensor). Writes ``user_loops.json``, ``user_loops.md`` and a loss
-vs-seconds plot of each task's first seed to --out (the loss curves and times: ``user_loops_curves.json``).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from benchmarks.common import machine
from metaopt import GMNOptimizer
from metaopt.optim import SoapSwitch
from metaopt.optim.rules import RETIRED_RULES
from outer_train.evaluate import final_loss, steps_to

ADAM_GRID = [float(x) for x in np.logspace(-4, -1, 7)]  # 1e-4 .. 1e-1, half a decade apart
Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Loop:
    """One user-style task: a model factory, the loss, and the batches of a seed."""

    name: str
    what: str
    model: Callable[[], nn.Module]
    loss: Callable[[nn.Module, Batch], Tensor]
    batches: Callable[[int, int], list[Batch]]  # (seed, steps) -> batches


@functools.cache
def _digits() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target, dtype=torch.long)


@functools.cache
def _cancer() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = (d.data - d.data.mean(0)) / d.data.std(0)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(d.target, dtype=torch.long)


@functools.cache
def _stdlib_bytes() -> Tensor:
    from inner_tasks.data.text import load_stdlib_corpus

    return load_stdlib_corpus(300_000).train.long()


def _minibatches(data: Callable[[], tuple[Tensor, Tensor]], batch: int) -> Callable[[int, int], list[Batch]]:
    """(seed, steps) -> random minibatches of ``data()`` (loaded, once, when first drawn)."""
    def draw(seed: int, steps: int) -> list[Batch]:
        x, y = data()
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, x.shape[0], (steps, batch), generator=g)
        return [(x[i], y[i]) for i in idx]
    return draw


def _text_windows(context: int, batch: int) -> Callable[[int, int], list[Batch]]:
    """(seed, steps) -> random windows of the stdlib bytes and their next bytes."""
    from inner_tasks.data.text import sample_windows

    def draw(seed: int, steps: int) -> list[Batch]:
        g = torch.Generator().manual_seed(seed)
        return [sample_windows(_stdlib_bytes(), batch, context, g) for _ in range(steps)]
    return draw


class GRULM(nn.Module):
    """Byte-level GRU language model: embedding -> one GRU layer -> vocabulary logits."""

    def __init__(self, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.emb, self.gru, self.head = nn.Embedding(256, dim), nn.GRU(dim, hidden, batch_first=True), nn.Linear(hidden, 256)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.gru(self.emb(x))[0])


def _bn_cnn() -> nn.Module:
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10))


def _cross_entropy(m: nn.Module, b: Batch) -> Tensor:
    return nn.functional.cross_entropy(m(b[0]), b[1])


def _reconstruction(m: nn.Module, b: Batch) -> Tensor:
    return nn.functional.mse_loss(m(b[0]), b[0])


def _next_byte(m: nn.Module, b: Batch) -> Tensor:
    return nn.functional.cross_entropy(m(b[0]).reshape(-1, 256), b[1].reshape(-1))


def loops() -> dict[str, Loop]:
    """The benchmark's tasks by name (data is loaded when a task's batches are first drawn)."""
    return {
        "logistic_regression": Loop("logistic_regression", "digits, nn.Linear(64, 10), batch 64",
                                    lambda: nn.Linear(64, 10), _cross_entropy, _minibatches(_digits, 64)),
        "tabular_mlp": Loop("tabular_mlp", "breast cancer (30 features), MLP 64-64, batch 32",
                            lambda: nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)),
                            _cross_entropy, _minibatches(_cancer, 32)),
        "autoencoder": Loop("autoencoder", "digits, 64-32-8-32-64 ReLU, MSE, batch 64",
                            lambda: nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(),
                                                  nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 64)),
                            _reconstruction, _minibatches(_digits, 64)),
        "bn_cnn": Loop("bn_cnn", "digits 8x8, two conv + BatchNorm layers, batch 64", _bn_cnn, _cross_entropy,
                       _minibatches(_digits, 64)),
        "gru_lm": Loop("gru_lm", "stdlib bytes, embedding 32 + GRU 64, context 32, batch 16", GRULM, _next_byte,
                       _text_windows(32, 16)),
    }


def train(loop: Loop, make_opt: Callable[[nn.Module], torch.optim.Optimizer], steps: int, seed: int) -> dict[str, Any]:
    """One run from init ``seed`` on the batches of ``seed``: losses, seconds after each step."""
    batches = loop.batches(seed, steps)
    torch.manual_seed(seed)
    model = loop.model()
    model.train()
    losses: list[float] = []
    times: list[float] = []
    t0 = time.perf_counter()
    opt = make_opt(model)
    for b in batches:
        loss = loop.loss(model, b)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"curve": losses, "times": times, "final_loss": final_loss(losses),
            "ms_per_step": 1e3 * times[-1] / len(times) if times else math.nan}


def adam(lr: float) -> Callable[[nn.Module], torch.optim.Optimizer]:
    return lambda m: torch.optim.Adam(m.parameters(), lr=lr)


def gmn_default(m: nn.Module) -> torch.optim.Optimizer:
    return GMNOptimizer(m)  # as a user writes it: nothing else passed


# What else can run beside the default (--variants), each with nothing to tune: the default without its
# per-tensor estimates, and the lr-free GMN rule in 0.5's mode (the default of 0.4), alone and with its scale
# normalised per tensor; the schedule-free mode (rule="lrfree_sf"); 0.10's default, its doubling not anchored
# (rule="lrfree_boost1"); and the retired defaults of 0.6-0.9 by the options that run them (rules.RETIRED_RULES):
# the estimate in less state (0.6: shared sums, every 3rd entry of large tensors), that with its growth capped
# once it has settled (0.7), that with the plateau decay (0.8), and that with the decay's boost at most twice
# (0.9); and the default at a quarter of its estimated step (the lr a multiplier). (Before 0.5, "default" was the
# GMN rule and "prodigy_per_tensor" today's default.)
def _retired(name: str) -> tuple[str, Callable[[nn.Module], torch.optim.Optimizer]]:
    retired = RETIRED_RULES[name]
    return retired.call(), lambda m: GMNOptimizer(m, **retired.kwargs())


VARIANTS: dict[str, tuple[str, Callable[[nn.Module], torch.optim.Optimizer]]] = {
    "default": ("GMNOptimizer(model)", gmn_default),
    "per_tensor_0": ("GMNOptimizer(model, per_tensor=0)", lambda m: GMNOptimizer(m, per_tensor=0.0)),
    "lrfree_gmn": ("GMNOptimizer(model, rule=\"lrfree\")", lambda m: GMNOptimizer(m, rule="lrfree")),
    "lrfree_gmn_scale_per_tensor": ("GMNOptimizer(model, rule=\"lrfree\", scale_per_tensor=True)",
                                    lambda m: GMNOptimizer(m, rule="lrfree", scale_per_tensor=True)),
    "schedule_free": ("GMNOptimizer(model, rule=\"lrfree_sf\")", lambda m: GMNOptimizer(m, rule="lrfree_sf")),
    "lean": _retired("lrfree_lean"),
    "settled": _retired("lrfree_settled"),
    "plateau": _retired("lrfree_plateau"),
    "boost": _retired("lrfree_boost"),
    "boost1": ("GMNOptimizer(model, rule=\"lrfree_boost1\")", lambda m: GMNOptimizer(m, rule="lrfree_boost1")),
    "quarter": ("GMNOptimizer(model, lr=0.25, lr_free=True)", lambda m: GMNOptimizer(m, lr=0.25, lr_free=True)),
    "anchor": ("GMNOptimizer(model, rule=\"lrfree_anchor\")",  # GMNOptimizer(model) of 0.11-0.15: no soap switch
               lambda m: GMNOptimizer(m, rule="lrfree_anchor")),
    "lrfree_soap": ("GMNOptimizer(model, rule=\"lrfree_soap\")",  # GMNOptimizer(model) of 0.16: the estimate from
                    lambda m: GMNOptimizer(m, rule="lrfree_soap")),  # 1e-6, the switch after 100 steps held
    "soap_switch": ("GMNOptimizer(model, soap_switch=True)", lambda m: GMNOptimizer(m, soap_switch=True)),
    "soap_switch_whole": ("GMNOptimizer(model, soap_switch=SoapSwitch(sides=\"both\", block=None))",  # 0.13-0.14's
                          lambda m: GMNOptimizer(m, soap_switch=SoapSwitch(sides="both", block=None))),
    "soap_switch_b64": ("GMNOptimizer(model, soap_switch=SoapSwitch(sides=\"both\", block=64))",  # 0.15's
                        lambda m: GMNOptimizer(m, soap_switch=SoapSwitch(sides="both", block=64))),
    "soap_switch_b64c": ("GMNOptimizer(model, soap_switch=SoapSwitch(sides=\"columns\", block=64))",
                         lambda m: GMNOptimizer(m, soap_switch=SoapSwitch(sides="columns", block=64))),
}


def reach(run: dict[str, Any], target: float) -> tuple[int | None, float | None]:
    """Steps and seconds until the run's windowed loss reaches ``target`` (None, None: never)."""
    k = steps_to(run["curve"], target)
    return k, (run["times"][k - 1] if k else None)


def bench_task(loop: Loop, steps: int, seeds: list[int], variants: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows for every seed of one task and every variant (default: GMNOptimizer(model) only) against
    tuned Adam (lr chosen on the first seed)."""
    grid = {lr: train(loop, adam(lr), steps, seeds[0]) for lr in ADAM_GRID}
    lr = min(ADAM_GRID, key=lambda x: (grid[x]["final_loss"], x))
    adams = {seed: grid[lr] if seed == seeds[0] else train(loop, adam(lr), steps, seed) for seed in seeds}
    rows = []
    for seed, variant in [(seed, v) for seed in seeds for v in variants or ["default"]]:
        a = adams[seed]
        g = train(loop, VARIANTS[variant][1], steps, seed)
        target = a["final_loss"]
        a_steps, a_sec = reach(a, target)
        g_steps, g_sec = reach(g, target)
        rows.append({
            "task": loop.name, "seed": seed, "steps": steps, "variant": variant, "adam_lr": lr,
            "adam_final_loss": target,
            "gmn_final_loss": g["final_loss"], "adam_steps": a_steps, "gmn_steps": g_steps,
            "adam_seconds": a_sec, "gmn_seconds": g_sec,
            "speedup_steps": a_steps / g_steps if a_steps and g_steps else 0.0,
            "speedup_clock": a_sec / g_sec if a_sec and g_sec else 0.0,
            "adam_ms_per_step": a["ms_per_step"], "gmn_ms_per_step": g["ms_per_step"],
            "adam_grid": {f"{x:.3g}": grid[x]["final_loss"] for x in ADAM_GRID} if seed == seeds[0] else None,
            "curves": {"adam": {"loss": a["curve"], "seconds": a["times"]},
                       "gmn": {"loss": g["curve"], "seconds": g["times"]}},
        })
    return rows


def _speed(x: float) -> str:
    return "never" if x == 0 else f"{x:.2f}x"


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per horizon and variant ("<steps>" for the default, "<steps>/<variant>" for another): the median over
    tasks of each task's median speedup over its seeds (never = 0), and how many tasks are at >= 1x."""
    out: dict[str, dict[str, Any]] = {}
    for steps, variant in dict.fromkeys((r["steps"], r["variant"]) for r in sorted(rows, key=lambda r: r["steps"])):
        per_task: dict[str, dict[str, float]] = {}
        here = [r for r in rows if r["steps"] == steps and r["variant"] == variant]
        for task in dict.fromkeys(r["task"] for r in here):
            mine = [r for r in here if r["task"] == task]
            per_task[task] = {k: statistics.median(r[k] for r in mine) for k in ("speedup_steps", "speedup_clock")}
        out[str(steps) if variant == "default" else f"{steps}/{variant}"] = {
            "steps": steps, "variant": variant,
            "median_speedup_steps": statistics.median(v["speedup_steps"] for v in per_task.values()),
            "median_speedup_clock": statistics.median(v["speedup_clock"] for v in per_task.values()),
            "tasks_at_least_1x_steps": sum(v["speedup_steps"] >= 1 for v in per_task.values()),
            "tasks_at_least_1x_clock": sum(v["speedup_clock"] >= 1 for v in per_task.values()),
            "tasks": len(per_task), "per_task": per_task,
        }
    return out


def markdown(rows: list[dict[str, Any]], summ: dict[str, dict[str, Any]], command: str) -> str:
    tasks = loops()
    lines = ["# `GMNOptimizer(model)` in user-style loops vs tuned Adam (cpu, 1 thread)", "",
             "Adam: best of 7 lrs (1e-4 .. 1e-1) on each task's first seed, that lr on the others. "
             "`GMNOptimizer(model)`: nothing passed. Target: tuned Adam's final loss (mean of its last losses); "
             "the clock covers the whole loop, optimizer construction included.", "",
             "| steps | optimizer | median speedup (steps) | median speedup (clock) | tasks >= 1x (steps / clock) |",
             "|---:|---|---:|---:|---:|"]
    for s in summ.values():
        lines.append(f"| {s['steps']} | {VARIANTS[s['variant']][0]} | {_speed(s['median_speedup_steps'])} | "
                     f"{_speed(s['median_speedup_clock'])} | "
                     f"{s['tasks_at_least_1x_steps']}/{s['tasks']} / {s['tasks_at_least_1x_clock']}/{s['tasks']} |")
    lines += ["", "| task | steps | seed | optimizer | Adam lr | Adam final loss | its final loss | steps to it (Adam / it) | "
              "seconds to it (Adam / it) | speedup (steps) | speedup (clock) | ms/step (Adam / it) |",
              "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        sec = f"{r['adam_seconds']:.2f} / " + ("never" if r["gmn_seconds"] is None else f"{r['gmn_seconds']:.2f}")
        lines.append(f"| {r['task']} | {r['steps']} | {r['seed']} | {r['variant']} | {r['adam_lr']:.3g} | {r['adam_final_loss']:.4g} | "
                     f"{r['gmn_final_loss']:.4g} | {r['adam_steps']} / {r['gmn_steps'] or 'never'} | {sec} | "
                     f"{_speed(r['speedup_steps'])} | {_speed(r['speedup_clock'])} | "
                     f"{r['adam_ms_per_step']:.2f} / {r['gmn_ms_per_step']:.2f} |")
    lines += ["", "Tasks: " + "; ".join(f"`{n}`: {t.what}" for n, t in tasks.items() if any(r['task'] == n for r in rows)),
              "", f"Command: `{command}`"]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Loss against seconds, first seed of each task, one panel per task and horizon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = "default" if any(r["variant"] == "default" for r in rows) else rows[0]["variant"]  # --variants without it
    first = [r for r in rows if r["seed"] == min(x["seed"] for x in rows if x["task"] == r["task"])
             and r["variant"] == shown]
    fig, axes = plt.subplots(1, len(first), figsize=(3.2 * len(first), 3), squeeze=False)
    for ax, r in zip(axes[0], first):
        for name, label in (("adam", f"Adam lr {r['adam_lr']:.2g} (tuned)"), ("gmn", VARIANTS[shown][0])):
            c = r["curves"][name]
            ax.plot(c["seconds"], c["loss"][: len(c["seconds"])], label=label, lw=1)
        ax.axhline(r["adam_final_loss"], color="grey", ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{r['task']} ({r['steps']} steps)", fontsize=9)
        ax.set_xlabel("seconds")
    axes[0][0].set_ylabel("training loss")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge(paths: list[Path], out: Path, command: str) -> int:
    """user_loops.json and .md over the rows of several runs' user_loops.json; a task, horizon, seed and variant in
    two of them is refused (the medians would count it twice)."""
    rows = [r for path in paths for r in json.loads(path.read_text())["rows"]]
    counts = collections.Counter((r["task"], r["steps"], r["seed"], r["variant"]) for r in rows)
    twice = sorted(k for k, n in counts.items() if n > 1)
    if twice:
        raise SystemExit(f"bench_user_loops --merge: {twice[0]} (task, steps, seed, variant) is in more than one file")
    out.mkdir(parents=True, exist_ok=True)
    summ = summary(rows)
    (out / "user_loops.json").write_text(json.dumps({"machine": machine(), "command": command, "merged": [str(p) for p in paths],
                                                      "summary": summ, "rows": rows}, indent=1))
    md = markdown(rows, summ, command)
    (out / "user_loops.md").write_text(md)
    print(md.split("\n\n| task")[0])
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/user_loops")
    p.add_argument("--steps", type=int, nargs="+", default=[300, 1000], help="horizons (each a separate run)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tasks", nargs="+", choices=sorted(loops()), default=None)
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["default"],
                   help="optimizers to run against tuned Adam (default: GMNOptimizer(model) only)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", nargs="+", type=Path, metavar="USER_LOOPS_JSON",
                   help="merge the rows of earlier runs' user_loops.json (e.g. tasks run as two processes) into --out "
                        "(user_loops.json and .md over all their tasks; no curves or plots) instead of running")
    a = p.parse_args(argv)
    command = "python -m benchmarks.bench_user_loops " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.merge:
        return merge(a.merge, Path(a.out), command)
    torch.set_num_threads(a.threads)
    chosen = loops()
    names = a.tasks or list(chosen)
    rows = []
    for steps in a.steps:
        for name in tqdm(names, desc=f"user loops, {steps} steps", file=sys.stderr):
            rows += bench_task(chosen[name], steps, a.seeds, a.variants)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summ = summary(rows)
    compact = [{k: v for k, v in r.items() if k != "curves"} for r in rows]  # small enough to keep in docs
    (out / "user_loops.json").write_text(json.dumps({"machine": machine(), "command": command, "summary": summ,
                                                      "rows": compact}, indent=1))
    (out / "user_loops_curves.json").write_text(json.dumps([{k: r[k] for k in ("task", "steps", "seed", "variant",
                                                                              "curves")} for r in rows]))
    md = markdown(rows, summ, command)
    (out / "user_loops.md").write_text(md)
    for steps in a.steps:
        plot([r for r in rows if r["steps"] == steps], out / f"user_loops_{steps}.png")
    print(md.split("\n\n| task")[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
