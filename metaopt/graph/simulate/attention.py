"""Attention, head-aware from the graph: nn.MultiheadAttention layers (kind
``multihead_attention``) and hand-written attention (kind ``attention``).

The layer's QUERY/KEY/VALUE neurons are the in-projections of its inputs (ATTN_Q/K/V edges,
BIAS, ATTN_BIAS_KV for add_bias_kv); each HEAD node's members (HEAD_MEMBER) say which neurons
attend together, QK_PAIR edges which key neuron each query neuron is dotted with. Per head:
softmax(q k^T / sqrt(head dim)) over the key tokens, applied to the head's value neurons; the
output neurons are ATTN_O edges from the attended values, plus BIAS. The layer record (op)
gives the token layout: ``batch_first``, ``batched``, ``add_zero_attn``. Masks are not recorded:
a masked call is marked inexact at conversion and refused.

The whole layer is computed at once (a layer rule, rules.LAYER_RULES); only the output neurons
are read by other layers, the others hold zeros.

Hand-written attention (split heads, then F.scaled_dot_product_attention, `q @ k^T ... @ v` or
einsums) has no neurons of its own: its QUERY/KEY/VALUE neurons belong to the projection
layers, and readers of the output read the value neurons through an ``attention`` op (chain.py)
that runs `handwritten` below. The layer record gives the query/key operands' op chains
(``reads_q``, ``reads_k``) and the ops on the scores before `@ v` (``scores``: scale, causal
mask, softmax, ...). Each operand is its producers' per-neuron values with the tokens last
(checked at conversion), so a neuron's value is read as [batch-like, tokens].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..op_records import apply_param_fns
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


def _structure(state, lid):
    """head_of (per node: its HEAD node, -1) and the (query, key) pairs of attention layer `lid`."""
    aux = (state.aux_layer == lid).nonzero().squeeze(1)
    member = aux[state.aux_type[aux] == EdgeType.HEAD_MEMBER]
    pair = aux[state.aux_type[aux] == EdgeType.QK_PAIR]
    head_of = torch.full((state.ntype.numel(),), -1, dtype=torch.long)
    head_of[state.asrc[member]] = state.adst[member]
    return head_of, state.asrc[pair], state.adst[pair]


def _score_ops(scores: Tensor, ops: list[dict], state, lid: int, head: int) -> Tensor:
    """The recorded ops on one head's scores [M, Nq, Nk] (head: its HEAD node)."""
    for op in ops:
        kind = op["op"]
        if kind == "head_table":  # relative position bias: row rows[i][j] of the head's table
            T = state.table(op["layer"], torch.tensor([head]), 1)[0]
            if "rows" in op:
                rows = op["rows"]
            else:
                hs = state.layer_nodes[lid]
                hs = hs[state.ntype[hs] == NodeType.HEAD]
                rows = op["rows_by_head"][int(torch.searchsorted(hs, torch.tensor(head)))]
            scores = scores + T[torch.tensor(rows)]
            continue
        if kind == "head_neurons":  # neurons added to their head's scores (RESIDUAL edges into the HEAD node)
            aux = (state.aux_layer == lid) & (state.aux_type == EdgeType.RESIDUAL) & (state.adst == head)
            src = torch.unique(state.asrc[aux])
            b = state.read(lid, src, op["reads"]).sum(0)
            if b.dim() > 2 and any(n != 1 for n in b.shape[:-2]):
                raise NotImplementedError(f"simulate: {state.where(lid)}: a bias of shape {tuple(b.shape)} "
                                          f"added to each head's scores (only [.., Nq, Nk] repeating over windows)")
            scores = scores + b.reshape(b.shape[-2:]) if b.dim() >= 2 else scores + b
            continue
        if kind == "head_scale":  # the head's element of a head_scale table, through its functions
            c = apply_param_fns(state.table(op["layer"], torch.tensor([head]), 1)[0, 0], op["fns"])
            scores = scores * c
            continue
        if kind == "add_tensor":  # a constant repeating over the batch-like positions (window masks)
            c = torch.tensor(op["value"], dtype=scores.dtype)
            scores = (scores.reshape(-1, op["period"], *scores.shape[1:]) + c).reshape(scores.shape)
            continue
        if kind == "scalar":
            c, fn, rev = op["value"], op["fn"], op["reverse"]
            scores = (scores + c if fn == "add" else (c - scores if rev else scores - c) if fn == "sub"
                      else scores * c if fn == "mul" else scores / c)
        elif kind == "softmax":
            scores = scores.softmax(-1)
        elif kind == "causal":  # F.scaled_dot_product_attention(is_causal=True): top-left aligned
            n, m = scores.shape[-2:]
            scores = scores.masked_fill(torch.ones(n, m, dtype=torch.bool).triu(1), float("-inf"))
        elif kind != "identity":
            raise NotImplementedError(f"simulate: {state.where(lid)}: attention scores go through "
                                      f"{op.get('why', kind)}")
    return scores


