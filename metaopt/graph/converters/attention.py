"""Attention and transformer layers, head-aware.

nn.MultiheadAttention becomes QUERY/KEY/VALUE neurons (edge types ATTN_Q/K/V from the inputs),
one HEAD node per head with structural HEAD_MEMBER edges from its q/k/v neurons, QK_PAIR edges
from each query neuron to the key neuron it is dotted with, and ATTN_O edges from the value
neurons to the output neurons (attention mixes tokens, never channels). Permuting heads, or
query/key dims jointly within a head, or value dims within a head, is then a graph automorphism.
Transformer encoder/decoder layers are composed from these pieces following `norm_first`.

Hand-written attention (heads split by reshape/rearrange, then F.scaled_dot_product_attention,
`q @ k^T ... @ v` or the equivalent einsums) gets the same HEAD/QK_PAIR/HEAD_MEMBER structure on
the projection neurons (see split_map.py for how split heads and scores are followed), plus
per-head parameters (relative position bias tables, logit scales) as edges into the HEAD nodes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .. import op_records, ops
from ..builder import NeuronMap, dense_edges, flat_dense_edges
from ..registry import CONST, ConversionContext, ParamRef, register_converter
from ..schema import Activation, EdgeType, NodeType
from ..ops import with_op
from ..split_map import Scores, SplitMap, head_dims, head_grid, transposed
from .dense import linear
from .norm import last_dims_norm


def multihead_attention(ctx: ConversionContext, name: str, m: nn.MultiheadAttention,
                        q: Any, k: Any, v: Any, ndim: int, mask: str | None = None) -> NeuronMap:
    """`mask` names a mask the call passed (masks are not recorded: simulate refuses the layer)."""
    E, H = m.embed_dim, m.num_heads
    D = E // H
    qm = ctx.input_map(q, -1, E, ndim)
    km = ctx.input_map(k, -1, m.kdim, ndim)
    vm = ctx.input_map(v, -1, m.vdim, ndim)
    layer = ctx.new_layer(name, "multihead_attention")
    ctx.set_layer_op(layer, {"batch_first": bool(m.batch_first), "batched": ndim == 3, "num_heads": int(H),
                             "add_zero_attn": bool(m.add_zero_attn)})
    if mask is not None:
        ctx.builder.mark_inexact([layer], f"attention called with {mask} (masks are not recorded)")
    qn = ctx.add_nodes(E, NodeType.QUERY, layer)
    kn = ctx.add_nodes(E, NodeType.KEY, layer)
    vn = ctx.add_nodes(E, NodeType.VALUE, layer)
    heads = ctx.add_nodes(H, NodeType.HEAD, layer)
    parts = [(qm, qn, EdgeType.ATTN_Q), (km, kn, EdgeType.ATTN_K), (vm, vn, EdgeType.ATTN_V)]
    if m._qkv_same_embed_dim:
        src, dst, types = [], [], []
        for xm, nodes, etype in parts:
            s, d = flat_dense_edges(xm, nodes)
            src.append(s), dst.append(d), types.append(torch.full_like(s, int(etype)))
        ctx.add_param_edges(m.in_proj_weight, torch.cat(src), torch.cat(dst), torch.cat(types), layer)
    else:
        for (xm, nodes, etype), w in zip(parts, (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)):
            s, d, _ = dense_edges(xm, nodes)
            ctx.add_param_edges(w, s, d, etype, layer)
    ctx.add_bias(m.in_proj_bias, torch.cat([qn, kn, vn]), layer)
    ctx.add_bias(m.bias_k, kn, layer, EdgeType.ATTN_BIAS_KV)
    ctx.add_bias(m.bias_v, vn, layer, EdgeType.ATTN_BIAS_KV)
    out = ctx.add_nodes(E, NodeType.HIDDEN, layer)
    s, d, _ = dense_edges(NeuronMap(vn, 1, None, 2), out)
    ctx.add_param_edges(m.out_proj.weight, s, d, EdgeType.ATTN_O, layer)
    ctx.add_bias(m.out_proj.bias, out, layer)
    ctx.add_aux_edges(qn, kn, EdgeType.QK_PAIR, layer)
    head_of = heads[torch.arange(E) // D]
    ctx.add_aux_edges(torch.cat([qn, kn, vn]), head_of.repeat(3), EdgeType.HEAD_MEMBER, layer)
    return NeuronMap(out, ndim - 1, None, ndim)


def _arg(ctx: ConversionContext, inputs: list, i: int, key: str) -> Any:
    return inputs[i] if len(inputs) > i else ctx.kwargs.get(key)


def _mask(ctx: ConversionContext, start: int) -> str | None:
    """The name of a mask (a tensor argument from position `start` on, or a `*mask*` keyword) or
    causal flag the call passes, else None."""
    for i, a in enumerate(ctx.args[start:]):
        if isinstance(a, Tensor):
            return f"a mask (argument {start + i})"
    for key, a in ctx.real_kwargs.items():
        if isinstance(a, Tensor) or ("causal" in key and a):
            return f"'{key}'"
    return None


@register_converter(nn.MultiheadAttention)
def _mha_module(ctx: ConversionContext, m: nn.MultiheadAttention, inputs: list, name: str):
    q, k, v = (_arg(ctx, inputs, i, key) for i, key in enumerate(("query", "key", "value")))
    ndim = ctx.args[0].ndim if ctx.args else ctx.ndim_of(q, 3)
    return multihead_attention(ctx, name, m, q, k, v, ndim, _mask(ctx, 3)), CONST


# ---- transformer blocks ---------------------------------------------------------------------------

def residual_sum(ctx: ConversionContext, name: str, a: NeuronMap, b: NeuronMap) -> NeuronMap:
    """a + b as new SUM neurons with structural RESIDUAL edges from both operands."""
    ctx.note_read(a)  # each operand through its op chain (a patch embedding's flatten, a class token)
    ctx.note_read(b)
    layer = ctx.new_layer(name, "residual_add")
    new = ctx.add_nodes(a.size, NodeType.SUM, layer)
    ctx.add_aux_edges(a.nodes, new, EdgeType.RESIDUAL, layer)
    ctx.add_aux_edges(b.nodes, new, EdgeType.RESIDUAL, layer)
    return NeuronMap(new, a.dim, a.pos, a.ndim)


def _activation_of(fn: Any) -> Activation:
    if isinstance(fn, nn.Module):
        return ops.ACTIVATION_MODULES.get(type(fn), Activation.OTHER)
    return ops.act_of(fn) or Activation.OTHER


class _Block:
    """Helpers binding one transformer layer's submodules to the context."""

    def __init__(self, ctx: ConversionContext, m: nn.Module, name: str, ndim: int, mask: str | None = None) -> None:
        self.ctx, self.m, self.name, self.ndim, self.mask = ctx, m, name, ndim, mask

    def norm(self, attr: str, x: NeuronMap) -> NeuronMap:
        n = getattr(self.m, attr)
        weight = ParamRef.of(n.weight) if getattr(n, "weight", None) is not None else None
        bias = ParamRef.of(n.bias) if getattr(n, "bias", None) is not None else None
        kind = "rmsnorm" if type(n).__name__ == "RMSNorm" else "layernorm"
        return last_dims_norm(self.ctx, f"{self.name}.{attr}", x, tuple(n.normalized_shape), weight, bias,
                              self.ndim, kind, getattr(n, "eps", 1e-5))

    def attn(self, attr: str, x: NeuronMap, mem: NeuronMap | None = None) -> NeuronMap:
        src = x if mem is None else mem
        return multihead_attention(self.ctx, f"{self.name}.{attr}", getattr(self.m, attr), x, src, src, self.ndim,
                                   self.mask)

    def ff(self, x: NeuronMap) -> NeuronMap:
        h = linear(self.ctx, f"{self.name}.linear1", x, ParamRef.of(self.m.linear1.weight),
                   ParamRef.of(self.m.linear1.bias), self.ndim)
        self.ctx.set_activation(h.nodes, _activation_of(self.m.activation))
        return linear(self.ctx, f"{self.name}.linear2", h, ParamRef.of(self.m.linear2.weight),
                      ParamRef.of(self.m.linear2.bias), self.ndim)

    def add(self, x: NeuronMap, y: NeuronMap, tag: str) -> NeuronMap:
        return residual_sum(self.ctx, f"{self.name}.{tag}", x, y)


