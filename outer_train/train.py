"""The meta-training loop: sample tasks, estimate the meta-gradient, all-reduce, clip, step, log, checkpoint.

Runs as one process (``python -m outer_train``) or many (``accelerate launch -m outer_train``).
Every rank builds the same rule from the same seed and applies the same all-reduced (mean)
meta-gradient, so the rule stays identical everywhere; ranks differ only in the tasks they
sample (the sampler is keyed on the rank). A non-finite reduced meta-gradient is skipped on all
ranks alike and counted.
"""

from __future__ import annotations

import dataclasses

import json
import math
import random
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from metaopt.optim import FeatureConfig, RuleConfig, UpdateRule
from metaopt.optim.optimizer import ESTIMATE_DEFAULTS, ESTIMATE_OPTIONS
from metaopt.optim.rules import GLOBAL_CORRECTION

from . import checkpoint as ckpt
from .compare import Comparison, ComparisonResult, shared_cache_dir
from .config import TrainConfig
from .logging import RunLogger
from .estimators import ESTIMATORS, estimator_state
from .tasks import TaskGroup, TaskSampler
from .unroll import batched_graph


class MetaTrainingError(RuntimeError):
    """Meta-training cannot make progress (e.g. every meta-gradient is non-finite): the run stops."""


def lr_free_mode(cfg: TrainConfig) -> dict[str, float] | None:
    """The lr-free options the inner optimizer runs with (those that differ from plain Prodigy's), which
    the rule records (`RuleConfig.lr_free`) so that ``GMNOptimizer(model, rule=DIR)`` runs it as it was
    meta-trained; None at a fixed lr."""
    if not cfg.tasks.lr_free:
        return None
    values = {k: getattr(cfg.tasks, k) for k in ESTIMATE_OPTIONS}  # tasks.* carry GMNOptimizer's option names
    return {k: v for k, v in values.items() if v != ESTIMATE_DEFAULTS[k]}


def build_rule(cfg: TrainConfig) -> UpdateRule:
    """The rule to meta-train: from ``rule.init_from`` or freshly initialised from ``cfg.seed`` (same on every
    rank), recording the inner optimizer's mode (`lr_free_mode`)."""
    rule = _initial_rule(cfg)
    mode = lr_free_mode(cfg)
    return rule.with_lr_free(mode) if rule.config.lr_free != mode else rule


def _initial_rule(cfg: TrainConfig) -> UpdateRule:
    if cfg.rule.init_from:
        rule = UpdateRule.from_pretrained(cfg.rule.init_from)
        if rule.config.kind != cfg.rule.arch:
            raise ValueError(
                f"rule.init_from={cfg.rule.init_from} holds a {rule.config.kind} rule but rule.arch={cfg.rule.arch!r}."
            )
        # Continue a rule trained without the lr, horizon or snr features: their new input columns start at zero.
        wanted = dataclasses.replace(rule.features, relative_lr=rule.features.relative_lr or cfg.rule.relative_lr,
                                     horizon=rule.features.horizon or cfg.rule.horizon,
                                     snr=rule.features.snr or cfg.rule.snr)
        rule = rule.with_features(wanted) if wanted != rule.features else rule
        # A correction of the lr-free estimate (rule.global_bound) starts at 0: the same rule until trained.
        bound = cfg.rule.global_bound or rule.config.global_bound
        return rule.with_global_bound(bound) if bound != rule.config.global_bound else rule
    torch.manual_seed(cfg.seed)
    r = cfg.rule
    return UpdateRule(
        RuleConfig(kind=r.arch, hidden=r.hidden, layers=r.layers, alpha=r.alpha, bound=r.bound,
                   refresh_every=r.refresh_every, global_bound=r.global_bound,
                   features=FeatureConfig(max_step=r.max_step, relative_lr=r.relative_lr, horizon=r.horizon, snr=r.snr))
    )


def trainable_mask(cfg: TrainConfig, rule: UpdateRule) -> Tensor | None:
    """``meta.train``'s mask over the rule's flat parameters (1 = meta-trained), or None for all of them.

    "new_inputs": the columns that `UpdateRule.with_features` appended to an input projection of the
    ``rule.init_from`` rule (the weights of the features it did not read); nothing else moves."""
    if cfg.meta.train == "all":
        return None
    added = rule.appended_inputs(UpdateRule.from_pretrained(cfg.rule.init_from))
    if not added:
        raise ValueError(f"meta.train = 'new_inputs': the rule has no inputs beyond those of {cfg.rule.init_from}; "
                         "set rule.relative_lr, rule.horizon or rule.snr to add some.")
    return torch.cat([added.get(name, torch.zeros_like(p, dtype=torch.bool)).reshape(-1).float()
                      for name, p in rule.named_parameters()])


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


