"""Hidden-unit permutations of models and the node relabelling they imply on parameter graphs.

Convention: permuting units of a layer with `perm` means new unit i = old unit perm[i]. A graph
node of old unit j therefore corresponds to the node of new unit argsort(perm)[j].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaopt.graph import EdgeType, NodeType, ParameterGraph
from metaopt.graph.schema import EDGE_TYPE, NODE_LAYER, NODE_TYPE


# ---- model side ----------------------------------------------------------------------------------

@torch.no_grad()
def permute_out(m: nn.Module, perm: Tensor) -> None:
    """Permute output units of a Linear/Conv (rows) or the channels of a norm layer."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(m, name, None)
        if t is not None and t.dim() > 0:
            t.copy_(t[perm])


@torch.no_grad()
def permute_in(m: nn.Module, perm: Tensor, groups_of: int = 1) -> None:
    """Permute input units of a Linear/Conv (columns)."""
    m.weight.copy_(m.weight[:, perm])


@torch.no_grad()
def permute_heads(mha: nn.MultiheadAttention, head_perm: Tensor) -> Tensor:
    """Permute whole attention heads (q/k/v rows and out_proj columns); returns the unit perm."""
    E, H = mha.embed_dim, mha.num_heads
    D = E // H
    unit = (head_perm.view(-1, 1) * D + torch.arange(D).view(1, -1)).reshape(-1)
    rows = torch.cat([unit, unit + E, unit + 2 * E])
    mha.in_proj_weight.copy_(mha.in_proj_weight[rows])
    if mha.in_proj_bias is not None:
        mha.in_proj_bias.copy_(mha.in_proj_bias[rows])
    mha.out_proj.weight.copy_(mha.out_proj.weight[:, unit])
    return unit


@torch.no_grad()
def permute_qk_within_head(mha: nn.MultiheadAttention, head: int, perm: Tensor) -> Tensor:
    """Permute query and key dims of one head jointly (dot products unchanged)."""
    E, H = mha.embed_dim, mha.num_heads
    D = E // H
    unit = torch.arange(E)
    unit[head * D : (head + 1) * D] = head * D + perm
    rows = torch.cat([unit, unit + E, torch.arange(2 * E, 3 * E)])
    mha.in_proj_weight.copy_(mha.in_proj_weight[rows])
    if mha.in_proj_bias is not None:
        mha.in_proj_bias.copy_(mha.in_proj_bias[rows])
    return unit


# ---- graph side ---------------------------------------------------------------------------------

def layer_nodes(graph: ParameterGraph, name: str, types: tuple[NodeType, ...] = (NodeType.HIDDEN, NodeType.OUTPUT)) -> Tensor:
    """Nodes (in unit order) of the converted layer called `name` with one of `types`."""
    ids = [r["layer"] for r in graph.layers if r["name"] == name]
    assert ids, f"no layer named {name!r}; have {[r['name'] for r in graph.layers]}"
    mask = (graph.x[:, NODE_LAYER] == ids[0]) & torch.isin(graph.x[:, NODE_TYPE], torch.tensor([int(t) for t in types]))
    return mask.nonzero().squeeze(1)


def relabel(sigma: Tensor, nodes: Tensor, perm: Tensor) -> None:
    """Record in `sigma` the node relabelling of permuting `nodes` (unit order) by `perm`."""
    inv = torch.argsort(perm)
    sigma[nodes] = nodes[inv]


_ONE_TO_ONE = (EdgeType.NORM_IN, EdgeType.ACT_IN, EdgeType.RESIDUAL, EdgeType.PRODUCT_IN)


def extend_relabelling(graph: ParameterGraph, sigma: Tensor) -> Tensor:
    """Carry a relabelling of primary neurons to derived neurons (normed copies, residual sums...).

    A derived node t with a 1-1 structural in-edge from s maps to the target of that same kind of
    edge, in the same layer, out of sigma(s).
    """
    sigma = sigma.clone()
    asrc, adst = graph.aux_edge_index.long()
    atype = graph.aux_edge_attr[:, EDGE_TYPE].long()
    layer_of = graph.x[:, NODE_LAYER]
    order = torch.argsort(layer_of[adst], stable=True)
    done = torch.zeros(graph.num_nodes, dtype=torch.bool)
    succ: dict[tuple[int, int, int], int] = {}
    for e in order.tolist():
        succ[(int(atype[e]), int(layer_of[adst[e]]), int(asrc[e]))] = int(adst[e])
    for e in order.tolist():
        t, s, kind = int(adst[e]), int(asrc[e]), int(atype[e])
        if kind not in {int(k) for k in _ONE_TO_ONE} or done[t]:
            continue
        key = (kind, int(layer_of[t]), int(sigma[s]))
        if key in succ:
            sigma[t] = succ[key]
            done[t] = True
    return sigma


def assert_isomorphic(graph: ParameterGraph, values_a: Tensor, values_b: Tensor, sigma: Tensor) -> None:
    """The graph with values_a, relabelled by sigma, equals the graph with values_b.

    Node features are preserved by sigma; parameter edges map to parameter edges with equal
    features and equal values; structural edges map to structural edges.
    """
    x = graph.x
    assert torch.equal(x[sigma], x), "relabelling does not preserve node features"
    assert torch.equal(torch.sort(sigma).values, torch.arange(graph.num_nodes)), "sigma is not a permutation"

    def canon(src, dst, attr, vals):
        cols = [src.long(), dst.long()] + [attr[:, i].long() for i in range(attr.shape[1])]
        key = torch.stack(cols, 1)
        if vals is not None:
            key = torch.cat([key.double(), vals.double().view(-1, 1)], 1)
        order = torch.from_numpy(__import__("numpy").lexsort(key.numpy().T[::-1].copy()))
        return key[order]

    src, dst = graph.edge_index.long()
    a = canon(sigma[src], sigma[dst], graph.edge_attr, values_a)
    b = canon(src, dst, graph.edge_attr, values_b)
    assert torch.equal(a, b), "parameter edges do not map onto each other with equal values"
    asrc, adst = graph.aux_edge_index.long()
    assert torch.equal(canon(sigma[asrc], sigma[adst], graph.aux_edge_attr, None),
                       canon(asrc, adst, graph.aux_edge_attr, None)), "structural edges differ"