def encoder_layer(ctx: ConversionContext, m: nn.TransformerEncoderLayer, x: Any, name: str, ndim: int,
                  mask: str | None = None) -> NeuronMap:
    b = _Block(ctx, m, name, ndim, mask)
    x = ctx.input_map(x, -1, m.self_attn.embed_dim, ndim)
    if m.norm_first:
        x = b.add(x, b.attn("self_attn", b.norm("norm1", x)), "add1")
        return b.add(x, b.ff(b.norm("norm2", x)), "add2")
    x = b.norm("norm1", b.add(x, b.attn("self_attn", x), "add1"))
    return b.norm("norm2", b.add(x, b.ff(x), "add2"))


def decoder_layer(ctx: ConversionContext, m: nn.TransformerDecoderLayer, x: Any, memory: Any, name: str,
                  ndim: int, mask: str | None = None) -> NeuronMap:
    b = _Block(ctx, m, name, ndim, mask)
    E = m.self_attn.embed_dim
    x = ctx.input_map(x, -1, E, ndim)
    mem = ctx.input_map(memory, -1, E, ndim)
    if m.norm_first:
        x = b.add(x, b.attn("self_attn", b.norm("norm1", x)), "add1")
        x = b.add(x, b.attn("multihead_attn", b.norm("norm2", x), mem), "add2")
        return b.add(x, b.ff(b.norm("norm3", x)), "add3")
    x = b.norm("norm1", b.add(x, b.attn("self_attn", x), "add1"))
    x = b.norm("norm2", b.add(x, b.attn("multihead_attn", x, mem), "add2"))
    return b.norm("norm3", b.add(x, b.ff(x), "add3"))


