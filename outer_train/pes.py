"""Persistent evolution strategies (Vicol et al., 2021) with antithetic pairs.

Each group keeps two particles, run with rule parameters ``theta + eps`` and ``theta - eps``
(eps drawn fresh every truncation, shared by the groups so one batched rule forward serves
each particle). ``xi`` accumulates the perturbations a group's particles have seen since its
task started; the unbiased estimate of the gradient of the whole unroll's meta-loss is
``mean_g xi_g * (L+_g - L-_g) / (2 sigma^2)``. No autograd graph is kept: memory is constant in
the unroll length. The ``xi`` are the estimator's own state (`PESState`, checkpointed with it),
keyed by each group's `TaskGroup.key`, so a new task starts from zero.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector

from metaopt.optim import UpdateRule

from .meta_loss import late_weights
from .tasks import TaskGroup
from .tbptt import TruncationResult, unroll_truncation

NUM_PARTICLES = 2  # +eps and -eps


def _unflatten(rule: UpdateRule, flat: Tensor) -> dict[str, Tensor]:
    out, i = {}, 0
    for name, p in rule.named_parameters():
        out[name] = flat[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


class PESState:
    """The accumulated perturbation ``xi`` of every live task group, by `TaskGroup.key`."""

    def __init__(self) -> None:
        self.xi: dict[str, Tensor] = {}

    def accumulate(self, groups: list[TaskGroup], eps: Tensor) -> list[Tensor]:
        """Add this truncation's ``eps`` to each group's ``xi`` (zero for a new task); drop finished tasks."""
        live = {g.key: self.xi.get(g.key, torch.zeros_like(eps)) + eps for g in groups}
        self.xi = live
        return [live[g.key] for g in groups]

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        return {"xi": {k: v.clone() for k, v in self.xi.items()}}

    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        self.xi = {k: v.clone() for k, v in state["xi"].items()}


@torch.no_grad()
def pes_gradient(
    rule: UpdateRule,
    state: PESState,
    groups: list[TaskGroup],
    graph_inputs,
    steps: int,
    sigma: float,
    *,
    meta_loss: str = "train",
    vmap: bool = True,
    generator: torch.Generator | None = None,
    record_ratio: bool = False,
    mask: Tensor | None = None,
    late_power: float = 0.0,
) -> tuple[list[Tensor], TruncationResult]:
    """PES meta-gradient (one tensor per rule parameter) from one truncation of both particles;
    with ``mask`` (flat, 1 = trained) only those parameters are perturbed (the rest get 0)."""
    theta = parameters_to_vector(rule.parameters()).detach()
    eps = torch.randn(theta.shape, generator=generator) * sigma
    if mask is not None:
        eps = eps * mask
    xis = state.accumulate(groups, eps)
    weights = late_weights(groups, steps, late_power)  # before the + particle advances the groups
    plus = unroll_truncation(
        rule, groups, graph_inputs, steps, particle=0, rule_params=_unflatten(rule, theta + eps),
        meta_loss=meta_loss, vmap=vmap, record_ratio=record_ratio,
    )
    minus = unroll_truncation(
        rule, groups, graph_inputs, steps, particle=1, rule_params=_unflatten(rule, theta - eps),
        meta_loss=meta_loss, vmap=vmap, replay=plus.batches,
    )
    diffs = [w * (a - b) for w, a, b in zip(weights, plus.group_losses, minus.group_losses)]
    grad = torch.stack([xi * d for xi, d in zip(xis, diffs)]).mean(0) / (2 * sigma**2)
    result = TruncationResult(
        torch.tensor((sum(plus.group_losses) + sum(minus.group_losses)) / (2 * len(groups))),
        [(a + b) / 2 for a, b in zip(plus.group_losses, minus.group_losses)],
        plus.inner_steps + minus.inner_steps,
        plus.update_ratio,
        plus.last_losses,
    )
    grads = list(_unflatten(rule, grad).values())
    return [g.clone() for g in grads], result
