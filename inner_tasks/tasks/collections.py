"""The named task collections of docs/benchmarks.md §1: the meta-training distribution, the
meta-validation suite (model selection during meta-training) and the held-out evaluation suite. No
two overlap (tests/test_inner_collections.py checks it).

Held-out differs from meta-training by: width 4x / depth 2x on digits MLPs and CNNs; architectures
absent from meta-training (residual CNN with BatchNorm, Transformer LM); another data set
(procedural shapes); and a 5x longer horizon.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .families import FamilySampler, make_task_spec
from .spec import TaskSpec

META_TRAIN_HORIZON = 200
HELD_OUT_HORIZON = 1000  # >= 5x META_TRAIN_HORIZON (docs/benchmarks.md §1: unrolls <= 1/5 of eval horizon)
HELD_OUT_SEEDS = (0, 1, 2)

_ACTS = ("relu", "tanh", "gelu", "silu")
_BATCH = (32, 64, 128)


@dataclass(frozen=True, eq=False)
class TaskDistribution:
    """A weighted mixture of family samplers; `sample(seed)` picks a family, then its knobs."""

    name: str
    samplers: tuple[FamilySampler, ...]
    weights: tuple[float, ...]

    def sample(self, seed: int) -> TaskSpec:
        """Deterministic draw: family by weight, then knobs, both from `seed`."""
        sampler = random.Random(f"{self.name}:{seed}").choices(self.samplers, weights=self.weights)[0]
        return sampler.sample(seed)

    def contains(self, spec: TaskSpec) -> bool:
        """True if any family sampler here can produce `spec` (ignoring seed and horizon)."""
        return any(s.contains(spec) for s in self.samplers)


def meta_train_distribution() -> TaskDistribution:
    """Small tasks on digits (MLP, CNN, SIREN INR), sets and teacher-student regression (CPU-sized: ~0.1k to ~15k params)."""
    samplers = (
        FamilySampler("mlp_classification", {
            "dataset": ("digits",), "image_size": (8,), "width": (16, 32, 64), "depth": (1, 2),
            "activation": _ACTS, "norm": ("none", "layernorm"), "batch_size": _BATCH,
        }, META_TRAIN_HORIZON),
        FamilySampler("cnn_classification", {
            "dataset": ("digits",), "image_size": (8,), "width": (8, 12, 16), "depth": (1, 2), "kernel_size": (3,),
            "norm": ("none", "group"), "residual": (False,), "activation": ("relu", "gelu"), "dim": (1, 2),
            "batch_size": _BATCH,
        }, META_TRAIN_HORIZON),
        FamilySampler("siren_inr", {
            "dataset": ("digits",), "image_size": (28,), "width": (16, 24), "depth": (2, 3), "w0": (30.0,),
            "batch_size": (256, 784),
        }, META_TRAIN_HORIZON),
        FamilySampler("deepsets", {
            "target": ("sum", "max", "variance", "distribution"), "set_size": (8, 16), "width": (16, 32),
            "depth": (1, 2), "pool": ("mean", "sum"), "activation": ("relu", "tanh"), "batch_size": (32, 64),
        }, META_TRAIN_HORIZON),
        FamilySampler("teacher_student", {
            "in_dim": (4, 8, 16), "width": (16, 32, 64), "depth": (1, 2), "activation": ("relu", "tanh"),
            "norm": ("none",), "batch_size": _BATCH,
        }, META_TRAIN_HORIZON),
    )
    return TaskDistribution("meta_train", samplers, (0.3, 0.25, 0.15, 0.15, 0.15))


def meta_train_large_distribution() -> TaskDistribution:
    """Digits tasks shaped towards the held-out suite (wider and deeper MLPs and CNNs, residual and
    GroupNorm CNNs, wider SIRENs; ~2k to ~270k params, meta-training's tasks.max_params resamples the
    largest), for meta-training on the sizes a rule is used at.
    Never a held-out or meta-validation task, held-out data (shapes) or held-out-only family
    (Transformer, BatchNorm): tests/test_inner_collections.py checks it. It gives up part of the
    held-out suite's "4x wider than meta-training" distance, which is the point of it."""
    samplers = (
        FamilySampler("mlp_classification", {
            "dataset": ("digits",), "image_size": (8,), "width": (48, 96, 192), "depth": (2, 3),
            "activation": _ACTS, "norm": ("none", "layernorm"), "batch_size": (32, 64),
        }, META_TRAIN_HORIZON),
        FamilySampler("cnn_classification", {
            "dataset": ("digits",), "image_size": (8,), "width": (12, 24, 48), "depth": (2, 3), "kernel_size": (3,),
            "norm": ("none", "group"), "residual": (False, True), "activation": ("relu", "gelu"), "dim": (2,),
            "batch_size": (32, 64),
        }, META_TRAIN_HORIZON),
        FamilySampler("siren_inr", {
            "dataset": ("digits",), "image_size": (28,), "width": (28, 40), "depth": (3,), "w0": (30.0,),
            "batch_size": (784,),
        }, META_TRAIN_HORIZON),
    )
    return TaskDistribution("meta_train_large", samplers, (0.4, 0.4, 0.2))


