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
- ``{"op": "index", "index": [i, ...]}``: basic indexing of the neuron's value, one entry per dim
  from the batch on: an int, or ``{"slice": [start, stop, step]}`` (ViT's ``x[:, 0]``).
- ``{"op": "permute", "dims": [...]}``, ``{"op": "roll", "shifts": [...], "dims": [...]}``,
  ``{"op": "flip", "dims": [...]}``: the tensor op on the neuron's own dims (dim 0 the batch).
  Shape ops are recorded as these only when replaying the record on the conversion's position
  probe gives exactly what the op did (ops.py checks), so a record never guesses.
- ``{"op": "param_add", "layer": L}``: the parameter table of layer L (``param_add`` kind) added to
  the neuron's value: element (row, k) of the table is the PARAM_ADD (or BIAS) edge from row
  node `row` of L to neuron k; the table's per-neuron shape is L's ``op["rows_shape"]`` (the
  parameter's shape without its feature dim, ones prepended to the value's rank).
- ``{"op": "param_cat", "dim": d, "parts": [{"layer": L} | {"neurons": true}, ...]}``: the
  neuron's value concatenated along its dim d with parameter tables (PARAM_CAT edges of layer
  L, rows_shape as above, broadcast over the other dims): a class token.

- ``{"op": "take", "in_shape": [...], "shape": [...], "index": [i, ...]}``: position i of the
  flattened value (batch included, of shape in_shape: one sample, e.g. a constant table through
  an MLP) at each output position: a gather by a constant index (Swin V2's position bias).
- ``{"op": "constant", "value": [...]}``: a constant tensor read in place of INPUT neurons
  (``value[position]`` for the node at that position, batch dim included): Swin V2's coordinate
  table fed to its position-bias MLP.
- ``{"op": "copies", "chains": [[op, ...], ...]}``: the same neurons concatenated along the
  features n times, copy r read through chains[r] (Swin's patch merging: x[..., 0::2, 0::2, :],
  ...); the copies are stacked on a new last dim of the neuron's value. The reading norm / Linear
  records ``{"copies": n}`` in its ``op``; their edges carry the copy index in K0.
- ``{"op": "last_step", "dim": d, "reverse": bool}``: a recurrent layer's final state (h_n / c_n):
  the neuron's value over the sequence taken at its last step along its dim d (index -1, or 0 for
  the reverse direction).
- ``{"op": "attention", "layer": L}``: the value neurons of hand-written attention layer L
  (kind ``attention``) attended: readers of the attention's output read the value neurons
  through it (simulate/attention.py computes the heads' weights from L's record).

Layer ``op`` keys of the attention family:

- ``multihead_attention``: ``batch_first``, ``batched`` (3-d input), ``num_heads``,
  ``add_zero_attn``. Masks are not recorded, so a masked call is ``inexact``.