def _final_norm(ctx: ConversionContext, m: nn.Module, x: NeuronMap, name: str, ndim: int) -> NeuronMap:
    if m.norm is None:
        return x
    return _Block(ctx, m, name, ndim).norm("norm", x)


def _ndim(ctx: ConversionContext) -> int:
    return ctx.args[0].ndim if ctx.args else 3


@register_converter(nn.TransformerEncoderLayer)
def _encoder_layer(ctx, m, inputs, name):
    return encoder_layer(ctx, m, _arg(ctx, inputs, 0, "src"), name, _ndim(ctx), _mask(ctx, 1))


@register_converter(nn.TransformerDecoderLayer)
def _decoder_layer(ctx, m, inputs, name):
    return decoder_layer(ctx, m, _arg(ctx, inputs, 0, "tgt"), _arg(ctx, inputs, 1, "memory"), name, _ndim(ctx),
                         _mask(ctx, 2))


def _encoder_stack(ctx: ConversionContext, m: nn.TransformerEncoder, x: Any, name: str, ndim: int,
                   mask: str | None = None) -> NeuronMap:
    for i, layer in enumerate(m.layers):
        x = encoder_layer(ctx, layer, x, f"{name}.layers.{i}", ndim, mask)
    return _final_norm(ctx, m, x, name, ndim)


def _decoder_stack(ctx: ConversionContext, m: nn.TransformerDecoder, x: Any, memory: Any, name: str,
                   ndim: int, mask: str | None = None) -> NeuronMap:
    for i, layer in enumerate(m.layers):
        x = decoder_layer(ctx, layer, x, memory, f"{name}.layers.{i}", ndim, mask)
    return _final_norm(ctx, m, x, name, ndim)


@register_converter(nn.TransformerEncoder)
def _encoder(ctx, m, inputs, name):
    return _encoder_stack(ctx, m, _arg(ctx, inputs, 0, "src"), name, _ndim(ctx), _mask(ctx, 1))


@register_converter(nn.TransformerDecoder)
def _decoder(ctx, m, inputs, name):
    return _decoder_stack(ctx, m, _arg(ctx, inputs, 0, "tgt"), _arg(ctx, inputs, 1, "memory"), name, _ndim(ctx),
                          _mask(ctx, 2))