def _mlp(dataset: str, size: int, width: int, depth: int) -> dict:
    return {"dataset": dataset, "image_size": size, "width": width, "depth": depth, "activation": "relu",
            "norm": "none", "batch_size": 64}


def _cnn(dataset: str, size: int, width: int, depth: int, norm: str = "none", residual: bool = False) -> dict:
    return {"dataset": dataset, "image_size": size, "width": width, "depth": depth, "kernel_size": 3, "norm": norm,
            "residual": residual, "activation": "relu", "dim": 2, "batch_size": 64}


def _lm(width: int) -> dict:
    return {"width": width, "depth": 2, "heads": 2, "context": 32, "activation": "gelu", "batch_size": 32}


def _siren(dataset: str, width: int) -> dict:
    return {"dataset": dataset, "image_size": 28, "width": width, "depth": 3, "w0": 30.0, "batch_size": 784}


# name -> (family, knobs, what it tests)
HELD_OUT_TASKS: dict[str, tuple[str, dict, str]] = {
    "mlp_digits_wide": ("mlp_classification", _mlp("digits", 8, 256, 2), "4x wider than meta-training"),
    "mlp_digits_deep": ("mlp_classification", _mlp("digits", 8, 64, 4), "2x deeper than meta-training"),
    "cnn_digits_wide": ("cnn_classification", _cnn("digits", 8, 64, 2), "4x wider than meta-training"),
    "cnn_digits_deep": ("cnn_classification", _cnn("digits", 16, 8, 4), "2x deeper than meta-training"),
    "rescnn_bn_digits": ("cnn_classification", _cnn("digits", 8, 16, 2, "batch", True), "unseen: residual CNN + BatchNorm"),
    "transformer_lm_stdlib": ("transformer_lm", _lm(32), "unseen: Transformer LM"),
    "mlp_shapes": ("mlp_classification", _mlp("shapes", 16, 64, 2), "other data: shapes"),
    "cnn_shapes": ("cnn_classification", _cnn("shapes", 16, 16, 2), "other data: shapes"),
    "siren_shapes": ("siren_inr", _siren("shapes", 24), "other data: INR of shapes"),
}


def _fixed_suite(tasks: dict[str, tuple[str, dict, str]], seeds: tuple[int, ...], horizon: int) -> list[TaskSpec]:
    """Every task of a fixed table for every seed, named "<task>/s<seed>"."""
    return [
        make_task_spec(family, knobs, seed, horizon, name=f"{name}/s{seed}")
        for name, (family, knobs, _) in tasks.items()
        for seed in seeds
    ]


def held_out_suite(seeds: tuple[int, ...] = HELD_OUT_SEEDS, horizon: int = HELD_OUT_HORIZON) -> list[TaskSpec]:
    """Every held-out task for every seed, named "<task>/s<seed>", with the evaluation horizon."""
    return _fixed_suite(HELD_OUT_TASKS, seeds, horizon)


