"""Hidden-unit permutations of models and the node relabelling they imply on parameter graphs.

Convention: permuting units of a layer with `perm` means new unit i = old unit perm[i]. A graph
node of old unit j therefore corresponds to the node of new unit argsort(perm)[j].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaopt.graph import EdgeType, NodeType, ParameterGraph
from metaopt.graph.schema import EDGE_TYPE, NODE_LAYER, NODE_TYPE
from model_zoo import MLP, DeepSets, ResNet, TinyLM


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


# ---- symmetry cases: (model, permute(model) -> model, sigma(graph) -> node relabelling, inputs) ----
# Shared by the graph tests (the graph is isomorphic) and the GMN tests (outputs are equivariant).

def mlp_case():
    model = MLP((5, 8, 8, 8, 3), act=torch.nn.ReLU, layernorm=True, residual=True)
    p = torch.randperm(8)

    def permute(m):
        for i in range(3):  # the residual stream: all three hidden layers share one permutation
            permute_out(m.layers[i], p)
            permute_out(m.norms[i], p)
        for i in range(1, 4):
            permute_in(m.layers[i], p)
        return m

    def sigma(g):
        s = torch.arange(g.num_nodes)
        for i in range(3):
            relabel(s, layer_nodes(g, f"layers.{i}"), p)
        return s

    return model, permute, sigma, (torch.randn(2, 5),)


def resnet_case():
    model = ResNet(widths=(6, 8), blocks=(2, 1)).eval()
    stream = torch.randperm(6)
    inner = [torch.randperm(6), torch.randperm(6), torch.randperm(8)]

    def permute(m):
        permute_out(m.stem, stream), permute_out(m.bn, stream)
        for blk in (m.layers[0], m.layers[1]):
            permute_in(blk.conv1, stream)
            permute_out(blk.conv2, stream), permute_out(blk.bn2, stream)
        permute_in(m.layers[2].conv1, stream), permute_in(m.layers[2].shortcut[0], stream)
        for blk, q in zip(m.layers, inner):
            permute_out(blk.conv1, q), permute_out(blk.bn1, q), permute_in(blk.conv2, q)
        return m

    def sigma(g):
        s = torch.arange(g.num_nodes)
        relabel(s, layer_nodes(g, "stem"), stream)
        for i in range(2):
            relabel(s, layer_nodes(g, f"layers.{i}.conv2"), stream)
        for i, q in enumerate(inner):
            relabel(s, layer_nodes(g, f"layers.{i}.conv1"), q)
        return s

    return model, permute, sigma, (torch.randn(2, 3, 8, 8),)


def transformer_case():
    model = TinyLM(vocab=11, dim=12, heads=3, depth=2).eval()
    head_perms = [torch.randperm(3) for _ in range(2)]
    ff_perms = [torch.randperm(24) for _ in range(2)]
    units: list[torch.Tensor] = []

    def permute(m):
        units.clear()
        for blk, hp, fp in zip(m.blocks, head_perms, ff_perms):
            units.append(permute_heads(blk.self_attn, hp))
            permute_out(blk.linear1, fp), permute_in(blk.linear2, fp)
        return m

    def sigma(g):
        s = torch.arange(g.num_nodes)
        for i, (hp, fp, unit) in enumerate(zip(head_perms, ff_perms, units)):
            name = f"blocks.{i}.self_attn"
            for t in (NodeType.QUERY, NodeType.KEY, NodeType.VALUE):
                relabel(s, layer_nodes(g, name, (t,)), unit)
            relabel(s, layer_nodes(g, name, (NodeType.HEAD,)), hp)
            relabel(s, layer_nodes(g, f"blocks.{i}.linear1"), fp)
        return s

    return model, permute, sigma, (torch.randint(0, 11, (2, 7)),)


def deepsets_case():
    model = DeepSets(din=3, hidden=8, dout=2)
    p1, p2 = torch.randperm(8), torch.randperm(8)

    def permute(m):
        permute_out(m.eq1.lam, p1), permute_out(m.eq1.gam, p1)
        permute_in(m.eq2.lam, p1), permute_in(m.eq2.gam, p1)
        permute_out(m.rho[0], p2), permute_in(m.rho[2], p2)
        return m

    def sigma(g):
        s = torch.arange(g.num_nodes)
        relabel(s, layer_nodes(g, "eq1.lam"), p1)
        relabel(s, layer_nodes(g, "eq1.gam"), p1)
        relabel(s, layer_nodes(g, "rho.0"), p2)
        return s

    return model, permute, sigma, (torch.randn(2, 5, 3),)


SYMMETRY_CASES = {"mlp_ln_res": mlp_case, "resnet_bn": resnet_case, "transformer": transformer_case,
                  "deepsets": deepsets_case}