def heads(state, lid, q: Tensor, k: Tensor, v: Tensor, Q: Tensor, K: Tensor, V: Tensor,
          score_ops: list[dict] | None = None, eps_q: float | None = None, eps_k: float | None = None) -> Tensor:
    """Per head: weights = score_ops(Q K^T) (default softmax(Q K^T / sqrt(head dim))), then weights V,
    from the layer's HEAD_MEMBER / QK_PAIR edges.

    q, k: sorted node ids of the query/key neurons, v: value node ids (any order); Q, K, V their
    values [n, M, T] (M batch-like, T tokens). eps_q / eps_k: each head's query / key vector is
    L2-normalized first (F.normalize, cosine attention). Returns the attended values [len(v), M, T_q].
    """
    head_of, pq, pk = _structure(state, lid)
    out = V.new_zeros(v.numel(), V.shape[1], Q.shape[2])
    for h in torch.unique(head_of[v]).tolist():
        sel = head_of[pq] == h
        qi, ki = torch.searchsorted(q, pq[sel]), torch.searchsorted(k, pk[sel])
        vi = (head_of[v] == h).nonzero().squeeze(1)
        Qh, Kh = Q[qi], K[ki]
        if eps_q is not None:
            Qh = Qh / Qh.norm(dim=0, keepdim=True).clamp_min(eps_q)
        if eps_k is not None:
            Kh = Kh / Kh.norm(dim=0, keepdim=True).clamp_min(eps_k)
        scores = torch.einsum("dbi,dbj->bij", Qh, Kh)
        if score_ops is None:
            weights = (scores / math.sqrt(qi.numel())).softmax(-1)
        else:
            weights = _score_ops(scores, score_ops, state, lid, h)
        out[vi] = torch.einsum("bij,dbj->dbi", weights, V[vi])
    return out


_MOVES = {"reshape", "permute", "index", "roll", "flip"}  # move positions alike in every neuron


def _normalized(state, lid: int, reads: list) -> tuple[list, float | None]:
    """An operand's chains without their head_normalize op, and its eps (None: not normalized).

    F.normalize over a head's vector mixes the head's neurons, so it is applied in `heads`; it
    commutes with the ops after it only when they just move positions (the same in every neuron).
    """
    eps, out = None, []
    for r in reads:
        ops = r["ops"]
        at = [i for i, o in enumerate(ops) if o["op"] == "head_normalize"]
        if not at:
            out.append(r)
            continue
        if len(at) > 1 or any(o["op"] not in _MOVES for o in ops[at[0] + 1:]) or (
                eps is not None and eps != ops[at[0]]["eps"]):
            raise NotImplementedError(f"simulate: {state.where(lid)}: F.normalize of a head's vector "
                                      f"followed by ops that do not commute with it")
        eps = ops[at[0]]["eps"]
        out.append({**r, "ops": ops[:at[0]] + ops[at[0] + 1:]})
    if eps is not None and len(out) != sum(1 for r in reads if any(o["op"] == "head_normalize" for o in r["ops"])):
        raise NotImplementedError(f"simulate: {state.where(lid)}: an operand normalized in part")
    return out, eps


def handwritten(state, lid: int, V: Tensor, v: Tensor) -> Tensor:
    """The output of hand-written attention layer `lid` at value neurons `v` with values V
    [k, *S] (tokens last): queries and keys read through the layer's reads_q / reads_k chains."""
    op = state.record(lid).get("op") or {}
    head_of, pq, pk = _structure(state, lid)
    q, k = torch.unique(pq), torch.unique(pk)
    (reads_q, eps_q), (reads_k, eps_k) = (_normalized(state, lid, op.get(f"reads_{r}", [])) for r in "qk")
    Q, K = state.read(lid, q, reads_q), state.read(lid, k, reads_k)
    Q, K = Q.reshape(q.numel(), -1, Q.shape[-1]), K.reshape(k.numel(), -1, K.shape[-1])
    lead = V.shape[1:-1]
    Vf = V.reshape(v.numel(), -1, V.shape[-1])
    if not Q.shape[1] == K.shape[1] == Vf.shape[1] or K.shape[2] != Vf.shape[2]:
        raise NotImplementedError(f"simulate: {state.where(lid)}: query, key and value neurons hold values of "
                                  f"shapes {tuple(Q.shape[1:])}, {tuple(K.shape[1:])}, {tuple(Vf.shape[1:])}")
    out = heads(state, lid, q, k, v, Q, K, Vf, op.get("scores", []), eps_q, eps_k)
    return out.reshape(v.numel(), *lead, Q.shape[-1])


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
    A = heads(state, lid, q, k, v, Q, parts[1], parts[2])  # [n_v, B, T_q], softmax(q k^T / sqrt(D)) v
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
