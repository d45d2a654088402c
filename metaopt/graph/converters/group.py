"""Group-equivariant linear layers (metaopt.layers.group_linear): one edge per *free* parameter.

Channels are nodes (as for convolutions: the group/set/spatial axes are not). Each free
parameter is one GROUP_SHARED edge from its input-channel node to its output-channel node with
K0 = index of the equivariant basis map it multiplies and K1, K2 = centred kernel offset:

- SetLinear (S_n):        lam[o, i] -> K0 = 0 (the element itself), gam[o, i] -> K0 = 1 (set mean).
- CyclicLinear (C_n):     w[o, i, g] -> K0 = g, the relative group element (s - r) mod n.
- C4LiftingConv2d:        w[o, i, u, v] -> K0 = 0 (input has no group axis), K1, K2 = tap offset.
- C4GroupConv2d (p4):     w[o, i, g, u, v] -> K0 = g (relative rotation), K1, K2 = offset of the
                          tap in the un-rotated filter.

(layer type, K0, K1, K2) determines every dense entry a parameter is used in (its orbit), so the
encoding is lossless while keeping the one-edge-per-parameter contract; biases are per channel
(shared over the group axis) and are ordinary BIAS edges. Why not one node per (channel, group
element): the shared parameter would then need one edge per use, breaking the contract.
"""

from __future__ import annotations

from typing import Any

import torch

from ...layers.group_linear import C4GroupConv2d, C4LiftingConv2d, CyclicLinear, SetLinear
from ..builder import NeuronMap
from ..registry import ConversionContext, register_converter
from ..schema import EdgeType, NodeType

SET_SELF, SET_MEAN = 0, 1  # K0 of SetLinear's two basis maps


def _offsets(k: int) -> torch.Tensor:
    """Centred offsets (dy, dx) of a k x k kernel: [k, k, 2]."""
    c = torch.arange(k) - (k - 1) // 2
    return torch.stack(torch.meshgrid(c, c, indexing="ij"), dim=-1)


def _channel_layer(ctx: ConversionContext, name: str, kind: str, x: Any, in_ch: int, out_ch: int,
                   cdim: int, ndim: int) -> tuple[NeuronMap, int, torch.Tensor]:
    """Input channel neurons along `cdim`, a new layer, and its output channel nodes."""
    xm = ctx.input_map(x, cdim, in_ch, ndim)
    if xm.pos is not None:
        ctx.fail(f"{kind} over a flattened feature map is not supported; keep channels on their own dim.")
    layer = ctx.new_layer(name, kind)
    return xm, layer, ctx.add_nodes(out_ch, NodeType.HIDDEN, layer)


@register_converter(SetLinear)
def _set_linear(ctx: ConversionContext, m: SetLinear, inputs: list, name: str) -> NeuronMap:
    ndim = ctx.args[0].ndim
    xm, layer, out = _channel_layer(ctx, name, "set_linear", inputs[0], m.in_features, m.out_features,
                                    ndim - 1, ndim)
    src, dst = xm.nodes.view(1, -1), out.view(-1, 1)
    for param, basis in ((m.lam, SET_SELF), (m.gam, SET_MEAN)):
        kpos = torch.tensor([basis, 0, 0]).view(1, 1, 3)
        ctx.add_param_edges(param, src, dst, EdgeType.GROUP_SHARED, layer, kpos)
    ctx.add_bias(m.bias, out, layer)
    return NeuronMap(out, ndim - 1, None, ndim)


@register_converter(CyclicLinear)
def _cyclic_linear(ctx: ConversionContext, m: CyclicLinear, inputs: list, name: str) -> NeuronMap:
    ndim = ctx.args[0].ndim
    xm, layer, out = _channel_layer(ctx, name, f"cyclic_linear_c{m.order}", inputs[0], m.in_channels,
                                    m.out_channels, ndim - 2, ndim)
    kpos = torch.zeros(1, 1, m.order, 3, dtype=torch.long)
    kpos[..., 0] = torch.arange(m.order)
    ctx.add_param_edges(m.weight, xm.nodes.view(1, -1, 1), out.view(-1, 1, 1), EdgeType.GROUP_SHARED, layer, kpos)
    ctx.add_bias(m.bias, out, layer)
    return NeuronMap(out, ndim - 2, None, ndim)


@register_converter(C4LiftingConv2d)
def _c4_lifting(ctx: ConversionContext, m: C4LiftingConv2d, inputs: list, name: str) -> NeuronMap:
    k = m.kernel_size
    xm, layer, out = _channel_layer(ctx, name, "c4_lifting_conv2d", inputs[0], m.in_channels,
                                    m.out_channels, 1, 4)
    kpos = torch.zeros(1, 1, k, k, 3, dtype=torch.long)
    kpos[..., 1:] = _offsets(k)
    src, dst = xm.nodes.view(1, -1, 1, 1), out.view(-1, 1, 1, 1)
    ctx.add_param_edges(m.weight, src, dst, EdgeType.GROUP_SHARED, layer, kpos)
    ctx.add_bias(m.bias, out, layer)
    return NeuronMap(out, 1, None, 5)


@register_converter(C4GroupConv2d)
def _c4_group_conv(ctx: ConversionContext, m: C4GroupConv2d, inputs: list, name: str) -> NeuronMap:
    k = m.kernel_size
    xm, layer, out = _channel_layer(ctx, name, "c4_group_conv2d", inputs[0], m.in_channels,
                                    m.out_channels, 1, 5)
    kpos = torch.zeros(1, 1, 4, k, k, 3, dtype=torch.long)
    kpos[..., 0] = torch.arange(4).view(4, 1, 1)
    kpos[..., 1:] = _offsets(k)
    src, dst = xm.nodes.view(1, -1, 1, 1, 1), out.view(-1, 1, 1, 1, 1)
    ctx.add_param_edges(m.weight, src, dst, EdgeType.GROUP_SHARED, layer, kpos)
    ctx.add_bias(m.bias, out, layer)
    return NeuronMap(out, 1, None, 5)