- ``attention`` (hand-written): ``reads_q`` / ``reads_k`` (the op chains of the query / key
  operands' producers, in the ``reads`` format) and ``scores``: the ops on one head's scores
  [batch-like, Nq, Nk] before `@ v`, in order: ``scalar`` (as above), ``{"op": "softmax"}`` (last
  dim), ``{"op": "causal"}`` (sdpa's is_causal), ``{"op": "identity"}``,
  ``{"op": "head_table", "layer": L, "rows": [[...]]}`` (relative position bias: row
  rows[i][j] of the head's table in layer L, or ``rows_by_head``), ``{"op": "add_tensor",
  "period": P, "value": [P, Nq, Nk]}`` (a constant such as a shifted-window mask, repeating
  every P batch-like positions), ``{"op": "head_scale", "layer": L, "fns": [...]}`` (the scores
  multiplied by the head's element of L's table, a ``head_scale`` layer, through the elementwise
  functions ``fns``: ``{"fn": "clamp", "min", "max"}``, ``{"fn": "exp"}``, ...; Swin V2's
  logit scale), ``{"op": "head_neurons", "reads": [...], "dim": d, "ndim": n}`` (neurons added to
  the scores, each to its head's: the RESIDUAL aux edges into the HEAD nodes say which, ``reads``
  the neurons' op chains in the ``reads`` format, d / n where their features sat in the sum; Swin
  V2's `16 * sigmoid(cpb_mlp(table)[index])`), or opaque (masks of other kinds, dropout, other
  per-head scales).
- hand-written attention operands (``reads_q`` / ``reads_k``) may hold ``{"op": "head_normalize",
  "eps": e}``: F.normalize(p=2) over each head's vector (cosine attention), followed only by ops
  that move positions; simulate normalizes each head's query / key vector before the dot product.
- ``param_add`` / ``param_cat`` / ``relative_position_bias`` / ``head_scale``: ``rows_shape`` (above) and
  ``deferred``: True when the table is applied by the readers' op chains (param_add /
  param_cat ops) or to the scores (head_table), not by the layer its edges point into.
- any layer: ``zeroed``: ``{parameter name: [flat element, ...]}``, elements of a parameter zeroed
  in place before this layer used it (Swin V2's `qkv_bias[C:2C].zero_()` on a clone): simulate
  sets those edge values to zero (edge k is element k of the flat parameters).
- ``gru`` / ``lstm`` / ``rnn_tanh`` / ``rnn_relu`` (one layer and direction of nn.GRU & co.): ``mode``
  (torch's: "GRU", "LSTM", "RNN_TANH", "RNN_RELU"), ``time_dim`` (the time dim of a neuron's value,
  the input's per-neuron shape: 1 for batch_first [B, T], else 0), ``reverse``, ``hidden``, ``proj``.
  Unrolled cells (nn.GRUCell & co.) have none, and simulate refuses them.
- ``param_add``: ``prefix``: True when only the table's first rows are added (``pos[:T]``; rows_shape
  is then that of the rows used, and simulate skips the PARAM_ADD edges of the other rows).
- ``embedding``: ``ids``: which ids are looked up: ``"input"`` (the model input tensor itself) or
  ``{"constant": [...]}`` (an index without a batch dim, or with batch dim 1, e.g. ``torch.arange(T)``:
  recorded at conversion); ``nn.EmbeddingBag`` adds ``bag`` (mode: "sum" / "mean" / "max", over the
  last dim of [B, T] ids) and ``padding_idx`` (None, or the row left out of each bag).
- any layer: ``tied``: ``[{"param": name, ...}]``, parameters this layer uses again whose edges
  belong to an earlier use (tied weights; `GraphBuilder.add_param_edges` records it). A Linear
  (or `x @ W`) reading the whole parameter adds ``"in"``: the input node id of each column of the
  weight as used, and ``"transposed"``: whether that weight is the parameter transposed; its rows
  are the layer's neurons in order. An entry without ``"in"`` is refused by simulate.
- ``<input>``: ``feature_dim`` when the model input's features are not on dim 1 ([B, tokens, C]);
  ``<output>``: ``feature_dim`` likewise for the output.
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


_PARAM_FNS = {"clamp": ("min", "max"), "clip": ("min", "max"), "exp": (), "log": (), "sqrt": (), "rsqrt": (),
              "reciprocal": (), "square": ()}


def param_fn(target: Any, args: tuple, kwargs: dict) -> dict:
    """An elementwise function of a parameter's elements ({"fn": "clamp", "min": None, "max": 4.6}),
    or opaque: Swin V2's `clamp(logit_scale, max=log(100)).exp()`."""
    name = (target if isinstance(target, str) else getattr(target, "__name__", str(target))).rstrip("_")
    names = _PARAM_FNS.get(name)
    if names is None or len(args) > len(names) or set(kwargs) - set(names):
        return opaque(f"'{name}' of a parameter has no simulate record")
    try:
        out = {"fn": "clamp" if name == "clip" else name,
               **{k: jsonable(v) for k, v in zip(names, args)}, **{k: jsonable(v) for k, v in kwargs.items()}}
    except TypeError:
        return opaque(f"'{name}' of a parameter with a non-constant argument")
    return out


def apply_param_fns(v: Tensor, fns: list[dict]) -> Tensor:
    """The recorded elementwise functions (param_fn) applied to parameter values `v`."""
    for f in fns:
        if f["fn"] == "clamp":
            v = torch.clamp(v, min=f.get("min"), max=f.get("max"))
        elif f["fn"] in _PARAM_FNS:
            v = getattr(torch, f["fn"])(v)
        else:
            raise NotImplementedError(f"simulate: {f.get('why', f['fn'])}")
    return v


_MONOTONE = {"relu", "relu6", "leaky_relu", "elu", "celu", "selu", "sigmoid", "tanh", "softplus", "hardtanh",
             "hardsigmoid", "softsign", "exp"}


def commutes(op: dict, act: dict) -> bool:
    """Whether applying `act` before `op` equals applying it after (so tagging the producer is exact)."""
    if op["op"] == "reshape":
        return True
    if op["op"] in ("take", "index", "permute", "roll", "flip"):  # positions moved, not mixed
        return act.get("fn") is not None and not act.get("unknown")
    if op["op"] == "call" and op["fn"].startswith(("max_pool", "adaptive_max_pool")):
        return act.get("fn") in _MONOTONE  # max of f = f of max for non-decreasing f
    return False


F_BY_NAME = {name: getattr(F, name) for name in SPATIAL_FUNCTIONS}


# ---- per-neuron forms of shape ops (checked against the probes in ops.py) --------------------------

def _norm_dims(dims: Any, ndim: int) -> list[int] | None:
    if isinstance(dims, int):
        dims = [dims]
    if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims):
        return None
    return [d % ndim for d in dims]


def per_node_op(name: str, ndim: int, fdim: int, args: tuple, kwargs: dict) -> dict | None:
    """The record of shape op `name` (getitem, permute, transpose, roll, flip) on each neuron's
    value, for an input of `ndim` dims with features along `fdim`; None when it cannot say.

    The candidate is what the op does to the other dims; the caller checks it on the probes.
    """
    def node(d: int) -> int:
        return d - (d > fdim)

    try:
        if name in ("getitem", "__getitem__"):
            idx = args[0] if args else None
            idx = idx if isinstance(idx, tuple) else (idx,)
            if any(i is Ellipsis for i in idx):
                k = idx.index(Ellipsis)
                idx = idx[:k] + (slice(None),) * (ndim - len(idx) + 1) + idx[k + 1:]
            if len(idx) > ndim or not all(isinstance(i, (int, slice)) and not isinstance(i, bool) for i in idx):
                return None
            idx = idx + (slice(None),) * (ndim - len(idx))
            if idx[fdim] != slice(None):
                return None
            out = []
            for d, i in enumerate(idx):
                if d == fdim:
                    continue
                if isinstance(i, slice):
                    if not all(v is None or isinstance(v, int) for v in (i.start, i.stop, i.step)):
                        return None
                    out.append({"slice": [i.start, i.stop, i.step]})
                else:
                    out.append(int(i))
            return {"op": "index", "index": out}
        if name in ("permute", "transpose", "swapaxes"):
            if name == "permute":
                dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
                perm = _norm_dims(list(dims or kwargs.get("dims", ())), ndim)
            else:
                a = list(args) + [kwargs.get(k) for k in ("dim0", "dim1")][len(args):]
                pair = _norm_dims(a[:2], ndim)
                if pair is None or len(pair) != 2:
                    return None
                perm = list(range(ndim))
                perm[pair[0]], perm[pair[1]] = perm[pair[1]], perm[pair[0]]
            if perm is None or sorted(perm) != list(range(ndim)):
                return None
            return {"op": "permute", "dims": [node(p) for p in perm if p != fdim]}
        if name in ("roll", "flip"):
            rest = list(args)
            if name == "roll":
                shifts = rest[0] if rest else kwargs.get("shifts")
                dims = rest[1] if len(rest) > 1 else kwargs.get("dims")
                dims = _norm_dims(dims, ndim)
                shifts = [shifts] if isinstance(shifts, int) else list(shifts or [])
                if dims is None or fdim in dims or len(shifts) != len(dims):
                    return None
                return {"op": "roll", "shifts": [int(s) for s in shifts], "dims": [node(d) for d in dims]}
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else (rest or kwargs.get("dims"))
            dims = _norm_dims(list(dims) if isinstance(dims, (list, tuple)) else dims, ndim)
            if dims is None or fdim in dims:
                return None
            return {"op": "flip", "dims": [node(d) for d in dims]}
    except (TypeError, ValueError):
        return None
    return None


def apply_shape(v: Tensor, op: dict) -> Tensor:
    """A per-neuron shape record (index, permute, roll, flip) applied to values [k, *per-neuron]."""
    kind = op["op"]
    if kind == "index":
        idx = tuple(slice(*i["slice"]) if isinstance(i, dict) else i for i in op["index"])
        return v[(slice(None), *idx)]
    if kind == "permute":
        return v.permute(0, *[d + 1 for d in op["dims"]])
    if kind == "roll":
        return torch.roll(v, op["shifts"], [d + 1 for d in op["dims"]])
    if kind == "flip":
        return torch.flip(v, [d + 1 for d in op["dims"]])
    raise KeyError(kind)


SHAPE_RECORDS = ("index", "permute", "roll", "flip")


def pad_without_feature(op: dict, ndim: int, fdim: int) -> dict:
    """An F.pad record on neurons along `fdim` of an `ndim`-d tensor, for one neuron's value: the
    feature dim's pair is dropped (it must pad nothing; channels-last maps pad it with (0, 0))."""
    if op.get("op") != "call" or not isinstance(op["kwargs"].get("pad"), list):
        return op
    pad = list(op["kwargs"]["pad"])
    j = ndim - 1 - fdim  # pairs run from the last dim backwards
    if 2 * j + 1 >= len(pad):
        return op
    if pad[2 * j] or pad[2 * j + 1]:
        return opaque("F.pad that pads the feature dim")
    return {**op, "kwargs": {**op["kwargs"], "pad": pad[:2 * j] + pad[2 * j + 2:]}}
