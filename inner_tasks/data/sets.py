"""Synthetic set data for permutation-invariant (DeepSets) tasks."""

from __future__ import annotations

import torch
from torch import Tensor

from .types import TensorDataset

SET_TARGETS: tuple[str, ...] = ("sum", "max", "variance", "distribution")
SET_DISTRIBUTIONS: tuple[str, ...] = ("gaussian", "uniform", "laplace", "bimodal")


def _draw_elements(kind: Tensor, n: int, set_size: int, dim: int, g: torch.Generator) -> Tensor:
    """Set elements [n, set_size, dim] with unit variance, drawn per set from distribution `kind`."""
    shape = (n, set_size, dim)
    gauss = torch.randn(shape, generator=g)
    unif = (torch.rand(shape, generator=g) * 2 - 1) * 3**0.5
    lap = torch.distributions.Laplace(0.0, 2**-0.5).icdf(torch.rand(shape, generator=g).clamp(1e-6, 1 - 1e-6))
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    bimodal = sign * 0.9 + 0.436 * torch.randn(shape, generator=g)  # variance 0.81 + 0.19 = 1
    all_kinds = torch.stack([gauss, unif, lap, bimodal])
    return all_kinds.gather(0, kind.view(1, n, 1, 1).expand(1, *shape)).squeeze(0)


def make_sets(
    n: int, set_size: int = 16, dim: int = 2, target: str = "sum", seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Sets [n, set_size, dim] and targets: float [n, 1] for sum/max/variance, int64 [n] class for
    'distribution' (which of SET_DISTRIBUTIONS generated the set; all have unit variance, so the
    model must look at shape, not scale)."""
    if target not in SET_TARGETS:
        raise ValueError(f"unknown set target {target!r}; choose one of {SET_TARGETS}")
    g = torch.Generator().manual_seed(seed)
    if target == "distribution":
        kind = torch.randint(0, len(SET_DISTRIBUTIONS), (n,), generator=g)
        return _draw_elements(kind, n, set_size, dim, g), kind
    shift = torch.randn(n, 1, dim, generator=g) * 0.5
    x = torch.randn(n, set_size, dim, generator=g) + shift
    if target == "sum":
        y = x.sum(dim=(1, 2)) / set_size
    elif target == "max":
        y = x.amax(dim=1).sum(-1)
    else:
        y = x.var(dim=1).sum(-1)
    return x, y.unsqueeze(1)


def load_sets_split(
    n_train: int = 2000, n_test: int = 500, set_size: int = 16, dim: int = 2, target: str = "sum", seed: int = 0
) -> TensorDataset:
    """Train and test sets from two disjoint generator streams of one seed."""
    xtr, ytr = make_sets(n_train, set_size, dim, target, 2 * seed)
    xte, yte = make_sets(n_test, set_size, dim, target, 2 * seed + 1)
    return TensorDataset(xtr, ytr, xte, yte, f"sets-{target}")
