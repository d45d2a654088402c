"""Dense layers: nn.Linear (and F.linear / x @ W with a parameter), nn.Embedding, nn.Bilinear-free."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..builder import NeuronMap, dense_edges
from ..ops import NeedsValues, carried_copies
from ..registry import CONST, ConversionContext, ParamRef, Unassigned, register_converter
from ..schema import EdgeType, NodeType


def linear(ctx: ConversionContext, name: str, x: Any, weight: ParamRef, bias: ParamRef | None,
           ndim: int, kind: str = "linear") -> NeuronMap:
    """y = x W^T + b over the last dim; `weight.index` is laid out [out, in]."""
    O, K = weight.shape
    xm = ctx.input_map(x, -1, K, ndim)
    layer = ctx.new_layer(name, kind)
    out = ctx.add_nodes(O, NodeType.HIDDEN, layer)
    src, dst, kpos = dense_edges(xm, out)
    etype = EdgeType.LINEAR_FLAT if xm.pos is not None else EdgeType.LINEAR
    copies = carried_copies(ctx, xm)
    if copies is not None:  # K0 numbers the copies of repeated neurons (patch merging), for simulate
        ctx.set_layer_op(layer, {"copies": copies})
    if not ctx.add_param_edges(weight, src, dst, etype, layer, kpos):  # a tied weight (an LM's output head)
        _tied_layout(ctx, layer, weight, xm, copies)
    ctx.add_bias(bias, out, layer)
    return NeuronMap(out, xm.ndim - 1, None, xm.ndim)


def _tied_layout(ctx: ConversionContext, layer: int, weight: ParamRef, xm: NeuronMap, copies) -> None:
    """How a Linear reads a weight whose edges belong to its first use (op_records.py, ``tied``):
    the input neuron of each column, and whether the parameter is read transposed (`x @ W`).
    Left out (simulate refuses the layer) for other layouts."""
    rec = ctx.builder.layers[layer]
    tied = (rec.op or {}).get("tied") or []
    if not tied or xm.pos is not None or copies is not None or weight.fns:
        return
    p = weight.param
    ident = torch.arange(p.numel()).view(p.shape)
    if weight.identity or (weight.shape == p.shape and torch.equal(weight.index, ident)):
        transposed = False
    elif p.dim() == 2 and weight.shape == p.shape[::-1] and torch.equal(weight.index, ident.t()):
        transposed = True
    else:
        return
    tied[-1] = {**tied[-1], "in": xm.nodes.reshape(-1).tolist(), "transposed": transposed}


def _embedding_ids(ctx: ConversionContext, layer: int, ids: Any, real: Any) -> None:
    """Record which ids the embedding looks up (op_records.py, ``ids``): the model input itself, or a
    constant shared by the batch (positions, `torch.arange(T)`); anything else is marked inexact."""
    inputs = getattr(ctx.builder, "model_input_tensors", [])
    if isinstance(ids, Unassigned) and not ids.ops and any(real is t for t in inputs):
        ctx.set_layer_op(layer, {**(ctx.builder.layers[layer].op or {}), "ids": "input"})
        return
    batch = inputs[0].shape[0] if inputs and inputs[0].dim() else 0
    if ids is CONST and isinstance(real, torch.Tensor) and (real.dim() <= 1 or (real.shape[0] == 1 < batch)):
        if real.is_meta:
            raise NeedsValues("an embedding of constant ids: their values are recorded")
        ctx.set_layer_op(layer, {**(ctx.builder.layers[layer].op or {}), "ids": {"constant": real.tolist()}})
        return
    ctx.builder.mark_inexact([layer], "an embedding of ids computed in the model (simulate looks up the "
                                      "model input or a constant shared by the batch)")


def embedding(ctx: ConversionContext, name: str, weight: ParamRef, ids_ndim: int, ids: Any = None,
              max_norm: Any = None) -> NeuronMap:
    """Rows are ordered TOKEN nodes (position = row index); columns are the embedding neurons.

    `ids` is the dataflow value of the looked-up ids (recorded for simulate); `max_norm` renormalises
    the looked-up rows in place, which simulate does not replay."""
    V, D = weight.shape
    layer = ctx.new_layer(name, "embedding")
    tokens = ctx.add_nodes(V, NodeType.TOKEN, layer, torch.arange(V))
    out = ctx.add_nodes(D, NodeType.HIDDEN, layer)
    if not ctx.add_param_edges(weight, tokens.view(V, 1), out.view(1, D), EdgeType.EMBEDDING, layer):
        ctx.builder.mark_inexact([layer], "an embedding reading a weight tied to an earlier use")
    _embedding_ids(ctx, layer, ids, ctx.args[0] if ctx.args else None)
    if weight.fns or not weight.identity:
        ctx.builder.mark_inexact([layer], "an embedding of a slice or function of a parameter")
    if max_norm is not None:
        ctx.builder.mark_inexact([layer], "an embedding with max_norm (rows renormalised in place)")
    return NeuronMap(out, ids_ndim, None, ids_ndim + 1)


@register_converter(nn.Linear)
def _linear_module(ctx: ConversionContext, m: nn.Linear, inputs: list, name: str) -> NeuronMap:
    return linear(ctx, name, inputs[0], ParamRef.of(m.weight), ParamRef.of(m.bias), ctx.args[0].ndim)


@register_converter(nn.Embedding)
def _embedding_module(ctx: ConversionContext, m: nn.Embedding, inputs: list, name: str) -> NeuronMap:
    return embedding(ctx, name, ParamRef.of(m.weight), ctx.args[0].ndim, inputs[0], m.max_norm)


@register_converter(nn.EmbeddingBag)
def _embedding_bag(ctx: ConversionContext, m: nn.EmbeddingBag, inputs: list, name: str) -> NeuronMap:
    out = embedding(ctx, name, ParamRef.of(m.weight), 1, inputs[0], m.max_norm)  # bags reduce the tokens: [B, D]
    layer = ctx.builder.layers[-1].layer
    ctx.set_layer_op(layer, {**(ctx.builder.layers[layer].op or {}), "bag": m.mode,
                             "padding_idx": m.padding_idx})
    if ctx.real_arg(1, "offsets") is not None or ctx.args[0].dim() != 2:
        ctx.builder.mark_inexact([layer], "an nn.EmbeddingBag called with offsets (simulate reads [B, T] bags)")
    if ctx.real_arg(2, "per_sample_weights") is not None:
        ctx.builder.mark_inexact([layer], "an nn.EmbeddingBag with per_sample_weights")
    return NeuronMap(out.nodes, 1, None, 2)
