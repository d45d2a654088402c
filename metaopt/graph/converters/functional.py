"""Functional forms with parameters (F.linear(x, self.w), x @ self.W, F.conv2d, F.layer_norm, ...).

Custom modules that keep their own nn.Parameters and call torch functions are traced through;
these rules give such calls the same graph as the equivalent nn module. They are converters like
the module ones (`register_converter(F.linear)`, `fn(ctx, function, inputs, name)`); one returns
NotImplemented for a call it does not read (no parameter argument), leaving it to the rules of
ops.py. F.scaled_dot_product_attention and torch.einsum are registered in attention.py.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F

from ..builder import NeuronMap
from ..registry import ConversionContext, ParamRef, register_converter
from ..split_map import Scores, SplitMap
from .attention import attention_matmul
from .conv import conv
from .dense import embedding, linear
from .norm import last_dims_norm, norm


@register_converter(F.linear)
def _f_linear(ctx: ConversionContext, fn: Any, values: list, name: str) -> Any:
    weight, bias = ctx.param_arg(1, "weight"), ctx.param_arg(2, "bias")
    if weight is None or len(weight.shape) != 2:
        return NotImplemented
    return linear(ctx, name, values[0], weight, bias, ctx.args[0].ndim)


def _matmul(ctx: ConversionContext, fn: Any, values: list, name: str) -> Any:
    a, b = values[0], values[1]
    args = ctx.args
    if isinstance(b, ParamRef) and len(b.shape) == 2 and not isinstance(a, ParamRef):
        return linear(ctx, name, a, ParamRef(b.param, b.index.t()), None, args[0].ndim)
    if isinstance(a, ParamRef) and len(a.shape) == 2 and isinstance(b, NeuronMap) and b.dim == b.ndim - 2:
        out = linear(ctx, name, b.moved(b.ndim - 1, b.ndim), a, None, b.ndim)  # W @ x: features on dim -2
        return NeuronMap(out.nodes, b.ndim - 2, None, b.ndim)
    neurons = (NeuronMap, SplitMap, Scores)
    if isinstance(a, neurons) and isinstance(b, neurons):  # activations times activations: attention
        out = attention_matmul(ctx, name, a, b, args, ctx.result)
        if out is NotImplemented:
            ctx.fail("multiplies two activations whose neurons are not attention operands "
                     "([..., heads, tokens, dim] @ [..., heads, dim, tokens], then @ values).")
        return out
    return NotImplemented


def _f_conv(transposed: bool):
    # F.convNd(input, weight, bias, stride, padding, dilation, groups)
    # F.conv_transposeNd(input, weight, bias, stride, padding, output_padding, groups, dilation)
    def rule(ctx: ConversionContext, fn: Any, values: list, name: str) -> Any:
        weight, bias = ctx.param_arg(1, "weight"), ctx.param_arg(2, "bias")
        if weight is None:
            return NotImplemented
        names = ("stride", "padding", "output_padding", "groups", "dilation") if transposed \
            else ("stride", "padding", "dilation", "groups")
        hyper = dict(zip(names, ctx.args[3:]))
        hyper.update({k: v for k, v in ctx.real_kwargs.items() if k in names})
        groups = hyper.pop("groups", 1)
        return conv(ctx, name, values[0], weight, bias, int(groups), transposed, ctx.args[0].ndim, hyper)
    return rule


@register_converter(F.embedding)
def _f_embedding(ctx: ConversionContext, fn: Any, values: list, name: str) -> Any:
    weight = ctx.param_arg(1, "weight")
    if weight is None:
        return NotImplemented
    return embedding(ctx, name, weight, ctx.args[0].ndim, values[0], ctx.real_arg(3, "max_norm"))


@register_converter(F.layer_norm)
def _f_layer_norm(ctx: ConversionContext, fn: Any, values: list, name: str) -> Any:
    shape = tuple(ctx.real_arg(1, "normalized_shape"))
    weight, bias = ctx.param_arg(2, "weight"), ctx.param_arg(3, "bias")
    if weight is None and bias is None:
        return NotImplemented
    eps = ctx.real_arg(4, "eps")
    return last_dims_norm(ctx, name, values[0], shape, weight, bias, ctx.args[0].ndim, "layernorm",
                          1e-5 if eps is None else eps)


def _f_rms_norm(ctx: ConversionContext, fn: Any, values: list, name: str) -> Any:
    shape = tuple(ctx.real_arg(1, "normalized_shape"))
    weight = ctx.param_arg(2, "weight")
    if weight is None:
        return NotImplemented
    return last_dims_norm(ctx, name, values[0], shape, weight, None, ctx.args[0].ndim, "rmsnorm",
                          ctx.real_arg(3, "eps"))


@register_converter(F.group_norm)
def _f_group_norm(ctx: ConversionContext, fn: Any, values: list, name: str) -> Any:
    groups = ctx.real_arg(1, "num_groups")
    weight, bias = ctx.param_arg(2, "weight"), ctx.param_arg(3, "bias")
    if weight is None and bias is None:
        return NotImplemented
    C = ctx.args[0].shape[1]
    eps = ctx.real_arg(4, "eps")
    return norm(ctx, name, values[0], weight, bias, C, 1, ctx.args[0].ndim, "groupnorm", groups=int(groups),
                op={"eps": 1e-5 if eps is None else float(eps), "num_groups": int(groups)})


@register_converter(F.batch_norm)
def _f_batch_norm(ctx: ConversionContext, fn: Any, values: list, name: str) -> Any:
    weight, bias = ctx.param_arg(3, "weight"), ctx.param_arg(4, "bias")
    if weight is None and bias is None:
        return NotImplemented
    C = ctx.args[0].shape[1]
    training = ctx.real_arg(5, "training")
    eps = ctx.real_arg(7, "eps")
    mean, var = (None, None) if training else (ctx.real_arg(1, "running_mean"), ctx.real_arg(2, "running_var"))
    op = {"eps": 1e-5 if eps is None else float(eps),
          "running_mean": ctx.buffer_name(mean), "running_var": ctx.buffer_name(var)}
    if (mean is None) != (op["running_mean"] is None):  # statistics that are not model buffers
        op["running_mean"] = op["running_var"] = "<not a buffer>"
    return norm(ctx, name, values[0], weight, bias, C, 1, ctx.args[0].ndim, "batchnorm", op=op)


MATMULS = (torch.matmul, operator.matmul, "matmul", "__matmul__", torch.bmm, "bmm")

for _target in (*MATMULS, torch.mm, "mm"):
    register_converter(_target, _matmul)
for _target in (F.conv1d, F.conv2d, F.conv3d):
    register_converter(_target, _f_conv(False))
for _target in (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d):
    register_converter(_target, _f_conv(True))
if hasattr(F, "rms_norm"):
    register_converter(F.rms_norm, _f_rms_norm)
from .. import ops  # noqa: E402

ops.SPLIT_CONSUMERS.update(MATMULS)  # the attention rules above read split heads
