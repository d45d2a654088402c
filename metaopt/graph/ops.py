"""Dataflow rules for the parameter-free ops of a traced model: how neurons flow through them.

Shape ops (view, flatten, transpose, getitem, chunk, ...) are followed exactly by running the same
op on *probe* tensors that hold each element's feature index, so no per-op bookkeeping is needed.
Helpers for the walker and for converters: `probe_tensors` / `map_from_probe` (follow a shape op),
`map_tensors` and `flatten_values` (nested outputs and arguments), and `with_op` / `merge_ops` (the
parameter-free op chains a NeuronMap carries for simulate, op_records.py).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import einops_shapes, inline, op_records
from .builder import NeuronMap
from .registry import CONST, Const, ConversionContext, ConversionError, ParamRef, Unassigned
from .schema import Activation, EdgeType, NodeType
from .split_map import Scores, SplitMap

if TYPE_CHECKING:
    from .tracing import DataflowWalker

# ---- activations ------------------------------------------------------------------------------

ACTIVATION_MODULES: dict[type, Activation] = {
    nn.ReLU: Activation.RELU, nn.GELU: Activation.GELU, nn.Tanh: Activation.TANH,
    nn.Sigmoid: Activation.SIGMOID, nn.SiLU: Activation.SILU, nn.LeakyReLU: Activation.LEAKY_RELU,
    nn.ELU: Activation.ELU, nn.Softplus: Activation.SOFTPLUS, nn.Softmax: Activation.SOFTMAX,
    nn.Mish: Activation.MISH, nn.Hardswish: Activation.HARDSWISH, nn.ReLU6: Activation.OTHER,
    nn.Hardtanh: Activation.OTHER, nn.SELU: Activation.OTHER, nn.CELU: Activation.OTHER,
    nn.LogSoftmax: Activation.SOFTMAX, nn.Tanhshrink: Activation.OTHER, nn.Hardsigmoid: Activation.OTHER,
    nn.Softsign: Activation.OTHER, nn.GLU: Activation.OTHER,
}

_ACT_BY_NAME = {
    "relu": Activation.RELU, "relu_": Activation.RELU, "gelu": Activation.GELU, "tanh": Activation.TANH,
    "sigmoid": Activation.SIGMOID, "silu": Activation.SILU, "sin": Activation.SIN,
    "leaky_relu": Activation.LEAKY_RELU, "elu": Activation.ELU, "softplus": Activation.SOFTPLUS,
    "softmax": Activation.SOFTMAX, "log_softmax": Activation.SOFTMAX, "mish": Activation.MISH,
    "hardswish": Activation.HARDSWISH, "relu6": Activation.OTHER, "hardtanh": Activation.OTHER,
    "selu": Activation.OTHER, "celu": Activation.OTHER, "cos": Activation.OTHER, "exp": Activation.OTHER,
    "square": Activation.OTHER, "abs": Activation.OTHER, "hardsigmoid": Activation.OTHER,
    "softsign": Activation.OTHER, "tanh_": Activation.TANH, "sigmoid_": Activation.SIGMOID,
}
_ACT_FUNCTIONS: dict[Any, Activation] = {}
for _name, _act in _ACT_BY_NAME.items():
    for _ns in (torch, F, torch.special):
        if hasattr(_ns, _name):
            _ACT_FUNCTIONS[getattr(_ns, _name)] = _act
    _ACT_FUNCTIONS[_name] = _act  # call_method targets are strings

IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d, nn.LPPool1d, nn.LPPool2d, nn.ZeroPad2d, nn.ConstantPad1d,
    nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)

_IDENTITY_FUNCS: set[Any] = {
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, torch.clone,
    operator.pos, "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to",
    "type", "type_as", "requires_grad_", "cpu", "cuda",
}
_POOL_FUNCS: set[Any] = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate, F.pad, F.lp_pool2d,
}
SHAPE_FUNCS: set[Any] = {
    "view", "reshape", torch.reshape, torch.flatten, "flatten", "unflatten", torch.unflatten,
    "permute", torch.permute, "transpose", torch.transpose, "t", torch.t, "squeeze", torch.squeeze,
    "unsqueeze", torch.unsqueeze, operator.getitem, "expand", "expand_as", "repeat", "narrow",
    torch.narrow, "select", torch.select, "movedim", torch.movedim, "swapaxes", torch.swapaxes,
    "chunk", torch.chunk, "split", torch.split, "unbind", torch.unbind, "tensor_split",
    torch.tensor_split, "flip", torch.flip, "roll", torch.roll, "view_as", "reshape_as",
    "repeat_interleave", "tile", torch.tile, "__getitem__",
}
SHAPE_FUNCS.update(einops_shapes.SHAPE_FUNCTIONS)
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__radd__",
        operator.sub, operator.isub, torch.sub, "sub", "sub_", "__sub__", "__rsub__"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_", "__mul__", "__rmul__",
        operator.truediv, operator.itruediv, torch.div, "div", "div_", "__truediv__"}
_REDUCE = {torch.mean, "mean", torch.sum, "sum", torch.amax, "amax", torch.amin, "amin",
           torch.max, "max", torch.min, "min", torch.logsumexp, "logsumexp", torch.std, "std",
           torch.var, "var", "norm", torch.norm, torch.prod, "prod", "nanmean", torch.nanmean}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_STACK = {torch.stack}
_NEG = {operator.neg, torch.neg, "neg"}


def follows_split(n: Any, module: nn.Module | None = None) -> bool:
    """Whether node `n` can take a SplitMap: shape ops, identities, shape queries, attention."""
    if module is not None:
        return isinstance(module, (nn.Flatten, nn.Unflatten) + IDENTITY_MODULES + einops_shapes.SHAPE_MODULES)
    t = n.target
    try:
        hash(t)
    except TypeError:
        return False
    return (t in SHAPE_FUNCS or t in _IDENTITY_FUNCS or t is getattr or t in SPLIT_CONSUMERS
            or t in _ADD or t in _MUL or t in _NEG  # by constants only (binary() checks)
            or inline.inlinable(t)  # its body is walked (tracing.py)
            or t is F.normalize  # over a head's vector (dispatch checks the dim)
            or t in ("size", "dim", "numel", "shape", "ndimension", "nelement", "stride"))


SPLIT_CONSUMERS: set[Any] = set()  # functions whose rules read SplitMaps (attention), filled by converters


def is_tensor_like(v: Any) -> bool:
    return isinstance(v, (NeuronMap, SplitMap, Unassigned, ParamRef, Const))


def first_carrier(values: list[Any]) -> Any:
    for v in values:
        if isinstance(v, (NeuronMap, Unassigned, ParamRef)):
            return v
    return None


# ---- op chains for simulate (op_records.py) ---------------------------------------------------

def with_op(ctx: ConversionContext, m: NeuronMap, op: dict | None) -> NeuronMap:
    """`m` after a parameter-free op on each neuron's value: the op joins every producer's chain."""
    if op is None:
        return m
    ops = {p: (m.ops or {}).get(p, ()) + (op,) for p in ctx.builder.node_layers(m.nodes)}
    return NeuronMap(m.nodes, m.dim, m.pos, m.ndim, ops)


def merge_ops(ctx: ConversionContext, maps: list) -> dict | None:
    """The op chains of neurons gathered from several maps (a concatenation)."""
    if not any(m.ops for m in maps):
        return None
    out: dict = {}
    for m in maps:  # a map without ops reads its producers directly (an empty chain)
        chains = m.ops or {p: () for p in ctx.builder.node_layers(m.nodes)}
        for p, chain in chains.items():
            if p in out and out[p] != chain:
                chain = (op_records.opaque("neurons of one layer read through two different op chains"),)
            out[p] = chain
    return {p: c for p, c in out.items() if c} or None


def copies_op(ctx: ConversionContext, maps: list) -> dict | None:
    """The op chains of the same neurons concatenated n times along the features, each copy
    through its own ops (Swin's patch merging: a channel at four offsets): {producer: ({"op":
    "copies", "chains": [chain of copy 0, ...]},)}, the copies stacked on a new last dim of each
    neuron's value (copy r = part r, as copy_positions numbers them). None unless every part
    holds the same neurons in the same order."""
    if len(maps) < 2 or any(m.pos is not None or not torch.equal(m.nodes, maps[0].nodes) for m in maps):
        return None
    layers = ctx.builder.node_layers(maps[0].nodes)
    out = {}
    for p in layers:
        chains = [list((m.ops or {}).get(p, ())) for m in maps]
        out[p] = ({"op": "copies", "chains": chains},)
    return out


def is_copy_read(m: NeuronMap) -> bool:
    """Whether `m`'s positions number repeated neurons (copy_positions) rather than a flatten."""
    return m.pos is not None and m.size > 0 and torch.equal(m.pos, copy_positions(m.nodes)) \
        and bool((m.pos[:, 0] > 0).any())


