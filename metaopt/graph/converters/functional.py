"""Functional forms with parameters (F.linear(x, self.w), x @ self.W, F.conv2d, F.layer_norm, ...).

Custom modules that keep their own nn.Parameters and call torch functions are traced through;
these rules give such calls the same graph as the equivalent nn module.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F

from ..builder import NeuronMap
from ..registry import ParamRef
from ..split_map import Scores, SplitMap
from .attention import attention_matmul, einsum_attention, sdpa
from .conv import conv
from .dense import embedding, linear
from .norm import last_dims_norm, norm


def _get(values: list, kw: dict, i: int, key: str) -> Any:
    return values[i] if len(values) > i else kw.get(key)


def _pref(v: Any) -> ParamRef | None:
    return v if isinstance(v, ParamRef) else None


def _f_linear(w, n, values, kw, args, kwargs, result):
    weight, bias = _pref(_get(values, kw, 1, "weight")), _pref(_get(values, kw, 2, "bias"))
    if weight is None or len(weight.shape) != 2:
        return NotImplemented
    return linear(w.ctx, n.name, values[0], weight, bias, args[0].ndim)


def _matmul(w, n, values, kw, args, kwargs, result):
    a, b = values[0], values[1]
    if isinstance(b, ParamRef) and len(b.shape) == 2 and not isinstance(a, ParamRef):
        return linear(w.ctx, n.name, a, ParamRef(b.param, b.index.t()), None, args[0].ndim)
    if isinstance(a, ParamRef) and len(a.shape) == 2 and isinstance(b, NeuronMap) and b.dim == b.ndim - 2:
        out = linear(w.ctx, n.name, b.moved(b.ndim - 1, b.ndim), a, None, b.ndim)  # W @ x: features on dim -2
        return NeuronMap(out.nodes, b.ndim - 2, None, b.ndim)
    neurons = (NeuronMap, SplitMap, Scores)
    if isinstance(a, neurons) and isinstance(b, neurons):  # activations times activations: attention
        out = attention_matmul(w, n, a, b, args, result)
        if out is NotImplemented:
            w.ctx.fail("multiplies two activations whose neurons are not attention operands "
                       "([..., heads, tokens, dim] @ [..., heads, dim, tokens], then @ values).")
        return out
    return NotImplemented


def _f_conv(transposed: bool):
    # F.convNd(input, weight, bias, stride, padding, dilation, groups)
    # F.conv_transposeNd(input, weight, bias, stride, padding, output_padding, groups, dilation)
    def rule(w, n, values, kw, args, kwargs, result):
        weight, bias = _pref(_get(values, kw, 1, "weight")), _pref(_get(values, kw, 2, "bias"))
        if weight is None:
            return NotImplemented
        names = ("stride", "padding", "output_padding", "groups", "dilation") if transposed \
            else ("stride", "padding", "dilation", "groups")
        hyper = dict(zip(names, args[3:]))
        hyper.update({k: v for k, v in kwargs.items() if k in names})
        groups = hyper.pop("groups", 1)
        return conv(w.ctx, n.name, values[0], weight, bias, int(groups), transposed, args[0].ndim, hyper)
    return rule


def _f_embedding(w, n, values, kw, args, kwargs, result):
    weight = _pref(_get(values, kw, 1, "weight"))
    if weight is None:
        return NotImplemented
    return embedding(w.ctx, n.name, weight, args[0].ndim)


def _f_layer_norm(w, n, values, kw, args, kwargs, result):
    shape = tuple(_get(list(args), kwargs, 1, "normalized_shape"))
    weight, bias = _pref(_get(values, kw, 2, "weight")), _pref(_get(values, kw, 3, "bias"))
    if weight is None and bias is None:
        return NotImplemented
    eps = _get(list(args), kwargs, 4, "eps")
    return last_dims_norm(w.ctx, n.name, values[0], shape, weight, bias, args[0].ndim, "layernorm",
                          1e-5 if eps is None else eps)


def _f_rms_norm(w, n, values, kw, args, kwargs, result):
    shape = tuple(_get(list(args), kwargs, 1, "normalized_shape"))
    weight = _pref(_get(values, kw, 2, "weight"))
    if weight is None:
        return NotImplemented
    return last_dims_norm(w.ctx, n.name, values[0], shape, weight, None, args[0].ndim, "rmsnorm",
                          _get(list(args), kwargs, 3, "eps"))


def _f_group_norm(w, n, values, kw, args, kwargs, result):
    groups = _get(list(args), kwargs, 1, "num_groups")
    weight, bias = _pref(_get(values, kw, 2, "weight")), _pref(_get(values, kw, 3, "bias"))
    if weight is None and bias is None:
        return NotImplemented
    C = args[0].shape[1]
    eps = _get(list(args), kwargs, 4, "eps")
    return norm(w.ctx, n.name, values[0], weight, bias, C, 1, args[0].ndim, "groupnorm", groups=int(groups),
                op={"eps": 1e-5 if eps is None else float(eps), "num_groups": int(groups)})


def _f_batch_norm(w, n, values, kw, args, kwargs, result):
    weight, bias = _pref(_get(values, kw, 3, "weight")), _pref(_get(values, kw, 4, "bias"))
    if weight is None and bias is None:
        return NotImplemented
    C = args[0].shape[1]
    training = _get(list(args), kwargs, 5, "training")
    eps = _get(list(args), kwargs, 7, "eps")
    mean, var = (None, None) if training else (_get(list(args), kwargs, 1, "running_mean"),
                                               _get(list(args), kwargs, 2, "running_var"))
    op = {"eps": 1e-5 if eps is None else float(eps),
          "running_mean": w.ctx.buffer_name(mean), "running_var": w.ctx.buffer_name(var)}
    if (mean is None) != (op["running_mean"] is None):  # statistics that are not model buffers
        op["running_mean"] = op["running_var"] = "<not a buffer>"
    return norm(w.ctx, n.name, values[0], weight, bias, C, 1, args[0].ndim, "batchnorm", op=op)


MATMULS = (torch.matmul, operator.matmul, "matmul", "__matmul__", torch.bmm, "bmm")

FUNCTIONAL_CONVERTERS: dict[Any, Any] = {
    F.linear: _f_linear,
    torch.matmul: _matmul,
    operator.matmul: _matmul,
    "matmul": _matmul,
    "__matmul__": _matmul,
    torch.mm: _matmul,
    "mm": _matmul,
    torch.bmm: _matmul,
    "bmm": _matmul,
    F.conv1d: _f_conv(False),
    F.conv2d: _f_conv(False),
    F.conv3d: _f_conv(False),
    F.conv_transpose1d: _f_conv(True),
    F.conv_transpose2d: _f_conv(True),
    F.conv_transpose3d: _f_conv(True),
    F.embedding: _f_embedding,
    F.layer_norm: _f_layer_norm,
    F.group_norm: _f_group_norm,
    F.batch_norm: _f_batch_norm,
    F.scaled_dot_product_attention: sdpa,
    torch.einsum: einsum_attention,
}
from .. import ops  # noqa: E402

ops.SPLIT_CONSUMERS.update(MATMULS)  # the attention rules above read split heads
if hasattr(F, "rms_norm"):
    FUNCTIONAL_CONVERTERS[F.rms_norm] = _f_rms_norm
