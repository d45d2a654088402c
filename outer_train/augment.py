"""Function-preserving reparameterisation: a random permutation of a network's hidden units.

Hidden-unit nodes of the parameter graph (position -1) that share a node type and layer are
interchangeable; relabelling them moves every parameter edge (s, d) to (sigma(s), sigma(d)) with
the same structural attributes. The induced edge permutation is computed once per draw with a
sort + searchsorted (no Python loop over edges), checked to be a bijection and, because norm
groups, residual sums or attention heads can tie units together, checked numerically to leave
the network's loss unchanged; a draw that fails either check leaves the parameters as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from metaopt.graph.schema import NODE_LAYER, NODE_POSITION, NODE_TYPE


def hidden_unit_relabelling(graph, generator: torch.Generator) -> Tensor:
    """A random node relabelling ``sigma`` [N] permuting hidden units within each (type, layer) group."""
    x = graph.x.long()
    n = x.shape[0]
    sigma = torch.arange(n)
    hidden = (x[:, NODE_POSITION] < 0).nonzero().squeeze(1)
    if hidden.numel() == 0:
        return sigma
    group_key = x[hidden, NODE_TYPE] * 100_000 + x[hidden, NODE_LAYER]
    # Sort hidden nodes by (group, random score): within a group the order is a random permutation.
    score = torch.rand(hidden.numel(), generator=generator)
    order = torch.argsort(group_key.double() + score * 0.5, stable=True)
    by_group = torch.argsort(group_key, stable=True)
    sigma[hidden[by_group]] = hidden[order]
    return sigma


def edge_permutation(graph, sigma: Tensor) -> Tensor | None:
    """Target edge of every parameter edge under node relabelling ``sigma``, or None if the
    relabelling does not map parameter edges onto parameter edges one to one."""
    ei = graph.edge_index.long()
    n = int(graph.num_nodes)
    _, attr_id = torch.unique(graph.edge_attr.long(), dim=0, return_inverse=True)
    u = int(attr_id.max()) + 1 if attr_id.numel() else 1
    key = (ei[0] * n + ei[1]) * u + attr_id
    new_key = (sigma[ei[0]] * n + sigma[ei[1]]) * u + attr_id
    sorted_key, order = torch.sort(key)
    pos = torch.searchsorted(sorted_key, new_key).clamp(max=key.numel() - 1)
    if not bool((sorted_key[pos] == new_key).all()):
        return None
    target = order[pos]
    if torch.unique(target).numel() != target.numel():
        return None
    return target


def permute_params(
    graph,
    flat: Tensor,
    generator: torch.Generator,
    loss_of: Callable[[Tensor], Tensor] | None = None,
    rtol: float = 1e-4,
) -> tuple[Tensor, bool]:
    """``flat`` [E] with a random hidden-unit permutation applied; (values, applied?).

    ``loss_of(flat) -> scalar`` verifies function preservation (recommended: the task's loss on
    one batch); the permutation is dropped when the loss changes by more than ``rtol``.
    """
    target = edge_permutation(graph, hidden_unit_relabelling(graph, generator))
    if target is None:
        return flat, False
    new = torch.empty_like(flat)
    new[target] = flat
    if loss_of is not None:
        with torch.no_grad():
            a, b = float(loss_of(flat)), float(loss_of(new))
        if not abs(a - b) <= rtol * max(abs(a), 1e-12) + 1e-7:
            return flat, False
    return new, True
