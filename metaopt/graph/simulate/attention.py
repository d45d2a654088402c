"""nn.MultiheadAttention layers (kind ``multihead_attention``), head-aware from the graph.

The layer's QUERY/KEY/VALUE neurons are the in-projections of its inputs (ATTN_Q/K/V edges,
BIAS, ATTN_BIAS_KV for add_bias_kv); each HEAD node's members (HEAD_MEMBER) say which neurons
attend together, QK_PAIR edges which key neuron each query neuron is dotted with. Per head:
softmax(q k^T / sqrt(head dim)) over the key tokens, applied to the head's value neurons; the
output neurons are ATTN_O edges from the attended values, plus BIAS. The layer record (op)
gives the token layout: ``batch_first``, ``batched``, ``add_zero_attn``. Masks are not recorded:
a masked call is marked inexact at conversion and refused.

The whole layer is computed at once (a layer rule, rules.LAYER_RULES); only the output neurons
are read by other layers, the others hold zeros.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..schema import EdgeType, NodeType


def _project(state, lid, e, etype, targets: Tensor) -> Tensor | None:
    """W @ inputs for the edges of `etype` into `targets` (sorted node ids): [n, *value shape]."""
    sel = e[state.etype[e] == etype]
    if not sel.numel():
        return None
    usrc, col = torch.unique(state.src[sel], return_inverse=True)
    X = state.read(lid, usrc)
    W = X.new_zeros(targets.numel(), usrc.numel())
    W.index_put_((torch.searchsorted(targets, state.dst[sel]), col), state.values[sel], accumulate=True)
    return (W @ X.reshape(usrc.numel(), -1)).reshape(targets.numel(), *X.shape[1:])


def _vector(state, e, etype, targets: Tensor, dtype) -> Tensor | None:
    """Per-target values of the edges of `etype` into `targets` (biases), or None without any."""
    sel = e[state.etype[e] == etype]
    sel = sel[torch.isin(state.dst[sel], targets)]
    if not sel.numel():
        return None
    out = torch.zeros(targets.numel(), dtype=dtype)
    out[torch.searchsorted(targets, state.dst[sel])] = state.values[sel]
    return out


def _tokens_last(v: Tensor, op: dict) -> Tensor:
    """[n, *per-neuron] -> [n, B, T]."""
    if not op.get("batched", True):
        return v.unsqueeze(1)
    return v if op.get("batch_first", False) else v.transpose(1, 2)


def _tokens_back(v: Tensor, op: dict) -> Tensor:
    if not op.get("batched", True):
        return v.squeeze(1)
    return v if op.get("batch_first", False) else v.transpose(1, 2)


def heads(state, lid, q: Tensor, k: Tensor, v: Tensor, Q: Tensor, K: Tensor, V: Tensor,
          scale: float | None = None) -> Tensor:
    """softmax(Q K^T * scale) V per head, from the layer's HEAD_MEMBER / QK_PAIR edges.

    q, k, v: sorted node ids of the query/key/value neurons; Q, K, V their values [n, B, T].
    Returns the attended values [len(v), B, T_q]. `scale` defaults to 1/sqrt(head dim).
    """
    aux = (state.aux_layer == lid).nonzero().squeeze(1)
    member = aux[state.aux_type[aux] == EdgeType.HEAD_MEMBER]
    pair = aux[state.aux_type[aux] == EdgeType.QK_PAIR]
    head_of = torch.full((state.ntype.numel(),), -1, dtype=torch.long)
    head_of[state.asrc[member]] = state.adst[member]
    pq, pk = state.asrc[pair], state.adst[pair]
    out = V.new_zeros(v.numel(), V.shape[1], Q.shape[2])
    for h in torch.unique(head_of[q]).tolist():
        sel = head_of[pq] == h
        qi, ki = torch.searchsorted(q, pq[sel]), torch.searchsorted(k, pk[sel])
        vi = torch.searchsorted(v, v[head_of[v] == h])
        s = scale if scale is not None else 1.0 / math.sqrt(qi.numel())
        scores = torch.einsum("dbi,dbj->bij", Q[qi] * s, K[ki])
        out[vi] = torch.einsum("bij,dbj->dbi", scores.softmax(-1), V[vi])
    return out


def multihead(state, lid, nodes, e, a) -> Tensor:
    op = state.record(lid).get("op") or {}
    nt = state.ntype[nodes]
    q, k, v = (nodes[nt == t] for t in (NodeType.QUERY, NodeType.KEY, NodeType.VALUE))
    out_nodes = nodes[nt == NodeType.HIDDEN]
    parts = []
    for etype, targets in ((EdgeType.ATTN_Q, q), (EdgeType.ATTN_K, k), (EdgeType.ATTN_V, v)):
        P = _project(state, lid, e, etype, targets)
        if P is None:
            raise NotImplementedError(f"simulate: {state.where(lid)} has no {etype.name} edges")
        P = _tokens_last(P, op)
        b = _vector(state, e, EdgeType.BIAS, targets, P.dtype)
        if b is not None:
            P = P + b.view(-1, 1, 1)
        parts.append(P)
    Q, K, V = parts
    B = Q.shape[1]
    for i, targets in ((1, k), (2, v)):  # add_bias_kv: one more key/value token, then add_zero_attn
        b = _vector(state, e, EdgeType.ATTN_BIAS_KV, targets, Q.dtype)
        if b is not None:
            parts[i] = torch.cat([parts[i], b.view(-1, 1, 1).expand(-1, B, 1)], 2)
        if op.get("add_zero_attn"):
            parts[i] = torch.cat([parts[i], parts[i].new_zeros(parts[i].shape[0], B, 1)], 2)
    A = heads(state, lid, q, k, v, Q, parts[1], parts[2])  # [n_v, B, T_q]
    sel = e[state.etype[e] == EdgeType.ATTN_O]
    W = A.new_zeros(out_nodes.numel(), v.numel())
    W.index_put_((torch.searchsorted(out_nodes, state.dst[sel]), torch.searchsorted(v, state.src[sel])),
                 state.values[sel], accumulate=True)
    O = (W @ A.reshape(v.numel(), -1)).reshape(out_nodes.numel(), *A.shape[1:])
    b = _vector(state, e, EdgeType.BIAS, out_nodes, O.dtype)
    if b is not None:
        O = O + b.view(-1, 1, 1)
    O = _tokens_back(O, op)
    full = O.new_zeros(nodes.numel(), *O.shape[1:])
    full[torch.searchsorted(nodes, out_nodes)] = O
    return full
