"""Small shared pieces for the model builders: activation and normalisation factories."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
}
CONV_NORMS: tuple[str, ...] = ("none", "batch", "group")


def make_activation(name: str) -> nn.Module:
    """A standard torch.nn activation module by name (standard modules are fx leaves the graph converter knows)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def group_count(channels: int, groups: int) -> int:
    """Largest divisor of `channels` that is <= `groups` (GroupNorm needs groups | channels)."""
    return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


def make_conv_norm(kind: str, channels: int, dim: int, groups: int = 4) -> nn.Module:
    """BatchNorm{1,2}d, GroupNorm or Identity for a conv feature map with `channels` channels."""
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dim == 2 else nn.BatchNorm1d(channels)
    if kind == "group":
        return nn.GroupNorm(group_count(channels, groups), channels)
    raise ValueError(f"unknown conv norm {kind!r}; choose one of {CONV_NORMS}")


class Sine(nn.Module):
    """sin(w0 * x), the SIREN activation (Sitzmann et al. 2020)."""

    def __init__(self, w0: float = 30.0) -> None:
        super().__init__()
        self.w0 = float(w0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


def fan_in_uniform_(weight: Tensor, bound: float) -> None:
    """In-place U(-bound, bound) init (no autograd)."""
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def siren_bound(fan_in: int, w0: float, first: bool) -> float:
    """SIREN init bound: 1/fan_in for the first layer, sqrt(6/fan_in)/w0 after it."""
    return 1.0 / fan_in if first else math.sqrt(6.0 / fan_in) / w0
