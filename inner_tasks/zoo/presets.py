"""Zoo presets: per model id, a deterministic draw of architecture and training hyperparameters.

Every draw depends only on (preset, zoo seed, model id, tiny), so an interrupted run resumes with the
same configurations and a regenerated model is bit-identical to the lost one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..models import CNNSpec, DeepSetsSpec, MLPSpec, ModelSpec, ResNetSpec, ViTSpec

PRESETS: tuple[str, ...] = ("varying-cnns", "diverse-archs", "diverse-archs-spread")
DIVERSE_FAMILIES: tuple[str, ...] = ("cnn2d", "cnn1d", "resnet", "vit", "mlp", "deepsets")
# diverse-archs-spread: the diverse-archs architectures with a training budget per family (epoch range,
# lowest lr). On diverse-archs' one budget (1-10 epochs, lr from 5e-4) the families that learn slowly
# on 8x8 digits stay untrained: 300 draws, share at chance (test accuracy < 0.15) MLP 6%, ViT 27%,
# 2-D CNN 32%, ResNet 41%, 1-D CNN 47%, DeepSets 85%; 3x the epochs gives 0%, 6%, 11%, 15%, 36%, 63%.
# Chance-level models are ties in accuracy that no predictor can rank, so each family gets the budget
# that spreads its accuracies from chance to its best (docs/accuracy.md, "A zoo with spread accuracies").
FAMILY_BUDGETS: dict[str, dict[str, Any]] = {
    "mlp": {"epochs": (1, 10), "lr_min": 5e-4},
    "cnn2d": {"epochs": (2, 20), "lr_min": 5e-4},
    "vit": {"epochs": (2, 20), "lr_min": 5e-4},
    "resnet": {"epochs": (2, 20), "lr_min": 5e-4},
    "cnn1d": {"epochs": (6, 60), "lr_min": 1e-3},
    "deepsets": {"epochs": (10, 80), "lr_min": 2e-3},
}
IMAGE_SIZE = 8  # sklearn digits, native resolution
NUM_CLASSES = 10
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to train one zoo member: architecture, how its input is laid out, hyperparameters."""

    model_id: int
    family: str
    spec: ModelSpec
    layout: str  # "image" [N, 1, 8, 8] | "sequence" [N, 1, 64] | "set" [N, 64, 3] (y, x, intensity)
    hparams: dict[str, Any]
    seed: int


