"""Evaluate learned rules against tuned baselines on held-out tasks, in steps and in wall-clock time.

``python -m outer_train.evaluate --rule DIR [--rule DIR2] [--steps 1000] [--quick] [--out DIR]``

Per task and seed, every optimizer trains the task's model in an ordinary PyTorch loop (forward,
backward, ``opt.step()``), timed whole on this process's thread(s), the optimizer's construction
(for a rule: tracing the model into its parameter graph) included. Adam, AdamW (weight decay
1e-2), SGD+momentum (0.9) and Adam with cosine decay to zero over the horizon (``adam_cosine``: the
schedule a practitioner who knows the step budget would use) run over a log grid of learning rates
and keep the lr with the lowest final training loss; ``--baselines muon`` adds Muon on the hidden matrices with
Adam on the rest (``outer_train.muon.HybridMuon``, on Adam's grid), ``--baselines soap`` SOAP, Adam in Shampoo's
eigenbasis on every matrix and Adam on vectors (``outer_train.soap.SOAP``, on Adam's grid). Constant-lr tuned Adam stays the reference.
Each rule runs through the real `GMNOptimizer`:

- ``<rule>``: at a fixed lr, its default, the rule's ``config.default_lr`` (what
  ``GMNOptimizer(model, rule=rule, lr_free=False)`` gives; ``--lr-free`` adds the rule lr-free, with the
  estimate options given here, else those the rule records, else plain Prodigy's),
  told the horizon (``total_steps=--steps``; ``--no-horizon``: not told), which only rules with
  horizon features read;
- ``<rule>@best``: at its best lr on the same grid as Adam's;
- lr sensitivity: its final loss at the grid points next to its default (about 1/3x and 3x),
  beside Adam's around Adam's default 1e-3.

``--rule-schedule cosine`` runs the rules (labelled ``<rule>+cosine``) with the same cosine decay
over the horizon as ``adam_cosine`` (a ``CosineAnnealingLR`` on the `GMNOptimizer`): what a rule
gives a practitioner who schedules its lr as they would Adam's.

Final loss = mean training loss of the last 10 steps. "Steps to Adam" = first step where the
10-step running mean reaches tuned Adam's final loss; speedup = tuned Adam's own steps to that
loss / the optimizer's; wall-clock speedup = tuned Adam's seconds to that loss / the optimizer's.
Lrs are tuned on each task's first seed and reused for its other seeds (``--tune every_seed``:
per seed). Writes ``results.json``, ``results.md`` and one loss-curve PNG per task and seed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from inner_tasks import Task, TaskSpec, build_task
from inner_tasks.tasks import train_task
from inner_tasks.tasks.collections import HELD_OUT_TASKS, SELECTION_SUITES, held_out_suite
from metaopt.optim import GMNOptimizer, SoapSwitch, UpdateRule
from metaopt.optim.nowcast import Nowcaster
from metaopt.optim.rules import resolve_rule
from outer_train.muon import HybridMuon
from outer_train.soap import SOAP

ADAM_DEFAULT_LR = 1e-3  # torch.optim.Adam's default: the centre of Adam's lr-sensitivity columns


def default_lr(rule: UpdateRule, kwargs: dict[str, Any] | None = None) -> float:
    """The lr ``GMNOptimizer(model, rule=rule, **kwargs)`` uses: the rule's own default, or with
    ``lr_free=True`` a multiplier of the estimated step, 1 unless the row names another (``multiplier``,
    from ``--lr-free-multiplier``)."""
    kwargs = kwargs or {}
    return float(kwargs.get("multiplier", 1.0)) if kwargs.get("lr_free") else float(rule.config.default_lr)


def optimizer_options(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """A row's GMNOptimizer keyword arguments (its ``multiplier`` is the lr the row runs at, not one of them);
    the mode is always explicit: a plain row runs at a fixed lr whatever mode the rule records (its +lrfree
    row runs it lr-free, with the options the rule records where the row gives none)."""
    return {"lr_free": False, **{k: v for k, v in (kwargs or {}).items() if k != "multiplier"}}


# lr_free rows tune the multiplier of the estimated step over powers of 3 around 1, so that the
# sensitivity columns read exactly 1/3x and 3x the default.
LR_FREE_GRID = [3.0**k for k in range(-3, 4)]


def rule_grid(kwargs: dict[str, Any] | None, grid: list[float]) -> list[float]:
    """The lrs a rule row is tuned over: ``grid``, or the multipliers LR_FREE_GRID with ``lr_free=True``."""
    return LR_FREE_GRID if (kwargs or {}).get("lr_free") else grid


WINDOW = 10  # steps averaged for "final loss" and for reaching a target


@dataclass
class EvalSettings:
    """What to run: suite subset, seeds, horizon and lr grid."""

    tasks: list[str]
    seeds: list[int]
    steps: int
    # "held_out": the evaluation suite; "meta_val" / "dev": the meta-validation suite (seed k runs its tasks from
    # META_VALIDATION_SEED + k) or the dev suite (DEV_SEED + k), for choosing settings (a rule's lr, a nowcaster's
    # horizon, an lr-free multiplier) without the held-out suite.
    suite: str = "held_out"
    grid_points: int = 7
    lr_min: float = 1e-4
    lr_max: float = 1e-1
    sgd_lr_min: float = 1e-3
    sgd_lr_max: float = 1.0
    # "first_seed": each task's lr grid runs on its first seed and the chosen lr is reused for the
    # other seeds (the lr is tuned per task, as in docs/benchmarks.md; 3x cheaper); "every_seed": per seed.
    tune: str = "first_seed"
    baselines: list[str] = field(default_factory=lambda: ["adam", "adamw", "sgd_momentum"])  # adam: the reference
    # Rules are told the horizon (GMNOptimizer(..., total_steps=steps)), as adam_cosine's schedule is;
    # False runs them as GMNOptimizer(model) without it (rules with horizon features: horizon-unknown mode).
    tell_horizon: bool = True
    # "cosine": rules run under CosineAnnealingLR over the horizon, as adam_cosine does ("constant": not).
    rule_schedule: str = "constant"
    # torch threads per process, as run (written in the tables' header; merged parts must agree; 0: not recorded)
    threads: int = 0
    # False (--no-best): rules run at their default lr (lr-free: the multiplier 1) only, without the <rule>@best
    # grid, which costs 3x the runs of the default; lr sensitivity is then not measured for them
    rule_best: bool = True

    def grid(self, lo: float, hi: float) -> list[float]:
        return [float(x) for x in np.geomspace(lo, hi, self.grid_points)]


QUICK_TASKS = ["mlp_digits_deep", "cnn_shapes", "siren_shapes"]


def final_loss(curve: list[float]) -> float:
    """Mean of the last WINDOW losses; inf for a diverged (non-finite) run."""
    if not curve or not all(math.isfinite(x) for x in curve):
        return math.inf
    return float(np.mean(curve[-WINDOW:]))


def running_mean(c: np.ndarray) -> np.ndarray:
    """The mean of each WINDOW consecutive losses (one per window's end)."""
    return np.convolve(c, np.ones(WINDOW) / WINDOW, mode="valid")


# A collapse: a run that fitted (its running loss fell below COLLAPSE_FIT x its first window's) and ended back up
# (its final loss at least COLLAPSE_BACK x the first window's), e.g. a ReLU network whose units a spike killed
# (back at chance). Finite throughout, so not a divergence; counted apart.
COLLAPSE_FIT = 0.1
COLLAPSE_BACK = 0.25


def collapsed(curve: list[float]) -> bool:
    """Whether a finite run collapsed (`COLLAPSE_FIT`, `COLLAPSE_BACK`); False for a diverged or short one."""
    c = np.asarray(curve, dtype=np.float64)
    if len(c) < 2 * WINDOW or not np.isfinite(c).all():
        return False
    start = c[:WINDOW].mean()
    lowest = running_mean(c).min()
    return bool(start > 0 and lowest <= COLLAPSE_FIT * start and c[-WINDOW:].mean() >= COLLAPSE_BACK * start)


def steps_to(curve: list[float], target: float) -> int | None:
    """First step (1-based, end of the window) where the running mean of WINDOW losses <= target."""
    if not curve or not math.isfinite(target):
        return None
    c = np.asarray(curve, dtype=np.float64)
    if not np.isfinite(c).all():
        c = c[: int(np.argmax(~np.isfinite(c)))]
    if len(c) < WINDOW:
        return None
    run = running_mean(c)
    hit = np.nonzero(run <= target * (1 + 1e-9))[0]
    return int(hit[0]) + WINDOW if hit.size else None


def cosine(opt: torch.optim.Optimizer, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """``opt`` with its lr decayed from the set value to zero over ``steps`` steps (half a cosine)."""
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)


def run_optimizer(task: Task, make_opt: Callable, steps: int, seed: int) -> dict[str, Any]:
    """Train once from init ``seed`` with batch order ``seed`` (`inner_tasks.train_task`): the loss
    curve, wall-clock seconds after each step (optimizer construction included), final loss,
    held-out metric."""
    run = train_task(task, make_opt, steps, seed, init_seed=seed)
    metric = math.nan
    if not run.diverged:
        ev = task.evaluate(dict(run.model.named_parameters()), dict(run.model.named_buffers()))
        metric = ev[task.metric_name]
    times = run.times
    return {"curve": run.losses, "times": times, "final_loss": final_loss(run.losses), "metric": metric,
            "ms_per_step": 1000 * times[-1] / len(times) if times else math.nan, "diverged": run.diverged,
            "seconds": times[-1] if times else math.nan}


def tune(task: Task, make: Callable[[float], Callable], grid: list[float], steps: int, seed: int) -> dict[str, Any]:
    """Run every lr of the grid; keep the run with the lowest final loss (ties -> smaller lr)."""
    runs = {lr: run_optimizer(task, make(lr), steps, seed) for lr in grid}
    best = min(grid, key=lambda lr: (runs[lr]["final_loss"], lr))
    out = dict(runs[best])
    out["lr"] = best
    out["grid"] = {f"{lr:.3g}": runs[lr]["final_loss"] for lr in grid}
    out["grid_divergences"] = sum(r["diverged"] for r in runs.values())
    return out


def _run_or_tune(task: Task, make: Callable[[float], Callable], grid: list[float], s: "EvalSettings", seed: int,
                 lr: float | None) -> dict[str, Any]:
    """Tune over ``grid``, or run once at ``lr`` (chosen on another seed of the task)."""
    if lr is None:
        return tune(task, make, grid, s.steps, seed)
    return {**run_optimizer(task, make(lr), s.steps, seed), "lr": lr, "grid": None, "grid_divergences": 0}


def neighbours(grid: list[float], lr: float) -> tuple[float, float]:
    """The grid points just below and above ``lr`` (which is on the grid): about lr/3 and 3 lr."""
    i = min(range(len(grid)), key=lambda j: abs(math.log(grid[j] / lr)))
    return grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]


