"""What `simulate` needs beyond nodes and edges: typed, JSON-serialisable records of a layer's
hyperparameters and of the parameter-free ops between layers.

The graph tensors (x, edge_index, edge_attr, aux edges) describe connectivity only; conv stride,
pooling, a constant `x / 6` or BatchNorm's eps change no edge. They are kept in the graph's layer
records (`graph.layers[i]`, dicts stored with the structure), so the tensors a GMN reads are the
same as before and the round trip (edge k = element k of the flat parameters) is untouched.
Optional keys of a layer record (absent when empty):

- ``op``: the layer's hyperparameters. Convolutions: ``stride``, ``padding`` (list or "same" /
  "valid"), ``dilation``, ``padding_mode``, ``groups`` (``output_padding`` when transposed).
  Norms: ``eps``; BatchNorm/InstanceNorm also ``running_mean`` / ``running_var`` (buffer names,
  or None when the layer normalises with the input's statistics); ``channels``: the local index
  of the NORMED node of each input channel, when that order is not the identity.
- ``act_args``: ``{Activation name: {"fn": name, **kwargs}}``, the exact elementwise function of
  this layer's neurons where the Activation code alone is not enough (OTHER, slopes, GELU's tanh).
- ``reads``: ``[{"from": producer layer, "ops": [op, ...]}]``: the ops applied, in order, to that
  producer's neurons before this layer reads them (pooling after a conv, a flatten, `x.mean([2, 3])`).
- ``inexact``: reasons the layer's value is not what its nodes say (simulate raises with them).

An op is ``{"op": kind, ...}``, acting on one neuron's value (the tensor with the feature dim
removed; dim 0 is the batch):

- ``{"op": "call", "fn": F-name, "kwargs": {...}}``: a pooling / interpolate / pad function of
  `torch.nn.functional` from `SPATIAL_FUNCTIONS`.
- ``{"op": "reshape", "shape": [-1, ...]}``: the neuron's value reshaped (the batch is -1).
- ``{"op": "reduce", "fn": "mean"|"sum"|..., "dims": [...], "keepdim": bool}``: over its own dims.
- ``{"op": "scalar", "fn": "add"|"sub"|"mul"|"div", "value": c, "reverse": bool}``: x op c (c op x).
- ``{"op": "opaque", "why": "..."}``: something no record describes; simulate raises with `why`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# positional parameters (after the input) of the parameter-free spatial functions simulate replays
_POOL = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
SPATIAL_FUNCTIONS: dict[str, tuple[str, ...]] = {
    **{f"max_pool{d}d": _POOL for d in (1, 2, 3)},
    **{f"avg_pool{d}d": _AVG for d in (1, 2, 3)},
    **{f"adaptive_avg_pool{d}d": ("output_size",) for d in (1, 2, 3)},
    **{f"adaptive_max_pool{d}d": ("output_size", "return_indices") for d in (1, 2, 3)},
    **{f"lp_pool{d}d": ("norm_type", "kernel_size", "stride", "ceil_mode") for d in (1, 2, 3)},
    "interpolate": ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias"),
    "pad": ("pad", "mode", "value"),
}

# module attributes -> the functional call it makes
_MODULE_KWARGS: list[tuple[tuple[type, ...], str, tuple[str, ...]]] = [
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), "max_pool", ("kernel_size", "stride", "padding", "dilation",
                                                            "ceil_mode", "return_indices")),
    ((nn.AvgPool1d,), "avg_pool", ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")),
    ((nn.AvgPool2d, nn.AvgPool3d), "avg_pool", _AVG),
    ((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d), "adaptive_avg_pool", ("output_size",)),
    ((nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d), "adaptive_max_pool",
     ("output_size", "return_indices")),
    ((nn.LPPool1d, nn.LPPool2d), "lp_pool", ("norm_type", "kernel_size", "stride", "ceil_mode")),
]


def jsonable(v: Any) -> Any:
    """v as plain JSON data (tuples -> lists, 1-element tensors -> numbers), or raise TypeError."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (tuple, list, torch.Size)):
        return [jsonable(x) for x in v]
    if isinstance(v, Tensor) and v.numel() == 1 and not v.is_meta:
        return v.item()
    raise TypeError(f"{type(v).__name__} is not a recordable argument")


def opaque(why: str) -> dict:
    return {"op": "opaque", "why": why}


def call_op(fn: str, args: tuple, kwargs: dict) -> dict:
    """A spatial function call on a neuron's value (args/kwargs after the input)."""
    names = SPATIAL_FUNCTIONS.get(fn)
    if names is None:
        return opaque(f"parameter-free op '{fn}' has no simulate record")
    try:
        kw = {k: jsonable(v) for k, v in zip(names, args)}
        kw.update({k: jsonable(v) for k, v in kwargs.items()})
    except TypeError as exc:
        return opaque(f"'{fn}' with a non-constant argument ({exc})")
    if kw.get("return_indices"):
        return opaque(f"'{fn}' returning indices")
    return {"op": "call", "fn": fn, "kwargs": kw}


def module_op(module: nn.Module) -> dict | None:
    """The record of a parameter-free spatial module (None: it leaves values unchanged)."""
    for types, stem, attrs in _MODULE_KWARGS:
        if isinstance(module, types):
            dims = type(module).__name__[-2]
            return call_op(f"{stem}{dims}d", (), {a: getattr(module, a) for a in attrs if hasattr(module, a)})
    if isinstance(module, nn.Upsample):
        return call_op("interpolate", (), {"size": module.size, "scale_factor": module.scale_factor,
                                            "mode": module.mode, "align_corners": module.align_corners})
    if isinstance(module, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad2d)):
        return call_op("pad", (), {"pad": module.padding, "mode": "constant", "value": module.value})
    if isinstance(module, (nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d)):
        return call_op("pad", (), {"pad": module.padding, "mode": "reflect"})
    if isinstance(module, (nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d)):
        return call_op("pad", (), {"pad": module.padding, "mode": "replicate"})
    return opaque(f"module {type(module).__name__} has no simulate record")


