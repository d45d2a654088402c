"""The rule against Adam on a fixed meta-validation set: monitoring and checkpoint selection.

A PES meta-gradient is noisy and a run wanders: the rule at the last outer step is often not the
best one it passed through (the shipped recipe's single-task comparison swings between 0.70 and
1.25 x Adam's loss from one comparison to the next). `Comparison` trains ``n`` fixed tasks, drawn
from the meta-training distribution with a seed of their own, or (``collection="meta_val"``) the
first ``n`` of the meta-validation suite, larger networks shaped like the held-out suite (never the
held-out suite itself, which stays for evaluation), or (``collection="dev"``) of the dev suite, the
held-out tasks' siblings for choosing optimizer settings, with the rule through the real
`GMNOptimizer` and with torch Adam at the same lr, and scores the rule by the mean over tasks of
log10(rule's loss / Adam's loss) at the end of training (the mean of the last tenth of the curve, so
one noisy minibatch does not decide), each task's term clipped to +-1 (10x either way), so that one task where the losses
are orders of magnitude apart does not outvote the others. Adam's curves are computed once: Adam
does not change during a run.

One seed per task makes that score noisy, and keeping the best of many noisy comparisons picks the
luckiest (a winner's curse). ``seeds > 1`` runs every meta-validation task from that many inits and
batch orders (seeds 7, 8, ...; a task's term is the mean of its seeds' clipped log ratios), and
``aggregate="median"`` takes the median over tasks instead of the mean, so one task that flips
between two outcomes (SIREN fitting stalling at 1e-5 or going on to 1e-14) cannot move the score alone.
``rule_lr="tuned"`` runs the rule, like tuned Adam, over the grid around each task's reference lr and
keeps its best curve: the held-out evaluation's ``<rule>@best`` protocol.
``metric="speedup"`` scores with the held-out suite's own statistic instead of the loss ratio: per
curve Adam's steps to its final loss over the rule's (0 where the rule never gets there), the median
over a task's seeds, then the median (or mean) over tasks, negated so that lower is better. A rule
whose loss ends lower on average can still miss tuned Adam's loss on more tasks, and the held-out
suite counts the misses; checkpoints kept on the loss ratio were twice ranked against their held-out
order (docs/optim_history.md).

Adam's curves depend only on the tasks, the horizon and the grid, and against tuned Adam they are
the largest part of a comparison (7 runs per task and seed: ten CPU-minutes for 6 meta-validation
tasks x 3 seeds). With ``cache_dir`` they are written there once, under a key of those inputs and the
torch version, and read back by every later comparison of the same setting: a resumed run, another
run of the same suite (meta-training passes its runs directory's ``.compare_cache``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inner_tasks import build_task
from inner_tasks.tasks import train_task
from inner_tasks.tasks.collections import SELECTION_SUITES
from metaopt.optim import GMNOptimizer, UpdateRule
from metaopt.optim.rules import resolve_rule

from .config import (COMPARE_AGAINST, COMPARE_AGGREGATES, COMPARE_COLLECTIONS, COMPARE_METRICS, COMPARE_RULE_LRS,
                     TrainConfig)
from .evaluate import final_loss, steps_to
from .tasks import TaskSampler

VALIDATION_SEED_OFFSET = 1_000_003  # the validation tasks' sampler seed = run seed + this
MAX_LOG_RATIO = 1.0  # a task's term in the score is clipped to +-this (decades)
# lr multipliers of the reference lr Adam is tuned over with against="tuned_adam" (1e-4..1e-1 at 1e-3)
TUNED_ADAM_GRID = (0.1, 0.316, 1.0, 3.16, 10.0, 31.6, 100.0)


CACHE_DIRNAME = ".compare_cache"  # Adam's curves, under the runs directory (cfg.out_dir): shared by every run there


def shared_cache_dir(cfg: TrainConfig, given: str | None = None) -> Path | None:
    """Where Adam's curves are cached: ``given`` ('' for no cache), else the runs directory's cache."""
    return Path(cfg.out_dir) / CACHE_DIRNAME if given is None else (Path(given) if given else None)


def add_cache_dir_option(parser: Any) -> None:
    """The ``--cache-dir`` option of the command lines that build a `Comparison`."""
    parser.add_argument("--cache-dir", default=None, help=f"where Adam's curves are cached (default: the runs "
                        f"directory's {CACHE_DIRNAME}, which meta-training shares; '' for none)")


def tail_loss(losses: list[float]) -> float:
    """The mean of the last tenth of a loss curve (at least one value); inf if any of it is not finite."""
    tail = losses[-max(1, len(losses) // 10):]
    value = sum(tail) / len(tail)
    return value if math.isfinite(value) else math.inf


@dataclass
class ComparisonResult:
    score: float  # by the comparison's metric, lower is better; loss_ratio: < 0 beats Adam, speedup: -median speedup
    log_ratios: list[float]  # log10(rule tail loss / Adam tail loss) per task and seed (task-major), unclipped
    speedups: list[float]  # Adam's steps to its final loss / the rule's, per task and seed (0: never reached)
    curves: dict[str, list[float]]  # the first task's curves ("learned", "adam"), for the figure
    final_losses: dict[str, float]  # the first task's last losses (the metric kept from metaopt 0.3)


class Comparison:
    """``n_tasks`` fixed meta-validation tasks, ``steps`` inner steps each, at each task's reference lr."""

    def __init__(self, cfg: TrainConfig, steps: int, n_tasks: int = 1, collection: str = "meta_train",
                 against: str = "adam", seeds: int = 1, aggregate: str = "mean", rule_lr: str = "reference",
                 cache_dir: str | Path | None = None, metric: str = "loss_ratio",
                 per_tensor: float | None = None) -> None:
        if against not in COMPARE_AGAINST:
            raise ValueError(f"log.compare_against must be one of {COMPARE_AGAINST}, got {against!r}.")
        if aggregate not in COMPARE_AGGREGATES:
            raise ValueError(f"log.compare_aggregate must be one of {COMPARE_AGGREGATES}, got {aggregate!r}.")
        if seeds < 1 or (seeds > 1 and collection not in SELECTION_SUITES):
            raise ValueError(f"log.compare_seeds must be >= 1 (> 1 only with the fixed suites {list(SELECTION_SUITES)}), "
                             f"got {seeds} with {collection!r}.")
        if rule_lr not in COMPARE_RULE_LRS:
            raise ValueError(f"log.compare_rule_lr must be one of {COMPARE_RULE_LRS}, got {rule_lr!r}.")
        if metric not in COMPARE_METRICS:
            raise ValueError(f"log.compare_metric must be one of {COMPARE_METRICS}, got {metric!r}.")
        self.against, self.aggregate, self.seeds, self.rule_lr, self.metric = against, aggregate, seeds, rule_lr, metric
        self.lr_free = cfg.tasks.lr_free  # the rule runs as meta-trained: lr-free at the multiplier 1
        self.lr_free_options = ({"lr_free": True, "growth_rate": cfg.tasks.growth_rate,
                                 "settled_growth_rate": cfg.tasks.settled_growth_rate,
                                 "estimate_stride": cfg.tasks.estimate_stride,
                                 "estimate_every": cfg.tasks.estimate_every,
                                 "estimate_warmup": cfg.tasks.estimate_warmup, "d0": cfg.tasks.d0,
                                 "plateau_block": cfg.tasks.plateau_block,
                                 "plateau_boost": cfg.tasks.plateau_boost,
                                 "plateau_anchor": cfg.tasks.plateau_anchor} if self.lr_free
                                else {"lr_free": False})  # explicit: not the mode a rule may record
        per_tensor = cfg.tasks.per_tensor if per_tensor is None else per_tensor  # as the run's inner optimizer
        if per_tensor:  # GMNOptimizer's per_tensor
            if not self.lr_free:
                raise ValueError("Comparison: per_tensor shares the lr-free step between tensors; it needs tasks.lr_free.")
            self.lr_free_options["per_tensor"] = float(per_tensor)
            self.lr_free_options["shared_sums"] = bool(cfg.tasks.shared_sums)  # explicit, as the rest
        if self.lr_free and rule_lr == "tuned":
            raise ValueError("log.compare_rule_lr = 'tuned' has no lr to tune with tasks.lr_free; use 'reference'.")
        if n_tasks < 1:
            raise ValueError(f"log.compare_tasks must be >= 1, got {n_tasks}.")
        if collection == "meta_train":
            sampler = TaskSampler(cfg.tasks, cfg.seed + VALIDATION_SEED_OFFSET, rank=0)
            self.specs = [sampler.sample_spec(sampler.rng()) for _ in range(n_tasks)]
        elif collection in SELECTION_SUITES:  # fixed tasks shaped like the held-out suite (inner_tasks collections)
            table, suite, first_seed = SELECTION_SUITES[collection]
            if n_tasks > len(table):
                raise ValueError(f"log.compare_tasks = {n_tasks}, but the {collection} suite has {len(table)} tasks.")
            per_seed = [suite(first_seed + k)[:n_tasks] for k in range(seeds)]
            self.specs = [spec for task in zip(*per_seed) for spec in task]  # task-major
        else:
            raise ValueError(f"log.compare_collection must be one of {COMPARE_COLLECTIONS} (or 'dev' outside "
                             f"meta-training), got {collection!r}.")
        self.tasks = [build_task(spec) for spec in self.specs]
        self.steps = steps
        self._adam: list[list[float]] | None = None
        self.cache_path = Path(cache_dir) / f"adam_{self._cache_key()}.json" if cache_dir is not None else None

    def _cache_key(self) -> str:
        """A digest of everything Adam's curves depend on: the tasks, the horizon, the grid, torch."""
        what = {"specs": [s.to_dict() for s in self.specs], "steps": self.steps, "against": self.against,
                "grid": TUNED_ADAM_GRID if self.against == "tuned_adam" else (1.0,), "torch": torch.__version__}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _read_cache(self) -> list[list[float]] | None:
        """The cached curves, or None (no file; or one that does not hold them: recomputed, with a warning)."""
        if self.cache_path is None or not self.cache_path.exists():
            return None
        try:
            curves = json.loads(self.cache_path.read_text())["curves"]
            if len(curves) == len(self.specs) and all(len(c) == self.steps for c in curves):
                return [[float(v) for v in c] for c in curves]
            problem = "it holds curves of another shape"
        except (ValueError, KeyError, TypeError) as err:
            problem = f"it does not read ({err})"
        warnings.warn(f"Comparison: ignoring the cached Adam curves {self.cache_path}: {problem}; recomputing them.",
                      stacklevel=3)
        return None

    def _write_cache(self, curves: list[list[float]]) -> None:
        assert self.cache_path is not None
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.cache_path.with_suffix(f".{os.getpid()}.tmp")  # then renamed: no reader sees half a file
        partial.write_text(json.dumps({"tasks": [s.name or s.family for s in self.specs], "steps": self.steps,
                                       "against": self.against, "curves": curves}) + "\n")
        os.replace(partial, self.cache_path)

    def _train(self, spec, task, make_opt) -> list[float]:
        return train_task(task, make_opt, self.steps, spec.seed, spec.seed).losses

    def _adam_curve(self, spec, task) -> list[float]:
        """Adam at the task's reference lr, or (``against="tuned_adam"``) the curve with the lowest tail
        loss over ``TUNED_ADAM_GRID`` x the reference lr: what the held-out suite compares with."""
        scales = TUNED_ADAM_GRID if self.against == "tuned_adam" else (1.0,)
        curves = [self._train(spec, task, lambda m, lr=spec.reference_lr * k: torch.optim.Adam(m.parameters(), lr=lr))
                  for k in scales]
        return min(curves, key=tail_loss)

    @property
    def adam_curves(self) -> list[list[float]]:
        if self._adam is None:
            self._adam = self._read_cache()
        if self._adam is None:
            self._adam = [self._adam_curve(s, t) for s, t in zip(self.specs, self.tasks)]
            if self.cache_path is not None:
                self._write_cache(self._adam)
        return self._adam

    def run(self, rule: UpdateRule, lr: float | None = None) -> ComparisonResult:
        """Train every task with a frozen copy of ``rule`` at each task's reference lr (``rule_lr="tuned"``:
        at its best lr of the grid around it; or at ``lr`` on every task; with ``tasks.lr_free``, lr-free
        at the multiplier ``lr`` or 1), told the horizon (``total_steps``); the score and the first task's curves."""
        frozen = copy.deepcopy(rule).eval()

        def curve(spec, task, at: float) -> list[float]:
            return self._train(spec, task, lambda m: GMNOptimizer(m, rule=frozen, lr=at, graph=task.graph,
                                                                  total_steps=self.steps, **self.lr_free_options))

        if lr is None and self.rule_lr == "tuned":  # the rule's best curve over the grid, as tuned Adam's
            learned = [min((curve(s, t, s.reference_lr * k) for k in TUNED_ADAM_GRID), key=tail_loss)
                       for s, t in zip(self.specs, self.tasks)]
        else:
            learned = [curve(s, t, lr or (1.0 if self.lr_free else s.reference_lr)) for s, t in zip(self.specs, self.tasks)]
        ratios, speedups = [], []
        for mine, adam in zip(learned, self.adam_curves):
            a, b = tail_loss(mine), tail_loss(adam)
            if not math.isfinite(a):
                ratios.append(math.inf)
            else:  # (Adam diverging at a task's reference lr would make any finite loss a tie)
                ratios.append(math.log10(max(a, 1e-30) / max(b, 1e-30)) if math.isfinite(b) else 0.0)
            target = final_loss(adam)
            adam_steps, my_steps = steps_to(adam, target), steps_to(mine, target)
            speedups.append(adam_steps / my_steps if adam_steps and my_steps else 0.0)
        curves = {"learned": learned[0], "adam": self.adam_curves[0]}
        score = self.speedup_score(speedups) if self.metric == "speedup" else self.score(ratios)
        return ComparisonResult(score=score, log_ratios=ratios, speedups=speedups, curves=curves,
                                final_losses={k: v[-1] for k, v in curves.items()})

    def score(self, ratios: list[float], aggregate: str | None = None) -> float:
        """Per task the mean of its seeds' clipped log ratios, then the mean (or median) over tasks
        (``aggregate``: another aggregate than the comparison's, for the same runs)."""
        clipped = [min(max(r, -MAX_LOG_RATIO), MAX_LOG_RATIO) for r in ratios]
        return self._over_tasks(clipped, np.mean, aggregate)

    def speedup_score(self, speedups: list[float], aggregate: str | None = None) -> float:
        """Minus the median (or mean) over tasks of each task's median speedup over its seeds: the
        held-out suite's statistic, negated so that lower is better as with the loss ratio."""
        return -self._over_tasks(speedups, np.median, aggregate)

    def per_task(self, values: list[float], over_seeds: Any = np.median) -> list[float]:
        """``over_seeds`` of each task's values (``values`` task-major, as ``specs``): one term per task."""
        return [float(over_seeds(values[i : i + self.seeds])) for i in range(0, len(values), self.seeds)]

    def _over_tasks(self, values: list[float], over_seeds: Any, aggregate: str | None) -> float:
        """``over_seeds`` of each task's values (task-major), then the mean or median over tasks."""
        per_task = self.per_task(values, over_seeds)
        return float(np.median(per_task) if (aggregate or self.aggregate) == "median" else np.mean(per_task))