def evaluate_task(
    spec: TaskSpec, rules: dict[str, UpdateRule], s: EvalSettings, previous: dict[str, Any] | None = None,
    tuned_lrs: dict[str, float] | None = None, rule_kwargs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """All optimizers on one task and seed (results in ``previous`` are reused, not rerun). With
    ``tuned_lrs`` (optimizer -> lr chosen on another seed of the task) every tuned optimizer runs
    once at that lr instead of over the grid. ``rule_kwargs``: rule label -> what else its
    ``GMNOptimizer`` is given (``nowcast=``, ``spike_guard=``)."""
    rule_kwargs = rule_kwargs or {}
    task = build_task(spec)
    example = (task.example_inputs(),)
    res: dict[str, Any] = dict(previous or {})
    grid = s.grid(s.lr_min, s.lr_max)
    tuned: dict[str, tuple[Callable[[float], Callable], list[float]]] = {
        "adam": (lambda lr: lambda m: torch.optim.Adam(m.parameters(), lr=lr), grid),
        "adamw": (lambda lr: lambda m: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=1e-2), grid),
        "sgd_momentum": (lambda lr: lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9),
                         s.grid(s.sgd_lr_min, s.sgd_lr_max)),
        "adam_cosine": (lambda lr: lambda m: cosine(torch.optim.Adam(m.parameters(), lr=lr), s.steps), grid),
        "muon": (lambda lr: lambda m: HybridMuon(m, lr=lr), grid),
        "soap": (lambda lr: lambda m: SOAP(m.parameters(), lr=lr), grid),
    }
    tuned = {k: v for k, v in tuned.items() if k == "adam" or k in s.baselines}
    makers: dict[str, Callable[[float], Callable]] = {}  # rule label -> lr -> its optimizer factory
    for name, rule in rules.items():
        def make_rule(lr: float, rule: UpdateRule = rule, name: str = name) -> Callable:
            def build(m: torch.nn.Module) -> Any:
                opt = GMNOptimizer(m, rule=rule, lr=lr, example_inputs=example,
                                   total_steps=s.steps if s.tell_horizon else None,
                                   **optimizer_options(rule_kwargs.get(name)))
                return cosine(opt, s.steps) if s.rule_schedule == "cosine" else opt
            return build
        makers[name] = make_rule
        if s.rule_best:
            tuned[f"{name}@best"] = (make_rule, rule_grid(rule_kwargs.get(name), grid))
    for name, (make, g) in tuned.items():
        if name not in res:
            res[name] = _run_or_tune(task, make, g, s, spec.seed, None if tuned_lrs is None else tuned_lrs[name])
    for name, rule in rules.items():
        best, lr = res.get(f"{name}@best", {}), default_lr(rule, rule_kwargs.get(name))
        if best.get("grid") and f"{lr:.3g}" in best["grid"] and f"{best['lr']:.3g}" == f"{lr:.3g}":
            res[name] = {**best, "grid": None}
        elif name not in res:
            res[name] = {**run_optimizer(task, makers[name](lr), s.steps, spec.seed),
                         "lr": lr, "grid": None, "grid_divergences": 0}
    target = res["adam"]["final_loss"]
    adam_steps = steps_to(res["adam"]["curve"], target)
    adam_seconds = res["adam"]["times"][adam_steps - 1] if adam_steps else None
    for name, r in res.items():
        r["steps_to_adam"] = steps_to(r["curve"], target)
        r["speedup"] = (adam_steps / r["steps_to_adam"]) if (adam_steps and r["steps_to_adam"]) else 0.0
        r["seconds_to_adam"] = r["times"][r["steps_to_adam"] - 1] if r["steps_to_adam"] else None
        r["wall_speedup"] = (adam_seconds / r["seconds_to_adam"]) if (adam_seconds and r["seconds_to_adam"]) else 0.0
    return {"task": spec.name, "family": spec.family, "params": task.num_params, "metric_name": task.metric_name,
            "higher_is_better": task.higher_is_better, "results": res,
            "sensitivity": sensitivity(res, rules, grid, rule_kwargs)}


