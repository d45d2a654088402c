"""Meta-training configuration: nested dataclasses, loadable from JSON/TOML, overridable by dotted keys.

``TrainConfig`` is the whole run; every run writes its fully resolved config (``config.json``)
so a run can be repeated or resumed from its directory alone. Overrides are ``section.key=value``
strings (``tasks.truncation=20``); values are parsed as JSON when they parse, else kept as text.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from metaopt.optim.core import D0, ESTIMATE_WARMUP


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a value of the wrong type."""


# Where keep_best's comparison tasks come from, and which Adam they are compared with (outer_train/compare.py).
COMPARE_COLLECTIONS = ("meta_train", "meta_val")
COMPARE_AGAINST = ("adam", "tuned_adam")
COMPARE_AGGREGATES = ("mean", "median")
COMPARE_RULE_LRS = ("reference", "tuned")
COMPARE_METRICS = ("loss_ratio", "speedup")
TRAIN_PARAMETERS = ("all", "new_inputs")  # meta.train


@dataclass
class RuleSection:
    """The update rule being meta-trained (see metaopt.optim.RuleConfig)."""

    arch: str = "gmn"  # a registered rule kind: gmn | mlp (the per-parameter baseline: no message passing)
    hidden: int = 16
    layers: int = 1
    alpha: float = 0.0  # initial output scale: 0 = start exactly at Adam
    bound: float = 3.0  # the lr scale stays within exp(+-bound) of Adam's
    refresh_every: int = 100  # the rule runs every k inner steps, as it will in GMNOptimizer
    max_step: int = 0  # FeatureConfig.max_step (0 = time features never capped)
    relative_lr: bool = False  # FeatureConfig.relative_lr: the rule sees lr / weight rms per tensor
    horizon: bool = False  # FeatureConfig.horizon: the rule sees the fraction of its trajectory done
    snr: bool = False  # FeatureConfig.snr: the rule sees Adam's unnormalised m / sqrt(v) (gradient signal-to-noise)
    global_bound: float = 0.0  # RuleConfig.global_bound: lr-free, the rule may correct d within exp(+-b) (0 = off)
    # (any of these flags with init_from: added to a rule trained without it, its weights starting at zero)
    init_from: str = ""  # a rule directory to start from (save_pretrained format)


@dataclass
class TaskSection:
    """Which inner tasks are trained and how long."""

    distribution: str = "meta_train"  # inner_tasks collection name
    families: list[str] = field(default_factory=list)  # restrict to these families (empty = all)
    max_params: int = 20000  # resample tasks bigger than this (CPU budget)
    groups: int = 2  # architectures per outer step (per process)
    group_size: int = 2  # inits of one architecture per group (vmapped over when buffer-free)
    vmap: bool = True  # torch.func.vmap over a group's members (else a loop)
    unroll_min: int = 50  # total inner horizon per task, sampled log-uniformly in [min, max]
    unroll_max: int = 200
    truncation: int = 100  # inner steps per outer step (a multiple of rule.refresh_every)
    stagger: bool = True  # cut the first trajectory of each slot short, so slots restart out of step
    lr_scale_min: float = 0.5  # inner lr = task reference lr * log-uniform(min, max)
    lr_scale_max: float = 2.0
    # The inner optimizer is lr-free (GMNOptimizer(lr_free=True)): Prodigy's distance estimate sets the
    # step size, the inner lr is its multiplier, log-uniform(lr_scale_min, lr_scale_max) (no reference lr).
    lr_free: bool = False
    growth_rate: float = math.inf  # lr-free: d grows by at most this factor per step (GMNOptimizer's growth_rate)
    settled_growth_rate: float = math.inf  # lr-free: ... once the estimate has settled (GMNOptimizer's settled_growth_rate)
    estimate_stride: int = 1  # lr-free: the estimate reads every k-th parameter entry (GMNOptimizer's estimate_stride)
    estimate_every: int = 1  # lr-free: the estimate is taken every j-th step (GMNOptimizer's estimate_every)
    estimate_warmup: int = ESTIMATE_WARMUP  # lr-free: ... after the first this many steps (GMNOptimizer's estimate_warmup)
    per_tensor: float = 0.0  # lr-free: each tensor's own estimate's share of its step (GMNOptimizer's per_tensor)
    d0: float = D0  # lr-free: the estimate before the first step (GMNOptimizer's d0)
    shared_sums: bool = False  # lr-free per tensor: each tensor's estimate reads the network's sum (GMNOptimizer's shared_sums)
    plateau_block: int = 0  # lr-free: the step halves on plateaus of the gradient norm, blocks this long (GMNOptimizer's plateau_block; 0 off)
    plateau_boost: bool = False  # with plateau_block: ... and doubles where it keeps falling fast (GMNOptimizer's plateau_boost)
    plateau_anchor: bool = False  # with plateau_boost: ... to twice the step at the grant (GMNOptimizer's plateau_anchor)
    beta1: float = 0.9  # the inner optimizer's Adam hyperparameters (GMNOptimizer's betas, eps, weight_decay)
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    permute_augment: bool = True  # random hidden-unit permutation of each new task's init
    # With rule.horizon: the share of trajectories whose length the rule is told (the others run in the
    # horizon-unknown mode, as GMNOptimizer(model) without total_steps does).
    horizon_known_prob: float = 1.0