def function_op(target: Any, args: tuple, kwargs: dict) -> dict:
    """The record of a parameter-free spatial function call (F.max_pool2d(x, 3, 2), ...)."""
    name = getattr(target, "__name__", str(target))
    if name == "_max_pool2d" or name.startswith("_max_pool") or name.startswith("_adaptive_max"):
        name = name.lstrip("_")  # boolean_dispatch wrappers
    if name == "upsample":
        name = "interpolate"
    return call_op(name, tuple(args), dict(kwargs))


_SCALAR_FNS = {"add": "add", "iadd": "add", "__add__": "add", "__radd__": "add", "add_": "add",
               "sub": "sub", "isub": "sub", "__sub__": "sub", "__rsub__": "rsub", "sub_": "sub",
               "mul": "mul", "imul": "mul", "__mul__": "mul", "__rmul__": "mul", "mul_": "mul",
               "truediv": "div", "itruediv": "div", "div": "div", "__truediv__": "div", "div_": "div"}


def scalar_op(target: Any, const: Any, reverse: bool, kwargs: dict) -> dict:
    """x (op) c, or c (op) x when `reverse`, for a constant c; opaque unless c is one number."""
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    fn = _SCALAR_FNS.get(name)
    if fn is None or kwargs:
        return opaque(f"'{name}' with a constant and arguments {sorted(kwargs)}")
    if fn == "rsub":
        fn, reverse = "sub", not reverse
    try:
        value = jsonable(const)
    except TypeError:
        return opaque(f"'{name}' with a constant tensor of shape {tuple(getattr(const, 'shape', ()))}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return opaque(f"'{name}' with a constant tensor")
    if fn == "div" and reverse:
        return opaque("a constant divided by neurons (c / x)")
    return {"op": "scalar", "fn": fn, "value": float(value), "reverse": bool(reverse)}


_REDUCE_FNS = {"mean", "sum", "amax", "amin", "max", "min", "prod", "logsumexp", "nanmean"}


def reduce_op(target: Any, dims: list[int], keepdim: bool, feature_dim: int, kwargs: dict) -> dict:
    """A reduction over `dims` (real dims, none of them the feature dim) on each neuron's value."""
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    extra = set(kwargs) - {"dim", "keepdim"}
    if name not in _REDUCE_FNS or extra:
        return opaque(f"reduction '{name}' has no simulate record")
    per_node = [d if d < feature_dim else d - 1 for d in dims]
    return {"op": "reduce", "fn": name, "dims": per_node, "keepdim": bool(keepdim)}


def reshape_op(shape: list[int], batched: bool) -> dict:
    shape = list(shape)
    if batched and shape:
        shape[0] = -1
    return {"op": "reshape", "shape": shape}


# ---- activations ---------------------------------------------------------------------------------

_ACT_ARGS = {  # function name -> its parameters after the input (positional order)
    "leaky_relu": ("negative_slope",), "elu": ("alpha",), "celu": ("alpha",), "gelu": ("approximate",),
    "softplus": ("beta", "threshold"), "hardtanh": ("min_val", "max_val"), "relu6": (), "selu": (),
    "hardsigmoid": (), "hardswish": (), "mish": (), "silu": (), "sigmoid": (), "tanh": (), "relu": (),
    "softsign": (), "tanhshrink": (), "sin": (), "cos": (), "exp": (), "square": (), "abs": (),
}
_MODULE_ACT_ATTRS = {"negative_slope", "alpha", "approximate", "beta", "threshold", "min_val", "max_val"}


def activation_spec(target: Any, args: tuple = (), kwargs: dict | None = None,
                    module: nn.Module | None = None) -> dict:
    """{"fn": name, **parameters} of an elementwise activation call or module."""
    if module is not None:
        name = {"ReLU6": "relu6", "SiLU": "silu", "GELU": "gelu", "ELU": "elu", "CELU": "celu",
                "SELU": "selu", "LeakyReLU": "leaky_relu"}.get(type(module).__name__, type(module).__name__.lower())
        spec = {"fn": name}
        for a in _ACT_ARGS.get(name, ()):
            if a in _MODULE_ACT_ATTRS and hasattr(module, a):
                spec[a] = getattr(module, a)
        return _checked(spec)
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    name = name.rstrip("_")
    spec = {"fn": name}
    for a, v in zip(_ACT_ARGS.get(name, ()), args):
        spec[a] = v
    for k, v in (kwargs or {}).items():
        if k != "inplace":
            spec[k] = v
    return _checked(spec)


def _checked(spec: dict) -> dict:
    if spec["fn"] not in _ACT_ARGS:
        return {"fn": spec["fn"], "unknown": True}
    try:
        return {k: jsonable(v) for k, v in spec.items()}
    except TypeError:
        return {"fn": spec["fn"], "unknown": True}


_MONOTONE = {"relu", "relu6", "leaky_relu", "elu", "celu", "selu", "sigmoid", "tanh", "softplus", "hardtanh",
             "hardsigmoid", "softsign", "exp"}


def commutes(op: dict, act: dict) -> bool:
    """Whether applying `act` before `op` equals applying it after (so tagging the producer is exact)."""
    if op["op"] == "reshape":
        return True
    if op["op"] == "call" and op["fn"].startswith(("max_pool", "adaptive_max_pool")):
        return act.get("fn") in _MONOTONE  # max of f = f of max for non-decreasing f
    return False


F_BY_NAME = {name: getattr(F, name) for name in SPATIAL_FUNCTIONS}