def sensitivity(res: dict[str, Any], rules: dict[str, UpdateRule], grid: list[float],
                rule_kwargs: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, float]]:
    """Final loss at the grid neighbours of an optimizer's default lr / final loss at that default, for
    each rule (around its ``default_lr``; lr_free rules around the multiplier 1) and for Adam (around
    1e-3), from the grids run on a task's first seed (empty on the other seeds)."""
    out = {}
    kw = rule_kwargs or {}
    defaults = [(n, f"{n}@best", default_lr(r, kw.get(n)), rule_grid(kw.get(n), grid))
                for n, r in rules.items()] + [("adam", "adam", ADAM_DEFAULT_LR, grid)]
    for name, key, lr, lrs in defaults:
        g = res.get(key, {}).get("grid")
        if not g or f"{lr:.3g}" not in g:
            continue
        lo, hi = neighbours(lrs, lr)
        base = g[f"{lr:.3g}"]
        out[name] = {"default_lr": lr, "lr_low": lo, "lr_high": hi, "low_over_default": g[f"{lo:.3g}"] / base,
                     "high_over_default": g[f"{hi:.3g}"] / base}
    return out


def plot(entry: dict[str, Any], path: Path) -> None:
    """Loss curves of every optimizer on one task against steps and against wall-clock time (log y)."""
    from .plots import steps_and_clock_figure

    runs = {f"{k} (lr {v['lr']:.2g})": (v["curve"], v.get("times", [])) for k, v in entry["results"].items()}
    fig = steps_and_clock_figure(runs, f"{entry['task']} ({entry['params']:,} params)")
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


KEYS = ("speedup", "wall_speedup", "final_loss", "cost_vs_adam")


def _value(e: dict[str, Any], name: str, key: str) -> float:
    """A run's figure; ``cost_vs_adam`` = its whole-loop ms/step over tuned Adam's in the same entry."""
    r = e["results"][name]
    if key == "cost_vs_adam":
        return r["ms_per_step"] / e["results"]["adam"]["ms_per_step"]
    return r[key]