def _rng(preset: str, zoo_seed: int, model_id: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{preset}/{zoo_seed}/{model_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def sample_hparams(rng: np.random.Generator, tiny: bool, epochs: tuple[int, int] = (1, 10),
                   lr_min: float = 5e-4) -> dict[str, Any]:
    """Training hyperparameters drawn so test accuracies spread from chance to near-perfect
    (``epochs``: inclusive range; tiny zoos train 1-2 epochs whatever the range)."""
    return {
        "optimizer": "adamw",
        "lr": _loguniform(rng, lr_min, 4e-2),
        "epochs": int(rng.integers(1, 3) if tiny else rng.integers(epochs[0], epochs[1] + 1)),
        "batch_size": 128,
        "weight_decay": 0.0 if rng.random() < 0.3 else _loguniform(rng, 1e-5, 0.1),
        "dropout": 0.0 if rng.random() < 0.4 else float(rng.uniform(0.0, 0.5)),
        "init_scale": _loguniform(rng, 0.5, 2.0),
        "label_noise": 0.0 if rng.random() < 0.4 else float(rng.uniform(0.0, 0.5)),
        "data_fraction": _loguniform(rng, 0.05, 0.15 if tiny else 1.0),
    }


def _choice(rng: np.random.Generator, options: tuple | list) -> Any:
    return options[int(rng.integers(len(options)))]


def _varying_cnn(rng: np.random.Generator, tiny: bool) -> tuple[str, ModelSpec, str]:
    depth = int(rng.integers(1, 3)) if tiny else int(rng.integers(2, 4))
    widths = (2, 4) if tiny else (4, 8, 12, 16)
    spec = CNNSpec(
        in_channels=1,
        num_classes=NUM_CLASSES,
        channels=tuple(int(_choice(rng, widths)) for _ in range(depth)),
        kernel_sizes=tuple(int(_choice(rng, (3, 5))) for _ in range(depth)),
        dim=2,
        norm=_choice(rng, ("none", "batch", "group")),
        activation=_choice(rng, ("relu", "gelu", "tanh", "leaky_relu", "silu")),
        pool=_choice(rng, ("max", "avg")),
        groups=2,
    )
    return "cnn2d", spec, "image"


def _diverse(rng: np.random.Generator, tiny: bool) -> tuple[str, ModelSpec, str]:
    family = _choice(rng, DIVERSE_FAMILIES)
    w = (lambda opts: int(_choice(rng, (2, 4) if tiny else opts)))
    act = (lambda opts: _choice(rng, opts))
    if family == "cnn2d":
        depth = int(rng.integers(2, 4))
        return family, CNNSpec(1, NUM_CLASSES, tuple(w((4, 8, 16)) for _ in range(depth)), (3,), 2,
                               _choice(rng, ("none", "batch", "group")), act(("relu", "gelu", "tanh")),
                               pool=_choice(rng, ("max", "avg")), groups=2), "image"
    if family == "cnn1d":
        depth = int(rng.integers(1, 4))
        return family, CNNSpec(1, NUM_CLASSES, tuple(w((4, 8, 16)) for _ in range(depth)),
                               (int(_choice(rng, (3, 5, 7))),), 1, _choice(rng, ("none", "batch", "group")),
                               act(("relu", "gelu", "tanh")), pool=_choice(rng, ("max", "avg")), groups=2), "sequence"
    if family == "resnet":
        stem = w((4, 8))
        stages = _choice(rng, ((4,), (8,), (4, 8), (8, 16))) if not tiny else (2,)
        return family, ResNetSpec(1, NUM_CLASSES, stem, tuple(stages), (1,) * len(stages),
                                  _choice(rng, ("batch", "group", "none")), act(("relu", "gelu"))), "image"
    if family == "vit":
        heads = int(_choice(rng, (1, 2)))
        dim = heads * (2 if tiny else int(_choice(rng, (4, 8, 12))))
        return family, ViTSpec(IMAGE_SIZE, int(_choice(rng, (2, 4))), 1, NUM_CLASSES, dim,
                               int(rng.integers(1, 3)), heads, 2, act(("gelu", "relu"))), "image"
    if family == "mlp":
        depth = int(rng.integers(1, 4))
        return family, MLPSpec(NUM_PIXELS, NUM_CLASSES, tuple(w((16, 32, 64)) for _ in range(depth)),
                               act(("relu", "tanh", "gelu")), _choice(rng, ("none", "layernorm"))), "image"
    width = w((16, 32))
    phi = (width,) * int(rng.integers(1, 3))
    return family, DeepSetsSpec(3, NUM_CLASSES, phi, (width,), _choice(rng, ("mean", "sum")),
                                act(("relu", "tanh"))), "set"


def sample_config(preset: str, zoo_seed: int, model_id: int, tiny: bool = False) -> ModelConfig:
    """The configuration of model `model_id` of a zoo (pure function of its arguments)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown zoo preset {preset!r}; choose one of {PRESETS}")
    rng = _rng(preset + ("/tiny" if tiny else ""), zoo_seed, model_id)
    family, spec, layout = (_varying_cnn if preset == "varying-cnns" else _diverse)(rng, tiny)
    hparams = sample_hparams(rng, tiny, **(FAMILY_BUDGETS[family] if preset == "diverse-archs-spread" else {}))
    return ModelConfig(model_id, family, spec, layout, hparams, seed=int(rng.integers(2**31 - 1)))