@register_converter(nn.Transformer)
def _transformer(ctx, m, inputs, name):
    ndim, mask = _ndim(ctx), _mask(ctx, 2)
    memory = _encoder_stack(ctx, m.encoder, _arg(ctx, inputs, 0, "src"), f"{name}.encoder", ndim, mask)
    return _decoder_stack(ctx, m.decoder, _arg(ctx, inputs, 1, "tgt"), memory, f"{name}.decoder", ndim, mask)




# ---- hand-written attention: F.scaled_dot_product_attention on split heads --------------------

def _chain(x: Any) -> list[dict]:
    """How an attention operand's producers are read (their op chains), as a `reads` list."""
    m = x.source if isinstance(x, SplitMap) else x
    ops_ = getattr(m, "ops", None) or {}
    return [{"from": int(p), "ops": list(c)} for p, c in ops_.items() if c]


def _token_layout(x: Any, ndim: int) -> str | None:
    """Why operand `x` ([..., tokens, dim]) is not its producers' own per-neuron values with the
    tokens last (None: it is, so simulate reads each neuron's value as [batch-like, tokens])."""
    if isinstance(x, NeuronMap):
        return None if x.dim == ndim - 1 and x.pos is None else "features not on the last dim"
    vary = x.feature_dims()
    index = tuple(0 if d in vary else slice(None) for d in range(x.ndim))
    rest = x.rest[index].long()
    if not torch.equal(rest.reshape(-1), torch.arange(rest.numel())):
        return "tokens reordered or sliced relative to their producer's values"
    src_rest = [s for d, s in enumerate(x.src_shape) if d != x.source.dim]
    if not src_rest or rest.dim() == 0 or src_rest[-1] != rest.shape[-1]:
        return "tokens merged with other dims"
    return None


def qk_heads(ctx: ConversionContext, name: str, q: Tensor, k: Tensor, dims: tuple[int, ...],
             shape: torch.Size, operands: tuple = (), scores: list | None = None) -> Scores:
    """Head structure of a hand-written attention from its q/k node grids `[heads, dim]`.

    As for nn.MultiheadAttention: the projection neurons become QUERY/KEY (when they are plain
    hidden neurons), one HEAD node per head with HEAD_MEMBER edges from its q/k neurons, and
    QK_PAIR edges from each query neuron to the key neuron it is dotted with.

    For simulate the layer records how it reads the q / k operands (``reads_q``, ``reads_k``: op
    chains of their producers) and what is done to the scores before `@ v` (``scores``: given by
    F.scaled_dot_product_attention, else appended by the ops that follow, ops.note_scores).
    """
    if q.shape != k.shape:
        ctx.fail(f"query heads {tuple(q.shape)} and key heads {tuple(k.shape)} do not pair up "
                 f"(grouped-query attention is not supported).")
    _refuse_shared_neurons(ctx, k, "key")
    layer = ctx.new_layer(name, "attention")
    if operands:
        ndim = len(shape)
        ctx.set_layer_op(layer, {"reads_q": _chain(operands[0]), "reads_k": _chain(operands[1]),
                                 "scores": list(scores or [])})
        for role, x in zip(("query", "key"), operands):
            why = _token_layout(x, ndim)
            if why is not None:
                ctx.builder.mark_inexact([layer], f"attention {role}: {why}")
    heads = ctx.add_nodes(q.shape[0], NodeType.HEAD, layer)
    for grid, node_type in ((q, NodeType.QUERY), (k, NodeType.KEY)):
        _members(ctx, grid, node_type, heads, layer)
    ctx.add_aux_edges(q.reshape(-1), k.reshape(-1), EdgeType.QK_PAIR, layer)
    return Scores(q, k, heads, layer, Scores.head_probe(shape, dims, q.shape[0]))