def task_summary(entries: list[dict[str, Any]], optimizers: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Task (name without the seed) -> optimizer -> median over seeds of speedups and final loss."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_task.setdefault(e["task"].split("/")[0], []).append(e)
    return {
        task: {name: {key: float(np.median([_value(e, name, key) for e in es])) for key in KEYS}
               for name in optimizers if all(name in e["results"] for e in es)}
        for task, es in by_task.items()
    }


def overall(entries: list[dict[str, Any]], optimizers: list[str]) -> dict[str, dict[str, Any]]:
    """Per optimizer, over tasks (each task: median over its seeds): the benchmark's headline figures."""
    per_task = task_summary(entries, optimizers)
    out = {}
    for name in optimizers:
        rows = [t[name] for t in per_task.values() if name in t]
        if not rows:
            continue
        out[name] = {
            "tasks": len(rows),
            "median_speedup": statistics.median(r["speedup"] for r in rows),
            "median_wall_speedup": statistics.median(r["wall_speedup"] for r in rows),
            "median_cost_vs_adam": statistics.median(r["cost_vs_adam"] for r in rows),
            "tasks_speedup_ge_1": sum(r["speedup"] >= 1.0 for r in rows),
            "tasks_wall_speedup_ge_1": sum(r["wall_speedup"] >= 1.0 for r in rows),
            "beats_adam_final_loss": sum(t[name]["final_loss"] < t["adam"]["final_loss"] for t in per_task.values()
                                         if name in t),
            "divergences": sum(int(e["results"][name]["diverged"]) for e in entries if name in e["results"]),
            "collapses": sum(collapsed(e["results"][name].get("curve", [])) for e in entries if name in e["results"]),
        }
    return out


def _speed(x: float) -> str:
    return f"{x:.2f}x" if x > 0 else "never"


def markdown(entries: list[dict[str, Any]], optimizers: list[str]) -> str:
    """Per-run table, per-task medians, summary per optimizer, lr sensitivity, GMN vs MLP rule."""
    lines = [
        "| task | optimizer | lr | final loss | test metric | steps to Adam's loss | speedup (steps) | speedup (wall-clock) | divergences | ms/step |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        for name in optimizers:
            if name not in e["results"]:
                continue
            r = e["results"][name]
            steps = "-" if r["steps_to_adam"] is None else str(r["steps_to_adam"])
            div = int(r["diverged"]) + int(r.get("grid_divergences", 0))
            lines.append(
                f"| {e['task']} | {name} | {r['lr']:.2g} | {r['final_loss']:.4g} | {e['metric_name']} {r['metric']:.4g} | "
                f"{steps} | {_speed(r['speedup'])} | {_speed(r['wall_speedup'])} | {div} | {r['ms_per_step']:.2f} |"
            )
    per_task = task_summary(entries, optimizers)
    seeds = {t: sum(e["task"].split("/")[0] == t for e in entries) for t in per_task}
    lines += ["", "Per task, median over its seeds: final training loss (speedup in steps / in wall-clock time vs tuned Adam):",
              "", "| task | seeds | " + " | ".join(optimizers) + " |", "|---|---:|" + "---:|" * len(optimizers)]
    for task, res in per_task.items():
        cells = [f"{res[n]['final_loss']:.3g} ({_speed(res[n]['speedup'])} / {_speed(res[n]['wall_speedup'])})"
                 if n in res else "-" for n in optimizers]
        lines.append(f"| {task} | {seeds[task]} | " + " | ".join(cells) + " |")
    lines += ["", "Summary over tasks (each task: median over its seeds):", "",
              "| optimizer | median speedup (steps) | median speedup (wall-clock) | tasks >= 1x (steps) | "
              "tasks >= 1x (wall-clock) | beats tuned Adam (final loss) | divergences | collapses | loop ms/step vs Adam |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, o in overall(entries, optimizers).items():
        lines.append(f"| {name} | {o['median_speedup']:.2f} | {o['median_wall_speedup']:.2f} | {o['tasks_speedup_ge_1']}/{o['tasks']} | "
                     f"{o['tasks_wall_speedup_ge_1']}/{o['tasks']} | {o['beats_adam_final_loss']}/{o['tasks']} | {o['divergences']} | "
                     f"{o['collapses']} | {o['median_cost_vs_adam']:.2f} |")
    sens = [(e["task"], e.get("sensitivity", {})) for e in entries if e.get("sensitivity")]
    if sens:
        names = list(dict.fromkeys(n for _, s in sens for n in s))
        first = {n: row[n] for _, row in reversed(sens) for n in row}
        around = ", ".join(f"{n} {first[n]['lr_low']:.3g} / {first[n].get('default_lr', ADAM_DEFAULT_LR):.3g} / "
                           f"{first[n]['lr_high']:.3g}" for n in names)
        lines += ["", "lr sensitivity (first seed): final loss at the grid points below and above each optimizer's "
                  f"default lr, relative to the final loss at its default (within 3x = robust; low / default / high: "
                  f"{around}):", "",
                  "| task | " + " | ".join(f"{n} low / high" for n in names) + " |", "|---|" + "---:|" * len(names)]
        for task, srow in sens:
            cells = [f"{srow[n]['low_over_default']:.2f} / {srow[n]['high_over_default']:.2f}" if n in srow else "-"
                     for n in names]
            lines.append(f"| {task.split('/')[0]} | " + " | ".join(cells) + " |")
    for g in [n for n in optimizers if n.startswith("rule_gmn")]:  # at its lr, @best, lr-free, lr-free @best
        m = "rule_mlp" + g.removeprefix("rule_gmn")
        both = [t for t in per_task.values() if g in t and m in t]
        if both:
            wins = sum(t[g]["final_loss"] < t[m]["final_loss"] for t in both)
            lines += ["", f"{g} reaches a lower final loss than {m} on {wins}/{len(both)} tasks (median over seeds)."]
    for free in [n for n in optimizers if n.endswith("+lrfree")]:  # each lr-free row against its rule at its lr
        base = free.removesuffix("+lrfree")
        both = [t for t in per_task.values() if free in t and base in t]
        if not both:
            continue
        wins = sum(t[free]["final_loss"] < t[base]["final_loss"] for t in both)
        ratios = [t[free]["final_loss"] / t[base]["final_loss"] for t in both
                  if 0 < t[base]["final_loss"] < math.inf and t[free]["final_loss"] < math.inf]
        ratio = f"; median final-loss ratio {float(np.median(ratios)):.3g}" if ratios else ""
        lines += ["", f"{free} reaches a lower final loss than {base} on {wins}/{len(both)} tasks "
                      f"(median over seeds{ratio})."]
    return "\n".join(lines) + "\n"


def compact(entries: list[dict[str, Any]], s: "EvalSettings", rules: list[str]) -> dict[str, Any]:
    """The results without curves (small enough to keep in docs/): settings, per-run scalars,
    per-task medians and the summary per optimizer."""
    optimizers = list(dict.fromkeys(k for e in entries for k in e["results"]))
    runs = [{**{k: v for k, v in e.items() if k != "results"},
             "results": {n: {k: v for k, v in r.items() if k not in ("curve", "times")} for n, r in e["results"].items()}}
            for e in entries]
    defaults = {n: r["lr"] for e in entries for n, r in e["results"].items() if f"{n}@best" in e["results"]}
    return {"settings": s.__dict__, "default_lr": {"adam": ADAM_DEFAULT_LR, **defaults}, "rules": rules, "runs": runs,
            "per_task": task_summary(entries, optimizers), "summary": overall(entries, optimizers)}


def write_tables(entries: list[dict[str, Any]], s: EvalSettings, out: Path, rules: list[str] | None = None,
                 reused_from: list[str] | None = None, resumed: list[str] | None = None) -> None:
    """results.md (settings header, tables) and summary.json (no curves), also printed. ``reused_from``: the
    results.json files whose optimizers were kept (--reuse); ``resumed``: task/seed runs kept from an
    earlier sitting (--resume); both named in a caveat on the wall-clock columns."""
    optimizers = list(dict.fromkeys(k for e in entries for k in e["results"]))
    tuning = "tuned on each task's first seed" if s.tune == "first_seed" else "tuned per seed"
    header = (f"Settings: tasks {s.tasks}, seeds {s.seeds}, {s.steps} steps, {s.grid_points}-point lr grids "
              f"(Adam/AdamW and rules@best {s.lr_min:g}..{s.lr_max:g}, SGD {s.sgd_lr_min:g}..{s.sgd_lr_max:g}; {tuning}); "
              f"rules at their default lr (GMNOptimizer(model, rule=..., lr_free=False))"
              f"{' and at their best lr' if s.rule_best else ' only (--no-best)'}"
              f"{', under cosine decay over the horizon' if s.rule_schedule == 'cosine' else ''}; whole training loop timed, "
              f"torch threads {s.threads or 'not recorded'}.\n\n")
    if reused_from:  # timings from two runs: the machine's load may have differed between them
        header += (f"Optimizers kept from {', '.join(reused_from)} (--reuse) were timed in that run, the others in "
                   "this one: their wall-clock columns and loop cost compare timings taken at different times "
                   "(the step columns are exact).\n\n")
    if resumed:
        header += (f"Resumed run (--resume): {len(resumed)} task/seed runs were kept from an earlier sitting and timed "
                   "then; the machine's load may have differed between sittings (the step columns are exact).\n\n")
    text = header + markdown(entries, optimizers)
    (out / "results.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(compact(entries, s, rules or []), indent=1))
    print(text)


# What runs from before a setting existed did (results.json files lack the key).
OLD_SETTINGS = {"tell_horizon": True, "rule_schedule": "constant", "suite": "held_out", "threads": 0, "rule_best": True}


def rename_rows(entry: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    """A task/seed run with its optimizer rows renamed (``old`` -> ``new``, and ``old@best`` -> ``new@best``)."""
    def name(k: str) -> str:
        for old, new in renames.items():
            if k == old or k.startswith(old + "@"):
                return new + k[len(old):]
        return k
    return {**entry, **{key: {name(k): v for k, v in entry[key].items()}
                        for key in ("results", "sensitivity") if isinstance(entry.get(key), dict)}}


def merge_results(files: list[Path], out: Path, replace: bool = False, renames: dict[str, str] | None = None) -> int:
    """One results.json/results.md from runs over disjoint task subsets, or over other seeds of the same
    tasks (a replicate: every task's median is then over all its seeds, each run against its own
    sitting's tuned Adam), with otherwise equal settings; ``replace``: a task/seed run in a later file
    replaces the same run of an earlier one (a re-run, e.g. on a quieter machine), in the earlier one's
    place; ``renames`` (old -> new row name): the same optimizer labelled differently in two runs."""
    parts = [json.loads(f.read_text()) for f in files]
    for part in parts:  # runs before the options existed told the rules the horizon (none read it), no schedule
        part["settings"] = {**OLD_SETTINGS, **part["settings"]}
    # rule_best (--no-best) says which rows a part has, not how they ran: parts may differ in it (a task's
    # <rule>@best row is summarised only where every seed has it)
    free = ("tasks", "seeds", "rule_best")
    base = {k: v for k, v in parts[0]["settings"].items() if k not in free}
    for f, part in zip(files, parts):
        other = {k: v for k, v in part["settings"].items() if k not in free}
        if other != base:
            raise SystemExit(f"--merge: {f} was run with settings {other}, {files[0]} with {base}")
    base["seeds"] = sorted({s for part in parts for s in part["settings"]["seeds"]})
    base["rule_best"] = all(part["settings"]["rule_best"] for part in parts)
    entries = [rename_rows(e, renames or {}) for part in parts for e in part["entries"]]
    if replace:
        latest = {e["task"]: e for e in entries}
        entries = list({e["task"]: latest[e["task"]] for e in entries}.values())
    names = [e["task"] for e in entries]
    if len(set(names)) != len(names):
        raise SystemExit(f"--merge: some task/seed runs appear twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    settings = EvalSettings(**{**base, "tasks": list(dict.fromkeys(t for p in parts for t in p["settings"]["tasks"]))})
    out.mkdir(parents=True, exist_ok=True)
    rules = list(dict.fromkeys(r for p in parts for r in p.get("rules", [])))
    reused = list(dict.fromkeys(r for p in parts for r in p.get("reused_from", [])))
    resumed = [t for p in parts for t in p.get("resumed", [])]
    (out / "results.json").write_text(json.dumps({"settings": settings.__dict__, "rules": rules, "entries": entries,
                                                  "reused_from": reused, **({"resumed": resumed} if resumed else {})},
                                                 indent=1))
    write_tables(entries, settings, out, rules, reused, resumed)
    return 0


def load_rules(dirs: list[str]) -> dict[str, UpdateRule]:
    """Rules by label: ``LABEL=DIR`` names one (e.g. ``rule_gmn_v04=runs/rules/gmn``), a plain ``DIR`` is
    labelled by its kind (``rule_gmn``), de-duplicated with the directory name."""
    rules: dict[str, UpdateRule] = {}
    for d in dirs:
        label, sep, path = d.partition("=")
        if not sep or "/" in label:
            label, path = "", d
        rule = resolve_rule(path).eval()  # a directory, or a shipped rule's name (default, mlp, adam)
        if not label:
            label = f"rule_{rule.config.kind}"
            if label in rules:
                label = f"{label}_{Path(path).resolve().parent.name}"
        if label in rules:
            raise SystemExit(f"evaluate: two rules are labelled {label!r}; name them with --rule LABEL=DIR")
        rules[label] = rule
    return rules


def split_pairs(spec: str) -> list[str]:
    """``"a=1,betas=(0.95,0.999),b=2"`` -> ``["a=1", "betas=(0.95,0.999)", "b=2"]``: commas inside brackets belong to
    the value."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    return parts + [spec[start:]]


def parse_soap_variant(item: str, error: Callable[[str], Any]) -> tuple[str, SoapSwitch]:
    """``--soap-variant LABEL:KEY=VALUE,...`` as (label, a checked SoapSwitch; `SoapSwitch.from_pairs`: values are
    Python literals, ``true`` / ``false`` booleans, else strings), a bad one goes to ``error``."""
    label, sep, spec = item.partition(":")
    if not sep or not label.isidentifier():
        error(f"--soap-variant takes LABEL:KEY=VALUE[,KEY=VALUE] with LABEL a name, got {item!r}")
    try:
        return label, SoapSwitch.from_pairs(filter(None, split_pairs(spec)))
    except ValueError as e:
        error(f"--soap-variant {label}: {e}")
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m outer_train.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--rule", action="append", default=[],
                   help="rule directory (save_pretrained format), or LABEL=DIR to name its rows; repeatable")
    p.add_argument("--nowcast", action="append", default=[], metavar="LABEL=DIR",
                   help="a nowcaster (outer_train.nowcast) run inside GMNOptimizer with --nowcast-rule; repeatable")
    p.add_argument("--nowcast-rule", default="adam", help="the rule nowcasters run with: adam (default), default or a DIR")
    p.add_argument("--spike-guard", type=float, metavar="RATIO",
                   help="also run every rule with GMNOptimizer(spike_guard=RATIO), labelled <rule>+guard")
    p.add_argument("--lr-free", action="store_true",
                   help="also run every rule with GMNOptimizer(lr_free=True), labelled <rule>+lrfree (its lr grid: "
                        "multipliers 3^-3..3^3 of the estimated step, default 1)")
    p.add_argument("--growth-rate", type=float, help="with --lr-free: GMNOptimizer's growth_rate for the +lrfree rows "
                   "(the estimate grows by at most this factor per step; default no limit)")
    p.add_argument("--settled-growth-rate", type=float, help="with --lr-free: GMNOptimizer's settled_growth_rate for the "
                   "+lrfree rows (growth_rate's limit from the estimate's first settling on; default no limit)")
    p.add_argument("--estimate-stride", type=int, help="with --lr-free: GMNOptimizer's estimate_stride for the +lrfree "
                   "rows (the estimate reads every k-th parameter entry; default 1)")
    p.add_argument("--estimate-every", type=int, help="with --lr-free: GMNOptimizer's estimate_every for the +lrfree "
                   "rows (the estimate is taken every j-th step; default 1)")
    p.add_argument("--estimate-warmup", type=int, help="with --lr-free: GMNOptimizer's estimate_warmup for the +lrfree "
                   "rows (with --estimate-every: the first steps that still take an estimate each; default 0)")
    p.add_argument("--lr-free-multiplier", type=float, metavar="M",
                   help="with --lr-free: the +lrfree rows run at this multiplier of the estimated step instead of 1 "
                        "(their @best grid stays 3^-3..3^3), to see how a figure moves with it")
    p.add_argument("--d0", type=float, help="with --lr-free: GMNOptimizer's d0 for the +lrfree rows (the estimate "
                   "before the first step; default 1e-6)")
    p.add_argument("--plateau-block", type=int, metavar="STEPS", help="with --lr-free: GMNOptimizer's plateau_block "
                   "for the +lrfree rows (halve the step where the gradient norm stops falling; default 0, off)")
    p.add_argument("--plateau-boost", action="store_true", help="with --lr-free and a plateau block: GMNOptimizer("
                   "plateau_boost=True) for the +lrfree rows (double the step where the gradient norm keeps falling)")
    p.add_argument("--plateau-anchor", action="store_true", help="with --plateau-boost: GMNOptimizer(plateau_anchor="
                   "True) for the +lrfree rows (a doubling is of the step at its grant)")
    p.add_argument("--per-tensor", type=float, help="with --lr-free: GMNOptimizer's per_tensor for the +lrfree rows "
                   "(the share of each tensor's own distance estimate in its step size; default 0)")
    p.add_argument("--shared-sums", action="store_true",
                   help="with --lr-free and per-tensor estimates: GMNOptimizer(shared_sums=True) for the +lrfree rows "
                        "(each tensor's estimate reads the network's gradient sum: 1x the parameters less state)")
    p.add_argument("--scale-per-tensor", action="store_true",
                   help="with --lr-free and per-tensor estimates: GMNOptimizer(scale_per_tensor=True) for the +lrfree "
                        "rows (the rule's scale normalised per tensor)")
    p.add_argument("--soap-switch", action="store_true",
                   help="with --lr-free: also run every +lrfree row with GMNOptimizer(soap_switch=True), labelled "
                        "<rule>+lrfree+soap (SOAP's step at half the estimate once it has settled)")
    p.add_argument("--soap-variant", action="append", default=[], metavar="LABEL:KEY=VALUE[,KEY=VALUE]",
                   help="with --lr-free: also run every +lrfree row with GMNOptimizer(soap_switch=SoapSwitch(KEY=VALUE, "
                        "...)), labelled <rule>+lrfree+LABEL (e.g. columns:sides='columns'); repeatable")
    p.add_argument("--soap-variants-only", action="store_true",
                   help="with --soap-variant: run only the switch variants' rows, not the +lrfree rows they vary (a "
                        "screen that reuses those from another run, --reuse)")
    p.add_argument("--no-best", action="store_true",
                   help="run the rules at their default lr (lr-free: the multiplier 1) only, not also over the lr "
                        "grid (<rule>@best, 3x the runs); Adam is tuned as always")
    p.add_argument("--variants-only", action="store_true",
                   help="with --spike-guard / --lr-free: run only the <rule>+guard / +lrfree rows, not the rules as given")
    p.add_argument("--suite", default="held_out", choices=["held_out", *SELECTION_SUITES],
                   help="held_out (default); meta_val (the meta-validation suite) or dev (the held-out tasks' siblings): "
                        "for choosing settings")
    p.add_argument("--tasks", nargs="*", help=f"subset of the suite's tasks (held_out: {list(HELD_OUT_TASKS)})")
    p.add_argument("--seeds", nargs="*", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--grid-points", type=int)
    p.add_argument("--quick", action="store_true", help=f"tasks {QUICK_TASKS}, seed 0, 150 steps, 4-point grids")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--tune", choices=["first_seed", "every_seed"], default="first_seed",
                   help="tune baseline lrs on each task's first seed and reuse them (default), or on every seed")
    p.add_argument("--baselines", nargs="+", choices=["adam", "adamw", "sgd_momentum", "adam_cosine", "muon", "soap"],
                   help="tuned baselines to run (default adam, adamw, sgd_momentum; Adam always runs, it is the reference; "
                        "muon: outer_train.muon.HybridMuon, Muon on hidden matrices and Adam on the rest; "
                        "soap: outer_train.soap.SOAP, Adam in Shampoo's eigenbasis on matrices, Adam on vectors)")
    p.add_argument("--no-horizon", action="store_true",
                   help="run rules without total_steps (as GMNOptimizer(model)); by default they are told --steps")
    p.add_argument("--rule-schedule", choices=["constant", "cosine"], default="constant",
                   help="cosine: run the rules under the cosine decay adam_cosine uses (labelled <rule>+cosine)")
    p.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                   help="combine results.json files of runs over disjoint task subsets, or over other seeds of the "
                        "same tasks (same settings otherwise), into one table in --out; nothing is run")
    p.add_argument("--rename", nargs="*", default=[], metavar="OLD=NEW",
                   help="with --merge: rows OLD (and OLD@best) are named NEW (the same optimizer labelled "
                        "differently in two runs, e.g. a replicate on other seeds)")
    p.add_argument("--replace", action="store_true",
                   help="with --merge: a task/seed run in a later file replaces the same run of an earlier one "
                        "(a re-run); without it the same run twice is refused")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: the task/seed runs already in --out's results.json (same settings "
                        "and rules) are kept, the rest are run")
    p.add_argument("--reuse", help="a results.json from an earlier run with the same settings: its optimizers are "
                   "kept (not rerun) and the rules given here are added")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    suite_tasks = list(HELD_OUT_TASKS if a.suite == "held_out" else SELECTION_SUITES[a.suite][0])
    if a.quick and a.suite != "held_out":
        p.error(f"--quick runs held-out tasks; give --suite {a.suite} with --tasks, --steps and --grid-points instead")
    s = EvalSettings(tasks=QUICK_TASKS if a.quick else suite_tasks, seeds=[0] if a.quick else [0, 1, 2],
                     steps=150 if a.quick else 1000, grid_points=4 if a.quick else 7, suite=a.suite,
                     threads=a.threads)
    if a.tasks:
        unknown = sorted(set(a.tasks) - set(suite_tasks))
        if unknown:
            p.error(f"unknown {a.suite} tasks {unknown}; choose from {suite_tasks}")
        s.tasks = a.tasks
    if a.seeds:
        s.seeds = a.seeds
    if a.steps:
        s.steps = a.steps
    if a.grid_points:
        s.grid_points = a.grid_points
    s.tune = a.tune
    s.tell_horizon = not a.no_horizon
    s.rule_schedule = a.rule_schedule
    s.rule_best = not a.no_best
    if a.baselines:
        s.baselines = list(dict.fromkeys(["adam", *a.baselines]))
    if s.grid_points < 2 or s.steps < WINDOW:
        p.error(f"need --grid-points >= 2 and --steps >= {WINDOW}")
    if a.replace and not a.merge:
        p.error("--replace goes with --merge")
    if a.rename and not a.merge:
        p.error("--rename goes with --merge")
    if a.merge:
        if any("=" not in item for item in a.rename):
            p.error(f"--rename takes OLD=NEW, got {a.rename}")
        renames = dict(item.split("=", 1) for item in a.rename)
        return merge_results([Path(f) for f in a.merge], Path(a.out), a.replace, renames)
    rules = load_rules(a.rule)
    rule_kwargs: dict[str, dict[str, Any]] = {}  # label -> what else its GMNOptimizer is given
    for item in a.nowcast:
        label, sep, path = item.partition("=")
        if not sep or label in rules:
            p.error(f"--nowcast takes LABEL=DIR with a label of its own, got {item!r}")
        rules[label] = resolve_rule(a.nowcast_rule)
        rule_kwargs[label] = {"nowcast": Nowcaster.from_pretrained(path)}
    labels = a.rule + [f"{item} (nowcaster, rule {a.nowcast_rule})" for item in a.nowcast]
    options = (("growth_rate", a.growth_rate), ("settled_growth_rate", a.settled_growth_rate),
               ("estimate_stride", a.estimate_stride), ("estimate_every", a.estimate_every),
               ("estimate_warmup", a.estimate_warmup), ("per_tensor", a.per_tensor), ("d0", a.d0),
               ("multiplier", a.lr_free_multiplier), ("scale_per_tensor", True if a.scale_per_tensor else None),
               ("shared_sums", True if a.shared_sums else None), ("plateau_block", a.plateau_block),
               ("plateau_boost", True if a.plateau_boost else None),
               ("plateau_anchor", True if a.plateau_anchor else None))
    if any(v is not None for _, v in options) and not a.lr_free:
        p.error("--growth-rate, --settled-growth-rate, --estimate-stride, --estimate-every, --estimate-warmup, "
                "--per-tensor, --d0, --plateau-block, --plateau-boost, --plateau-anchor, "
                "--scale-per-tensor, --shared-sums and --lr-free-multiplier shape the lr-free rows: add --lr-free")
    if a.lr_free_multiplier is not None and not a.lr_free_multiplier > 0:
        p.error(f"--lr-free-multiplier is a multiplier > 0, got {a.lr_free_multiplier}")
    if a.lr_free:
        estimate = {k: v for k, v in options if v is not None}
        for name in list(rules):
            rules[f"{name}+lrfree"] = rules[name]
            rule_kwargs[f"{name}+lrfree"] = {**rule_kwargs.get(name, {}), "lr_free": True, **estimate}
        how = ", ".join(["lr_free", *(f"{k} {v:g}" for k, v in estimate.items())])
        lrfree_labels = [f"{label}+lrfree ({how})" for label in labels]
        labels += lrfree_labels
    if a.soap_switch:
        if not a.lr_free:
            p.error("--soap-switch switches the +lrfree rows' step: add --lr-free")
        for name in [n for n in rules if n.endswith("+lrfree")]:
            rules[f"{name}+soap"] = rules[name]
            rule_kwargs[f"{name}+soap"] = {**rule_kwargs[name], "soap_switch": True}
        labels += [f"{label}+soap (soap_switch)" for label in lrfree_labels]
    variant_suffixes = ["+guard", "+lrfree", "+soap"]
    if a.soap_variant and not a.lr_free:
        p.error("--soap-variant switches the +lrfree rows' step: add --lr-free")
    lrfree_names = [n for n in rules if n.endswith("+lrfree")]
    for item in a.soap_variant:
        label, switch = parse_soap_variant(item, p.error)
        variant_suffixes.append(f"+{label}")
        for name in lrfree_names:
            rules[f"{name}+{label}"] = rules[name]
            rule_kwargs[f"{name}+{label}"] = {**rule_kwargs[name], "soap_switch": switch}
        labels += [f"{lb}+{label} (soap_switch {item.partition(':')[2]})" for lb in lrfree_labels]
    if a.spike_guard is not None:
        if not a.spike_guard > 1:
            p.error(f"--spike-guard is a gradient-norm ratio > 1, got {a.spike_guard}")
        for name in list(rules):
            rules[f"{name}+guard"] = rules[name]
            rule_kwargs[f"{name}+guard"] = {**rule_kwargs.get(name, {}), "spike_guard": a.spike_guard}
        labels += [f"{label}+guard (spike_guard {a.spike_guard:g})" for label in labels]
    if a.variants_only:
        if a.spike_guard is None and not a.lr_free:
            p.error("--variants-only needs --spike-guard or --lr-free")
        plain = [n for n in rules if not n.endswith(tuple(variant_suffixes))]
        rules = {n: r for n, r in rules.items() if n not in plain}
        rule_kwargs = {n: kw for n, kw in rule_kwargs.items() if n not in plain}
        labels = [lb for lb in labels if "+guard (" in lb or "+lrfree (" in lb]
    if a.soap_variants_only:
        if not a.soap_variant:
            p.error("--soap-variants-only runs the --soap-variant rows alone: add --soap-variant")
        rules = {n: r for n, r in rules.items() if n not in lrfree_names}
        rule_kwargs = {n: kw for n, kw in rule_kwargs.items() if n not in lrfree_names}
        labels = [lb for lb in labels if lb not in lrfree_labels]
    if s.rule_schedule == "cosine":
        rules = {f"{name}+cosine": rule for name, rule in rules.items()}
        rule_kwargs = {f"{name}+cosine": kw for name, kw in rule_kwargs.items()}
    out = Path(a.out)
    (out / "curves").mkdir(parents=True, exist_ok=True)
    if s.suite == "held_out":
        suite = held_out_suite(tuple(s.seeds), s.steps)
    else:
        _, one_seed, first_seed = SELECTION_SUITES[s.suite]
        suite = [sp for k in s.seeds for sp in one_seed(first_seed + k, s.steps)]
    specs = [sp for sp in suite if sp.name.split("/")[0] in s.tasks]
    previous: dict[str, dict[str, Any]] = {}
    prev_rules: list[str] = []
    reused_from: list[str] = []
    if a.reuse:
        old = json.loads(Path(a.reuse).read_text())
        old["settings"] = {**OLD_SETTINGS, **old["settings"]}  # runs before the options: told, no schedule
        reused_from = [*old.get("reused_from", []), a.reuse]
        differ = {k for k in set(old["settings"]) | set(s.__dict__)  # threads: the caveat on reused timings covers
                  # it; rule_best concerns only the rows run now
                  if k not in ("tasks", "threads", "rule_best") and old["settings"].get(k) != s.__dict__.get(k)}
        if differ:  # the task list may differ: only the tasks run here are taken from it
            p.error(f"--reuse {a.reuse} was run with other settings ({sorted(differ)}): {old['settings']}, not {s.__dict__}")
        previous = {e["task"]: e["results"] for e in old["entries"]}
        prev_rules = [r for r in old.get("rules", []) if r not in a.rule]  # listed before this run's labels
        # A label the old run gave the same rule (the same LABEL=DIR) keeps its rows; others must be new.
        same = {spec.partition("=")[0] for spec in a.rule if spec in old.get("rules", []) and "=" in spec}
        new = [n for n in rules if n not in same]
        taken = {k for res in previous.values() for k in res} & {k for n in new for k in (n, f"{n}@best")}
        if taken and prev_rules:  # a result stored under this label would be taken for the new rule
            p.error(f"--reuse {a.reuse} already holds results labelled {sorted(taken)} (rules {prev_rules}); "
                    "label the rules evaluated now with --rule LABEL=DIR")
    resumed: list[str] = []  # task/seed runs kept from an earlier sitting of this run (--resume)
    if a.resume and (out / "results.json").exists():
        if a.reuse:
            p.error("--resume continues the run in --out; it does not combine with --reuse")
        old = json.loads((out / "results.json").read_text())
        old["settings"] = {**OLD_SETTINGS, **old["settings"]}
        if old["settings"] != json.loads(json.dumps(s.__dict__)) or old.get("rules", []) != labels:
            p.error(f"--resume: {out / 'results.json'} was run with settings {old['settings']} and rules "
                    f"{old.get('rules')}, not {s.__dict__} and {labels}; use another --out")
        expected = {"adam", *s.baselines, *rules, *(f"{n}@best" for n in rules if s.rule_best)}
        previous = {e["task"]: e["results"] for e in old["entries"] if expected <= set(e["results"])}
        reused_from, resumed = old.get("reused_from", []), [*old.get("resumed", []), *previous]
        resumed = list(dict.fromkeys(resumed))
    entries = []
    tuned: dict[str, dict[str, float]] = {}  # task -> baseline -> lr chosen on the task's first seed
    for spec in tqdm(specs, desc="evaluate", dynamic_ncols=True):
        task_name = spec.name.split("/")[0]
        reuse_lrs = tuned.get(task_name) if s.tune == "first_seed" else None
        entry = evaluate_task(spec, rules, s, previous.get(spec.name), reuse_lrs, rule_kwargs)
        tuned.setdefault(task_name, {k: entry["results"][k]["lr"] for k in
                                     ("adam", *[b for b in s.baselines if b != "adam"],
                                      *[f"{n}@best" for n in rules if s.rule_best])})
        entries.append(entry)
        plot(entry, out / "curves" / f"{spec.name.replace('/', '_')}.png")
        (out / "results.json").write_text(
            json.dumps({"settings": s.__dict__, "rules": prev_rules + labels, "entries": entries,
                        "reused_from": reused_from, **({"resumed": resumed} if resumed else {})}, indent=1)
        )
    write_tables(entries, s, out, prev_rules + labels, reused_from, resumed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