def tune_default_lr(comparison: Comparison, rule: UpdateRule, grid: list[float],
                    progress: bool = True) -> tuple[float, dict[float, ComparisonResult]]:
    """The lr of ``grid`` at which ``rule`` scores best on ``comparison`` (the same lr on every task, as
    ``GMNOptimizer(model)`` would use it; ties -> the smaller lr) and every lr's result. With the
    meta-validation suite against tuned Adam this chooses a rule's ``default_lr`` without touching the
    held-out suite."""
    from tqdm.auto import tqdm

    results = {lr: comparison.run(rule, lr=lr) for lr in tqdm(grid, desc="rule lr grid", disable=not progress)}
    best = min(grid, key=lambda lr: (results[lr].score, lr))
    return best, results


def set_default_lr(directory: str, lr: float) -> None:
    """Rewrite a saved rule's ``config.json`` with ``default_lr = lr`` (weights untouched, re-saved and checked)."""
    rule = UpdateRule.from_pretrained(directory)
    rule.config.default_lr = float(lr)
    rule.save_pretrained(directory)


def main(argv: list[str] | None = None) -> int:
    """``python -m outer_train.compare --rule DIR [--rule DIR ...]``: score saved rules against Adam on the
    meta-validation suite (or on meta-training tasks of a config's seed), the score keep_best selects on;
    prints a table and writes ``--out`` JSON. For checking a selection against the held-out evaluation."""
    import argparse

    from .config import resolve

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--rule", action="append", required=True,
                   help="rule directory (save_pretrained) or a shipped rule's name (default, mlp, adam); repeatable")
    p.add_argument("--collection", choices=[*COMPARE_COLLECTIONS, "dev"], default="meta_val",
                   help="the tasks; dev (the held-out tasks' siblings, for choosing settings) is never a run's "
                        "log.compare_collection: a rule is not selected on it")
    p.add_argument("--against", choices=COMPARE_AGAINST, default="adam",
                   help="Adam at the same lr (keep_best's default) or Adam at its best lr on a 7-point grid")
    p.add_argument("--tasks", type=int, default=None,
                   help="the first N tasks (default: the whole meta_val or dev suite; 6 of meta_train)")
    p.add_argument("--seeds", type=int, default=1,
                   help="meta_val / dev: run every task from this many seeds (meta_val 7, 8, ...; dev 20, 21, ...)")
    p.add_argument("--aggregate", choices=COMPARE_AGGREGATES, default="mean", help="over tasks: mean or median")
    p.add_argument("--rule-lr", choices=COMPARE_RULE_LRS, default="reference",
                   help="the rule at each task's reference lr, or at its best lr of the tuned-Adam grid (held-out @best)")
    p.add_argument("--metric", choices=COMPARE_METRICS, default="loss_ratio",
                   help="the score: log10 tail-loss ratio, or the held-out statistic (median steps speedup; both are written)")
    p.add_argument("--lr-free", action="store_true", help="run the rules lr-free (GMNOptimizer(lr_free=True)) at the multiplier 1")
    p.add_argument("--growth-rate", type=float, default=None, help="with --lr-free: GMNOptimizer's growth_rate")
    p.add_argument("--settled-growth-rate", type=float, default=None,
                   help="with --lr-free: GMNOptimizer's settled_growth_rate")
    p.add_argument("--estimate-stride", type=int, default=None, help="with --lr-free: GMNOptimizer's estimate_stride")
    p.add_argument("--estimate-every", type=int, default=None, help="with --lr-free: GMNOptimizer's estimate_every")
    p.add_argument("--estimate-warmup", type=int, default=None, help="with --lr-free: GMNOptimizer's estimate_warmup")
    p.add_argument("--d0", type=float, default=None, help="with --lr-free: GMNOptimizer's d0 (the estimate before the "
                   "first step; default 1e-6)")
    p.add_argument("--plateau-block", type=int, default=None, help="with --lr-free: GMNOptimizer's plateau_block "
                   "(halve the step where the gradient norm stops falling; default 0, off)")
    p.add_argument("--plateau-boost", action="store_true", help="with --plateau-block: GMNOptimizer's plateau_boost "
                   "(double the step where the gradient norm keeps falling fast)")
    p.add_argument("--plateau-anchor", action="store_true", help="with --plateau-boost: GMNOptimizer's plateau_anchor "
                   "(a doubling is of the step at its grant)")
    p.add_argument("--per-tensor", type=float, default=None,
                   help="with --lr-free: GMNOptimizer's per_tensor (each tensor's own estimate's share of its step; "
                        "default: the config's tasks.per_tensor)")
    p.add_argument("--lr", type=float, default=None,
                   help="run every rule at this lr on every task (lr-free: the estimate's multiplier; default: each "
                        "task's reference lr, lr-free 1)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--config", default=None, help="meta_train: the run config whose seed draws the tasks")
    p.add_argument("--threads", type=int, default=1)
    add_cache_dir_option(p)
    p.add_argument("--out", default=None, help="JSON file for the scores")
    p.add_argument("--tune-lr", action="store_true", help="score each rule at every lr of a log grid (the same lr on "
                   "every task, as GMNOptimizer(model) uses one) and report its best: the rule's default_lr")
    p.add_argument("--lr-grid", default="1e-4,1e-1,7", help="with --tune-lr: MIN,MAX,POINTS (log-spaced)")
    p.add_argument("--set-default-lr", action="store_true",
                   help="with --tune-lr: write the best lr into each rule directory's config.json as default_lr")
    a = p.parse_args(argv)
    if a.set_default_lr and not a.tune_lr:
        p.error("--set-default-lr needs --tune-lr")
    if a.lr is not None and (a.tune_lr or not a.lr > 0):
        p.error("--lr is one positive lr for every task; it does not go with --tune-lr")
    if a.per_tensor and not a.lr_free:
        p.error("--per-tensor shapes the lr-free estimate: add --lr-free")
    torch.set_num_threads(a.threads)
    overrides = ["tasks.lr_free=true"] if a.lr_free else []
    overrides += [] if a.growth_rate is None else [f"tasks.growth_rate={a.growth_rate}"]
    overrides += [] if a.settled_growth_rate is None else [f"tasks.settled_growth_rate={a.settled_growth_rate}"]
    overrides += [] if a.estimate_stride is None else [f"tasks.estimate_stride={a.estimate_stride}"]
    overrides += [] if a.estimate_every is None else [f"tasks.estimate_every={a.estimate_every}"]
    overrides += [] if a.estimate_warmup is None else [f"tasks.estimate_warmup={a.estimate_warmup}"]
    overrides += [] if a.d0 is None else [f"tasks.d0={a.d0!r}"]
    overrides += [] if a.plateau_block is None else [f"tasks.plateau_block={a.plateau_block}"]
    overrides += ["tasks.plateau_boost=true"] if a.plateau_boost else []
    overrides += ["tasks.plateau_anchor=true"] if a.plateau_anchor else []
    cfg = resolve(None, a.config, overrides)
    if a.tasks is not None:
        n_tasks = a.tasks
    else:
        n_tasks = len(SELECTION_SUITES[a.collection][0]) if a.collection in SELECTION_SUITES else 6
    comparison = Comparison(cfg, a.steps, n_tasks, a.collection, a.against, a.seeds, a.aggregate, a.rule_lr,
                            cache_dir=shared_cache_dir(cfg, a.cache_dir), metric=a.metric, per_tensor=a.per_tensor)
    names = [s.name or f"{s.family}/s{s.seed}" for s in comparison.specs]
    rows = {}
    for path in a.rule:
        rule = resolve_rule(path)
        if not a.tune_lr:
            result = comparison.run(rule, a.lr)
            rows[path] = {"score": result.score, "log_ratios": dict(zip(names, result.log_ratios)),
                          "speedups": dict(zip(names, result.speedups)),
                          **{f"score_{agg}": comparison.score(result.log_ratios, agg) for agg in COMPARE_AGGREGATES},
                          **{f"speedup_score_{agg}": comparison.speedup_score(result.speedups, agg)
                             for agg in COMPARE_AGGREGATES}}
            continue
        lo, hi, n = (float(x) for x in a.lr_grid.split(","))
        grid = [float(f"{v:.3g}") for v in np.geomspace(lo, hi, int(n))]  # 3 digits: evaluate's grid keys
        best, results = tune_default_lr(comparison, rule, grid)
        for lr, result in results.items():
            rows[f"{path}@{lr:g}"] = {"score": result.score, "log_ratios": dict(zip(names, result.log_ratios)),
                                      "speedups": dict(zip(names, result.speedups))}
        rows[path] = {**rows[f"{path}@{best:g}"], "best_lr": best}
        if a.set_default_lr:
            set_default_lr(path, best)
            print(f"{path}: default_lr = {best:g} (was {rule.config.default_lr:g})")
    column, fmt = ("speedups", "{:.2f}x") if a.metric == "speedup" else ("log_ratios", "{:+.2f}")
    print(f"| rule | score ({a.metric}) | {' | '.join(names)} |\n|---|---:|{'---:|' * len(names)}")
    for path, r in rows.items():
        print(f"| {path} | {r['score']:+.3f} | " + " | ".join(fmt.format(v) for v in r[column].values()) + " |")
    if a.seeds > 1:  # the score's per-task terms: each task's median over its seeds
        tasks = [n.split("/")[0] for n in names[:: a.seeds]]  # specs are task-major
        for r in rows.values():
            r["task_medians"] = dict(zip(tasks, comparison.per_task(list(r[column].values()))))
        print(f"\nMedian over seeds\n\n| rule | {' | '.join(tasks)} |\n|---|{'---:|' * len(tasks)}")
        for path, r in rows.items():
            print(f"| {path} | " + " | ".join(fmt.format(v) for v in r["task_medians"].values()) + " |")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"collection": a.collection, "against": a.against, "steps": a.steps,
                                           "seeds": a.seeds, "aggregate": a.aggregate, "rule_lr": a.rule_lr, "lr": a.lr,
                                           "metric": a.metric,
                                           "lr_free": a.lr_free, "growth_rate": a.growth_rate,
                                           "settled_growth_rate": cfg.tasks.settled_growth_rate,
                                           "estimate_stride": a.estimate_stride, "estimate_every": a.estimate_every,
                                           "estimate_warmup": cfg.tasks.estimate_warmup, "d0": cfg.tasks.d0,
                                           "plateau_block": cfg.tasks.plateau_block,
                                           "plateau_boost": cfg.tasks.plateau_boost,
                                           "plateau_anchor": cfg.tasks.plateau_anchor,
                                           "per_tensor": comparison.lr_free_options.get("per_tensor", 0.0),
                                           "shared_sums": comparison.lr_free_options.get("shared_sums", False),
                                           "tasks": names, "rules": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
