"""Walks a model's real dataflow (torch.fx) and builds its parameter graph.

The model is traced symbolically (modules with a registered converter are leaves), then the traced
graph is *interpreted* on a small example input: every node's real value is computed, and beside
it the walker propagates which graph neurons each tensor's features are. Real values give exact
shapes, so flatten/reshape/getitem/chunk are followed without guessing.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, fx, nn

from . import ops
from .builder import GraphBuilder, NeuronMap
from .registry import (
    CONST,
    ConversionContext,
    ConversionError,
    ParamRef,
    Unassigned,
    find_converter,
)
from .schema import NodeType


class _Tracer(fx.Tracer):
    """fx tracer whose leaves are torch.nn built-ins and every module with a converter."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if find_converter(m) is not None:
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module, num_inputs: int = 1) -> fx.GraphModule:
    """Symbolically trace `model`; failures become a ConversionError that says what to do."""
    if find_converter(model) is not None:  # the root itself is a converted layer: do not trace into it
        return _leaf_root(model, num_inputs)
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError... all mean the same
        raise ConversionError(
            f"torch.fx could not trace {type(model).__name__}.forward: {type(exc).__name__}: {exc}\n"
            f"Usual causes: Python control flow on tensor values or shapes, or calls fx cannot "
            f"follow. Fix: register a converter for the submodule that does this "
            f"(metaopt.register_converter(ThatModule, fn)) so it becomes a leaf, or convert with "
            f"strict=False, which keeps every parameter as a free edge (no connectivity)."
        ) from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _leaf_root(model: nn.Module, num_inputs: int) -> fx.GraphModule:
    """A one-node graph calling `model` as a leaf (so to_graph(SetLinear(...)) uses its converter)."""
    holder = nn.Module()
    holder.add_module(type(model).__name__.lower(), model)
    graph = fx.Graph()
    args = tuple(graph.placeholder(f"input_{i}") for i in range(num_inputs))
    graph.output(graph.call_module(type(model).__name__.lower(), args))
    return fx.GraphModule(holder, graph, type(model).__name__)


class DataflowWalker(fx.Interpreter):
    """Interprets a traced model on an example input, mapping tensors to graph neurons."""

    def __init__(self, gm: fx.GraphModule, builder: GraphBuilder, strict: bool) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.builder = builder
        self.ctx = ConversionContext(builder, strict)
        self.values: dict[fx.Node, Any] = {}
        self.unknown_modules: dict[str, str] = {}  # qualified name -> type, parametric, no converter
        self.unclaimed: dict[str, str] = {}  # parameter name -> op that used it
        self.warnings: list[str] = []

    # ---- helpers used by ops/converters -----------------------------------------------------
    def reused(self, node: Any) -> bool:
        """Whether an fx node's value feeds more than one tensor consumer (shape queries excluded)."""
        if not isinstance(node, fx.Node):
            return False
        users = [u for u in node.users if u.target not in ("size", "dim", "numel", "shape", getattr)]
        return len(users) > 1

    def has_activation(self, nodes: Tensor) -> bool:
        return self.builder.has_activation(nodes)

    def unclaimed_use(self, params: list[ParamRef], n: fx.Node) -> None:
        for p in params:
            name = self.builder.param_name(p.param)
            self.unclaimed.setdefault(name, f"{n.op} '{getattr(n.target, '__name__', n.target)}' ({n.name})")

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)

    # ---- the walk ------------------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.ctx.current = str(n.target) if n.op == "call_module" else n.name
        values = fx.node.map_aggregate(n.args, lambda a: self.values.get(a, a) if isinstance(a, fx.Node) else a)
        if n.op in ("call_function", "call_method", "call_module"):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            kw_values = fx.node.map_aggregate(
                dict(n.kwargs), lambda a: self.values.get(a, a) if isinstance(a, fx.Node) else a
            )
            self.ctx.args, self.ctx.kwargs = args, kw_values
        if n.op == "placeholder":
            out = Unassigned(result.ndim, NodeType.INPUT) if isinstance(result, Tensor) else result
        elif n.op == "get_attr":
            out = self._get_attr(result)
        elif n.op == "call_module":
            out = self._call_module(n, list(values), args, kwargs, result)
        elif n.op in ("call_function", "call_method"):
            out = self._call_function(n, list(values), args, kwargs, result)
        else:  # output
            out = values
        self.values[n] = out
        return result

    def _get_attr(self, result: Any) -> Any:
        if isinstance(result, nn.Parameter) and self.builder.owns(result):
            return ParamRef(result)
        return CONST if isinstance(result, Tensor) else result

    def _call_module(self, n: fx.Node, values: list, args: tuple, kwargs: dict, result: Any) -> Any:
        module = self.module.get_submodule(n.target)
        conv = find_converter(module)
        if conv is not None:
            out = conv(self.ctx, module, values, str(n.target))
            self._check(n, out, result)
            return out
        if not any(True for _ in module.parameters()):
            act = ops.ACTIVATION_MODULES.get(type(module))
            if act is not None:
                return ops.activation(self, n, values[0], act)
            if isinstance(module, ops.IDENTITY_MODULES) or isinstance(module, ops.POOL_MODULES):
                x = values[0]
                return x.moved(x.dim, result.ndim) if isinstance(x, NeuronMap) else x
            if isinstance(module, (nn.Flatten, nn.Unflatten)):
                return self._module_as_shape_op(n, module, values, args, result)
            return ops.unknown_op(self, n, values, args, result)
        # a leaf module with parameters and no converter
        names = [f"{n.target}.{pn}" for pn, _ in module.named_parameters()]
        self.unknown_modules[str(n.target)] = type(module).__name__
        if self.ctx.strict:
            raise ConversionError(unknown_module_message(str(n.target), module, names))
        return ops._wrap(result, lambda t: Unassigned(t.ndim, NodeType.HIDDEN))

    def _module_as_shape_op(self, n: fx.Node, module: nn.Module, values: list, args: tuple, result: Tensor) -> Any:
        if isinstance(module, nn.Flatten):
            fn = lambda t, rest, kw: t.flatten(module.start_dim, module.end_dim)  # noqa: E731
        else:
            fn = lambda t, rest, kw: t.unflatten(module.dim, module.unflattened_size)  # noqa: E731
        x = values[0]
        if isinstance(x, NeuronMap):
            feat, rest = ops._probe_tensors(args[0].shape, x.dim)
            return ops._map_from_probe(self, x, args[0].shape, fn(feat, (), {}), fn(rest, (), {}))
        if isinstance(x, Unassigned):
            return Unassigned(result.ndim, x.node_type)
        if isinstance(x, ParamRef):
            return ParamRef(x.param, fn(x.index, (), {}))
        return CONST

    def _call_function(self, n: fx.Node, values: list, args: tuple, kwargs: dict, result: Any) -> Any:
        from .converters.functional import FUNCTIONAL_CONVERTERS

        target = n.target
        try:
            fconv = FUNCTIONAL_CONVERTERS.get(target)
        except TypeError:
            fconv = None
        if fconv is not None:
            out = fconv(self, n, values, self.ctx.kwargs, args, kwargs, result)
            if out is not NotImplemented:
                self._check(n, out, result)
                return out
        return ops.dispatch(self, n, values, args, kwargs, result)

    def _check(self, n: fx.Node, out: Any, result: Any) -> None:
        """Converter outputs must describe the real tensors: catches converter bugs early."""
        if isinstance(out, NeuronMap) and isinstance(result, Tensor):
            if out.ndim != result.ndim or result.shape[out.dim] != out.size:
                raise ConversionError(
                    f"converter for '{n.target}' returned {out.size} neurons along dim {out.dim} of a "
                    f"{out.ndim}-d tensor, but the real output has shape {tuple(result.shape)}."
                )
        elif isinstance(out, (tuple, list)) and isinstance(result, (tuple, list)):
            for o, r in zip(out, result):
                self._check(n, o, r)


