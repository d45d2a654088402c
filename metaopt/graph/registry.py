"""Converter registry and the context object converters work through.

A converter turns one call of a module, or of a function, into graph nodes and edges. Both kinds
have the same signature, `fn(ctx, target, inputs, name) -> output`, and register the same way:

    @register_converter(MyLayer)                   # a module class: target is the module instance
    def convert_my_layer(ctx: ConversionContext, module: MyLayer, inputs: list, name: str):
        x = ctx.input_map(inputs[0], dim=-1, size=module.in_features)   # NeuronMap of the input
        layer = ctx.new_layer(name, "my_layer")
        out = ctx.add_nodes(module.out_features, NodeType.HIDDEN, layer)
        src, dst, _ = dense_edges(x, out)
        ctx.add_param_edges(module.weight, src, dst, EdgeType.LINEAR, layer)
        return ctx.map(out, dim=-1, ndim=x.ndim)                      # NeuronMap of the output

    @register_converter(my_function)               # a function (or a tensor method's name, "matmul")
    def convert_my_function(ctx: ConversionContext, fn, inputs: list, name: str):
        weight = ctx.param_arg(1, "weight")        # a ParamRef if that argument is a parameter
        if weight is None:
            return NotImplemented                  # a call it does not read: handled as if unregistered
        ...

Registered module types become leaves of the torch.fx trace (their `forward` is not traced), and
so do registered plain Python functions that a traced `forward` calls by a public global name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .builder import GraphBuilder, NeuronMap
from .schema import Activation, EdgeType, NodeType

Converter = Callable[["ConversionContext", Any, list, str], Any]
"""`fn(ctx, target, inputs, name) -> output`: target is the module instance, or the called function
(a tensor method's name for `x.method(...)`); inputs are the dataflow values of the positional
arguments; name is the module's qualified name, or the fx node's name for a function call."""

_CONVERTERS: dict[type, Converter] = {}  # nn.Module subclass -> converter
_FUNCTION_CONVERTERS: dict[Any, Converter] = {}  # function or tensor-method name -> converter
_generation = [0]  # bumped on every registration; part of the structure-cache key


def registry_generation() -> int:
    return _generation[0]


def _check_target(target: Any) -> None:
    if isinstance(target, type):
        if not issubclass(target, nn.Module):
            raise TypeError(f"register_converter: {target!r} is not an nn.Module subclass")
    elif isinstance(target, nn.Module):
        raise TypeError(f"register_converter: pass the module's class, {type(target).__name__}, "
                        f"not an instance of it")
    elif not (isinstance(target, str) or callable(target)):
        raise TypeError(f"register_converter: {target!r} is neither an nn.Module subclass, a "
                        f"function nor a tensor method's name")


def register_converter(target: Any, fn: Converter | None = None):
    """Register `fn(ctx, target, inputs, name) -> output` for `target` (usable as decorator).

    `target` is one of:
    - an nn.Module subclass: its instances (and subclasses that inherit its `forward` and have no
      registration of their own) become leaves of the trace, converted by `fn` instead of by
      tracing their forward; `fn` receives the module instance;
    - a function (`F.linear`, or your own): its calls are converted by `fn`, which receives the
      function. A plain Python function from outside torch becomes a leaf of the trace when a
      traced `forward` calls it by a public global name (`from mylib import my_op; my_op(x, w)`,
      as `torch.fx.wrap` would); `fn` may return NotImplemented, and then the call's body is
      walked as if no converter were registered;
    - a string: the tensor method of that name (`"matmul"` for `x.matmul(w)`).
    """
    _check_target(target)

    def deco(f: Converter) -> Converter:
        if isinstance(target, type):
            _CONVERTERS[target] = f
        else:
            _FUNCTION_CONVERTERS[target] = f
        _generation[0] += 1  # cached structures may depend on the old registry
        return f

    return deco if fn is None else deco(fn)


def unregister_converter(target: Any) -> None:
    """Remove the converter registered for `target` (a no-op if there is none)."""
    table = _CONVERTERS if isinstance(target, type) else _FUNCTION_CONVERTERS
    if table.pop(target, None) is not None:
        _generation[0] += 1


def find_converter(module: nn.Module) -> Converter | None:
    """The converter of the module's class, or of a base class whose `forward` it inherits.

    A subclass that overrides `forward` computes something else (torchvision's LayerNorm2d is an
    nn.LayerNorm applied channels-last between two permutes), so it is traced through instead.
    """
    forward = type(module).forward
    for cls in type(module).__mro__:
        if cls in _CONVERTERS:
            return _CONVERTERS[cls] if cls is type(module) or cls.forward is forward else None
        if cls is nn.Module:
            break
    return None


def find_function_converter(target: Any) -> Converter | None:
    """The converter registered for a call_function / call_method target, if any."""
    try:
        return _FUNCTION_CONVERTERS.get(target)
    except TypeError:  # unhashable targets
        return None


def registered_functions() -> tuple[Callable, ...]:
    """The functions (not method names) that have a converter."""
    return tuple(t for t in _FUNCTION_CONVERTERS if not isinstance(t, str))


@dataclass
class Unassigned:
    """A tensor whose features are not neurons yet (model inputs, or outputs of an unknown layer).

    The first consumer that needs neurons assigns them; later consumers reuse the assignment.
    """

    ndim: int
    node_type: NodeType = NodeType.INPUT
    assigned: NeuronMap | None = None
    ops: tuple = ()  # parameter-free ops applied before any neuron read it (a pooled input)


class ParamRef:
    """A tensor computed from one parameter by indexing/shape ops.

    `index` has the tensor's shape and holds, per element, the flat index into the parameter,
    so a consumer knows exactly which parameter element sits where (after the elementwise
    functions `fns`, e.g. Swin V2's clamp(logit_scale).exp()). For the parameter itself
    (`ParamRef.of`) the index is the identity and is only materialised if an op needs it.
    """

    __slots__ = ("param", "_index", "fns")

    def __init__(self, param: Tensor, index: Tensor | None = None, fns: tuple = ()) -> None:
        self.param = param
        self._index = index
        self.fns = fns  # elementwise functions applied to the elements, in order (op_records.param_fn)

    @staticmethod
    def of(param: Tensor | None) -> "ParamRef | None":
        """The whole parameter, in its own layout (what module converters start from)."""
        return None if param is None else ParamRef(param)

    @property
    def identity(self) -> bool:
        return self._index is None

    @property
    def index(self) -> Tensor:
        if self._index is None:
            return torch.arange(self.param.numel()).view(self.param.shape)
        return self._index

    @property
    def shape(self) -> torch.Size:
        return self.param.shape if self._index is None else self._index.shape

    @property
    def elements(self) -> Tensor | None:
        """Flat parameter indices in the index tensor's row-major order (None when the identity)."""
        return None if self._index is None else self._index.reshape(-1)

    def __repr__(self) -> str:
        return f"ParamRef(shape={tuple(self.shape)}, identity={self.identity})"


class Const:
    """A tensor with no neuron structure (buffers, masks, per-sample statistics)."""

    def __repr__(self) -> str:
        return "Const"


CONST = Const()


class ConversionError(RuntimeError):
    """The model cannot be converted as asked; the message says where and what to do."""


class ExampleInputError(ConversionError):
    """The example call is not one the model accepts (the model itself raised on it).

    Never turned into free edges by strict=False: the graph would describe a call that cannot
    happen, so the caller must pass a real input.
    """


class ConversionContext:
    """What converters see: node/edge creation plus helpers to read their inputs.

    Module and function converters get the same context. For the call being converted it holds
    the dataflow values of its arguments (`inputs`, `kwargs`: NeuronMap, ParamRef, ...), their
    real example values (`args`, `real_kwargs`: exact shapes, Python sizes and flags) and the real
    output (`result`); `arg`, `real_arg` and `param_arg` read one argument by position or keyword.
    """

    def __init__(self, builder: GraphBuilder, strict: bool) -> None:
        self.builder = builder
        self.strict = strict
        self.current: str = ""  # qualified name of the module/op being converted, for errors
        self.args: tuple = ()  # real (example) positional args of the call being converted
        self.kwargs: dict = {}  # dataflow values of its keyword args
        self.inputs: list = []  # dataflow values of its positional args (the converter's `inputs`)
        self.real_kwargs: dict = {}  # real (example) keyword args
        self.result: Any = None  # the real output of the call being converted (exact shapes)
        self.pending_reads: list[dict] = []  # op chains of inputs read since the last new layer

    # ---- the call's arguments ----------------------------------------------------------------
    def arg(self, i: int, key: str, default: Any = None) -> Any:
        """Dataflow value of the argument passed at position `i` or as keyword `key`."""
        return self.inputs[i] if len(self.inputs) > i else self.kwargs.get(key, default)

    def real_arg(self, i: int, key: str, default: Any = None) -> Any:
        """Real (example) value of the argument passed at position `i` or as keyword `key`."""
        return self.args[i] if len(self.args) > i else self.real_kwargs.get(key, default)

    def param_arg(self, i: int, key: str) -> "ParamRef | None":
        """That argument as a ParamRef (a parameter, or a view of one), else None."""
        value = self.arg(i, key)
        return value if isinstance(value, ParamRef) else None

    # ---- records for simulate (op_records.py) ------------------------------------------------
    def note_read(self, m: Any) -> None:
        """The next `new_layer` reads NeuronMap `m` through its op chain (pooling, flatten, ...)."""
        if isinstance(m, NeuronMap) and m.ops:
            self.pending_reads.append(m.ops)

    def set_layer_op(self, layer: int, op: dict) -> None:
        """The layer's hyperparameters (conv stride/padding, norm eps, ...), for simulate."""
        self.builder.set_layer_op(layer, op)

    def buffer_name(self, t: Any) -> str | None:
        """Qualified name of a model buffer (BatchNorm running statistics), else None."""
        return self.builder.buffer_names.get(id(t)) if isinstance(t, Tensor) else None

    # ---- nodes, layers, edges (thin wrappers over the builder) ----------------------------
    def new_layer(self, name: str, kind: str) -> int:
        """A new layer; the inputs read since the last one (their op chains) are recorded on it."""
        lid = self.builder.new_layer(name, kind)
        for ops in self.pending_reads:
            self.builder.note_reads(lid, ops)
        self.pending_reads = []
        return lid

    def add_nodes(self, n: int, node_type: NodeType, layer: int, positions: Tensor | None = None) -> Tensor:
        return self.builder.add_nodes(n, node_type, layer, positions)

    def bias_node(self, layer: int) -> int:
        return self.builder.bias_node(layer)

    def add_param_edges(self, param: "Tensor | ParamRef", src: Tensor, dst: Tensor,
                        edge_type: "EdgeType | Tensor", layer: int, kpos: Tensor | None = None) -> bool:
        """One edge per element of `param` (a parameter, or a ParamRef for a derived layout).

        src/dst/kpos are given per element in the row-major order of the parameter (or of the
        ParamRef's index tensor). Returns False if the parameter already has edges (tied weight).
        """
        if isinstance(param, ParamRef):
            if param.identity:
                return self.builder.add_param_edges(param.param, src, dst, edge_type, layer, kpos)
            shape = param.index.shape  # materialise broadcast per-element values in index order
            flat = lambda t: t.reshape(-1) if t.numel() == param.index.numel() else t.expand(shape).reshape(-1)  # noqa: E731
            if kpos is not None:
                kpos = kpos.reshape(-1, kpos.shape[-1]) if kpos.numel() == param.index.numel() * kpos.shape[-1] \
                    else kpos.expand(*shape, kpos.shape[-1]).reshape(-1, kpos.shape[-1])
            if isinstance(edge_type, Tensor):
                edge_type = flat(edge_type)
            return self.builder.add_param_edges(param.param, flat(src), flat(dst), edge_type, layer, kpos,
                                                param.elements)
        return self.builder.add_param_edges(param, src, dst, edge_type, layer, kpos)

    def add_bias(self, bias: "Tensor | ParamRef | None", out_nodes: Tensor, layer: int,
                 edge_type: EdgeType = EdgeType.BIAS) -> None:
        """Edges bias node -> each output neuron (no-op for a missing bias)."""
        if bias is None:
            return
        src = torch.full((out_nodes.numel(),), self.bias_node(layer))
        self.add_param_edges(bias, src, out_nodes, edge_type, layer)

    def ndim_of(self, value: Any, default: int = 2) -> int:
        """Number of dims of a dataflow value (NeuronMap / Unassigned), else `default`."""
        return getattr(value, "ndim", default)

    def add_aux_edges(self, src: Tensor, dst: Tensor, edge_type: EdgeType, layer: int) -> None:
        self.builder.add_aux_edges(src, dst, edge_type, layer)

    def set_activation(self, nodes: Tensor, act: Activation, spec: dict | None = None) -> None:
        self.builder.set_activation(nodes, act, spec=spec)

    # ---- reading inputs --------------------------------------------------------------------
    def input_map(self, value: Any, dim: int, size: int, ndim: int | None = None) -> NeuronMap:
        """The NeuronMap of a converter input along `dim` (negative allowed), checked to have `size`.

        Model inputs (and outputs of unknown layers in non-strict mode) get fresh nodes here:
        ordered INPUT nodes for real inputs, interchangeable HIDDEN nodes otherwise.
        """
        if isinstance(value, NeuronMap):
            self.note_read(value)
            d = dim if dim >= 0 else value.ndim + dim
            if value.dim != d:
                raise ConversionError(
                    f"{self.current}: expects its features along dim {dim} of a {value.ndim}-d "
                    f"input, but the incoming neurons are along dim {value.dim}. Add a converter "
                    f"for the op that moved them, or convert with strict=False."
                )
            if value.size != size:
                raise ConversionError(
                    f"{self.current}: expects {size} input features, the incoming tensor has "
                    f"{value.size} along dim {dim}."
                )
            return value
        if isinstance(value, Unassigned):
            if value.assigned is not None:
                return self.input_map(value.assigned, dim, size)
            n = value.ndim if ndim is None else ndim
            d = dim if dim >= 0 else n + dim
            ordered = value.node_type == NodeType.INPUT
            nodes = self.add_nodes(size, value.node_type, 0, torch.arange(size) if ordered else None)
            if ordered:
                self.builder.note_input_dim(d)
            value.assigned = NeuronMap(nodes, d, None, n, {0: value.ops} if value.ops else None)
            self.note_read(value.assigned)
            return value.assigned
        if isinstance(value, Const):
            # e.g. torch.arange positions fed to an Embedding, or a constant tensor input
            nodes = self.add_nodes(size, NodeType.INPUT, 0, torch.arange(size))
            d = dim if dim >= 0 else (ndim or 2) + dim
            ops = None
            real = [a for a in getattr(self, "args", None) or () if isinstance(a, Tensor)]
            if (len(real) == 1 and real[0].is_floating_point() and not real[0].is_meta
                    and real[0].ndim == (ndim or 2) and real[0].shape[d] == size and real[0].shape[0] == 1):
                # a one-sample float constant (Swin V2's coordinate table): its values, for simulate
                ops = {0: ({"op": "constant", "value": real[0].detach().movedim(d, 0).tolist()},)}
            out = NeuronMap(nodes, d, None, ndim or 2, ops)
            self.note_read(out)
            return out
        raise ConversionError(
            f"{self.current}: cannot read neurons from an input of kind {type(value).__name__}."
        )

    def map(self, nodes: Tensor, dim: int, ndim: int, pos: Tensor | None = None) -> NeuronMap:
        """A NeuronMap for an output tensor of `ndim` dims with features along `dim`."""
        return NeuronMap(nodes, dim if dim >= 0 else ndim + dim, pos, ndim)

    def fail(self, message: str) -> None:
        raise ConversionError(f"{self.current}: {message}")
