"""`simulate(graph, values, x)`: run the network by message passing over its parameter graph.

This is the proof that the graph *is* the network: for the MLP family (Linear, biases, elementwise
activations, residual adds, gating products, LayerNorm/RMSNorm), also behind a spatial feature grid
(GRID nodes take their interpolation weights at the query points `x`), it reproduces `model(x)` from
the graph and the per-edge values alone. Layers are visited in order; within a layer everything is
vectorised over edges and nodes (index_add), never a loop over neurons.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .converters.grid import cell_weights
from .parameter_graph import ParameterGraph
from .schema import (
    EDGE_LAYER,
    EDGE_TYPE,
    NODE_ACTIVATION,
    NODE_LAYER,
    NODE_POSITION,
    NODE_TYPE,
    Activation,
    EdgeType,
    NodeType,
)

_ACTS = {
    Activation.NONE: lambda v: v,
    Activation.RELU: torch.relu,
    Activation.GELU: F.gelu,
    Activation.TANH: torch.tanh,
    Activation.SIGMOID: torch.sigmoid,
    Activation.SILU: F.silu,
    Activation.SIN: torch.sin,
    Activation.ELU: F.elu,
    Activation.SOFTPLUS: F.softplus,
    Activation.MISH: F.mish,
    Activation.HARDSWISH: F.hardswish,
    Activation.LEAKY_RELU: F.leaky_relu,  # default slope 0.01: the graph does not store slopes
}
_SUPPORTED_EDGES = {EdgeType.LINEAR, EdgeType.BIAS, EdgeType.NORM_WEIGHT, EdgeType.NORM_BIAS, EdgeType.GRID_FEATURE}
_WEIGHTED_EDGES = (EdgeType.LINEAR, EdgeType.GRID_FEATURE)  # value * source neuron
_SUPPORTED_AUX = {EdgeType.RESIDUAL, EdgeType.NORM_IN, EdgeType.ACT_IN, EdgeType.PRODUCT_IN}


def unsupported_edge_types(graph: ParameterGraph) -> list[str]:
    """Names of the graph's edge types `simulate` cannot run (empty: it can)."""
    found = set(torch.unique(graph.edge_attr[:, EDGE_TYPE].long()).tolist()) - {int(t) for t in _SUPPORTED_EDGES}
    found |= set(torch.unique(graph.aux_edge_attr[:, EDGE_TYPE].long()).tolist()) - {int(t) for t in _SUPPORTED_AUX}
    return sorted(EdgeType(t).name for t in found)


