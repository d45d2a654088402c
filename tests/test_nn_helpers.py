"""Helpers for the metaopt.nn tests: hand-built MLP parameter graphs and hidden-unit permutations.

The MLP graph follows the graph contract exactly (one edge per scalar parameter in parameter order,
int32 indices, int16 edge features), so the GMN tests do not depend on the converter. The tests at
the bottom check the helpers themselves.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from metaopt.graph import ParameterGraph
from metaopt.graph.schema import (
    EDGE_ATTR_DTYPE,
    EDGE_FEATURES,
    INDEX_DTYPE,
    NO_POSITION,
    NODE_FEATURES,
    Activation,
    EdgeType,
    NodeType,
)

ACTIVATIONS = {nn.ReLU: Activation.RELU, nn.Tanh: Activation.TANH, nn.GELU: Activation.GELU}


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


def mlp_graph(model: nn.Sequential) -> ParameterGraph:
    """Parameter graph of a Linear/activation nn.Sequential, built by hand per the graph contract.

    Nodes: ordered inputs, per Linear layer its output neurons (HIDDEN, or OUTPUT for the last
    layer) and one BIAS node. Edges: weight [out, in] row-major (in -> out, LINEAR), then bias
    (bias node -> neuron, BIAS), in model.parameters() order. No structural edges.
    """
    linears = [m for m in model if isinstance(m, nn.Linear)]
    acts = []
    for i, m in enumerate(model):
        if isinstance(m, nn.Linear):
            nxt = model[i + 1] if i + 1 < len(model) else None
            acts.append(ACTIVATIONS.get(type(nxt), Activation.NONE) if nxt is not None else Activation.NONE)
    rows: list[list[int]] = []
    edges: list[Tensor] = []
    attrs: list[Tensor] = []
    n_in = linears[0].in_features
    prev = list(range(n_in))
    rows += [[NodeType.INPUT, 0, i, Activation.NONE] for i in range(n_in)]
    for li, (lin, act) in enumerate(zip(linears, acts), start=1):
        last = li == len(linears)
        start = len(rows)
        out_ids = list(range(start, start + lin.out_features))
        rows += [
            [NodeType.OUTPUT if last else NodeType.HIDDEN, li, j if last else NO_POSITION, act]
            for j in range(lin.out_features)
        ]
        bias_id = len(rows)
        rows.append([NodeType.BIAS, li, NO_POSITION, Activation.NONE])
        src = torch.tensor(prev).repeat(lin.out_features)
        dst = torch.tensor(out_ids).repeat_interleave(lin.in_features)
        edges.append(torch.stack([src, dst]))
        a = torch.zeros(src.numel(), EDGE_FEATURES, dtype=torch.long)
        a[:, 0], a[:, 1] = EdgeType.LINEAR, li
        attrs.append(a)
        if lin.bias is not None:
            edges.append(torch.stack([torch.full((lin.out_features,), bias_id), torch.tensor(out_ids)]))
            b = torch.zeros(lin.out_features, EDGE_FEATURES, dtype=torch.long)
            b[:, 0], b[:, 1] = EdgeType.BIAS, li
            attrs.append(b)
        prev = out_ids
    names, shapes = zip(*[(n, tuple(p.shape)) for n, p in model.named_parameters()])
    return ParameterGraph(
        x=torch.tensor(rows, dtype=torch.long).view(-1, NODE_FEATURES),
        edge_index=torch.cat(edges, 1).to(INDEX_DTYPE),
        edge_attr=torch.cat(attrs, 0).to(EDGE_ATTR_DTYPE),
        aux_edge_index=torch.zeros(2, 0, dtype=INDEX_DTYPE),
        aux_edge_attr=torch.zeros(0, EDGE_FEATURES, dtype=EDGE_ATTR_DTYPE),
        param_names=list(names),
        param_shapes=list(shapes),
        layers=[],
        num_nodes=len(rows),
    )


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


def test_mlp_graph_follows_contract():
    model = make_mlp([3, 5, 4, 2], seed=0)
    g = mlp_graph(model)
    assert g.edge_index.dtype == torch.int32 and g.edge_attr.dtype == torch.int16
    assert g.num_params == sum(p.numel() for p in model.parameters())
    assert g.num_nodes == 3 + (5 + 1) + (4 + 1) + (2 + 1)
    vals = g.params_to_edges(model)
    w0 = model[0].weight
    # edge k of the first weight is (out o, in i) = divmod(k, in_features): src is input i
    k = 7
    o, i = divmod(k, 3)
    assert vals[k] == w0[o, i] and g.edge_index[0, k] == i and g.edge_index[1, k] == 3 + o
    back = g.edges_to_params(vals)
    assert all(torch.equal(back[n], p) for n, p in model.named_parameters())


def test_permute_mlp_hidden_keeps_function_and_correspondence():
    model = make_mlp([3, 6, 5, 2], seed=1)
    perm_model = permute_mlp_hidden(model, seed=3)
    x = torch.randn(8, 3)
    torch.testing.assert_close(model(x), perm_model(x))
    g = mlp_graph(model)
    c = edge_correspondence(g, model, lambda m: permute_mlp_hidden(m, seed=3))
    assert torch.equal(g.params_to_edges(perm_model), g.params_to_edges(model)[c])
    assert not torch.equal(c, torch.arange(g.num_params))


def test_relabel_hidden_nodes_only_moves_hidden():
    g = mlp_graph(make_mlp([3, 6, 2], seed=0))
    new, perm = relabel_hidden_nodes(g, seed=1)
    pos = g.x[:, 2]
    assert torch.equal(perm[pos >= 0], torch.nonzero(pos >= 0).flatten())
    assert not torch.equal(perm, torch.arange(g.num_nodes))
    torch.testing.assert_close(new.x[perm], g.x)
