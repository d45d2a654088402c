"""Truncated backpropagation through time over K inner steps.

Inner parameters and optimizer states persist across truncations and are detached at each
truncation's start, so memory grows with K, not with the task's horizon. The meta-loss is the
mean log loss at the K parameter vectors the truncation produced (training loss on the batch
each step sees next, or a fixed validation batch); its gradient reaches the rule through every
update (and through the inner gradients too with ``second_order``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metaopt.optim import UpdateRule

from .meta_loss import late_weights, truncation_meta_loss
from .tasks import TaskGroup
from .unroll import final_losses, inner_step


@dataclass
class TruncationResult:
    """Meta-loss (differentiable for TBPTT), per-group meta-losses, inner steps done, diagnostics."""

    meta_loss: Tensor
    group_losses: list[float]
    inner_steps: int
    update_ratio: Tensor | None
    last_losses: list[float]
    batches: list[list[Any]] | None = None
    group_loss_tensors: list[Tensor] | None = None  # the per-group meta-losses with autograd (TBPTT's weighting)  # per step (and the tail), per group: what the truncation used


def detach_groups(groups: list[TaskGroup]) -> None:
    """Cut every group's inner state from autograd (the truncation boundary)."""
    for group in groups:
        group.params = [p.detach() for p in group.params]
        group.states = [s.detach() for s in group.states]


def unroll_truncation(
    rule: UpdateRule,
    groups: list[TaskGroup],
    graph_inputs,
    steps: int,
    *,
    particle: int = 0,
    rule_params: dict[str, Tensor] | None = None,
    second_order: bool = False,
    meta_loss: str = "train",
    vmap: bool = True,
    record_ratio: bool = False,
    replay: list[list[Any]] | None = None,
) -> TruncationResult:
    """Run ``steps`` inner steps of one particle of every group; returns the truncation's meta-loss.

    Without ``replay`` the groups draw their batches and advance (step counters, batch streams);
    the result's ``batches`` are what was drawn. ``replay=<an earlier result's batches>`` runs
    another particle on exactly those batches and leaves the groups' counters alone (PES).
    """
    advance = replay is None
    per_group: list[list[Tensor]] = [[] for _ in groups]
    ratio = None
    batches_by_step = []
    for t in range(steps):
        batches = [g.next_batches() for g in groups] if advance else replay[t]
        batches_by_step.append(batches)
        rec = inner_step(
            rule, groups, graph_inputs, particle, batches,
            rule_params=rule_params, second_order=second_order, vmap=vmap,
            val=meta_loss == "val", record_ratio=record_ratio and t == steps - 1,
        )
        if rec.update_ratio is not None:
            ratio = rec.update_ratio
        for g in range(len(groups)):
            if meta_loss == "val":
                per_group[g].append(rec.val_losses[g])
            elif t > 0:  # L(p_0) does not depend on the rule
                per_group[g].append(rec.losses[g])
    if meta_loss == "train":
        tail = [g.peek_batches() for g in groups] if advance else replay[steps]
        batches_by_step.append(tail)
        for g, loss in enumerate(final_losses(groups, particle, tail)):
            per_group[g].append(loss)
    if advance:
        for group in groups:
            group.step += steps
    group_losses = [truncation_meta_loss(ls) for ls in per_group]
    total = torch.stack(group_losses).mean()
    return TruncationResult(
        total,
        [float(x.detach()) for x in group_losses],
        steps * sum(len(g.member_seeds) for g in groups),
        ratio,
        [float(ls[-1].detach().mean()) for ls in per_group],
        batches_by_step,
        group_losses,
    )


def tbptt_gradient(
    rule: UpdateRule,
    groups: list[TaskGroup],
    graph_inputs,
    steps: int,
    *,
    second_order: bool = False,
    meta_loss: str = "train",
    vmap: bool = True,
    record_ratio: bool = False,
    late_power: float = 0.0,
) -> tuple[list[Tensor], TruncationResult]:
    """Meta-gradient (one tensor per rule parameter) of one truncation of every group (each group's
    meta-loss weighted by `late_weights`; the reported meta-loss is unweighted)."""
    detach_groups(groups)
    params = [p for p in rule.parameters()]
    weights = late_weights(groups, steps, late_power)
    res = unroll_truncation(
        rule, groups, graph_inputs, steps,
        second_order=second_order, meta_loss=meta_loss, vmap=vmap, record_ratio=record_ratio,
    )
    objective = res.meta_loss if late_power == 0 else torch.stack(
        [w * loss for w, loss in zip(weights, res.group_loss_tensors)]).mean()
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    detach_groups(groups)
    res.meta_loss = res.meta_loss.detach()
    res.group_loss_tensors = None
    return grads, res