def unknown_module_message(qualname: str, module: nn.Module, param_names: list[str]) -> str:
    t = type(module)
    return (
        f"No graph converter for module '{qualname}' of type {t.__module__}.{t.__qualname__}, "
        f"which has parameters {param_names[:4]}{' ...' if len(param_names) > 4 else ''}.\n"
        f"Register one: metaopt.register_converter({t.__qualname__}, fn) with "
        f"fn(ctx, module, inputs, name) -> output neurons (see metaopt.graph.registry), or convert "
        f"with strict=False to keep these parameters as free edges (nothing is dropped)."
    )


def walk(model: nn.Module, example_inputs: tuple, strict: bool) -> tuple[GraphBuilder, DataflowWalker]:
    """Trace and interpret `model` on `example_inputs`, returning the filled builder.

    The example pass runs on a meta-device copy of the model (shapes only: no compute, no
    memory for activations, nothing of the user's model touched); if some op has no meta
    kernel it is rerun on the real model under no_grad.
    """
    meta_model = _meta_copy(model)
    if meta_model is not None:
        try:
            return _walk(meta_model, tuple(_to_meta(x) for x in example_inputs), strict)
        except ConversionError:
            raise
        except Exception:  # a missing meta kernel or data-dependent op: use real tensors
            pass
    return _walk(model, example_inputs, strict)


def _walk(model: nn.Module, example_inputs: tuple, strict: bool) -> tuple[GraphBuilder, DataflowWalker]:
    gm = trace(model, len(example_inputs))
    builder = GraphBuilder(model)
    walker = DataflowWalker(gm, builder, strict)
    with torch.no_grad():
        walker.run(*example_inputs)
    out_node = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    out_maps = [v for v in ops._flat(walker.values[out_node]) if isinstance(v, NeuronMap)]
    if out_maps:
        builder.mark_outputs(torch.cat([m.nodes for m in out_maps]))
    return builder, walker


def _meta_copy(model: nn.Module) -> nn.Module | None:
    """A structural copy of `model` whose parameters and buffers live on the meta device."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    try:
        return copy.deepcopy(model, memo)
    except Exception:  # modules holding un-copyable state: convert on the real model
        return None


def _to_meta(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.to("meta")
    if isinstance(x, (tuple, list)):
        return type(x)(_to_meta(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_meta(v) for k, v in x.items()}
    return x