def carried_copies(ctx: ConversionContext, m: NeuronMap) -> int | None:
    """n when a layer reading `m` reads repeated neurons whose values carry their n copies on a
    last dim (a "copies" op ends each chain, or the producers record "copies"), else None."""
    if not is_copy_read(m):
        return None
    n = int(m.pos[:, 0].max()) + 1
    if m.ops:
        ok = all(c and c[-1].get("op") == "copies" and len(c[-1]["chains"]) == n for c in m.ops.values())
    else:
        ok = all((ctx.builder.layers[p].op or {}).get("copies") == n for p in ctx.builder.node_layers(m.nodes))
    return n if ok else None


def _per_node_op(m: NeuronMap, in_shape: torch.Size, q: Tensor, r: Tensor, j: int,
                 candidate: dict | None = None) -> dict | None:
    """What a shape op did to each neuron's value (None: nothing), read off the rest probe.

    `candidate` is the op's own per-neuron record (op_records.per_node_op): kept when replaying it
    on the positions of the input reproduces the rest probe exactly.
    """
    out_shape = [s for d, s in enumerate(q.shape) if d != j]
    in_node = [s for d, s in enumerate(in_shape) if d != m.dim]
    r_sel = r.select(j, 0).reshape(-1).long() if q.ndim else r.reshape(-1).long()
    if r_sel.numel() != math.prod(in_node) or not torch.equal(r_sel, torch.arange(r_sel.numel())):
        if candidate is not None and m.pos is None:
            probe = torch.arange(math.prod(in_node)).view(1, *in_node)
            try:
                got = op_records.apply_shape(probe, candidate)[0]
            except (IndexError, RuntimeError, TypeError):
                got = None
            want = r.select(j, 0).long() if q.ndim else r.long()
            if got is not None and tuple(got.shape) == tuple(want.shape) and torch.equal(got, want):
                return candidate
        if m.pos is None and r_sel.numel() == math.prod(out_shape) and in_node:
            # a gather (Swin V2's bias table [relative_position_index]): the probe says where each
            # position comes from; replayed only on values of the conversion's shape (batch included)
            return {"op": "take", "in_shape": list(in_node), "shape": list(out_shape),
                    "index": (r.select(j, 0) if q.ndim else r).reshape(-1).long().tolist()}
        return op_records.opaque("a shape op that reorders, slices or repeats positions within neurons")
    if out_shape == in_node:
        return None
    if m.pos is not None:
        return op_records.opaque("a reshape of an already flattened feature map")
    return op_records.reshape_op(out_shape, batched=j != 0 and m.dim != 0)


# ---- probes for shape ops ---------------------------------------------------------------------

def probe_tensors(shape: torch.Size, dim: int) -> tuple[Tensor, Tensor]:
    """Feature index along `dim`, and flat index over all other dims, broadcast to `shape`.

    Run a shape op on both probes, then `map_from_probe` reads where the features went.
    """
    K = shape[dim]
    view = [1] * len(shape)
    view[dim] = K
    rest_shape = [s for i, s in enumerate(shape) if i != dim]
    n_rest = max(1, math.prod(rest_shape))
    # int32 halves the probes of a large real batch (shape ops materialise them at full size)
    dtype = torch.int32 if max(K, n_rest) < 2**31 else torch.int64
    feat = torch.arange(K, dtype=dtype).view(view).expand(shape)
    rest = torch.arange(n_rest, dtype=dtype).view(rest_shape).unsqueeze(dim).expand(shape)
    return feat, rest


