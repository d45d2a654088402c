"""Dense layers: nn.Linear (and F.linear / x @ W with a parameter), nn.Embedding, nn.Bilinear-free."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..builder import NeuronMap, dense_edges
from ..ops import carried_copies
from ..registry import ConversionContext, ParamRef, register_converter
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
    ctx.add_param_edges(weight, src, dst, etype, layer, kpos)
    ctx.add_bias(bias, out, layer)
    return NeuronMap(out, xm.ndim - 1, None, xm.ndim)


def embedding(ctx: ConversionContext, name: str, weight: ParamRef, ids_ndim: int) -> NeuronMap:
    """Rows are ordered TOKEN nodes (position = row index); columns are the embedding neurons."""
    V, D = weight.shape
    layer = ctx.new_layer(name, "embedding")
    tokens = ctx.add_nodes(V, NodeType.TOKEN, layer, torch.arange(V))
    out = ctx.add_nodes(D, NodeType.HIDDEN, layer)
    ctx.add_param_edges(weight, tokens.view(V, 1), out.view(1, D), EdgeType.EMBEDDING, layer)
    return NeuronMap(out, ids_ndim, None, ids_ndim + 1)


@register_converter(nn.Linear)
def _linear_module(ctx: ConversionContext, m: nn.Linear, inputs: list, name: str) -> NeuronMap:
    return linear(ctx, name, inputs[0], ParamRef.of(m.weight), ParamRef.of(m.bias), ctx.args[0].ndim)


@register_converter(nn.Embedding)
def _embedding_module(ctx: ConversionContext, m: nn.Embedding, inputs: list, name: str) -> NeuronMap:
    return embedding(ctx, name, ParamRef.of(m.weight), ctx.args[0].ndim)


@register_converter(nn.EmbeddingBag)
def _embedding_bag(ctx: ConversionContext, m: nn.EmbeddingBag, inputs: list, name: str) -> NeuronMap:
    out = embedding(ctx, name, ParamRef.of(m.weight), 1)  # bags reduce the token dim: [B, D]
    return NeuronMap(out.nodes, 1, None, 2)
