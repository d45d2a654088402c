"""Rules of the MLP family: dense weights (also from grid cells, or tied to an earlier use), flattened-map
weights, biases,
parameter tables added in place, residual sums and activated copies, products (gating)."""

from __future__ import annotations

import math

import torch

from ..schema import EdgeType


def _of(state, ids, *types):
    return ids[torch.isin(state.etype[ids], torch.tensor([int(t) for t in types]))]


def _aux(state, ids, t):
    return ids[state.aux_type[ids] == t]


def weighted(state, lid, nodes, e, a):
    """LINEAR / GRID_FEATURE: out = W @ in over the distinct source neurons (any per-neuron shape)."""
    sel = _of(state, e, EdgeType.LINEAR, EdgeType.GRID_FEATURE)
    if not sel.numel():
        return []
    usrc, col = torch.unique(state.src[sel], return_inverse=True)
    X = state.read(lid, usrc)
    W = X.new_zeros(nodes.numel(), usrc.numel())
    W.index_put_((state.local[state.dst[sel]], col), state.values[sel], accumulate=True)
    out = (W @ X.reshape(usrc.numel(), -1)).reshape(nodes.numel(), *X.shape[1:])
    return [(torch.arange(nodes.numel()), out)]


def flat(state, lid, nodes, e, a):
    """LINEAR_FLAT: a dense weight over a flattened map; edge K = the (d, h, w) read in its source."""
    sel = _of(state, e, EdgeType.LINEAR_FLAT)
    if not sel.numel():
        return []
    usrc, col = torch.unique(state.src[sel], return_inverse=True)
    X = state.read(lid, usrc)  # [u, B, *T]
    n = (state.record(lid).get("op") or {}).get("copies")
    if n:  # repeated neurons (patch merging): K0 = copy, the value's last dim holds the copies
        if X.shape[-1] != n:
            raise NotImplementedError(f"simulate: {state.where(lid)} reads {n} copies of neurons whose values "
                                      f"do not carry them")
        W = X.new_zeros(nodes.numel(), usrc.numel() * n)
        W.index_put_((state.local[state.dst[sel]], col * n + state.kpos[sel][:, 0]), state.values[sel],
                     accumulate=True)
        out = W @ X.movedim(-1, 1).reshape(usrc.numel() * n, -1)
        return [(torch.arange(nodes.numel()), out.reshape(nodes.numel(), *X.shape[1:-1]))]
    T = tuple(X.shape[2:])
    if len(T) > 3:
        raise NotImplementedError(f"simulate: {state.where(lid)} reads a flattened map of {len(T)} dims")
    P = math.prod(T)
    f = col * P
    coords = state.kpos[sel][:, 3 - len(T):] if T else state.kpos[sel][:, :0]
    stride = 1
    for d in reversed(range(len(T))):
        if bool((coords[:, d] >= T[d]).any()):
            raise NotImplementedError(f"simulate: {state.where(lid)} reads positions outside its input map")
        f = f + coords[:, d] * stride
        stride *= T[d]
    Xf = X.movedim(1, -1).reshape(usrc.numel() * P, state.B)
    W = X.new_zeros(nodes.numel(), usrc.numel() * P)
    W.index_put_((state.local[state.dst[sel]], f), state.values[sel], accumulate=True)
    return [(torch.arange(nodes.numel()), W @ Xf)]


def tied(state, lid, nodes, e, a):
    """A Linear reading a weight whose edges belong to its first use (an LM head tied to the token
    embedding): W is that parameter's edge values (edge k = element k), rows the layer's neurons in
    order, columns the recorded input neurons (``op["tied"]``)."""
    out = []
    for use in (state.record(lid).get("op") or {}).get("tied", []):
        if "in" not in use:
            raise NotImplementedError(f"simulate: {state.where(lid)} reuses the tied parameter {use['param']!r} "
                                      f"in a layout simulate does not replay")
        g = state.graph
        i = g.param_names.index(use["param"])
        start = g.param_offsets[i]
        shape = list(g.param_shapes[i])
        W = state.values[start:start + math.prod(shape)].view(shape)
        W = W.t() if use["transposed"] else W
        src = torch.tensor(use["in"], dtype=torch.long)
        if tuple(W.shape) != (nodes.numel(), src.numel()):
            raise NotImplementedError(f"simulate: {state.where(lid)}: tied parameter {use['param']!r} of shape "
                                      f"{tuple(W.shape)} read by {nodes.numel()} neurons from {src.numel()}")
        X = state.read(lid, src)
        out.append((torch.arange(nodes.numel()),
                    (W @ X.reshape(src.numel(), -1)).reshape(nodes.numel(), *X.shape[1:])))
    return out


def bias(state, lid, nodes, e, a):
    sel = _of(state, e, EdgeType.BIAS)
    if not sel.numel():
        return []
    return [(state.local[state.dst[sel]], state.values[sel])]  # per-neuron shape (): broadcast


def table(state, lid, nodes, e, a):
    """PARAM_ADD into the layer's own (SUM) neurons: a positional table added where it is read."""
    sel = _of(state, e, EdgeType.PARAM_ADD)
    if not sel.numel():
        return []
    shape = (state.record(lid).get("op") or {}).get("rows_shape", [])
    return [(torch.arange(nodes.numel()), state.table(lid, nodes, len(shape)))]


def copies(state, lid, nodes, e, a):
    """RESIDUAL (each operand adds into the sum neuron) and ACT_IN (the activated copy's input)."""
    sel = a[torch.isin(state.aux_type[a], torch.tensor([int(EdgeType.RESIDUAL), int(EdgeType.ACT_IN)]))]
    if not sel.numel():
        return []
    return [(state.local[state.adst[sel]], state.read(lid, state.asrc[sel]))]


def product(state, lid, nodes, e, a):
    """PRODUCT_IN: each product neuron is the product of its operands (broadcast: SE gates)."""
    sel = _aux(state, a, EdgeType.PRODUCT_IN)
    if not sel.numel():
        return []
    sel = sel[torch.argsort(state.adst[sel], stable=True)]
    d = state.adst[sel]
    V = state.read(lid, state.asrc[sel])
    udst, inv = torch.unique_consecutive(d, return_inverse=True)
    first = torch.ones_like(d, dtype=torch.bool)
    first[1:] = d[1:] != d[:-1]
    start = torch.cummax(torch.where(first, torch.arange(d.numel()), 0), 0).values
    rank = torch.arange(d.numel()) - start
    out = V.new_ones(udst.numel(), *V.shape[1:])
    for r in range(int(rank.max()) + 1):  # each rank hits a product neuron at most once
        m = rank == r
        out[inv[m]] = out[inv[m]] * V[m]
    return [(state.local[udst], out)]