def map_from_probe(ctx: ConversionContext, m: NeuronMap, in_shape: torch.Size, q: Tensor, r: Tensor,
                   candidate: dict | None = None) -> Any:
    """The dataflow value of a shape op's output, read off its feature probe `q` and rest probe `r`.

    `m` is the input's NeuronMap and `in_shape` the input's real shape; `q`, `r` are the op applied
    to `probe_tensors(in_shape, m.dim)`. Returns a NeuronMap, CONST (a single feature selected) or
    a SplitMap (features spread over several dims).
    """
    if q.ndim == 0:
        return CONST
    if m.size == 1:  # a single neuron: follow the size-1 dim if there is one to follow
        ones = [d for d in range(q.ndim) if q.shape[d] == 1]
        if not ones:
            return CONST
        keep = m.dim - (len(in_shape) - q.ndim) if q.ndim < len(in_shape) else m.dim
        d = keep if keep in ones else ones[-1]
        return with_op(ctx, NeuronMap(m.nodes, d, m.pos, q.ndim, m.ops), _per_node_op(m, in_shape, q, r, d, candidate))
    varying = [d for d in range(q.ndim) if q.shape[d] > 1 and bool((q.amax(d) != q.amin(d)).any())]
    if not varying:
        return CONST  # one feature selected: its neuron identity no longer spans a dimension
    if len(varying) > 1:  # spread over several dims (heads, a channel shuffle): keep the probes
        return SplitMap(m, in_shape, q, r)
    j = varying[0]
    index = [0] * q.ndim
    index[j] = slice(None)
    feat = q[tuple(index)].long()
    rest = r[tuple(index)].long()
    nodes = m.nodes[feat]
    pos = m.pos[feat] if m.pos is not None else None
    if not bool((rest != rest[0]).any()):
        out = NeuronMap(nodes, j, pos, q.ndim, m.ops)
        return with_op(ctx, out, _per_node_op(m, in_shape, q, r, j, candidate))
    # other dims were merged into the feature dim: flatten
    if pos is not None:
        ctx.fail("flattening an already flattened feature map is not supported")
    trailing = [s for s in in_shape[m.dim + 1 :]]
    offs = rest - rest.min()
    coords = []
    for size in reversed(trailing[-3:] if len(trailing) <= 3 else [math.prod(trailing[:-2])] + trailing[-2:]):
        coords.append(offs % size)
        offs = offs // size
    coords = coords[::-1]
    pos = torch.zeros(feat.numel(), 3, dtype=torch.long)
    for i, c in enumerate(coords):
        pos[:, 3 - len(coords) + i] = c
    span = math.prod(trailing)
    exact = (m.dim <= 1 and len(trailing) <= 3 and feat.numel() == m.size * span
             and torch.equal(rest - rest.min(), torch.arange(feat.numel()) % span)
             and torch.equal(feat, torch.arange(feat.numel()) // span))
    out = NeuronMap(nodes, j, pos, q.ndim, m.ops)
    # LINEAR_FLAT edges read each neuron's value at K = (d, h, w): exact only for a channel-major
    # flatten of the trailing dims (not channels-last, not a partial flatten)
    return out if exact else with_op(ctx, out, op_records.opaque("a flatten that is not channel-major over the trailing dims"))


class NeedsValues(RuntimeError):
    """A shape op indexed by a tensor of the meta pass (no values): rerun on real tensors."""


def _host(v: Any) -> Any:
    """Index/size arguments of a shape op, on the CPU where the probes live."""
    if isinstance(v, Tensor):
        if v.is_meta:
            raise NeedsValues("a shape op takes a tensor argument whose values the meta pass lacks")
        return v.cpu()
    if isinstance(v, (tuple, list)):
        return type(v)(_host(x) for x in v)
    return v


def shape_op(w: "DataflowWalker", n, values: list, args: tuple, kwargs: dict, result: Any) -> Any:
    x = values[0]
    call = _caller(n)
    args = (args[0], *_host(tuple(args[1:])))
    kwargs = {k: _host(v) for k, v in kwargs.items()}
    if isinstance(x, ParamRef):
        out = call(x.index, args[1:], kwargs)
        return map_tensors(out, lambda t: ParamRef(x.param, t, x.fns))
    if isinstance(x, Unassigned):
        moved = x.ops and isinstance(result, Tensor) and tuple(result.shape) != tuple(args[0].shape)
        extra = (op_records.opaque("a reshape of an input after ops on it"),) if moved else ()
        return map_tensors(result, lambda t: Unassigned(t.ndim, x.node_type, ops=x.ops + extra))
    if isinstance(x, SplitMap):  # continue on the probes it carries (contiguous: .view must work)
        qs, rs = call(x.feat.contiguous(), args[1:], kwargs), call(x.rest.contiguous(), args[1:], kwargs)
        if isinstance(qs, (tuple, list)):
            return type(qs)(map_from_probe(w.ctx, x.source, x.src_shape, q, r) for q, r in zip(qs, rs))
        return map_from_probe(w.ctx, x.source, x.src_shape, qs, rs)
    if not isinstance(x, NeuronMap):
        return map_tensors(result, lambda t: CONST)
    real = args[0]
    feat, rest = probe_tensors(real.shape, x.dim)
    if n.target in ("view", "view_as"):  # probes are expanded; the real tensor was viewable
        feat, rest = feat.contiguous(), rest.contiguous()
    qs, rs = call(feat, args[1:], kwargs), call(rest, args[1:], kwargs)
    if isinstance(qs, (tuple, list)):
        return type(qs)(map_from_probe(w.ctx, x, real.shape, q, r) for q, r in zip(qs, rs))
    name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
    candidate = op_records.per_node_op(name, real.ndim, x.dim, tuple(args[1:]), kwargs)
    return map_from_probe(w.ctx, x, real.shape, qs, rs, candidate)


def _caller(n) -> Callable:
    if n.target is getattr:
        return lambda t, rest, kw: getattr(t, rest[0])
    if n.op == "call_method":
        return lambda t, rest, kw: getattr(t, n.target)(*rest, **kw)
    return lambda t, rest, kw: n.target(t, *rest, **kw)


def map_tensors(out: Any, fn: Callable[[Tensor], Any]) -> Any:
    """`fn` applied to every tensor of a (nested tuple/list) output; other values stay as they are."""
    if isinstance(out, Tensor):
        return fn(out)
    if isinstance(out, (tuple, list)):
        return type(out)(map_tensors(o, fn) for o in out)
    return out


# ---- activations and identities --------------------------------------------------------------

def activation(w: "DataflowWalker", n, x: Any, act: Activation, spec: dict | None = None) -> Any:
    """Elementwise nonlinearity: tag the neurons, or an activated copy if the input is reused.

    `spec` is the exact function ({"fn": "leaky_relu", "negative_slope": 0.2}), kept for simulate.
    """
    if not isinstance(x, NeuronMap):
        return x
    if w.reused(n.args[0] if n.args else None) or w.has_activation(x.nodes):
        w.ctx.note_read(x)
        layer = w.ctx.new_layer(w.ctx.current, "activation")
        uniq, inverse = torch.unique(x.nodes, return_inverse=True)
        new = w.ctx.add_nodes(uniq.numel(), NodeType.HIDDEN, layer)
        w.ctx.add_aux_edges(uniq, new, EdgeType.ACT_IN, layer)
        w.ctx.builder.set_activation(new, act, layer, spec=spec)
        return NeuronMap(new[inverse], x.dim, x.pos, x.ndim)
    # the tag acts on the producers' neurons, before any op of x's chain: exact only if they commute
    for p, chain in (x.ops or {}).items():
        if not all(op_records.commutes(op, spec or {}) for op in chain):
            w.ctx.builder.mark_inexact([p], f"activation '{(spec or {}).get('fn', act.name)}' at "
                                            f"{w.ctx.current} follows a parameter-free op it does not commute with")
    w.ctx.set_activation(torch.unique(x.nodes), act, spec)
    return x


def act_of(target: Any) -> Activation | None:
    try:
        return _ACT_FUNCTIONS.get(target)
    except TypeError:  # unhashable targets
        return None


# ---- binary elementwise ----------------------------------------------------------------------

def _out_dim(m: NeuronMap, out_ndim: int) -> int:
    return m.dim + (out_ndim - m.ndim)


def binary(w: "DataflowWalker", n, values: list, args: tuple, result: Tensor, kind: str) -> Any:
    """a (+,-,*,/) b with broadcasting; `kind` is 'add' or 'mul'."""
    if not isinstance(result, Tensor):
        return result
    out_ndim = result.ndim
    vals, reals = list(values[:2]), list(args[:2])
    split = [v for v in vals if isinstance(v, SplitMap)]
    if split:  # split heads scaled or shifted by a constant (q * scale): the same split neurons
        others = [v for v in vals if not isinstance(v, SplitMap)]
        if len(split) > 1 or any(is_tensor_like(v) and v is not CONST for v in others) \
                or tuple(result.shape) != tuple(split[0].feat.shape):
            w.ctx.fail("combines features spread over several dims with other neurons or "
                       "parameters; only scaling or shifting them by a constant is followed.")
        x = split[0]
        i = 0 if vals[0] is x else 1
        const = reals[1 - i] if len(reals) > 1 else None
        op = op_records.scalar_op(n.target, const, i == 1, dict(n.kwargs))  # q * scale: exact per element
        return SplitMap(with_op(w.ctx, x.source, op), x.src_shape, x.feat, x.rest)
    maps = [v for v in vals if isinstance(v, NeuronMap)]
    params = [v for v in vals if isinstance(v, ParamRef)]
    unassigned = [v for v in vals if isinstance(v, Unassigned)]
    if not maps:
        if unassigned and not params:
            u = unassigned[0]
            if len(unassigned) == 1 and not any(is_tensor_like(v) for v in vals if v is not u):  # x / 255
                i = next(k for k, v in enumerate(vals) if v is u)
                const = reals[1 - i] if len(reals) > 1 else None
                op = op_records.scalar_op(n.target, const, i == 1, dict(n.kwargs))
                return Unassigned(out_ndim, u.node_type, ops=u.ops + (op,))
            return Unassigned(out_ndim, u.node_type)
        if params and not unassigned and len(params) == 1:  # param (op) constant: same elements
            p = params[0]
            return ParamRef(p.param, p.index.expand(result.shape), p.fns) if p.shape != result.shape else p
        if params and unassigned:  # raw input + parameter (e.g. pre-embedded input + position table)
            i = vals.index(unassigned[0])
            m = w.ctx.input_map(unassigned[0], -1, reals[i].shape[-1], reals[i].ndim)
            vals[i] = m
            maps = [m]
        else:
            if params:
                w.unclaimed_use(params, n)
            return CONST
    # at least one NeuronMap
    if len(maps) == 2 or unassigned:
        if unassigned:  # a raw input combined with neurons: give it input neurons aligned to them
            m = maps[0]
            i = vals.index(unassigned[0])
            d = _out_dim(m, out_ndim) - (out_ndim - reals[i].ndim)
            size = reals[i].shape[d] if 0 <= d < reals[i].ndim else 1
            vals[i] = w.ctx.input_map(unassigned[0], d, size, reals[i].ndim)
            maps = [v for v in vals if isinstance(v, NeuronMap)]
        a, b = maps
        if _out_dim(a, out_ndim) != _out_dim(b, out_ndim):
            w.ctx.fail(
                f"combines neurons along dim {_out_dim(a, out_ndim)} with neurons along dim "
                f"{_out_dim(b, out_ndim)}; cannot tell which neurons are combined."
            )
        if a.same_neurons(b):
            name = getattr(n.target, "__name__", str(n.target))
            if a.ops != b.ops:  # x + pool(x): the same nodes at two different stages
                op = op_records.opaque(f"'{name}' of neurons with themselves through different op chains")
            elif kind == "add":  # x + x = 2x, x - x = 0
                op = op_records.scalar_op("mul", 0.0 if "sub" in name else 2.0, False, {})
            else:
                return activation(w, n, a.moved(_out_dim(a, out_ndim), out_ndim), Activation.OTHER,
                                  {"fn": f"{name}(x, x)", "unknown": True})
            return with_op(w.ctx, a.moved(_out_dim(a, out_ndim), out_ndim), op)
        K = max(a.size, b.size)
        if a.size not in (1, K) or b.size not in (1, K):
            w.ctx.fail(f"combines {a.size} and {b.size} neurons elementwise")
        node_type, etype = (NodeType.SUM, EdgeType.RESIDUAL) if kind == "add" else (NodeType.PRODUCT, EdgeType.PRODUCT_IN)
        w.ctx.note_read(a)
        w.ctx.note_read(b)
        layer = w.ctx.new_layer(w.ctx.current, "residual_add" if kind == "add" else "product")
        new = w.ctx.add_nodes(K, node_type, layer)
        for m in (a, b):
            w.ctx.add_aux_edges(m.nodes.expand(K), new, etype, layer)
        tname = getattr(n.target, "__name__", str(n.target))
        if "sub" in tname or "div" in tname:  # the edges say + and *: a - b or a / b is not that
            w.ctx.builder.mark_inexact([layer], f"'{tname}' of two neuron sets is recorded as {kind}")
        pos = a.pos if a.size == K else b.pos
        return NeuronMap(new, _out_dim(a, out_ndim), pos, out_ndim)
    m = maps[0]
    dim = _out_dim(m, out_ndim)
    if params:
        i = vals.index(params[0])
        return param_combine(w, n, m.moved(dim, out_ndim), params[0], reals[i], result, kind)
    # neurons (op) constant: shift/scale/normalise by a constant keeps the neurons; the op is recorded
    i = next(k for k, v in enumerate(vals) if v is m)
    const = reals[1 - i] if len(reals) > 1 else None
    return with_op(w.ctx, m.moved(dim, out_ndim), op_records.scalar_op(n.target, const, i == 1, dict(n.kwargs)))


def param_rows(w: "DataflowWalker", m: NeuronMap, p: ParamRef, real_p: Tensor, out_shape: torch.Size
               ) -> tuple[Tensor, Tensor, Tensor] | None:
    """Per element of parameter p: (row, feature index) when p is laid out [..., K] along m's dim.

    Returns (elements, rows, feats) for every element of the parameter, or None if the
    parameter's layout does not match (then it stays unclaimed).
    """
    K = m.size
    numel = p.param.numel()
    if numel % K:
        return None
    idx = p.index.expand(out_shape) if p.index.shape != out_shape else p.index
    view = [1] * len(out_shape)
    view[m.dim] = K
    feat = torch.arange(K).view(view).expand(out_shape)
    seen = torch.full((numel,), -1, dtype=torch.long)
    seen[idx.reshape(-1)] = feat.reshape(-1)
    elements = torch.arange(numel)
    used = seen >= 0
    if not bool((seen[used] == elements[used] % K).all()):
        return None
    return elements, elements // K, elements % K


def table_shape(p: ParamRef, shape: torch.Size, fdim: int, prefix: bool = False) -> list[int] | None:
    """Per-neuron shape of parameter table `p` used whole, broadcast into a tensor of `shape` with
    features along its last dim `fdim` (row r of the table = flat index over the parameter's
    other dims); None for any other layout (a slice, a gather, features elsewhere).

    With `prefix`, a 2-d table's first rows (`pos[:T]`, an LM's positional table for T tokens) are
    accepted too: the per-neuron shape is then that of the rows used (rows T.. are not read)."""
    param = p.param
    if fdim != len(shape) - 1 or param.dim() > len(shape) or param.dim() == 0:
        return None
    ident = torch.arange(param.numel()).view(param.shape)
    if prefix and param.dim() == 2 and p.index.dim() >= 2 and 0 < p.index.shape[-2] < param.shape[0]:
        ident = ident[:p.index.shape[-2]]
    try:
        ok = torch.equal(p.index.expand(shape), ident.expand(shape))
    except RuntimeError:
        return None
    if not ok:
        return None
    return [1] * (len(shape) - ident.dim()) + [int(s) for s in ident.shape[:-1]]


def param_combine(w: "DataflowWalker", n, m: NeuronMap, p: ParamRef, real_p: Tensor, result: Tensor,
                  kind: str) -> NeuronMap:
    """neurons + parameter (positional table, functional bias) or neurons * parameter (scale)."""
    layout = param_rows(w, m, p, real_p, result.shape)
    if layout is None:
        w.unclaimed_use([p], n)
        return m
    elements, rows, feats = layout
    name = w.ctx.builder.param_name(p.param)
    n_rows = int(rows.max()) + 1
    tname = getattr(n.target, "__name__", str(n.target))
    if "sub" in tname or "div" in tname:  # recorded as + / *: not what simulate may replay
        w.ctx.builder.mark_inexact(w.ctx.builder.node_layers(m.nodes), f"'{tname}' with parameter {name}")
    if kind == "add":
        w.ctx.note_read(m)
        layer = w.ctx.new_layer(name, "param_add")
        target = m
        reused = w.reused(n.args[0]) or w.reused(n.args[1])
        rows_shape = table_shape(p, result.shape, m.dim, prefix=True)
        # edges land on the producers' neurons: added by the readers' op chains, after the
        # producers' own ops and activation (a bias straight on un-activated neurons stays theirs)
        deferred = not reused and (n_rows > 1 or bool(m.ops) or w.has_activation(m.nodes))
        if rows_shape is not None:  # "prefix": only the table's first rows are added (pos[:T])
            prefix = {"prefix": True} if math.prod(rows_shape) < n_rows else {}
            w.ctx.set_layer_op(layer, {"rows_shape": rows_shape, "deferred": deferred, **prefix})
        if deferred and rows_shape is None:
            w.ctx.builder.mark_inexact(w.ctx.builder.node_layers(m.nodes),
                                       f"parameter {name} is added after a parameter-free op, in a layout "
                                       f"simulate does not replay")
        if reused:
            new = w.ctx.add_nodes(m.size, NodeType.SUM, layer)
            w.ctx.add_aux_edges(m.nodes, new, EdgeType.RESIDUAL, layer)
            target = NeuronMap(new, m.dim, m.pos, m.ndim)
        elif deferred and rows_shape is not None:
            target = with_op(w.ctx, m, {"op": "param_add", "layer": layer})
        if n_rows == 1:
            src = torch.full_like(elements, w.ctx.bias_node(layer))
            etype = EdgeType.BIAS
        else:
            src = w.ctx.add_nodes(n_rows, NodeType.PARAM_SOURCE, layer, torch.arange(n_rows))[rows]
            etype = EdgeType.PARAM_ADD
        w.ctx.add_param_edges(p.param, src, target.nodes[feats], etype, layer)
        return target
    w.ctx.note_read(m)
    layer = w.ctx.new_layer(name, "param_scale")
    new = w.ctx.add_nodes(m.size, NodeType.NORMED, layer)
    w.ctx.add_aux_edges(m.nodes, new, EdgeType.NORM_IN, layer)
    src_nodes = w.ctx.add_nodes(n_rows, NodeType.NORM, layer)
    w.ctx.add_param_edges(p.param, src_nodes[rows], new[feats], EdgeType.NORM_WEIGHT, layer)
    return NeuronMap(new, m.dim, m.pos, m.ndim)


# ---- reductions, concatenation -----------------------------------------------------------------

def reduce(w: "DataflowWalker", n, values: list, args: tuple, kwargs: dict, result: Any) -> Any:
    x = values[0]
    out = result[0] if isinstance(result, tuple) else result
    if not isinstance(x, NeuronMap) or not isinstance(out, Tensor):
        if isinstance(x, ParamRef):
            w.unclaimed_use([x], n)
        v = Unassigned(out.ndim, x.node_type) if isinstance(x, Unassigned) and isinstance(out, Tensor) else CONST
        return (v, CONST) if isinstance(result, tuple) else v
    dims = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], bool) else None)
    keep = kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
    if dims is None:
        v = CONST
    else:
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % x.ndim for d in dims]
        if x.dim in dims:
            v = CONST  # reduced over the neurons themselves (e.g. a norm's statistics)
        else:
            v = x.moved(x.dim if keep else x.dim - sum(d < x.dim for d in dims), out.ndim)
            extra = {k: a for k, a in kwargs.items() if k not in ("dim", "keepdim")}
            v = with_op(w.ctx, v, op_records.reduce_op(n.target, dims, keep, x.dim, extra))
    return (v, CONST) if isinstance(result, tuple) else v