def _refuse_shared_neurons(ctx: ConversionContext, grid: Tensor, role: str) -> None:
    """Grouped-/multi-query attention written with ``k.repeat_interleave(g, dim=1)`` (or expand)
    hands several heads the same key / value neurons. The graph cannot say which head a shared
    value neuron's output belongs to (the output carries the value neurons), so such a graph would
    be wrong without any error: refuse it by name."""
    if torch.unique(grid).numel() != grid.numel():
        ctx.fail(f"the {role} neurons of this attention are shared by several heads (grouped-query or "
                 f"multi-query attention: keys/values repeated over heads), which the graph does not "
                 f"represent (grouped-query attention is not supported).")


def attend(ctx: ConversionContext, scores: Scores, v: Tensor, value: Any, shape: torch.Size) -> Any:
    """`softmax(scores) @ v`: the value neurons join their heads; the output carries them.

    Attention mixes tokens, never channels, so the layer reading the output gets edges from the
    value neurons, as ATTN_O edges do for nn.MultiheadAttention.
    """
    if v.shape[0] != scores.heads.numel():
        ctx.fail(f"{scores.heads.numel()} attention heads, but values in {v.shape[0]} heads.")
    _refuse_shared_neurons(ctx, v, "value")
    _members(ctx, v, NodeType.VALUE, scores.heads, scores.layer)
    # readers of the output read the value neurons through the attention (simulate)
    rec = ctx.builder.layers[scores.layer]
    op = rec.op or {}
    if "scores" in op:
        why = _token_layout(value, len(shape))
        if why is not None:
            ctx.builder.mark_inexact([scores.layer], f"attention value: {why}")
        if not any(o.get("op") == "softmax" for o in op["scores"]):
            ctx.builder.mark_inexact([scores.layer], "attention weights without a recorded softmax")
    attn = {"op": "attention", "layer": int(scores.layer)}
    if isinstance(value, SplitMap):
        value = SplitMap(with_op(ctx, value.source, attn), value.src_shape, value.feat, value.rest)
        return value.like(shape, len(shape) - 2)
    return with_op(ctx, NeuronMap(value.nodes, len(shape) - 1, None, len(shape), value.ops), attn)


def _members(ctx: ConversionContext, grid: Tensor, node_type: NodeType, heads: Tensor, layer: int) -> None:
    ctx.builder.retype(grid.reshape(-1), NodeType.HIDDEN, node_type)
    ctx.add_aux_edges(grid.reshape(-1), heads.view(-1, 1).expand_as(grid).reshape(-1), EdgeType.HEAD_MEMBER, layer)


@register_converter(torch.nn.functional.scaled_dot_product_attention)
def sdpa(ctx: ConversionContext, fn: Any, values: list, name: str) -> Any:
    """F.scaled_dot_product_attention(q, k, v, ...): heads from the operands' split neurons."""
    ops_ = [ctx.arg(i, key) for i, key in enumerate(("query", "key", "value"))]
    reals = [ctx.real_arg(i, key) for i, key in enumerate(("query", "key", "value"))]
    result = ctx.result
    if not any(isinstance(x, (NeuronMap, SplitMap)) for x in ops_):
        return NotImplemented  # attention over raw inputs / constants: no neurons to structure
    grids = [head_grid(x, r.ndim) for x, r in zip(ops_, reals)]
    if any(g is None for g in grids):
        ctx.fail("attention operands must carry their neurons as [..., heads, tokens, head_dim] "
                 "(features on the last dim and on dims before the token dim).")
    scores_shape = (*result.shape[:-1], reals[1].shape[-2])
    mask, causal = ctx.real_arg(3, "attn_mask"), bool(ctx.real_arg(5, "is_causal", False))
    dropout, scale = ctx.real_arg(4, "dropout_p", 0.0), ctx.real_arg(6, "scale")
    D = reals[0].shape[-1]
    record = [{"op": "scalar", "fn": "mul", "value": float(scale if scale is not None else 1.0 / math.sqrt(D)),
               "reverse": False}]
    if causal:
        record.append({"op": "causal"})
    if mask is not None:
        record.append(op_records.opaque("an attention mask (not recorded)"))
    record.append({"op": "softmax"})
    if dropout:
        record.append(op_records.opaque("attention dropout (F.scaled_dot_product_attention drops in eval too)"))
    scores = qk_heads(ctx, name, grids[0], grids[1], head_dims(ops_[0], reals[0].ndim), torch.Size(scores_shape),
                      operands=(ops_[0], ops_[1]), scores=record)
    return attend(ctx, scores, grids[2], ops_[2], result.shape)


