"""Convolutions: every kernel tap is an edge in-channel -> out-channel carrying its kernel offset."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..builder import NeuronMap, grouped_kernel_edges
from ..op_records import jsonable
from ..registry import ConversionContext, ParamRef, register_converter
from ..schema import EdgeType, NodeType


def conv(ctx: ConversionContext, name: str, x: Any, weight: ParamRef, bias: ParamRef | None,
         groups: int, transposed: bool, ndim: int, hyper: dict | None = None) -> NeuronMap:
    """Conv (weight [O, I/g, *k]) or transposed conv (weight [I, O/g, *k]) over channel dim 1.

    `hyper` (stride, padding, dilation, padding_mode, output_padding) is recorded for simulate.
    """
    shape = tuple(weight.shape)
    kernel = shape[2:]
    if transposed:
        c_in, c_out = shape[0], shape[1] * groups
    else:
        c_in, c_out = shape[1] * groups, shape[0]
    cdim = ndim - len(kernel) - 1  # 1 for batched input, 0 for unbatched
    xm = ctx.input_map(x, cdim, c_in, ndim)
    if xm.pos is not None:
        ctx.fail("convolution over a flattened feature map is not supported")
    kind = f"conv{'_transpose' if transposed else ''}{len(kernel)}d"
    layer = ctx.new_layer(name, kind)
    ctx.set_layer_op(layer, {**conv_hyper(hyper or {}), "groups": int(groups)})
    out = ctx.add_nodes(c_out, NodeType.HIDDEN, layer)
    src, dst, kpos = grouped_kernel_edges(xm.nodes, out, groups, kernel, transposed)
    ctx.add_param_edges(weight, src, dst, EdgeType.CONV, layer, kpos)
    ctx.add_bias(bias, out, layer)
    return NeuronMap(out, cdim, None, ndim)


def conv_hyper(h: dict) -> dict:
    """Stride/padding/dilation (and padding_mode, output_padding) as JSON data, defaults filled."""
    out = {"stride": 1, "padding": 0, "dilation": 1, "padding_mode": "zeros"}
    out.update({k: v for k, v in h.items() if v is not None})
    return {k: jsonable(v) for k, v in out.items()}


def _conv_module(ctx: ConversionContext, m: nn.modules.conv._ConvNd, inputs: list, name: str) -> NeuronMap:
    hyper = {"stride": m.stride, "padding": m.padding, "dilation": m.dilation, "padding_mode": m.padding_mode}
    if m.transposed:
        hyper["output_padding"] = m.output_padding
    return conv(ctx, name, inputs[0], ParamRef.of(m.weight), ParamRef.of(m.bias), m.groups,
                m.transposed, ctx.args[0].ndim, hyper)


for _cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_converter(_cls, _conv_module)