def copy_positions(nodes: Tensor) -> Tensor:
    """K = (copy index, 0, 0) per feature: the k-th occurrence of a neuron in a concatenation.

    Concatenating the same neurons more than once (a space-to-depth such as Swin's patch merging
    takes each channel at four spatial offsets) makes features that a later layer weighs
    separately; without the copy index their edges would be indistinguishable, and the graph would
    claim a symmetry (swapping the copies) that the model does not have.
    """
    order = torch.argsort(nodes, stable=True)
    s = nodes[order]
    first = torch.ones_like(s, dtype=torch.bool)
    first[1:] = s[1:] != s[:-1]
    idx = torch.arange(s.numel())
    start = torch.cummax(torch.where(first, idx, 0), 0).values
    rank = torch.empty_like(nodes)
    rank[order] = idx - start
    pos = torch.zeros(nodes.numel(), 3, dtype=torch.long)
    pos[:, 0] = rank
    return pos


def concat(w: "DataflowWalker", n, values: list, args: tuple, kwargs: dict, result: Tensor, stack: bool) -> Any:
    parts = list(values[0])
    reals = list(args[0])
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    dim = dim % result.ndim
    maps = [p for p in parts if isinstance(p, NeuronMap)]
    if not maps:
        if any(isinstance(p, Unassigned) for p in parts):
            return Unassigned(result.ndim, NodeType.INPUT)
        if any(isinstance(p, ParamRef) for p in parts):
            w.unclaimed_use([p for p in parts if isinstance(p, ParamRef)], n)
        return CONST
    ref = maps[0]
    fdim = ref.dim + (1 if stack and dim <= ref.dim else 0)
    if not stack and dim == ref.dim:  # concatenating features: neurons side by side
        nodes, pos, any_pos = [], [], any(isinstance(p, NeuronMap) and p.pos is not None for p in parts)
        resolved = []  # the parts' neuron maps (raw inputs get theirs here)
        for p, r in zip(parts, reals):
            if not isinstance(p, NeuronMap):
                if isinstance(p, ParamRef):
                    w.unclaimed_use([p], n)
                    p = w.ctx.input_map(Unassigned(r.ndim, NodeType.HIDDEN), dim, r.shape[dim], r.ndim)
                else:
                    p = w.ctx.input_map(p if isinstance(p, Unassigned) else Unassigned(r.ndim), dim, r.shape[dim], r.ndim)
            if p.dim != dim:
                w.ctx.fail("concatenates tensors whose neurons lie along different dims")
            nodes.append(p.nodes)
            resolved.append(p)
            if any_pos:
                pos.append(p.pos if p.pos is not None else torch.zeros(p.size, 3, dtype=torch.long))
        joined = torch.cat(nodes)
        ops = merge_ops(w.ctx, resolved)
        if not any_pos and torch.unique(joined).numel() < joined.numel():
            copies = copies_op(w.ctx, resolved)
            return NeuronMap(joined, dim, copy_positions(joined), result.ndim, copies if copies is not None else ops)
        return NeuronMap(joined, dim, torch.cat(pos) if any_pos else None, result.ndim, ops)
    # along another dim (tokens, batch): every part must feed the same neurons
    out = ref.moved(fdim, result.ndim)
    distinct = [m for m in maps if not m.same_neurons(ref)]
    if distinct:
        for m in maps:
            w.ctx.note_read(m)
        layer = w.ctx.new_layer(w.ctx.current, "merge")
        new = w.ctx.add_nodes(ref.size, NodeType.SUM, layer)
        for m in maps:
            w.ctx.add_aux_edges(m.nodes, new, EdgeType.RESIDUAL, layer)
        out = NeuronMap(new, fdim, ref.pos, result.ndim)
    # the per-neuron record of the concatenation (simulate): the neurons' value with the tables
    record: list | None = [] if not distinct and not stack and len(maps) == 1 else None
    for p, r in zip(parts, reals):
        if isinstance(p, ParamRef):  # class token / register tokens concatenated into the sequence
            m = out.moved(ref.dim, r.ndim) if not stack else out
            layout = param_rows(w, m, p, r, r.shape)
            if layout is None:
                w.unclaimed_use([p], n)
                record = None
                continue
            elements, rows, feats = layout
            name = w.ctx.builder.param_name(p.param)
            layer = w.ctx.new_layer(name, "param_cat")
            rows_shape = table_shape(p, r.shape, m.dim)
            if rows_shape is None or record is None:
                record = None
            else:
                w.ctx.set_layer_op(layer, {"rows_shape": rows_shape, "deferred": True})
                record.append({"layer": layer})
            n_rows = int(rows.max()) + 1
            src = w.ctx.add_nodes(n_rows, NodeType.PARAM_SOURCE, layer, torch.arange(n_rows))
            w.ctx.add_param_edges(p.param, src[rows], out.nodes[feats], EdgeType.PARAM_CAT, layer)
        elif isinstance(p, Unassigned):
            w.ctx.fail("concatenates a raw input with neurons along a non-feature dim")
        elif isinstance(p, NeuronMap) and record is not None:
            record.append({"neurons": True})
        elif record is not None:
            record = None  # a constant tensor part
    if any(isinstance(p, ParamRef) for p in parts):
        op = ({"op": "param_cat", "dim": dim - (dim > fdim), "parts": record} if record is not None else
              op_records.opaque("a concatenation along a non-feature dim that simulate does not replay"))
        out = with_op(w.ctx, out, op)
    elif record is not None and len(parts) > 1:  # neurons with constants along tokens
        out = with_op(w.ctx, out, op_records.opaque("a concatenation along a non-feature dim"))
    return out