def attention_matmul(ctx: ConversionContext, name: str, a: Any, b: Any, args: tuple, result: Tensor) -> Any:
    """`q @ k.transpose(-2, -1)` gives Scores; `scores @ v` is the attention (as sdpa)."""
    if isinstance(a, Scores):
        grid = head_grid(b, args[1].ndim)
        if grid is None:
            ctx.fail("attention weights multiply a tensor whose neurons are not laid out as "
                     "[..., heads, tokens, head_dim].")
        return attend(ctx, a, grid, b, result.shape)
    q, k = head_grid(a, args[0].ndim), head_grid(transposed(b), args[1].ndim)
    if q is None or k is None:
        return NotImplemented
    return qk_heads(ctx, name, q, k, head_dims(a, args[0].ndim), result.shape, operands=(a, transposed(b)))


def head_parameter(ctx: ConversionContext, scores: Scores, p: ParamRef, shape: torch.Size, kind: str,
                   record: list | None = None) -> bool:
    """A parameter added to (`kind="add"`) or multiplying (`"mul"`) the scores, head by head.

    Relative position bias tables `[rows, heads]` gathered by a relative-offset index (Swin,
    MaxViT) and per-head logit scales (Swin V2): every element must act on one head only (checked
    element by element). Element e becomes an edge from an ordered PARAM_SOURCE node (add: its
    rank among its head's elements, the relative offset for a table) or a NORM node (mul) to the
    HEAD node of its head (PARAM_ADD / NORM_WEIGHT). False leaves other layouts to the caller.
    What simulate replays is appended to `record`: a head_table op (add), a head_scale op (mul
    by one element per head, through the parameter's recorded elementwise functions).
    """
    H = scores.heads.numel()
    try:
        idx = p.index.expand(shape).reshape(-1)
        head = scores.head_of.expand(shape).reshape(-1)
    except RuntimeError:
        return False
    head_of_e = torch.full((p.param.numel(),), -1, dtype=torch.long)
    head_of_e[idx] = head
    if bool((head_of_e[idx] != head).any()):
        return False  # an element acts on several heads
    used = (head_of_e >= 0).nonzero().squeeze(1)
    order = torch.argsort(head_of_e[used] * p.param.numel() + used)  # by head, then element
    rank = torch.empty_like(used)
    counts = torch.bincount(head_of_e[used], minlength=H)
    starts = torch.cumsum(counts, 0) - counts
    rank[order] = torch.arange(used.numel()) - starts[head_of_e[used][order]]
    rows = int(rank.max()) + 1 if used.numel() else 0
    table = p.param
    name = ctx.builder.param_name(table)
    if kind == "add":
        layer = ctx.new_layer(name, "relative_position_bias")
        src = ctx.add_nodes(rows, NodeType.PARAM_SOURCE, layer, torch.arange(rows))
        etype = EdgeType.PARAM_ADD
    else:
        layer = ctx.new_layer(name, "head_scale")
        src = ctx.add_nodes(rows, NodeType.NORM, layer)
        etype = EdgeType.NORM_WEIGHT
    ctx.add_param_edges(ParamRef(table, used), src[rank], scores.heads[head_of_e[used]], etype, layer)
    if kind == "mul" and record is not None and rows == 1 and all(f.get("op") != "opaque" for f in p.fns):
        # one element per head (Swin V2's logit scale [heads, 1, 1]), through clamp / exp: replayed
        ctx.set_layer_op(layer, {"rows_shape": [1], "deferred": True})
        record.append({"op": "head_scale", "layer": int(layer), "fns": [dict(f) for f in p.fns]})
    if kind == "add" and record is not None and not p.fns:
        rank_of_e = torch.full((p.param.numel(),), -1, dtype=torch.long)
        rank_of_e[used] = rank
        rec = _table_rows(rank_of_e[p.index.expand(shape)], scores.head_of.expand(shape), H, layer)
        if rec is not None:  # applied to the scores by simulate, not to the HEAD nodes' values
            ctx.set_layer_op(layer, {"rows_shape": [rows], "deferred": True})
            record.append(rec)
    return True