# name -> (family, knobs, what it tests). Shaped like the held-out suite where it scales up (wider and
# deeper digits MLPs and CNNs, a normalised residual CNN, a larger SIREN) but halfway there and never
# a held-out task, data set or unseen family: selecting a rule on it must not peek at the held-out
# suite (no shapes, no Transformer, no BatchNorm).
META_VALIDATION_TASKS: dict[str, tuple[str, dict, str]] = {
    "mlp_digits_w128": ("mlp_classification", _mlp("digits", 8, 128, 2), "2x wider than meta-training"),
    "mlp_digits_d3": ("mlp_classification", _mlp("digits", 8, 64, 3), "1.5x deeper than meta-training"),
    "cnn_digits_w32": ("cnn_classification", _cnn("digits", 8, 32, 2), "2x wider than meta-training"),
    "cnn_digits16_d3": ("cnn_classification", _cnn("digits", 16, 8, 3), "16x16 digits, 1.5x deeper"),
    "rescnn_gn_digits": ("cnn_classification", _cnn("digits", 8, 16, 2, "group", True), "residual CNN + GroupNorm"),
    "siren_digits_w32": ("siren_inr", _siren("digits", 32), "wider SIREN than meta-training"),
}
META_VALIDATION_SEED = 7  # one fixed seed (init + data order) per task, far from the held-out seeds


def meta_validation_suite(seed: int = META_VALIDATION_SEED, horizon: int = HELD_OUT_HORIZON) -> list[TaskSpec]:
    """Every meta-validation task with one seed, named "<task>/s<seed>" (docs/outer_train.md, "Best rule kept")."""
    return _fixed_suite(META_VALIDATION_TASKS, (seed,), horizon)


# name -> (family, knobs, the held-out task it mirrors). Siblings of the held-out tasks: the same families and
# data sets at other widths, depths and image sizes, with seeds of their own, never a held-out task's knobs.
# For choosing an optimizer's scalar settings (the lr-free multiplier, the estimate's warm-up, the per-tensor
# share): the meta-validation suite, which by design has no held-out family or data, chose three such settings
# that then failed on the held-out suite (docs/optim_history.md, "The estimate's warm-up"). Never used to train a rule,
# and a setting chosen here is held-out-tested across knobs and seeds only, not across families (docs/outer_train.md).
DEV_TASKS: dict[str, tuple[str, dict, str]] = {
    "mlp_digits_w192": ("mlp_classification", _mlp("digits", 8, 192, 2), "mlp_digits_wide"),
    "mlp_digits_d5": ("mlp_classification", _mlp("digits", 8, 32, 5), "mlp_digits_deep"),
    "cnn_digits_w48": ("cnn_classification", _cnn("digits", 8, 48, 2), "cnn_digits_wide"),
    "cnn_digits16_d4": ("cnn_classification", _cnn("digits", 16, 12, 4), "cnn_digits_deep"),
    "rescnn_bn_digits_w12": ("cnn_classification", _cnn("digits", 8, 12, 2, "batch", True), "rescnn_bn_digits"),
    "transformer_lm_w24": ("transformer_lm", _lm(24), "transformer_lm_stdlib"),
    "mlp_shapes_w96": ("mlp_classification", _mlp("shapes", 16, 96, 2), "mlp_shapes"),
    "cnn_shapes_w12": ("cnn_classification", _cnn("shapes", 16, 12, 2), "cnn_shapes"),
    "siren_shapes_w32": ("siren_inr", _siren("shapes", 32), "siren_shapes"),
}
DEV_SEED = 20  # seeds DEV_SEED + k, apart from the held-out (0-2) and meta-validation (7 + k) seeds


def dev_suite(seed: int = DEV_SEED, horizon: int = HELD_OUT_HORIZON) -> list[TaskSpec]:
    """Every dev task with one seed, named "<task>/s<seed>" (the held-out tasks' siblings; see DEV_TASKS)."""
    return _fixed_suite(DEV_TASKS, (seed,), horizon)


# The fixed suites that choose settings: name -> (tasks, the suite for one seed, its first seed).
SELECTION_SUITES = {"meta_val": (META_VALIDATION_TASKS, meta_validation_suite, META_VALIDATION_SEED),
                    "dev": (DEV_TASKS, dev_suite, DEV_SEED)}

COLLECTIONS = {"meta_train": meta_train_distribution, "meta_train_large": meta_train_large_distribution,
               "meta_val": meta_validation_suite, "dev": dev_suite, "held_out": held_out_suite}