class MetaTrainer:
    """State and one-step logic of a meta-training run (see `train`)."""

    def __init__(self, cfg: TrainConfig, accelerator: Any = None) -> None:
        self.cfg = cfg
        self.acc = accelerator if accelerator is not None else _accelerator()
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.main = self.acc.is_main_process
        torch.set_num_threads(max(1, cfg.threads))
        self.rule = build_rule(cfg)
        self.mask = trainable_mask(cfg, self.rule)  # None: every rule parameter is meta-trained
        self.meta_opt = torch.optim.Adam(self.rule.parameters(), lr=cfg.meta.lr, weight_decay=cfg.meta.weight_decay)
        # An exponential moving average of the rule's weights: PES meta-gradients are noisy, and the
        # rule at the last step is one sample of where the run wandered (exported as rule_ema/).
        self.ema = (AveragedModel(self.rule, multi_avg_fn=get_ema_multi_avg_fn(cfg.meta.ema_decay))
                    if cfg.meta.ema_decay > 0 else None)
        # Per-rank streams for everything random after the rule's init (PES noise).
        random.seed(cfg.seed * 1009 + self.rank)
        np.random.seed((cfg.seed * 1009 + self.rank) % 2**32)
        torch.manual_seed(cfg.seed * 1009 + self.rank + 1)
        self.sampler = TaskSampler(cfg.tasks, cfg.seed, self.rank)
        self.estimator = ESTIMATORS[cfg.estimator.kind](cfg)
        self.particles = self.estimator.num_particles
        self.consecutive_skips = 0
        self.update_ratio = None  # |update| / |param| of one member at the last recorded step
        self.groups: list[TaskGroup] = []
        self.graph_inputs = None
        self.step = 0
        self.counters = {"skipped": 0, "tasks": 0, "inner_steps": 0, "permuted": 0}
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.comparison = None  # the fixed meta-validation tasks, built at the first comparison (main process)
        self.best: dict[str, Any] | None = None  # meta.keep_best: step, score, log_ratios, state of the best rule so far

    # ---- tasks -------------------------------------------------------------------------------
    def refresh_groups(self) -> None:
        """Replace finished or diverged groups with new draws; rebuild the batched graph if any changed."""
        changed = len(self.groups) != self.cfg.tasks.groups
        keep = []
        for g in self.groups:
            diverged = not all(bool(torch.isfinite(p).all()) for p in g.params)
            if g.done or diverged:
                changed = True
                self.counters["diverged"] = self.counters.get("diverged", 0) + int(diverged)
            else:
                keep.append(g)
        while len(keep) < self.cfg.tasks.groups:
            first = self.counters["tasks"] < self.cfg.tasks.groups  # this slot's first trajectory
            g = TaskGroup.draw(self.sampler, self.particles, stagger=first and self.cfg.tasks.stagger)
            self.counters["tasks"] += 1
            self.counters["permuted"] += g.permuted
            keep.append(g)
        self.groups = keep
        if changed or self.graph_inputs is None:
            self.graph_inputs = batched_graph(self.rule, self.groups)

    # ---- one outer step ----------------------------------------------------------------------
    def meta_step(self) -> dict[str, float]:
        """Estimate, reduce, clip and apply one meta-gradient; returns the step's metrics."""
        cfg = self.cfg
        self.refresh_groups()
        t0 = time.perf_counter()
        record = cfg.log.hist_every > 0 and (self.step + 1) % cfg.log.hist_every == 0
        # The mask goes only where one is set: estimators registered without the argument keep working.
        extra = () if self.mask is None else (self.mask,)
        grads, res = self.estimator.gradient(self.rule, self.groups, self.graph_inputs, record, *extra)
        elapsed = time.perf_counter() - t0
        flat = torch.cat([g.reshape(-1) for g in grads])
        if self.mask is not None:
            flat = flat * self.mask
        stats = torch.tensor([float(res.meta_loss), float(res.inner_steps)])
        if self.world > 1:
            flat = self.acc.reduce(flat, reduction="mean")
            stats = self.acc.reduce(stats, reduction="mean")
        norm = float(flat.norm())
        finite = math.isfinite(norm)
        if finite:
            scale = min(1.0, cfg.meta.clip / (norm + 1e-12)) if cfg.meta.clip > 0 else 1.0
            self._apply(flat * scale)
            self.consecutive_skips = 0
        else:
            self.counters["skipped"] += 1
            self.consecutive_skips += 1
        self.counters["inner_steps"] += int(stats[1]) * self.world
        self.step += 1
        metrics = {
            "meta_loss": float(stats[0]),
            "meta_grad_norm": norm if finite else float("nan"),
            "skipped": float(self.counters["skipped"]),
            "alpha": float(self.rule.alpha.detach()),
            "inner_steps_per_s": res.inner_steps / max(elapsed, 1e-9),
            "tasks_sampled": float(self.counters["tasks"]),
        }
        if self.rule.config.global_bound > 0:  # the lr-free correction of d (RuleConfig.global_bound)
            metrics.update({name: float(getattr(self.rule, name).detach()) for name in GLOBAL_CORRECTION})
        self.update_ratio = res.update_ratio
        return metrics

    def _apply(self, flat: Tensor) -> None:
        """Set the rule's .grad from the flat meta-gradient and take a meta-optimizer step."""
        i = 0
        for p in self.rule.parameters():
            p.grad = flat[i : i + p.numel()].view_as(p).clone()
            i += p.numel()
        self.meta_opt.step()
        self.meta_opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.rule)

    # ---- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        rank_payload = {
            "rng": ckpt.rng_state(),
            "sampler": self.sampler.state_dict(),
            "groups": [g.state_dict() for g in self.groups],
            "estimator": estimator_state(self.estimator),
            "counters": dict(self.counters),
        }
        ckpt.save_rank(self.ckpt_dir, self.step, self.rank, rank_payload)
        self.acc.wait_for_everyone()
        if self.main:
            main_payload = {
                "step": self.step,
                "rule": self.rule.state_dict(),
                "rule_config": self.rule.config.to_dict(),
                "meta_opt": self.meta_opt.state_dict(),
                "rule_ema": None if self.ema is None else self.ema.state_dict(),
                "best": self.best,
                "world_size": self.world,
                "config": self.cfg.to_dict(),
            }
            ckpt.commit(self.ckpt_dir, self.step, main_payload, self.world, self.cfg.checkpoint.keep)
        self.acc.wait_for_everyone()

    def try_resume(self) -> int | None:
        """Load the newest checkpoint of this run directory if there is one; returns its step."""
        d = ckpt.latest(self.ckpt_dir)
        if d is None:
            return None
        main, mine = ckpt.load(d, self.rank, self.world)
        self.rule.load_state_dict(main["rule"])
        self.meta_opt.load_state_dict(main["meta_opt"])
        if self.ema is not None and main.get("rule_ema") is not None:
            self.ema.load_state_dict(main["rule_ema"])
        self.best = main.get("best")
        self.step = int(main["step"])
        self.sampler.load_state_dict(mine["sampler"])
        self.groups = [TaskGroup.from_state_dict(s) for s in mine["groups"]]
        if mine.get("estimator"):
            self.estimator.load_state_dict(mine["estimator"])
        elif any(s.get("pes_xi") is not None for s in mine["groups"]):  # checkpoints before metaopt 0.3
            self.estimator.load_state_dict({"xi": {g.key: s["pes_xi"] for g, s in zip(self.groups, mine["groups"])
                                                   if s.get("pes_xi") is not None}})
        self.counters = dict(mine["counters"])
        self.graph_inputs = batched_graph(self.rule, self.groups) if self.groups else None
        ckpt.set_rng_state(mine["rng"])
        return self.step

    def ranks_identical(self) -> bool:
        """True when every process holds bit-identical rule parameters (always true for one process)."""
        flat = parameters_to_vector(self.rule.parameters()).detach()
        if self.world == 1:
            return True
        everyone = self.acc.gather(flat[None])
        return bool((everyone == everyone[0:1]).all())

    # ---- monitoring --------------------------------------------------------------------------
    @property
    def candidate(self) -> UpdateRule:
        """The weights a run hands out (what export writes by default): the average when kept, else the rule."""
        return self.ema.module if self.ema is not None else self.rule

    def compare(self) -> ComparisonResult:
        """Score the candidate against Adam on the fixed comparison tasks; with meta.keep_best, keep it if best."""
        if self.comparison is None:
            self.comparison = Comparison(self.cfg, self.cfg.log.compare_steps, self.cfg.log.compare_tasks,
                                         self.cfg.log.compare_collection, self.cfg.log.compare_against,
                                         self.cfg.log.compare_seeds, self.cfg.log.compare_aggregate,
                                         self.cfg.log.compare_rule_lr,
                                         cache_dir=shared_cache_dir(self.cfg),
                                         metric=self.cfg.log.compare_metric)
        result = self.comparison.run(self.candidate)
        if self.cfg.meta.keep_best and (self.best is None or result.score < self.best["score"]):
            self.best = {"step": self.step, "score": result.score, "log_ratios": result.log_ratios,
                         "state": {k: v.detach().clone() for k, v in self.candidate.state_dict().items()}}
            self.candidate.save_pretrained(self.run_dir / "rule_best")
            (self.run_dir / "rule_best" / "best.json").write_text(json.dumps(
                {k: v for k, v in self.best.items() if k != "state"}, indent=2) + "\n")
        return result