def _table_rows(rows: Tensor, head: Tensor, H: int, layer: int) -> dict | None:
    """The scores record of a per-head table: which row is added at each (query, key) position,
    the same for every batch-like position ({"op": "head_table", "layer", "rows" | "rows_by_head"})."""
    nq, nk = rows.shape[-2:]
    R, Hd = rows.reshape(-1, nq * nk), head.reshape(-1, nq * nk)
    if bool((Hd != Hd[:, :1]).any()):
        return None
    per_head = []
    for h in range(H):
        blk = R[Hd[:, 0] == h]
        if not blk.numel() or bool((blk != blk[:1]).any()):
            return None
        per_head.append(blk[0].view(nq, nk))
    if all(torch.equal(r, per_head[0]) for r in per_head):
        return {"op": "head_table", "layer": int(layer), "rows": per_head[0].tolist()}
    return {"op": "head_table", "layer": int(layer), "rows_by_head": [r.tolist() for r in per_head]}


def head_neurons(ctx: ConversionContext, scores: Scores, m: NeuronMap, shape: torch.Size) -> bool:
    """Neurons added to the scores head by head (Swin V2's MLP-generated position bias):
    each neuron feeds the HEAD node of the head it is added to (RESIDUAL)."""
    d = m.dim + (len(shape) - m.ndim)
    if not 0 <= d < len(shape) or shape[d] != m.size:
        return False
    view = [1] * len(shape)
    view[d] = m.size
    k = torch.arange(m.size).view(view).expand(shape).reshape(-1)
    head = scores.head_of.expand(shape).reshape(-1)
    head_of_k = torch.full((m.size,), -1, dtype=torch.long)
    head_of_k[k] = head
    if bool((head_of_k[k] != head).any()):
        return False
    ctx.add_aux_edges(m.nodes, scores.heads[head_of_k], EdgeType.RESIDUAL, scores.layer)
    return True


@register_converter(torch.einsum)
def einsum_attention(ctx: ConversionContext, fn: Any, values: list, name: str) -> Any:
    """`einsum("...id,...jd->...ij", q, k)` and `einsum("...ij,...jd->...id", attn, v)` (MaxViT, lucidrains).

    Other equations are not attention: NotImplemented hands them to the generic rules.
    """
    args, result = ctx.args, ctx.result
    if not args or not isinstance(args[0], str):
        return NotImplemented
    operands = list(values[1:])
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    eq = args[0].replace(" ", "")
    if "->" not in eq or "." in eq or len(operands) != 2 or eq.count(",") != 1:
        return NotImplemented
    (a_ix, b_ix), out_ix = eq.split("->")[0].split(","), eq.split("->")[1]
    if len(a_ix) < 2 or len(a_ix) != len(b_ix) or len(out_ix) != len(a_ix):
        return NotImplemented
    batch = a_ix[:-2]
    a, b = operands
    ndim = len(a_ix)
    if b_ix[:-2] != batch or out_ix[:-2] != batch:
        return NotImplemented
    if a_ix[-1] == b_ix[-1] and out_ix[-2:] == a_ix[-2] + b_ix[-2]:  # q k^T
        q, k = head_grid(a, ndim), head_grid(b, ndim)
        if q is None or k is None:
            return NotImplemented
        return qk_heads(ctx, name, q, k, head_dims(a, ndim), result.shape, operands=(a, b))
    if isinstance(a, Scores) and a_ix[-1] == b_ix[-2] and out_ix == a_ix[:-1] + b_ix[-1]:  # attn v
        grid = head_grid(b, ndim)
        if grid is None:
            return NotImplemented
        return attend(ctx, a, grid, b, result.shape)
    return NotImplemented


ops.SPLIT_CONSUMERS.update({torch.nn.functional.scaled_dot_product_attention, torch.einsum})
