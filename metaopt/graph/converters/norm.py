"""Normalisation layers: a NORMED copy of the neurons, gamma edges from per-layer (per-group) norm
nodes, beta edges from the layer's bias node, and structural NORM_IN edges from the inputs."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..builder import NeuronMap
from ..ops import carried_copies
from ..registry import ConversionContext, ParamRef, register_converter
from ..schema import EdgeType, NodeType


def norm(ctx: ConversionContext, name: str, x: Any, weight: ParamRef | None, bias: ParamRef | None,
         num_features: int, dim: int, ndim: int, kind: str, groups: int = 1,
         trailing: tuple[int, ...] = (), op: dict | None = None) -> NeuronMap:
    """Affine normalisation of `num_features` neurons along `dim`.

    `groups` norm nodes (GroupNorm's groups; 1 otherwise) so the graph knows which channels share
    statistics. `trailing` is the extra normalised shape of a multi-dim LayerNorm, whose affine
    entries become edges carrying their (h, w) position. `op` (eps, running statistics' buffer
    names) is recorded for simulate, with the channel order of the NORMED nodes when not the identity.
    """
    xm = ctx.input_map(x, dim, num_features, ndim)
    layer = ctx.new_layer(name, kind)
    uniq, inverse = torch.unique(xm.nodes, return_inverse=True)
    out = ctx.add_nodes(uniq.numel(), NodeType.NORMED, layer)
    ctx.add_aux_edges(uniq, out, EdgeType.NORM_IN, layer)
    out_map = NeuronMap(out[inverse], xm.dim, xm.pos, xm.ndim)
    rec = dict(op or {})
    copies = carried_copies(ctx, xm)
    if copies is not None:  # each neuron's value carries its copies on a last dim (patch merging)
        rec["copies"] = copies
        if kind not in ("layernorm", "rmsnorm") or trailing:
            ctx.builder.mark_inexact([layer], f"{kind} over repeated neurons")
    elif not torch.equal(inverse, torch.arange(inverse.numel())):
        rec["channels"] = inverse.tolist()
    if trailing:
        rec["normalized_dims"] = 1 + len(trailing)
    if rec:
        ctx.set_layer_op(layer, rec)
    norm_nodes = ctx.add_nodes(groups, NodeType.NORM, layer)
    per = max(1, math.prod(trailing))
    dst = out_map.nodes.repeat_interleave(per)
    kpos = None
    if trailing:
        grid = torch.stack(torch.meshgrid(*[torch.arange(t) for t in trailing], indexing="ij"), -1)
        kpos = torch.zeros(num_features * per, 3, dtype=torch.long)
        kpos[:, 3 - len(trailing):] = grid.reshape(per, len(trailing)).repeat(num_features, 1)
    elif xm.pos is not None:
        kpos = xm.pos
    if weight is not None:
        group_of = torch.arange(num_features) // max(1, num_features // groups)
        src = norm_nodes[group_of].repeat_interleave(per)
        ctx.add_param_edges(weight, src, dst, EdgeType.NORM_WEIGHT, layer, kpos)
    if bias is not None:
        src = torch.full((dst.numel(),), ctx.bias_node(layer))
        ctx.add_param_edges(bias, src, dst, EdgeType.NORM_BIAS, layer, kpos)
    return out_map


def _channel_norm(ctx: ConversionContext, m: nn.Module, inputs: list, name: str) -> NeuronMap:
    ndim = ctx.args[0].ndim
    cdim = 1 if ndim > 1 else 0
    if isinstance(m, (nn.InstanceNorm1d,)) and ndim == 2:  # unbatched (C, L)
        cdim = 0
    if isinstance(m, (nn.InstanceNorm2d,)) and ndim == 3:
        cdim = 0
    if isinstance(m, (nn.InstanceNorm3d,)) and ndim == 4:
        cdim = 0
    kind = type(m).__name__.lower()
    running = m.track_running_stats and m.running_mean is not None and not m.training
    op = {"eps": float(m.eps),  # None: normalise with the input's own statistics
          "running_mean": ctx.buffer_name(m.running_mean) if running else None,
          "running_var": ctx.buffer_name(m.running_var) if running else None}
    return norm(ctx, name, inputs[0], ParamRef.of(m.weight), ParamRef.of(m.bias), m.num_features,
                cdim, ndim, kind, op=op)


for _cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
             nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):
    register_converter(_cls, _channel_norm)


@register_converter(nn.GroupNorm)
def _group_norm(ctx: ConversionContext, m: nn.GroupNorm, inputs: list, name: str) -> NeuronMap:
    return norm(ctx, name, inputs[0], ParamRef.of(m.weight), ParamRef.of(m.bias), m.num_channels,
                1, ctx.args[0].ndim, "groupnorm", groups=m.num_groups,
                op={"eps": float(m.eps), "num_groups": int(m.num_groups)})


def last_dims_norm(ctx: ConversionContext, name: str, x: Any, shape: tuple[int, ...],
                   weight: ParamRef | None, bias: ParamRef | None, ndim: int, kind: str,
                   eps: float | None = 1e-5) -> NeuronMap:
    """LayerNorm/RMSNorm over the trailing `shape`: neurons along dim -len(shape)."""
    return norm(ctx, name, x, weight, bias, shape[0], ndim - len(shape), ndim, kind,
                trailing=tuple(shape[1:]), op={"eps": None if eps is None else float(eps)})


@register_converter(nn.LayerNorm)
def _layer_norm(ctx: ConversionContext, m: nn.LayerNorm, inputs: list, name: str) -> NeuronMap:
    return last_dims_norm(ctx, name, inputs[0], tuple(m.normalized_shape), ParamRef.of(m.weight),
                          ParamRef.of(m.bias), ctx.args[0].ndim, "layernorm", m.eps)


if hasattr(nn, "RMSNorm"):

    @register_converter(nn.RMSNorm)
    def _rms_norm(ctx: ConversionContext, m: nn.Module, inputs: list, name: str) -> NeuronMap:
        return last_dims_norm(ctx, name, inputs[0], tuple(m.normalized_shape), ParamRef.of(m.weight),
                              None, ctx.args[0].ndim, "rmsnorm", m.eps)
