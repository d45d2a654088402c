"""Helpers for the metaopt.nn tests: small MLPs, node relabelling and edge correspondences of
hidden-unit permutations (model-side permutations of other families come from tests/permutations.py).
The tests at the bottom check the helpers themselves.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from metaopt import to_graph
from metaopt.graph import ParameterGraph


def make_mlp(sizes: list[int], act: type[nn.Module] = nn.Tanh, seed: int | None = None) -> nn.Sequential:
    """nn.Sequential MLP with the given layer sizes and an activation between layers."""
    if seed is not None:
        torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        mods.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            mods.append(act())
    return nn.Sequential(*mods)


def relabel_hidden_nodes(graph: ParameterGraph, seed: int = 0) -> tuple[ParameterGraph, Tensor]:
    """Randomly renumber the graph's interchangeable (position -1) nodes, reordering nothing else.

    Returns the new graph and ``perm`` with ``new_x[perm[i]] == x[i]`` (old node i is new node
    perm[i]); edges keep their order, so edge values and edge outputs must be unchanged.
    """
    g = torch.Generator().manual_seed(seed)
    n = graph.num_nodes
    hidden = torch.nonzero(graph.x[:, 2] < 0).flatten()
    perm = torch.arange(n)
    perm[hidden] = hidden[torch.randperm(hidden.numel(), generator=g)]
    new = graph.copy_structure()
    x = torch.empty_like(graph.x)
    x[perm] = graph.x
    new.x = x
    new.edge_index = perm[graph.edge_index.long()].to(graph.edge_index.dtype)
    if graph.aux_edge_index.numel():
        new.aux_edge_index = perm[graph.aux_edge_index.long()].to(graph.aux_edge_index.dtype)
    return new, perm


def permute_mlp_hidden(model: nn.Sequential, seed: int = 0) -> nn.Sequential:
    """A copy of the MLP with the hidden neurons of every hidden layer randomly permuted (same function)."""
    g = torch.Generator().manual_seed(seed)
    new = copy.deepcopy(model)
    linears = [m for m in new if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for a, b in zip(linears[:-1], linears[1:]):
            p = torch.randperm(a.out_features, generator=g)
            a.weight.copy_(a.weight[p])
            if a.bias is not None:
                a.bias.copy_(a.bias[p])
            b.weight.copy_(b.weight[:, p])
    return new


def edge_correspondence(graph: ParameterGraph, model: nn.Module, permute) -> Tensor:
    """Index ``c`` with ``values_permuted[k] == values[c[k]]`` for a parameter permutation ``permute``.

    Writes each edge's own id into a copy of the model's parameters, applies ``permute`` (a function
    model -> permuted model) and reads the ids back in edge order.
    """
    tagged = copy.deepcopy(model).double()
    ids = torch.arange(graph.num_params, dtype=torch.float64)
    with torch.no_grad():
        for p, v in zip(tagged.parameters(), graph.edges_to_params(ids).values()):
            p.copy_(v)
    return graph.params_to_edges(permute(tagged)).round().long()


# ---- checks of the helpers themselves ------------------------------------------------------------


def test_permute_mlp_hidden_keeps_function_and_correspondence():
    model = make_mlp([3, 6, 5, 2], seed=1)
    perm_model = permute_mlp_hidden(model, seed=3)
    x = torch.randn(8, 3)
    torch.testing.assert_close(model(x), perm_model(x))
    g = to_graph(model)
    c = edge_correspondence(g, model, lambda m: permute_mlp_hidden(m, seed=3))
    assert torch.equal(g.params_to_edges(perm_model), g.params_to_edges(model)[c])
    assert not torch.equal(c, torch.arange(g.num_params))


def test_relabel_hidden_nodes_only_moves_hidden():
    g = to_graph(make_mlp([3, 6, 2], seed=0))
    new, perm = relabel_hidden_nodes(g, seed=1)
    pos = g.x[:, 2]
    assert torch.equal(perm[pos >= 0], torch.nonzero(pos >= 0).flatten())
    assert not torch.equal(perm, torch.arange(g.num_nodes))
    torch.testing.assert_close(new.x[perm], g.x)
