"""Full-horizon evolution strategies on a few of a rule's weights, scored like the evaluation.

``python -m outer_train.full_es --rule DIR --add-features horizon --out runs/es_horizon``

PES over 100-step truncations optimises the mean log loss of small meta-training tasks; every
continuation of a shipped rule with it (docs/optim_history.md) made the rule *worse* on the
meta-validation suite against tuned Adam. When only a handful of weights are trained (the input
columns of a feature added with `UpdateRule.with_features`), the evaluation's own objective can be
optimised directly: antithetic ES whose fitness is a `Comparison` score, i.e. whole training runs
through the real `GMNOptimizer` (at the rule's default lr, told the horizon) scored by their final
loss against tuned Adam. Fitness tasks come from the meta-training distribution (``--collection
meta_train``, the comparison's own seed); every ``--val-every`` iterations the current weights are
scored on the meta-validation suite and the best (the starting rule included) is saved in
``OUT/rule_best``, so neither set is the held-out suite. Each antithetic pair costs two
comparisons; the state is saved after every iteration and a rerun resumes.

``--train global_correction`` trains instead the two scalars of a lr-free rule's correction of
Prodigy's ``d`` (``RuleConfig.global_bound``: gate and offset, added at 0 if the rule has none), with
the config's ``tasks.lr_free`` options at the multiplier 1 (what ``GMNOptimizer(lr_free=True)``
gives). PES over truncations moved that correction towards smaller steps on every run while the
held-out suite wanted multipliers >= 1; ``--metric speedup`` scores the fitness with the held-out
statistic itself (steps to tuned Adam's final loss, over whole runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from metaopt.optim import UpdateRule
from metaopt.optim.rules import GLOBAL_CORRECTION

from .compare import Comparison, add_cache_dir_option, shared_cache_dir
from .config import COMPARE_AGGREGATES, COMPARE_METRICS, resolve

ADDABLE = ("horizon", "relative_lr", "snr")
TRAINABLE = ("features", "global_correction")


class Entries:
    """Read and write the trained entries of a rule as one flat vector."""

    def __init__(self, rule: UpdateRule, masks: dict[str, torch.Tensor]) -> None:
        if not masks:
            raise ValueError("full_es: nothing to train: the rule has no input columns beyond the base rule's; add a "
                             "feature (--add-features).")
        self.rule, self.masks = rule, list(masks.items())
        self.params = dict(rule.named_parameters())

    def get(self) -> torch.Tensor:
        return torch.cat([self.params[n].detach()[m] for n, m in self.masks])

    @torch.no_grad()
    def set(self, flat: torch.Tensor) -> None:
        i = 0
        for n, m in self.masks:
            k = int(m.sum())
            self.params[n][m] = flat[i : i + k].to(self.params[n].dtype)
            i += k


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m outer_train.full_es", description=__doc__.split("\n\n")[0])
    p.add_argument("--rule", required=True, help="the rule to continue (save_pretrained directory)")
    p.add_argument("--add-features", nargs="+", choices=ADDABLE, default=None,
                   help="with --train features: the features to add (their input columns start at zero and are the "
                        "only weights trained; default: horizon)")
    p.add_argument("--train", choices=TRAINABLE, default="features",
                   help="features: the added input columns; global_correction: the lr-free correction of d (gate, offset)")
    p.add_argument("--global-bound", type=float, default=2.0,
                   help="with --train global_correction and a rule without one: the bound b of the added correction")
    p.add_argument("--metric", choices=COMPARE_METRICS, default="loss_ratio",
                   help="the comparison score of fitness and validation (speedup: the held-out statistic)")
    p.add_argument("--per-tensor", type=float, default=None,
                   help="lr-free configs: GMNOptimizer's per_tensor in every fitness and validation run (default: the "
                        "config's tasks.per_tensor)")
    p.add_argument("--estimate-warmup", type=int, default=None,
                   help="lr-free configs: GMNOptimizer's estimate_warmup (default: the config's tasks.estimate_warmup)")
    p.add_argument("--aggregate", choices=COMPARE_AGGREGATES, default="mean", help="over tasks, fitness and validation")
    p.add_argument("--val-seeds", type=int, default=1, help="seeds per meta-validation task")
    p.add_argument("--collection", choices=["meta_train", "meta_val"], default="meta_train", help="fitness tasks")
    p.add_argument("--config", default=None, help="a meta-training config whose task distribution and seed draw the "
                   "meta_train fitness tasks (default: the quick preset's)")
    p.add_argument("--tasks", type=int, default=6)
    p.add_argument("--steps", type=int, default=1000, help="inner steps of every fitness / validation run")
    p.add_argument("--iters", type=int, default=40, help="ES iterations (one antithetic pair each)")
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=0.05, help="Adam's lr on the trained entries")
    p.add_argument("--val-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    add_cache_dir_option(p)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    warmup = [] if a.estimate_warmup is None else [f"tasks.estimate_warmup={a.estimate_warmup}"]
    cfg = resolve(None if a.config else "quick", a.config, warmup)  # the meta_train fitness tasks' distribution and seed
    base = UpdateRule.from_pretrained(a.rule).eval()
    if a.train == "global_correction":
        if a.add_features:
            raise SystemExit("full_es: --add-features trains input columns; it does not go with --train global_correction.")
        if not cfg.tasks.lr_free:
            raise SystemExit("full_es: --train global_correction corrects the lr-free estimate; give a --config with "
                             "tasks.lr_free = true.")
        rule = (base if base.config.global_bound > 0 else base.with_global_bound(a.global_bound)).eval()
        masks = {name: torch.ones((), dtype=torch.bool) for name in GLOBAL_CORRECTION}
    else:
        a.add_features = a.add_features or ["horizon"]
        features = dataclasses.replace(base.features, **{name: True for name in a.add_features})
        rule = base.with_features(features).eval()
        masks = rule.appended_inputs(base)
    entries = Entries(rule, masks)  # the ES trains exactly these entries
    # what GMNOptimizer(model) uses, fitness is scored there: the rule's default lr, or lr-free the multiplier 1
    lr = None if cfg.tasks.lr_free else float(rule.config.default_lr)
    cache = shared_cache_dir(cfg, a.cache_dir)
    if a.per_tensor and not cfg.tasks.lr_free:
        raise SystemExit("full_es: --per-tensor shares the lr-free step between tensors; give a --config with "
                         "tasks.lr_free = true.")
    scoring = {"against": "tuned_adam", "cache_dir": cache, "metric": a.metric, "aggregate": a.aggregate,
               "per_tensor": a.per_tensor}
    fit = Comparison(cfg, a.steps, a.tasks, a.collection, **scoring)
    val = Comparison(cfg, a.steps, 6, "meta_val", seeds=a.val_seeds, **scoring)

    state_file = out / "es_state.pt"
    theta = entries.get().double()
    opt = torch.optim.Adam([torch.nn.Parameter(theta.clone())], lr=a.lr)
    log: list[dict] = []
    start = 0
    if state_file.is_file():  # resume
        s = torch.load(state_file, weights_only=False)
        opt.param_groups[0]["params"][0].data.copy_(s["theta"])
        opt.load_state_dict(s["opt"])
        log, best, start = s["log"], s["best"], s["iter"]
    else:  # the starting rule (new columns at zero) competes: it is the rule given
        best = {"iter": 0, "val_score": val.run(rule, lr=lr).score}
        best["start_val_score"] = best["val_score"]
        rule.save_pretrained(out / "rule_best")
    gen = torch.Generator().manual_seed(a.seed)
    for _ in range(start):  # the same noise stream as an uninterrupted run
        torch.randn(theta.shape, generator=gen, dtype=torch.float64)
    param = opt.param_groups[0]["params"][0]
    for it in tqdm(range(start, a.iters), desc="full-horizon ES", initial=start, total=a.iters):
        eps = torch.randn(theta.shape, generator=gen, dtype=torch.float64) * a.sigma
        scores = []
        for sign in (1.0, -1.0):
            entries.set(param.detach() + sign * eps)
            scores.append(fit.run(rule, lr=lr).score)
        grad = eps * (scores[0] - scores[1]) / (2 * a.sigma**2)
        opt.zero_grad()
        param.grad = grad.clone()
        opt.step()
        entries.set(param.detach())
        row = {"iter": it + 1, "fit_plus": scores[0], "fit_minus": scores[1]}
        if a.train == "global_correction":  # two scalars: logged as they move
            row.update(zip(GLOBAL_CORRECTION, param.detach().tolist()))
        if (it + 1) % a.val_every == 0 or it + 1 == a.iters:
            row["val_score"] = val.run(rule, lr=lr).score
            if row["val_score"] < best["val_score"]:
                best = {**best, "iter": it + 1, "val_score": row["val_score"]}
                rule.save_pretrained(out / "rule_best")
        log.append(row)
        torch.save({"theta": param.detach().clone(), "opt": opt.state_dict(), "log": log, "best": best,
                    "iter": it + 1}, state_file)
        (out / "log.json").write_text(json.dumps({"args": vars(a), "best": best, "log": log}, indent=1))
        tqdm.write(json.dumps(row))
    print(json.dumps({"best": best}))
    return 0 if math.isfinite(best["val_score"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