def _out_of_time(trainer: MetaTrainer, start: float, budget: float) -> bool:
    """Every rank stops at the same step: the main process's clock decides."""
    flag = torch.tensor([float(time.perf_counter() - start > budget)])
    if trainer.world > 1:
        flag = trainer.acc.reduce(flag, reduction="sum")
    return bool(flag.item() > 0)


def train(cfg: TrainConfig, resume: bool = True, accelerator: Any = None) -> dict[str, Any]:
    """Meta-train per ``cfg``; writes the run directory and returns the final metrics."""
    trainer = MetaTrainer(cfg, accelerator)
    run_dir = cfg.run_dir
    resumed = trainer.try_resume() if resume else None
    if trainer.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")
    log = RunLogger(run_dir, trainer.main, resumed)
    bar = tqdm(
        total=cfg.meta.steps, initial=trainer.step, disable=not (trainer.main and cfg.log.progress),
        desc=f"meta-train {cfg.rule.arch}", dynamic_ncols=True,
    )
    metrics: dict[str, float] = {}
    start = time.perf_counter()
    if trainer.main and cfg.meta.keep_best and trainer.best is None:
        trainer.compare()  # the starting rule is a candidate too (it may be a shipped rule, rule.init_from)
    try:
        while trainer.step < cfg.meta.steps:
            if cfg.meta.time_budget_s > 0 and _out_of_time(trainer, start, cfg.meta.time_budget_s):
                trainer.save_checkpoint()
                break
            metrics = trainer.meta_step()
            step = trainer.step
            if trainer.main and cfg.log.compare_every > 0 and step % cfg.log.compare_every == 0:
                scored = trainer.compare()
                log.curves(step, "compare/loss_curves", scored.curves, f"meta step {step}: learned rule vs Adam")
                metrics.update({f"compare/{k}_final_loss": v for k, v in scored.final_losses.items()})
                metrics["compare/log10_loss_ratio"] = trainer.comparison.score(scored.log_ratios)
                metrics["compare/median_speedup"] = -trainer.comparison.speedup_score(scored.speedups, "median")
                metrics["compare/score"] = scored.score  # what meta.keep_best selects on (log.compare_metric)
                if trainer.best is not None:
                    metrics["compare/best_score"] = trainer.best["score"]
            if step % cfg.log.every == 0 or step == cfg.meta.steps:
                log.scalars(step, metrics)
            if trainer.update_ratio is not None:
                log.histogram(step, "update_over_param_log10", trainer.update_ratio)
            if trainer.consecutive_skips >= cfg.meta.max_consecutive_skips:
                trainer.save_checkpoint()
                raise MetaTrainingError(
                    f"meta-training stopped at outer step {step}: the last {trainer.consecutive_skips} meta-gradients "
                    f"were non-finite (NaN/Inf) and were skipped, so the rule is not learning. Try a lower meta.lr, "
                    f"estimator.second_order=false or smaller tasks; meta.max_consecutive_skips sets the limit."
                )
            bar.set_postfix(meta_loss=f"{metrics['meta_loss']:.4f}", skipped=int(metrics["skipped"]))
            bar.update(1)
            if step % cfg.checkpoint.every == 0 or step == cfg.meta.steps:
                trainer.save_checkpoint()
    finally:
        bar.close()
        log.close()
    identical = trainer.ranks_identical()
    result = {"step": trainer.step, **metrics, "skipped_total": trainer.counters["skipped"],
              "tasks_sampled_rank0": trainer.counters["tasks"], "world_size": trainer.world,
              "rule_identical_across_ranks": identical, "run_dir": str(run_dir)}
    if trainer.best is not None:
        result.update(best_step=trainer.best["step"], best_score=trainer.best["score"],
                      best_metric=cfg.log.compare_metric)
    if trainer.main:
        trainer.rule.save_pretrained(run_dir / "rule")
        if trainer.ema is not None:
            trainer.ema.module.save_pretrained(run_dir / "rule_ema")
        (run_dir / "final.json").write_text(json.dumps(result, indent=2) + "\n")
    trainer.acc.wait_for_everyone()
    return result