@dataclass
class EstimatorSection:
    """How the meta-gradient is estimated."""

    kind: str = "tbptt"  # tbptt | pes
    second_order: bool = False  # TBPTT: differentiate through the inner gradients (Hessian terms)
    meta_loss: str = "train"  # train (mean log training loss over the truncation) | val
    pes_sigma: float = 0.01  # PES perturbation std in rule-parameter space
    # Weight of a truncation's meta-loss: (fraction of its trajectory done at the truncation's end) ** late_power.
    # 0: every truncation alike (the mean log loss over the trajectory, v0.3); 2: the last tenth of a trajectory
    # weighs ~19x its first tenth (PES stays unbiased for the weighted objective).
    late_power: float = 0.0


@dataclass
class MetaOptSection:
    """The outer optimizer (Adam on the rule's parameters)."""

    steps: int = 100
    lr: float = 3e-3
    clip: float = 1.0  # global meta-gradient norm clip (0 = off)
    weight_decay: float = 0.0
    time_budget_s: float = 0.0  # stop early (checkpoint + rule saved) after this much wall time (0 = off)
    max_consecutive_skips: int = 10  # stop with an error after this many non-finite meta-gradients in a row
    ema_decay: float = 0.0  # > 0: also keep an exponential moving average of the rule's weights (rule_ema/)
    keep_best: bool = False  # keep the rule (its average when kept) that scores best on the comparison tasks (rule_best/)
    # Which rule parameters meta-training moves: "all", or "new_inputs": only the input-projection columns
    # of the features rule.init_from's rule did not read (rule.relative_lr / horizon / snr added to it). PES
    # then perturbs those few numbers only (its variance grows with the dimension) and the trained rule
    # stays exactly as it was on its old inputs.
    train: str = "all"


@dataclass
class LogSection:
    """Monitoring: TensorBoard scalars every ``every`` steps, figures every ``compare_every``."""

    every: int = 1
    compare_every: int = 50  # learned rule vs Adam on fixed meta-validation tasks, scored and plotted (0 = off)
    compare_steps: int = 100
    compare_tasks: int = 1  # how many fixed tasks (outer_train/compare.py); meta.keep_best selects on their score
    compare_collection: str = "meta_train"  # their source: meta_train (own seed) | meta_val (held-out-shaped suite)
    compare_against: str = "adam"  # adam (same lr as the rule) | tuned_adam (best of a 7-point lr grid, as held-out)
    compare_seeds: int = 1  # meta_val: every task from this many seeds (less noise for keep_best; costs that many x)
    compare_aggregate: str = "mean"  # over tasks: mean | median (one flipping task cannot move a median alone)
    compare_rule_lr: str = "reference"  # the rule at each task's reference lr | "tuned": its best on Adam's grid (7x the cost)
    compare_metric: str = "loss_ratio"  # log10 tail-loss ratio | "speedup": steps to Adam's final loss, the held-out statistic
    hist_every: int = 25  # update/param ratio histograms (0 = off)
    progress: bool = True


@dataclass
class CheckpointSection:
    """Atomic periodic checkpoints under ``<run>/checkpoints``."""

    every: int = 25
    keep: int = 2