def dispatch(w: "DataflowWalker", n, values: list, args: tuple, kwargs: dict, result: Any) -> Any:
    """Dataflow for a call_function / call_method node that is not a parametric op."""
    t = n.target
    try:
        hash(t)
    except TypeError:
        t = None
    if t in ("size", "dim", "numel", "shape", "ndimension", "nelement", "stride", "data_ptr"):
        return result
    if t is getattr:  # x.shape / x.T / x.mT traced as getattr(x, name)
        if not isinstance(result, Tensor):
            return result
        return shape_op(w, n, values, args, kwargs, result)
    if any(isinstance(v, Scores) for v in flatten_values(values)):
        return scores_op(w, n, t, values, args, kwargs, result)
    if not any(is_tensor_like(v) for v in flatten_values(values)):
        return CONST if isinstance(result, Tensor) else result
    act = act_of(t)
    if act is not None:
        if t in ("softmax", F.softmax, torch.softmax, F.log_softmax, "log_softmax"):
            if isinstance(values[0], ParamRef):  # mixes the parameter's elements: not read
                w.unclaimed_use([values[0]], n)
                return CONST
            return activation(w, n, values[0], act) if isinstance(values[0], NeuronMap) else values[0]
        spec = op_records.activation_spec(t, tuple(args[1:]), kwargs)
        if isinstance(values[0], ParamRef) and isinstance(result, Tensor) and len(values) == 1:
            p = values[0]  # exp(logit_scale): the same elements through a function
            fn = op_records.param_fn(spec["fn"], (), {k: v for k, v in spec.items() if k != "fn"})
            return ParamRef(p.param, p._index, p.fns + (fn,))
        return activation(w, n, values[0], act, spec)
    if t is F.normalize and isinstance(values[0], SplitMap):
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 1)
        if dim % values[0].ndim == values[0].ndim - 1:  # each head's vector (cosine attention)
            x = values[0]  # mixes a head's neurons: simulate normalizes each head's q / k vector
            p_ = kwargs.get("p", args[1] if len(args) > 1 else 2.0)
            eps = kwargs.get("eps", args[3] if len(args) > 3 else 1e-12)
            op = (op_records.opaque("F.normalize over each head's vector with p != 2 or extra arguments")
                  if p_ != 2 or not isinstance(eps, (int, float)) or kwargs.get("out") is not None or len(args) > 4
                  else {"op": "head_normalize", "eps": float(eps)})
            return SplitMap(with_op(w.ctx, x.source, op), x.src_shape, x.feat, x.rest)
        w.ctx.fail("normalizes split features across heads; only over each head's own vector is followed.")
    if t in _IDENTITY_FUNCS or t in _POOL_FUNCS:
        x = values[0]
        if isinstance(x, NeuronMap) and isinstance(result, Tensor):
            x = x.moved(x.dim, result.ndim)
            if t not in _POOL_FUNCS:
                return x
            op = op_records.function_op(t, tuple(args[1:]), kwargs)
            if t is F.pad:  # the pad pairs count dims from the last; a neuron's value has no feature dim
                op = op_records.pad_without_feature(op, result.ndim, x.dim)
            return with_op(w.ctx, x, op)
        if isinstance(x, Unassigned) and t in _POOL_FUNCS and isinstance(result, Tensor):  # a pooled input
            return Unassigned(result.ndim, x.node_type, ops=x.ops + (op_records.function_op(t, tuple(args[1:]), kwargs),))
        return x
    if t in SHAPE_FUNCS:
        if t is operator.getitem and not isinstance(args[0], Tensor):
            return values[0][args[1]] if isinstance(values[0], (tuple, list)) else result
        return shape_op(w, n, values, args, kwargs, result)
    if t in _ADD:
        return binary(w, n, values, args, result, "add")
    if t in _MUL:
        return binary(w, n, values, args, result, "mul")
    if t in _NEG:  # the same neurons (split or not), negated
        if isinstance(values[0], NeuronMap):
            return with_op(w.ctx, values[0], op_records.scalar_op("mul", -1.0, False, {}))
        return values[0]
    if t in _REDUCE:
        return reduce(w, n, values, args, kwargs, result)
    if t in _CAT:
        return concat(w, n, values, args, kwargs, result, stack=False)
    if t in _STACK:
        return concat(w, n, values, args, kwargs, result, stack=True)
    return unknown_op(w, n, values, args, result)


