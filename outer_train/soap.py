"""SOAP as a tuned baseline: Adam run in the eigenbasis of Shampoo's preconditioner.

SOAP (Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", ICLR 2025) keeps, for every weight
matrix ``G`` (``rows x cols``), Shampoo's two statistics ``L = E[G G^T]`` and ``R = E[G^T G]`` (exponential
averages) and their eigenvectors ``Q_L``, ``Q_R``. Each step rotates the gradient into that basis,
``G' = Q_L^T G Q_R``, runs Adam there (both moments kept in the basis) and rotates Adam's direction back,
``Q_L (m' / (sqrt(v') + eps)) Q_R^T``. The bases are refreshed every ``precondition_every`` steps by one power
iteration and a QR decomposition from the previous basis, as the authors do (the first by ``eigh``); at a
refresh the second moment's rows and columns follow the eigenvalues' new order and the momentum is carried
into the new basis (the authors keep the momentum outside the basis and rotate it every step: the same
direction at two matrix products less per step, tested).

Vectors (biases, norms' gains) get Adam. Convolution filters count as matrices ``out x (in * kernel)`` (as
Muon's, ``outer_train.muon``; the authors' code can also precondition each dimension of a filter apart). A
side longer than ``max_dim`` is not rotated (its factor is the identity), as the authors' ``max_precond_dim``.
Defaults are the authors': betas (0.95, 0.95), the statistics averaged with the second beta, bias-corrected
steps; no weight decay, as the other tuned baselines. The authors skip the first step's update (they have no
basis before the first gradient); here the first basis comes from the first gradient and the step is taken.
The step's products run with denormals flushed to zero (``outer_train.muon.flushing_denormals``), as Muon's
iteration does: a fit's last gradients can reach float32's denormal range, where this CPU computed Muon's
products 10-70x slower.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from outer_train.muon import flushing_denormals

PRECONDITION_EVERY = 10  # the authors' precondition_frequency
MAX_DIM = 10_000  # the authors' max_precond_dim


def start_basis(state: dict, grad: Tensor, max_dim: int) -> None:
    """A matrix's Shampoo statistics from its first gradient and their eigenbases, into ``state``
    (``left`` / ``q_left``, ``right`` / ``q_right``; a side longer than ``max_dim`` keeps none: not rotated)."""
    rows, cols = grad.shape
    if rows <= max_dim:
        state["left"] = grad @ grad.T
        state["q_left"] = _eigenvectors(state["left"])
    if cols <= max_dim:
        state["right"] = grad.T @ grad
        state["q_right"] = _eigenvectors(state["right"])


def rotate(state: dict, x: Tensor) -> Tensor:
    """``Q_L^T x Q_R``: a matrix in the basis."""
    if "q_left" in state:
        x = state["q_left"].T @ x
    return x @ state["q_right"] if "q_right" in state else x


def rotate_back(state: dict, x: Tensor) -> Tensor:
    """``Q_L x Q_R^T``: a matrix from the basis back to the parameter's coordinates."""
    if "q_left" in state:
        x = state["q_left"] @ x
    return x @ state["q_right"].T if "q_right" in state else x


def accumulate(state: dict, grad: Tensor, beta: float) -> None:
    """The statistics' exponential averages take in this gradient."""
    if "left" in state:
        state["left"].lerp_(grad @ grad.T, 1 - beta)
    if "right" in state:
        state["right"].lerp_(grad.T @ grad, 1 - beta)


def refresh(state: dict) -> None:
    """One power iteration + QR per side from the current basis (its columns first ordered by the eigenvalues
    they now estimate, largest first); the momentum is carried into the new basis and the second moment's
    rows / columns follow the new order."""
    momentum, exp_avg_sq = rotate_back(state, state["exp_avg"]), state["exp_avg_sq"]
    for side, stat in (("q_left", "left"), ("q_right", "right")):
        if side in state:
            order = _estimated_order(state[stat], state[side])
            exp_avg_sq = exp_avg_sq[order] if side == "q_left" else exp_avg_sq[:, order]
            state[side] = torch.linalg.qr(state[stat] @ state[side][:, order])[0]
    state["exp_avg"], state["exp_avg_sq"] = rotate(state, momentum), exp_avg_sq.contiguous()


def _eigenvectors(stat: Tensor) -> Tensor:
    """Eigenvectors of a symmetric PSD matrix, largest eigenvalue first."""
    return torch.linalg.eigh(stat)[1].flip(1)


def _estimated_order(stat: Tensor, basis: Tensor) -> Tensor:
    """The basis' columns ordered by the Rayleigh quotients ``q^T S q``, largest first."""
    return ((stat @ basis) * basis).sum(0).argsort(descending=True)


class SOAP(torch.optim.Optimizer):
    """``SOAP(params, lr=3e-3)``: Adam in Shampoo's eigenbasis on parameters of >= 2 dimensions, Adam on the rest."""

    def __init__(self, params, lr: float = 3e-3, betas: tuple[float, float] = (0.95, 0.95),  # noqa: ANN001
                 eps: float = 1e-8, shampoo_beta: float | None = None,
                 precondition_every: int = PRECONDITION_EVERY, max_dim: int = MAX_DIM) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        shampoo_beta = betas[1] if shampoo_beta is None else shampoo_beta
        if not 0 <= shampoo_beta < 1:
            raise ValueError(f"shampoo_beta must lie in [0, 1), got {shampoo_beta}")
        if isinstance(precondition_every, bool) or not isinstance(precondition_every, int) or precondition_every < 1:
            raise ValueError(f"precondition_every is a number of steps >= 1, got {precondition_every!r}")
        if isinstance(max_dim, bool) or not isinstance(max_dim, int) or max_dim < 1:
            raise ValueError(f"max_dim is a matrix side length >= 1, got {max_dim!r}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "shampoo_beta": shampoo_beta,
                                  "precondition_every": precondition_every, "max_dim": max_dim})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch.optim's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with flushing_denormals():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._step_one(p, group)
        return loss

    def _step_one(self, p: Tensor, group: dict) -> None:
        beta1, beta2 = group["betas"]
        matrix = p.ndim >= 2
        grad = p.grad.reshape(p.shape[0], -1) if matrix else p.grad
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
            if matrix:
                start_basis(state, grad, group["max_dim"])
        state["step"] += 1
        t = state["step"]
        rotated = rotate(state, grad) if matrix else grad
        state["exp_avg"].lerp_(rotated, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(rotated, rotated, value=1 - beta2)
        direction = state["exp_avg"] / state["exp_avg_sq"].sqrt().add_(group["eps"])
        if matrix:
            direction = rotate_back(state, direction)
        size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        p.add_(direction.reshape(p.shape), alpha=-size)
        if matrix:
            accumulate(state, grad, group["shampoo_beta"])
            if t % group["precondition_every"] == 0:
                refresh(state)
