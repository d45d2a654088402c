"""Centered kernel alignment (Kornblith et al. 2019): linear and RBF kernels, biased or unbiased HSIC.

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for Gram matrices of two representations of
the same n inputs. It is invariant to orthogonal transforms and isotropic scaling of either
representation, so it compares networks whose units are arbitrary (different seeds, different
architectures, GMNs vs image networks). Everything is computed in float64.

The study of "On the Internal Representations of Graph Metanetworks" that uses it is the
experiment `python -m experiments.cka --inrs DIR --out DIR`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

KERNELS = ("linear", "rbf")


def _as_matrix(x: Tensor) -> Tensor:
    """[n, ...] representation -> float64 [n, features]."""
    if x.dim() < 2:
        raise ValueError(f"CKA: a representation must be [n, features...], got shape {tuple(x.shape)}")
    return x.detach().reshape(x.shape[0], -1).double()


def gram_linear(x: Tensor) -> Tensor:
    """Linear kernel Gram matrix X X^T, ``[n, n]``."""
    x = _as_matrix(x)
    return x @ x.T


def gram_rbf(x: Tensor, sigma_frac: float = 0.5) -> Tensor:
    """RBF Gram matrix exp(-d^2 / (2 sigma^2)) with sigma = sigma_frac * median pairwise distance.

    The median heuristic (Kornblith et al.) keeps the bandwidth scale-free, so RBF CKA stays
    invariant to isotropic scaling.
    """
    x = _as_matrix(x)
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp(min=0.0)
    d2.fill_diagonal_(0.0)
    off = d2[~torch.eye(len(x), dtype=torch.bool, device=x.device)]
    med = off.sqrt().median() if off.numel() else torch.tensor(0.0, dtype=x.dtype)
    sigma = sigma_frac * med
    if sigma <= 0:
        return torch.ones_like(d2)  # all inputs map to one point: a constant kernel (CKA is then nan)
    return torch.exp(-d2 / (2.0 * sigma * sigma))


def gram(x: Tensor, kernel: str = "linear", sigma_frac: float = 0.5) -> Tensor:
    """Gram matrix of a representation with the named kernel ("linear" or "rbf")."""
    if kernel == "linear":
        return gram_linear(x)
    if kernel == "rbf":
        return gram_rbf(x, sigma_frac)
    raise ValueError(f"unknown CKA kernel {kernel!r}; choose one of {KERNELS}")


def center_gram(k: Tensor) -> Tensor:
    """H K H with H = I - 11^T / n (double centring)."""
    k = k.double()
    k = k - k.mean(0, keepdim=True)
    return k - k.mean(1, keepdim=True)


def hsic(k: Tensor, l: Tensor, unbiased: bool = False) -> Tensor:
    """HSIC of two Gram matrices: biased tr(KHLH)/(n-1)^2, or the unbiased U-statistic of Song et al. 2012."""
    if k.shape != l.shape or k.dim() != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"hsic: need two square Gram matrices of one size, got {tuple(k.shape)} and {tuple(l.shape)}")
    n = k.shape[0]
    k, l = k.double(), l.double()
    if not unbiased:
        return (center_gram(k) * l).sum() / (n - 1) ** 2
    if n < 4:
        raise ValueError(f"hsic: the unbiased estimator needs n >= 4 inputs, got {n}")
    kt = k - torch.diag(torch.diag(k))
    lt = l - torch.diag(torch.diag(l))
    one_k, one_l = kt.sum(0), lt.sum(0)  # 1^T K~, 1^T L~
    term = (kt * lt).sum() + one_k.sum() * one_l.sum() / ((n - 1) * (n - 2)) - 2.0 * (one_k @ one_l) / (n - 2)
    return term / (n * (n - 3))


def cka_from_grams(k: Tensor, l: Tensor, unbiased: bool = False) -> Tensor:
    """CKA of two Gram matrices (float64 scalar)."""
    return hsic(k, l, unbiased) / torch.sqrt(hsic(k, k, unbiased) * hsic(l, l, unbiased))


def cka(x: Tensor, y: Tensor, kernel: str = "linear", unbiased: bool = False, sigma_frac: float = 0.5) -> float:
    """CKA between representations ``x [n, p]`` and ``y [n, q]`` of the same n inputs."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"cka: x has {x.shape[0]} rows, y has {y.shape[0]}; both must describe the same inputs")
    return float(cka_from_grams(gram(x, kernel, sigma_frac), gram(y, kernel, sigma_frac), unbiased))


def linear_cka_features(x: Tensor, y: Tensor) -> float:
    """Biased linear CKA in feature space: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) (a check)."""
    x, y = _as_matrix(x), _as_matrix(y)
    x, y = x - x.mean(0), y - y.mean(0)
    return float((y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))


def cka_matrix(
    reps_a: Sequence[Tensor], reps_b: Sequence[Tensor], kernel: str = "linear", unbiased: bool = False,
    sigma_frac: float = 0.5,
) -> Tensor:
    """``[len(a), len(b)]`` CKA between every layer representation of a and of b (Grams computed once)."""
    grams_a = [gram(r, kernel, sigma_frac) for r in reps_a]
    grams_b = [gram(r, kernel, sigma_frac) for r in reps_b]
    self_a = torch.stack([hsic(g, g, unbiased) for g in grams_a])
    self_b = torch.stack([hsic(g, g, unbiased) for g in grams_b])
    out = torch.empty(len(grams_a), len(grams_b), dtype=torch.float64)
    for i, ga in enumerate(grams_a):
        for j, gb in enumerate(grams_b):
            out[i, j] = hsic(ga, gb, unbiased) / torch.sqrt(self_a[i] * self_b[j])
    return out