_SCORE_OPS = {"masked_fill", "masked_fill_", torch.masked_fill, torch.where}


def note_scores(ctx: ConversionContext, scores: Scores, op: dict) -> None:
    """What is done to attention scores before `@ v`, in order, on the attention layer's record
    (op["scores"], for simulate): scalar ops, {"op": "softmax"}, or opaque."""
    rec = ctx.builder.layers[scores.layer]
    rec.op = dict(rec.op or {})
    rec.op["scores"] = [*rec.op.get("scores", []), op]


def _scores_record(t: Any, scores: Scores, values: list, args: tuple, kwargs: dict, result: Any) -> dict | None:
    """The simulate record of an op on attention scores (None: it leaves them unchanged)."""
    name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
    if t in _IDENTITY_FUNCS:
        return None
    if t in (F.softmax, torch.softmax, "softmax"):
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        nd = result.ndim if isinstance(result, Tensor) else 0
        if isinstance(dim, int) and dim % max(nd, 1) == nd - 1 and not kwargs.get("dtype"):
            return {"op": "softmax"}
        return op_records.opaque(f"'{name}' of attention scores over another dim")
    if (t in _MUL or t in _ADD) and len(values) >= 2:
        i = 0 if values[0] is scores else 1
        other = args[1 - i] if len(args) > 1 else None
        if values[1 - i] is CONST or not is_tensor_like(values[1 - i]):
            op = op_records.scalar_op(t, other, i == 1, dict(kwargs))
            if op["op"] != "opaque":
                return op
            if t in _ADD and "sub" not in name and isinstance(other, Tensor) and isinstance(result, Tensor):
                op = _constant_scores(scores, other, result)  # a shifted-window mask
                if op is not None:
                    return op
            return op_records.opaque(f"'{name}' of attention scores with a constant tensor (a mask)")
        return op_records.opaque(f"'{name}' of attention scores with parameters or neurons (per-head biases)")
    return op_records.opaque(f"'{name}' of attention scores")


