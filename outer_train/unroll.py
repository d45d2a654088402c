"""Inner steps of many tasks at once with one rule forward, shared by the TBPTT and PES estimators.

Per inner step: each group computes its members' losses and gradients (``torch.func.vmap`` over
members of a buffer-free group, a loop otherwise), every member advances its state with
`metaopt.optim.core.advance`; on refresh steps the rule runs ONCE on a PyG batch of all members'
graphs and each member gets its lr scale; then each member takes `metaopt.optim.core.finish`,
the very functions `GMNOptimizer.step` calls. Gradients flow to the rule's parameters through the
updated inner parameters (and, with ``second_order``, through the inner gradients too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch_geometric.data import Batch

from metaopt.optim import UpdateRule, core
from metaopt.optim.features import Features

from .tasks import TaskGroup


@dataclass
class StepRecord:
    """What one inner step of a particle produced: losses per group [M] and optional diagnostics."""

    losses: list[Tensor]
    val_losses: list[Tensor] | None = None
    update_ratio: Tensor | None = None  # |update| / |param| over all edges of group 0, member 0
    extras: dict[str, float] = field(default_factory=dict)


def batched_graph(rule: UpdateRule, groups: list[TaskGroup]):
    """The rule's prepared input for every member's graph (group-major, member order), built once per group set."""
    graphs = [g.task.graph for g in groups for _ in g.member_seeds]
    return rule.prepare(Batch.from_data_list(graphs), "cpu")


def member_losses_and_grads(group: TaskGroup, params: list[Tensor], batches, vmap: bool) -> tuple[Tensor, list[Tensor]]:
    """Losses [M] and gradients (one [E] per member) of the group's members at ``params``."""
    grad_and_value = torch.func.grad_and_value(group.loss)
    if vmap and group.vmappable:
        xs = torch.stack([b[0] for b in batches])
        ys = torch.stack([b[1] for b in batches])
        grads, losses = torch.func.vmap(grad_and_value)(torch.stack(params), (xs, ys))
        return losses, list(grads.unbind(0))
    out = [grad_and_value(p, b) for p, b in zip(params, batches)]
    return torch.stack([v for _, v in out]), [g for g, _ in out]


def inner_step(
    rule: UpdateRule,
    groups: list[TaskGroup],
    graph_inputs,
    particle: int,
    batches: list[list[tuple[Tensor, Tensor]]],
    *,
    rule_params: dict[str, Tensor] | None = None,
    second_order: bool = False,
    vmap: bool = True,
    val: bool = False,
    record_ratio: bool = False,
) -> StepRecord:
    """Advance particle ``particle`` of every group by one inner step; returns the pre-step losses.

    ``batches[g][m]`` is member m's batch of group g (shared by all particles, as antithetic PES
    needs). Parameters and states are replaced in the groups (the old tensors stay in autograd).
    """
    losses, grads_all, params_all, states_all = [], [], [], []
    for g, group in enumerate(groups):
        m = len(group.member_seeds)
        sl = slice(particle * m, (particle + 1) * m)
        params = group.params[sl]
        loss, grads = member_losses_and_grads(group, params, batches[g], vmap)
        if not second_order:
            grads = [gr.detach() for gr in grads]
        losses.append(loss)
        grads_all.append(grads)
        params_all.append(params)
        states_all.append([core.advance(st, gr, group.hyper, p) for p, gr, st in zip(params, grads, group.states[sl])])

    # Truncations are whole multiples of refresh_every, so every member is due at the same steps.
    members = [(group, p, gr, st) for group, ps, gs, sts in zip(groups, params_all, grads_all, states_all)
               for p, gr, st in zip(ps, gs, sts)]
    due = rule.net is not None and core.refresh_due(members[0][3].step, rule.config.refresh_every)
    if due:
        feats = [core.rule_features(group.index, gr, p, st, rule,
                                    core.rule_lr(rule, st.distance is not None, group.hyper.lr),
                                    group.hyper.total_steps, (group.hyper.beta1, group.hyper.beta2))
                 for group, p, gr, st in members]
        merged = Features(
            edge=torch.cat([f.edge for f in feats]),
            node=torch.cat([f.node for f in feats]),
            graph=torch.cat([f.graph for f in feats]),
        )
        scale, _ = core.scale_from_log(rule.log_scale(graph_inputs, merged, rule_params))
        for (_, _, _, st), s in zip(members, scale.split([f.edge.shape[0] for f in feats])):
            # lr-free: d sets the step size, the rule shares it out (and with global_bound corrects it)
            st.lr_scale = s if st.distance is None else core.normalise_scale(s, rule, rule_params, core.scale_sizes(st))

    ratio = None
    for g, group in enumerate(groups):
        m = len(group.member_seeds)
        for i in range(m):
            new, states_all[g][i] = core.finish(params_all[g][i], states_all[g][i], group.hyper,
                                                scaled=rule.net is not None, grad=grads_all[g][i])
            if record_ratio and g == 0 and i == 0:
                with torch.no_grad():
                    ratio = ((new - params_all[g][i]).abs() / (params_all[g][i].abs() + 1e-12)).detach()
            group.params[particle * m + i] = new
            group.states[particle * m + i] = states_all[g][i]

    val_losses = None
    if val:
        val_losses = []
        for g, group in enumerate(groups):
            m = len(group.member_seeds)
            vb = group.val_batch()
            val_losses.append(torch.stack([group.loss(p, vb) for p in group.params[particle * m : (particle + 1) * m]]))
    return StepRecord(losses, val_losses, ratio)


def final_losses(groups: list[TaskGroup], particle: int, batches: list[list[tuple[Tensor, Tensor]]]) -> list[Tensor]:
    """Each member's loss at its current parameters on the given batches (the loss after the last step)."""
    out = []
    for g, group in enumerate(groups):
        m = len(group.member_seeds)
        out.append(torch.stack([group.loss(p, b) for p, b in zip(group.params[particle * m : (particle + 1) * m], batches[g])]))
    return out