@dataclass
class TrainConfig:
    """A whole meta-training run."""

    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0
    threads: int = 1  # torch intra-op threads per process: the inner tasks are small, and two threads per process fight when two runs share 2 cores
    preset: str = ""
    rule: RuleSection = field(default_factory=RuleSection)
    tasks: TaskSection = field(default_factory=TaskSection)
    estimator: EstimatorSection = field(default_factory=EstimatorSection)
    meta: MetaOptSection = field(default_factory=MetaOptSection)
    log: LogSection = field(default_factory=LogSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def validate(self) -> "TrainConfig":
        """Raise `ConfigError` for values no run can use; returns self."""
        from metaopt.optim import RULE_KINDS

        from .estimators import ESTIMATORS

        checks = [
            (self.rule.arch in RULE_KINDS and self.rule.arch != "none",
             f"rule.arch must be a registered rule kind with a network {sorted(set(RULE_KINDS) - {'none'})}, got {self.rule.arch!r}"),
            (self.estimator.kind in ESTIMATORS, f"estimator.kind must be one of {sorted(ESTIMATORS)}, got {self.estimator.kind!r}"),
            (self.rule.refresh_every >= 1 and self.tasks.truncation % self.rule.refresh_every == 0,
             f"tasks.truncation ({self.tasks.truncation}) must be a multiple of rule.refresh_every ({self.rule.refresh_every}), "
             "so that every truncation starts with a refresh"),
            (self.meta.max_consecutive_skips >= 1, "meta.max_consecutive_skips must be >= 1"),
            (self.estimator.meta_loss in ("train", "val"), f"estimator.meta_loss must be train or val, got {self.estimator.meta_loss!r}"),
            (1 <= self.tasks.unroll_min <= self.tasks.unroll_max, "need 1 <= tasks.unroll_min <= tasks.unroll_max"),
            (self.tasks.truncation >= 1, "tasks.truncation must be >= 1"),
            (self.tasks.groups >= 1 and self.tasks.group_size >= 1, "tasks.groups and tasks.group_size must be >= 1"),
            (0 < self.tasks.lr_scale_min <= self.tasks.lr_scale_max, "need 0 < tasks.lr_scale_min <= tasks.lr_scale_max"),
            (0.0 <= self.tasks.horizon_known_prob <= 1.0, "need 0 <= tasks.horizon_known_prob <= 1"),
            (self.tasks.growth_rate >= 1.0, "tasks.growth_rate must be >= 1 (inf: no limit)"),
            (self.tasks.settled_growth_rate >= 1.0, "tasks.settled_growth_rate must be >= 1 (inf: no limit)"),
            (isinstance(self.tasks.estimate_stride, int) and self.tasks.estimate_stride >= 1,
             "tasks.estimate_stride must be an int >= 1"),
            (isinstance(self.tasks.estimate_every, int) and self.tasks.estimate_every >= 1,
             "tasks.estimate_every must be an int >= 1"),
            (isinstance(self.tasks.estimate_warmup, int) and self.tasks.estimate_warmup >= 0,
             "tasks.estimate_warmup must be an int >= 0"),
            (0.0 <= self.tasks.per_tensor <= 1.0, "tasks.per_tensor is a share in [0, 1]"),
            (0.0 < self.tasks.d0 < math.inf, "tasks.d0 must be a finite number > 0"),
            (isinstance(self.tasks.plateau_block, int) and not isinstance(self.tasks.plateau_block, bool)
             and self.tasks.plateau_block >= 0, "tasks.plateau_block must be an int >= 0 (0: off)"),
            (self.tasks.plateau_block == 0 or self.tasks.lr_free,
             "tasks.plateau_block decays the lr-free step; set tasks.lr_free = true"),
            (isinstance(self.tasks.plateau_boost, bool), "tasks.plateau_boost must be true or false"),
            (not self.tasks.plateau_boost or self.tasks.plateau_block > 0,
             "tasks.plateau_boost doubles the step between the plateau decay's blocks; set tasks.plateau_block > 0"),
            (isinstance(self.tasks.plateau_anchor, bool), "tasks.plateau_anchor must be true or false"),
            (not self.tasks.plateau_anchor or self.tasks.plateau_boost,
             "tasks.plateau_anchor anchors the plateau boost's doublings; set tasks.plateau_boost = true"),
            (not self.tasks.shared_sums or self.tasks.per_tensor > 0.0,
             "tasks.shared_sums makes each tensor's estimate read the network's sum; set tasks.per_tensor > 0"),
            (self.tasks.per_tensor == 0.0 or self.tasks.lr_free,
             "tasks.per_tensor shares the lr-free step between tensors; set tasks.lr_free = true"),
            (self.tasks.lr_free or (self.tasks.growth_rate == math.inf and self.tasks.settled_growth_rate == math.inf
                                    and self.tasks.estimate_stride == 1
                                    and self.tasks.estimate_every == 1 and self.tasks.estimate_warmup == ESTIMATE_WARMUP
                                    and self.tasks.d0 == D0),
             "tasks.growth_rate, settled_growth_rate, estimate_stride, estimate_every, estimate_warmup and d0 shape the "
             "lr-free estimate; set "
             "tasks.lr_free = true"),
            (self.rule.global_bound >= 0, "rule.global_bound must be >= 0 (0 = off)"),
            (self.rule.global_bound == 0 or self.tasks.lr_free,
             "rule.global_bound corrects the lr-free estimate; set tasks.lr_free = true"),
            (self.estimator.late_power >= 0, "need estimator.late_power >= 0"),
            (self.meta.train in TRAIN_PARAMETERS, f"meta.train must be one of {TRAIN_PARAMETERS}"),
            (self.meta.train == "all" or bool(self.rule.init_from),
             "meta.train = 'new_inputs' needs rule.init_from (the rule whose inputs are extended)"),
            (0.0 <= self.meta.ema_decay < 1.0, "meta.ema_decay must lie in [0, 1) (0 = no weight average)"),
            (self.log.compare_tasks >= 1, "log.compare_tasks must be >= 1"),
            (self.log.compare_collection in COMPARE_COLLECTIONS, f"log.compare_collection must be one of {COMPARE_COLLECTIONS}"),
            (self.log.compare_against in COMPARE_AGAINST, f"log.compare_against must be one of {COMPARE_AGAINST}"),
            (self.log.compare_aggregate in COMPARE_AGGREGATES, f"log.compare_aggregate must be one of {COMPARE_AGGREGATES}"),
            (self.log.compare_rule_lr in COMPARE_RULE_LRS, f"log.compare_rule_lr must be one of {COMPARE_RULE_LRS}"),
            (self.log.compare_metric in COMPARE_METRICS, f"log.compare_metric must be one of {COMPARE_METRICS}"),
            (self.log.compare_seeds >= 1 and (self.log.compare_seeds == 1 or self.log.compare_collection == "meta_val"),
             "log.compare_seeds must be >= 1, and > 1 only with log.compare_collection = 'meta_val'"),
            (not self.meta.keep_best or self.log.compare_every > 0,
             "meta.keep_best selects on the comparison: set log.compare_every > 0"),
            (self.meta.steps >= 0 and self.meta.lr > 0, "meta.steps must be >= 0 and meta.lr > 0"),
            (self.estimator.pes_sigma > 0, "estimator.pes_sigma must be > 0"),
            (self.checkpoint.every >= 1 and self.checkpoint.keep >= 1, "checkpoint.every and checkpoint.keep must be >= 1"),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise ConfigError("invalid TrainConfig: " + "; ".join(bad))
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path


def from_dict(data: dict[str, Any], base: TrainConfig | None = None, where: str = "config") -> TrainConfig:
    """A `TrainConfig` from a (possibly partial) nested dict layered over ``base`` (default: defaults)."""
    cfg = base if base is not None else TrainConfig()
    _merge(cfg, data, where)
    return cfg


def _merge(obj: Any, data: dict[str, Any], where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table/object, got {type(data).__name__}.")
    hints = get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {sorted(names)}).")
        current = getattr(obj, key)
        if is_dataclass(current):
            _merge(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{where}.{key}"))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check/convert ``value`` to the field's type (int -> float allowed, float -> int refused)."""
    origin = getattr(hint, "__origin__", None)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if isinstance(value, (list, tuple)):
            item = hint.__args__[0]
            try:
                return [item(v) for v in value]
            except (TypeError, ValueError):
                pass
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}.")


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    text = path.read_text()
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from exc


def parse_override(text: str) -> dict[str, Any]:
    """``"a.b=3"`` -> ``{"a": {"b": 3}}`` (the value parsed as JSON when possible)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value.")
    key, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def resolve(
    preset: str | None = None, file: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Defaults <- preset <- file <- overrides, validated."""
    from .presets import PRESETS

    cfg = TrainConfig()
    data = load_file(file) if file else {}
    preset = preset or data.get("preset") or ""
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
        from_dict(PRESETS[preset], cfg, f"preset {preset}")
        cfg.preset = preset
    if data:
        from_dict(data, cfg, str(file))
    for text in overrides:
        from_dict(parse_override(text), cfg, f"override {text!r}")
    return cfg.validate()