def _constant_scores(scores: Scores, c: Tensor, result: Tensor) -> dict | None:
    """A constant added to the scores, the same for every head and repeating over the batch-like
    positions with some period P (masks depend on the window, not the sample):
    {"op": "add_tensor", "period": P, "value": [P, Nq, Nk]}; None otherwise."""
    if c.is_meta or tuple(scores.head_of.shape) != tuple(result.shape):
        return None
    nq, nk = result.shape[-2:]
    full = c.detach().to(torch.float64).expand(result.shape).reshape(-1, nq, nk)
    head = scores.head_of.reshape(-1, nq * nk)[:, 0]
    blocks = [full[head == h] for h in torch.unique(head).tolist()]
    if any(not torch.equal(b, blocks[0]) for b in blocks):
        return None
    b = blocks[0]
    m = b.shape[0]
    period = next(p for p in range(1, m + 1) if m % p == 0 and torch.equal(b, b[:p].repeat(m // p, 1, 1)))
    return {"op": "add_tensor", "period": period, "value": b[:period].tolist()}


def scores_op(w: "DataflowWalker", n, t: Any, values: list, args: tuple, kwargs: dict, result: Any) -> Any:
    """Attention scores through scaling, masking, softmax, dropout: still the same scores."""
    flat = flatten_values(values)
    scores = next(v for v in flat if isinstance(v, Scores))
    if (t in SHAPE_FUNCS or t in _IDENTITY_FUNCS) and values[0] is scores:  # e.g. a per-window view
        out = _caller(n)(scores.head_of.contiguous(), _host(tuple(args[1:])), {k: _host(v) for k, v in kwargs.items()})
        if isinstance(out, Tensor) and tuple(out.shape) == tuple(result.shape):
            if t not in _IDENTITY_FUNCS and not _regroups_batch(scores.head_of, out):
                note_scores(w.ctx, scores, op_records.opaque("a reshape of attention scores"))
            return Scores(scores.q, scores.k, scores.heads, scores.layer, out)
    params = [v for v in flat if isinstance(v, ParamRef)]
    tables: list = []  # per-head tables added to the scores (relative position bias), recorded below
    from .converters.attention import head_neurons, head_parameter  # converters import ops: no cycle here

    elementwise = t in _MUL or t in _ADD or t in _SCORE_OPS or t in _IDENTITY_FUNCS or t in _NEG or act_of(t) is not None
    neurons = [v for v in flat if isinstance(v, (NeuronMap, SplitMap))]
    added = (elementwise and t in _ADD and len(neurons) == 1 and isinstance(neurons[0], NeuronMap)
             and head_neurons(w.ctx, scores, neurons[0], result.shape))
    if not params:
        name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
        if added and len(flat) == 2 and "sub" not in name and not kwargs:
            # Swin V2's MLP-generated bias: each head's neuron, read through its chain (RESIDUAL edges)
            m = neurons[0]
            note_scores(w.ctx, scores, {"op": "head_neurons", "ndim": int(result.ndim), "dim": _out_dim(m, result.ndim),
                                        "reads": [{"from": int(p), "ops": list(c)} for p, c in (m.ops or {}).items()]})
        else:
            note_scores(w.ctx, scores, _scores_record(t, scores, values, args, kwargs, result) or {"op": "identity"})
    if not elementwise or (neurons and not added):
        w.ctx.fail("attention scores (q @ k^T) are combined in a way no rule reads (only scaling, "
                   "masking, softmax, dropout and per-head biases are followed before `@ v`).")
    for p in params:  # per-head bias tables and scales
        kind = "add" if t in _ADD else "mul" if t in _MUL else None
        if kind is None or not head_parameter(w.ctx, scores, p, result.shape, kind, tables):
            w.unclaimed_use([p], n)
    if params:
        name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
        exact = (len(params) == 1 and len(tables) == 1 and "sub" not in name and "div" not in name
                 and len(flat) == 2)
        note_scores(w.ctx, scores, tables[0] if exact else op_records.opaque(
            f"'{name}' of attention scores with parameters in a layout simulate does not replay (per-head scales)"))
    return scores


def _regroups_batch(head_in: Tensor, head_out: Tensor) -> bool:
    """Whether a view of attention scores only regroups their batch-like dims: the (query, key)
    dims and the head dim, with everything between them, are kept (each head's [M, Nq, Nk] is
    unchanged in order)."""
    def head_dim(h: Tensor) -> int | None:
        vary = [d for d in range(h.ndim) if h.shape[d] > 1 and bool((h.amax(d) != h.amin(d)).any())]
        return vary[0] if len(vary) == 1 else None

    if head_in.shape[-2:] != head_out.shape[-2:]:
        return False
    a, b = head_dim(head_in), head_dim(head_out)
    if a is None or b is None:
        return a is None and b is None and head_in.shape[-2:] == head_out.shape[-2:]
    return (head_in.shape[a] == head_out.shape[b]
            and math.prod(head_in.shape[a + 1:]) == math.prod(head_out.shape[b + 1:]))


# elementwise functions whose output element k depends on parameter element k only (not cumsum,
# softmax, sort...): a parameter passed through them keeps its elements
_PARAM_ELEMENTWISE: set[Any] = {torch.clamp, "clamp", torch.clip, "clip", torch.log, "log", torch.sqrt,
                                "sqrt", torch.rsqrt, "rsqrt", torch.reciprocal, "reciprocal", torch.square}


def unknown_op(w: "DataflowWalker", n, values: list, args: tuple, result: Any) -> Any:
    """An op no rule knows: elementwise if it keeps the input's shape, otherwise an error."""
    flat = flatten_values(values)
    params = [v for v in flat if isinstance(v, ParamRef)]
    maps = [v for v in flat if isinstance(v, NeuronMap)]
    if (n.target in _PARAM_ELEMENTWISE and len(params) == 1 and not maps
            and isinstance(result, Tensor) and tuple(result.shape) == tuple(params[0].shape)):
        p = params[0]  # an elementwise function of a parameter (clamp(logit_scale)): same elements
        return ParamRef(p.param, p._index, p.fns + (op_records.param_fn(n.target, tuple(n.args[1:]), dict(n.kwargs)),))
    if params:
        if n.target == "zero_" and len(params) == 1 and not maps:  # x[a:b].zero_() of a parameter (a clone)
            zeroed = w.ctx.builder.__dict__.setdefault("zeroed", {})
            zeroed.setdefault(id(params[0].param), set()).update(params[0].index.reshape(-1).tolist())
        w.unclaimed_use(params, n)
    if not maps:
        ua = [v for v in flat if isinstance(v, Unassigned)]
        return map_tensors(result, (lambda t: Unassigned(t.ndim, ua[0].node_type)) if ua else (lambda t: CONST))
    m = maps[0]
    real = args[[i for i, v in enumerate(values) if v is m][0]] if m in values else None
    if isinstance(result, Tensor) and real is not None and result.shape == real.shape:
        return activation(w, n, m, Activation.OTHER)
    msg = (f"op '{getattr(n.target, '__name__', n.target)}' at '{n.name}' changes the neurons' "
           f"shape and no dataflow rule knows it")
    if w.ctx.strict:
        raise ConversionError(
            f"{w.ctx.current or n.name}: {msg}. Make the module containing it a leaf with "
            f"metaopt.register_converter, or convert with strict=False (its output then gets "
            f"fresh hidden neurons)."
        )
    w.warn(msg)
    return map_tensors(result, lambda t: Unassigned(t.ndim, NodeType.HIDDEN))


def flatten_values(values: Any) -> list:
    """The leaves of nested lists/tuples of values, in order (a single value gives [value])."""
    out = []
    for v in values if isinstance(values, (list, tuple)) else [values]:
        if isinstance(v, (list, tuple)):
            out.extend(flatten_values(v))
        else:
            out.append(v)
    return out
