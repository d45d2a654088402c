"""Model specs: frozen dataclasses that name an architecture, store as JSON, and rebuild it exactly.

`build_model(spec, seed)` gives the same parameters for the same (spec, seed); `spec_to_json` /
`spec_from_json` round-trip without loss (tuples survive as tuples), so zoos and INR sets can store
a spec beside each set of weights.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .cnn import ConvNet
from .deepsets import DeepSets
from .mlp import MLP
from .resnet import ResNet
from .siren import SIREN
from .transformer_lm import TransformerLM
from .vit import ViT


@dataclass(frozen=True)
class MLPSpec:
    """Multi-layer perceptron on flattened inputs."""

    kind: ClassVar[str] = "mlp"
    in_features: int
    out_features: int
    hidden: tuple[int, ...] = (64,)
    activation: str = "relu"
    norm: str = "none"  # "none" | "layernorm"
    bias: bool = True


@dataclass(frozen=True)
class CNNSpec:
    """Plain or residual CNN, 2-D (images [B, C, H, W]) or 1-D (sequences [B, C, L])."""

    kind: ClassVar[str] = "cnn"
    in_channels: int
    num_classes: int
    channels: tuple[int, ...] = (16, 32)
    kernel_sizes: tuple[int, ...] = (3,)
    dim: int = 2
    norm: str = "none"  # "none" | "batch" | "group"
    activation: str = "relu"
    residual: bool = False
    pool: str = "max"  # "max" | "avg" | "none"
    groups: int = 4


@dataclass(frozen=True)
class ResNetSpec:
    """ResNet of BasicBlocks; `resnet18_spec()` gives the 11M-parameter ResNet-18 layout."""

    kind: ClassVar[str] = "resnet"
    in_channels: int
    num_classes: int
    stem_channels: int = 16
    stage_channels: tuple[int, ...] = (16, 32)
    blocks_per_stage: tuple[int, ...] = (1, 1)
    norm: str = "batch"
    activation: str = "relu"


@dataclass(frozen=True)
class ViTSpec:
    """Small Vision Transformer."""

    kind: ClassVar[str] = "vit"
    image_size: int
    patch_size: int
    in_channels: int
    num_classes: int
    dim: int = 32
    depth: int = 2
    heads: int = 2
    mlp_ratio: int = 2
    activation: str = "gelu"


@dataclass(frozen=True)
class TransformerLMSpec:
    """Decoder-only byte/char language model."""

    kind: ClassVar[str] = "transformer_lm"
    vocab_size: int = 256
    context: int = 64
    dim: int = 32
    depth: int = 2
    heads: int = 2
    mlp_ratio: int = 4
    activation: str = "gelu"


@dataclass(frozen=True)
class DeepSetsSpec:
    """Permutation-invariant set network."""

    kind: ClassVar[str] = "deepsets"
    in_features: int
    out_features: int
    phi_hidden: tuple[int, ...] = (32, 32)
    rho_hidden: tuple[int, ...] = (32,)
    pool: str = "mean"
    activation: str = "relu"


@dataclass(frozen=True)
class SIRENSpec:
    """Sine-activated MLP for implicit neural representations."""

    kind: ClassVar[str] = "siren"
    in_features: int = 2
    out_features: int = 1
    hidden: tuple[int, ...] = (32, 32)
    w0: float = 30.0
    w0_first: float = 30.0


ModelSpec = MLPSpec | CNNSpec | ResNetSpec | ViTSpec | TransformerLMSpec | DeepSetsSpec | SIRENSpec

MODEL_REGISTRY: dict[str, tuple[type, Callable[..., nn.Module]]] = {
    "mlp": (MLPSpec, MLP),
    "cnn": (CNNSpec, ConvNet),
    "resnet": (ResNetSpec, ResNet),
    "vit": (ViTSpec, ViT),
    "transformer_lm": (TransformerLMSpec, TransformerLM),
    "deepsets": (DeepSetsSpec, DeepSets),
    "siren": (SIRENSpec, SIREN),
}


def resnet18_spec(in_channels: int = 3, num_classes: int = 1000) -> ResNetSpec:
    """The ResNet-18 layout (about 11.7M parameters with 1000 classes)."""
    return ResNetSpec(in_channels, num_classes, 64, (64, 128, 256, 512), (2, 2, 2, 2))


def spec_to_dict(spec: Any) -> dict[str, Any]:
    """{"kind": ..., field: value, ...} with tuples as lists (JSON-ready)."""
    if type(spec).__name__ not in {cls.__name__ for cls, _ in MODEL_REGISTRY.values()}:
        raise TypeError(f"{type(spec).__name__} is not a model spec; expected one of {sorted(MODEL_REGISTRY)}")
    d = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    return {"kind": spec.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}}


def spec_from_dict(d: dict[str, Any]) -> ModelSpec:
    """Inverse of `spec_to_dict`: lists become tuples again; unknown kinds or fields raise."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in MODEL_REGISTRY:
        raise ValueError(f"model spec kind {kind!r} unknown; expected one of {sorted(MODEL_REGISTRY)}")
    cls = MODEL_REGISTRY[kind][0]
    names = {f.name for f in dataclasses.fields(cls)}
    extra = set(d) - names
    if extra:
        raise ValueError(f"{cls.__name__} has no fields {sorted(extra)}; known fields: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def spec_to_json(spec: ModelSpec) -> str:
    """Canonical JSON (sorted keys), so equal specs give equal strings."""
    return json.dumps(spec_to_dict(spec), sort_keys=True)


def spec_from_json(text: str) -> ModelSpec:
    """Rebuild a spec from `spec_to_json` output."""
    return spec_from_dict(json.loads(text))


def build_model(spec: ModelSpec, seed: int | None = None) -> nn.Module:
    """Instantiate the architecture `spec` names; with `seed`, initialisation is reproducible and
    the global RNG is left untouched."""
    kind = getattr(spec, "kind", None)
    if kind not in MODEL_REGISTRY or not isinstance(spec, MODEL_REGISTRY[kind][0]):
        raise TypeError(f"build_model needs a model spec ({sorted(MODEL_REGISTRY)}), got {type(spec).__name__}")
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    builder = MODEL_REGISTRY[kind][1]
    if seed is None:
        return builder(**fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(**fields)


def count_params(model: nn.Module) -> int:
    """Number of scalar parameters (= number of parameter-graph edges)."""
    return sum(p.numel() for p in model.parameters())
