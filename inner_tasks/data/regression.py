"""Teacher-student regression: targets come from a fixed random teacher MLP plus noise."""

from __future__ import annotations

import torch
from torch import nn

from .types import TensorDataset


def make_teacher(in_dim: int, out_dim: int, hidden: int, depth: int, seed: int) -> nn.Module:
    """A random tanh MLP with unit-scale outputs, fixed by `seed` (the function to be learned)."""
    g = torch.Generator().manual_seed(seed)
    dims = [in_dim] + [hidden] * depth + [out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g) * (1.5 / a**0.5))
            lin.bias.copy_(torch.randn(b, generator=g) * 0.3)
        layers.append(lin)
        if i < len(dims) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).requires_grad_(False)


def load_teacher_student(
    n_train: int = 2000,
    n_test: int = 500,
    in_dim: int = 8,
    out_dim: int = 1,
    teacher_hidden: int = 32,
    teacher_depth: int = 2,
    noise: float = 0.05,
    seed: int = 0,
) -> TensorDataset:
    """Inputs x ~ N(0, I) and targets teacher(x) + noise, standardised to unit variance per output."""
    teacher = make_teacher(in_dim, out_dim, teacher_hidden, teacher_depth, seed)
    g = torch.Generator().manual_seed(seed + 7919)
    x = torch.randn(n_train + n_test, in_dim, generator=g)
    y = teacher(x)
    y = (y - y.mean(0)) / y.std(0).clamp(min=1e-6)
    y = y + noise * torch.randn(y.shape, generator=g)
    return TensorDataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], "teacher-student")