def simulate(graph: ParameterGraph, values: Tensor, x: Tensor, eps: float = 1e-5) -> Tensor:
    """Outputs [B, n_out] of the network with per-edge `values` [E] on inputs `x` [B, n_in].

    For a model starting with a spatial feature grid, `x` holds the query points [B, d].

    `eps` is the norm layers' epsilon (the graph stores structure, not hyperparameters).
    Raises NotImplementedError for graphs outside the MLP family (convolutions, attention, ...).
    """
    names = unsupported_edge_types(graph)
    if names:
        raise NotImplementedError(f"simulate covers the MLP family; this graph has edge types {names}")
    etype = graph.edge_attr[:, EDGE_TYPE].long()
    aux_type = graph.aux_edge_attr[:, EDGE_TYPE].long()

    nx = graph.x
    N, B = int(graph.num_nodes), x.shape[0]
    src, dst = graph.edge_index.long()
    asrc, adst = graph.aux_edge_index.long()
    h = x.new_zeros(N, B)
    inputs = (nx[:, NODE_TYPE] == NodeType.INPUT).nonzero().squeeze(1)
    if inputs.numel():
        h[inputs[nx[inputs, NODE_POSITION].argsort()]] = x.t()
    grid_nodes, grid_w = cell_weights(graph, x)  # GRID node values: interpolation weights at x
    h[grid_nodes] = grid_w.to(h.dtype)
    h[nx[:, NODE_TYPE] == NodeType.BIAS] = 1.0
    h[nx[:, NODE_TYPE] == NodeType.NORM] = 1.0
    kinds = {rec["layer"]: rec["kind"] for rec in graph.layers}

    node_layer = nx[:, NODE_LAYER]
    edge_dst_layer = node_layer[dst]
    aux_dst_layer = node_layer[adst] if adst.numel() else adst
    computed = ~torch.isin(nx[:, NODE_TYPE], torch.tensor([int(NodeType.INPUT), int(NodeType.BIAS),
                                                          int(NodeType.NORM), int(NodeType.GRID)]))
    for layer in torch.unique(node_layer[computed]).tolist():
        nodes = (computed & (node_layer == layer)).nonzero().squeeze(1)
        e = (edge_dst_layer == layer).nonzero().squeeze(1)
        a = (aux_dst_layer == layer).nonzero().squeeze(1) if adst.numel() else adst
        pre = h.new_zeros(N, B)
        lin = e[torch.isin(etype[e], torch.tensor([int(t) for t in _WEIGHTED_EDGES]))]
        pre.index_add_(0, dst[lin], values[lin, None] * h[src[lin]])
        bias = e[etype[e] == EdgeType.BIAS]
        pre.index_add_(0, dst[bias], values[bias, None].expand(-1, B).to(h.dtype))
        res = a[aux_type[a] == EdgeType.RESIDUAL]
        pre.index_add_(0, adst[res], h[asrc[res]])
        act_in = a[aux_type[a] == EdgeType.ACT_IN]
        pre[adst[act_in]] = h[asrc[act_in]]
        prod = a[aux_type[a] == EdgeType.PRODUCT_IN]
        if prod.numel():  # multiply operands rank by rank (each rank hits a node at most once)
            prod = prod[torch.argsort(adst[prod], stable=True)]
            d = adst[prod]
            first = torch.ones_like(d, dtype=torch.bool)
            first[1:] = d[1:] != d[:-1]
            start = torch.cummax(torch.where(first, torch.arange(d.numel()), 0), 0).values
            rank = torch.arange(d.numel()) - start
            pre[d] = 1.0
            for r in range(int(rank.max()) + 1):
                sel = prod[rank == r]
                pre[adst[sel]] = pre[adst[sel]] * h[asrc[sel]]
        norm_in = a[aux_type[a] == EdgeType.NORM_IN]
        if norm_in.numel():
            pre = _normalise(pre, h, values, norm_in, asrc, adst, e, etype, src, dst, kinds[layer], eps)
        acts = nx[nodes, NODE_ACTIVATION]
        for act in torch.unique(acts).tolist():
            if act not in _ACTS:
                raise NotImplementedError(f"simulate: activation {Activation(act).name} is not elementwise-known")
            sel = nodes[acts == act]
            h[sel] = _ACTS[act](pre[sel])
    outputs = (nx[:, NODE_TYPE] == NodeType.OUTPUT).nonzero().squeeze(1)
    outputs = outputs[nx[outputs, NODE_POSITION].argsort()]
    return h[outputs].t()


def _normalise(pre, h, values, norm_in, asrc, adst, e, etype, src, dst, kind, eps):
    """LayerNorm / RMSNorm (or a bare parameter scale) over the layer's neurons, then gamma and beta."""
    if kind not in ("layernorm", "rmsnorm", "param_scale"):
        raise NotImplementedError(f"simulate: normalisation '{kind}' is outside the MLP family")
    z = h[asrc[norm_in]]  # [K, B] in the order of the NORM_IN edges
    out_nodes = adst[norm_in]
    if kind == "param_scale":  # x * parameter vector: scale only
        pass
    elif kind == "layernorm":
        z = (z - z.mean(0, keepdim=True)) / torch.sqrt(z.var(0, unbiased=False, keepdim=True) + eps)
    else:
        z = z / torch.sqrt(z.pow(2).mean(0, keepdim=True) + eps)
    scale = pre.new_ones(pre.shape[0], 1)
    gw = e[etype[e] == EdgeType.NORM_WEIGHT]
    scale[dst[gw], 0] = values[gw]
    pre[out_nodes] = z * scale[out_nodes]
    gb = e[etype[e] == EdgeType.NORM_BIAS]
    pre.index_add_(0, dst[gb], values[gb, None].expand(-1, pre.shape[1]).to(pre.dtype))
    return pre
