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

from . import einops_shapes, inline, op_records, ops
from .tracers import trace_graph
from .builder import GraphBuilder, NeuronMap
from .example_call import ExampleCall
from .registry import (
    CONST,
    ConversionContext,
    ConversionError,
    ExampleInputError,
    ParamRef,
    Unassigned,
    find_converter,
    find_function_converter,
)
from .schema import NodeType
from .split_map import Scores, SplitMap


def trace(model: nn.Module, call: ExampleCall) -> tuple[fx.GraphModule, list[Any]]:
    """Symbolically trace `model` for `call`: the graph and the values of its placeholders, in order.

    Python values of the call (None, flags, sizes) are concrete in the trace, and sizes too when
    plain symbolic tracing fails (see tracers.py); failures become a ConversionError that says
    what to do.
    """
    if find_converter(model) is not None:  # the root itself is a converted layer: do not trace into it
        return _leaf_root(model, call), [*call.args, *call.kwargs.values()]
    try:
        names, values, concrete = call.bind(model.forward)
    except TypeError as exc:
        raise ExampleInputError(
            f"the example call {call.describe()} does not match {type(model).__name__}.forward: {exc}. "
            f"Pass the arguments the model is called with (example_inputs=(...), and keyword "
            f"arguments as example_kwargs={{...}})."
        ) from exc
    try:
        gm = trace_graph(model, names, values, concrete)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError... all mean the same
        raise ConversionError(
            f"torch.fx could not trace {type(model).__name__}.forward: {type(exc).__name__}: {exc}\n"
            f"Usual causes: Python control flow on tensor values or shapes, or calls fx cannot "
            f"follow. Fix: register a converter for the submodule that does this "
            f"(metaopt.register_converter(ThatModule, fn)) so it becomes a leaf, or convert with "
            f"strict=False, which keeps every parameter as a free edge (no connectivity)."
        ) from exc
    return gm, values


def _leaf_root(model: nn.Module, call: ExampleCall) -> fx.GraphModule:
    """A one-node graph calling `model` as a leaf (so to_graph(SetLinear(...)) uses its converter)."""
    holder = nn.Module()
    holder.add_module(type(model).__name__.lower(), model)
    graph = fx.Graph()
    args = tuple(graph.placeholder(f"input_{i}") for i in range(len(call.args)))
    kwargs = {k: graph.placeholder(k) for k in call.kwargs}
    graph.output(graph.call_module(type(model).__name__.lower(), args, kwargs))
    return fx.GraphModule(holder, graph, type(model).__name__)


class _ModelRaised(Exception):
    """The model's own computation raised on the example call (not a dataflow rule)."""

    def __init__(self, node: fx.Node, where: str, exc: Exception) -> None:
        super().__init__(f"{where}: {type(exc).__name__}: {exc}")
        self.node, self.where, self.exc = node, where, exc


class DataflowWalker(fx.Interpreter):
    """Interprets a traced model on an example input, mapping tensors to graph neurons."""

    def __init__(self, gm: fx.GraphModule, builder: GraphBuilder, strict: bool, on_meta: bool = False,
                 root: nn.Module | None = None) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.root = gm if root is None else root  # the traced model itself: its modules' real types
        self.extra_traceback = False  # our errors already say where; fx would append its graph dump
        self.builder = builder
        self.ctx = ConversionContext(builder, strict)
        self.on_meta = on_meta  # shapes-only run: rule failures are retried on real tensors
        self.values: dict[fx.Node, Any] = {}
        self.unknown_modules: dict[str, str] = {}  # qualified name -> type, parametric, no converter
        self.unclaimed: dict[str, str] = {}  # parameter name -> op that used it
        self.unreadable: list[str] = []  # ops whose dataflow no rule could read (strict=False)
        self.warnings: list[str] = []
        self.depth = 0  # nesting of inlined opaque functions
        self.inputs: Any = None  # dataflow values of the placeholders when walking an inlined body
        # node -> the nodes whose dataflow value is read for the last time by it (the output's is kept)
        last: dict[fx.Node, fx.Node] = {}
        for node in gm.graph.nodes:
            for used in node.all_input_nodes:
                last[used] = node
        self._last_use: dict[fx.Node, list[fx.Node]] = {}
        for used, user in last.items():
            if user.op != "output":
                self._last_use.setdefault(user, []).append(used)

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
        try:
            result = super().run_node(n)
        except Exception as exc:  # the model's own op failed: the example call is wrong for it
            raise _ModelRaised(n, where(self.root, n), exc) from exc
        try:
            out = self._dataflow(n, result)
        except Exception as exc:
            if self.on_meta and not isinstance(exc, ConversionError):
                raise  # e.g. a rule reading values of a meta tensor: walk() retries on real tensors
            out = self._unreadable(n, exc, result)
        self.values[n] = out
        for used in self._last_use.get(n, ()):  # free probes held by values nothing reads any more
            self.values.pop(used, None)
        return result

    def _dataflow(self, n: fx.Node, result: Any) -> Any:
        """Which neurons the value of node `n` carries (the per-op rules of ops/converters)."""
        self.ctx.current = str(n.target) if n.op == "call_module" else n.name
        self.ctx.pending_reads = []  # reads are recorded by the layer this node creates, if any
        values = fx.node.map_aggregate(n.args, lambda a: self.values.get(a, a) if isinstance(a, fx.Node) else a)
        if n.op in ("call_function", "call_method", "call_module"):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            kw_values = fx.node.map_aggregate(
                dict(n.kwargs), lambda a: self.values.get(a, a) if isinstance(a, fx.Node) else a
            )
            self.ctx.args, self.ctx.kwargs = args, kw_values
            self.ctx.inputs, self.ctx.real_kwargs, self.ctx.result = list(values), kwargs, result
            module = self.module.get_submodule(str(n.target)) if n.op == "call_module" else None
            split = any(isinstance(v, SplitMap) for v in ops.flatten_values([*values, *kw_values.values()]))
            scores = module is not None and any(isinstance(v, Scores) for v in ops.flatten_values(values))
            if scores and not isinstance(module, ops.IDENTITY_MODULES + tuple(ops.ACTIVATION_MODULES)):
                self.ctx.fail("attention scores (q @ k^T) go through a module no rule reads; only "
                              "softmax and dropout are followed before `@ v`.")
            if scores and not isinstance(module, ops.IDENTITY_MODULES):  # recorded for simulate
                s = next(v for v in ops.flatten_values(values) if isinstance(v, Scores))
                exact = isinstance(module, nn.Softmax) and module.dim is not None \
                    and module.dim % result.ndim == result.ndim - 1
                ops.note_scores(self.ctx, s, {"op": "softmax"} if exact else op_records.opaque(
                    f"module {type(module).__name__} on attention scores"))
            if split and not ops.follows_split(n, module):
                self.ctx.fail(
                    "this op computes with features spread over several dims (e.g. split into "
                    "attention heads, or a channel shuffle); only shape ops and "
                    "F.scaled_dot_product_attention follow such a split. Make the module doing it a "
                    "leaf with metaopt.register_converter."
                )
        if n.op == "placeholder":
            if self.inputs is not None:  # the body of an inlined function: the caller's values
                return next(self.inputs)
            if isinstance(result, Tensor):
                self.ctx.builder.note_model_input(result)
                return Unassigned(result.ndim, NodeType.INPUT)
            return result
        if n.op == "get_attr":
            return self._get_attr(result)
        if n.op == "call_module":
            return self._call_module(n, list(values), args, kwargs, result)
        if n.op in ("call_function", "call_method"):
            return self._call_function(n, list(values), args, kwargs, result)
        return values  # output

    def _unreadable(self, n: fx.Node, exc: Exception, result: Any) -> Any:
        """A node no rule could read. strict: an error naming module, op and fix; else fresh neurons.

        Non-strict, the parameters the node uses stay uncovered (they become FREE edges) and its
        output gets fresh HIDDEN neurons, so the layers after it are still read.
        """
        loc = where(self.root, n)
        reason = str(exc) if isinstance(exc, ConversionError) else f"{type(exc).__name__}: {exc}"
        if self.ctx.strict:
            owner = module_of(self.root, n)
            fix = type_name(owner) if owner is not None else "the module doing this"
            hint = (
                f"\nFix: make {fix} a leaf with metaopt.register_converter({fix}, fn) (see "
                f"docs/layers.md, 'Registering a converter'), or convert with strict=False to keep "
                f"its parameters as free edges and give its outputs fresh neurons.")
            if "register_converter" in reason and "strict=False" in reason:
                hint = ""
            raise ConversionError(f"{loc}: {reason}{hint}") from exc
        self.unreadable.append(f"{loc} ({reason.splitlines()[0]})")
        if n.op == "call_module":
            module = self.module.get_submodule(str(n.target))
            if any(True for _ in module.parameters()):
                self.unknown_modules[str(n.target)] = type(module).__name__
            for pn, p in module.named_parameters():
                if self.builder.owns(p):
                    self.unclaimed.setdefault(self.builder.param_name(p), f"module '{n.target}'")
        used = fx.node.map_aggregate((n.args, tuple(n.kwargs.values())),
                                     lambda a: self.values.get(a, a) if isinstance(a, fx.Node) else a)
        self.unclaimed_use([v for v in ops.flatten_values(list(used)) if isinstance(v, ParamRef)], n)
        return ops.map_tensors(result, lambda t: Unassigned(t.ndim, NodeType.HIDDEN))

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
                return ops.activation(self, n, values[0], act, op_records.activation_spec(None, module=module))
            if isinstance(module, ops.IDENTITY_MODULES) or isinstance(module, ops.POOL_MODULES):
                x = values[0]
                if isinstance(x, Unassigned) and isinstance(module, ops.POOL_MODULES):
                    return Unassigned(result.ndim, x.node_type, ops=x.ops + (op_records.module_op(module),))
                if not isinstance(x, NeuronMap):
                    return x
                x = x.moved(x.dim, result.ndim)
                return x if isinstance(module, ops.IDENTITY_MODULES) else ops.with_op(self.ctx, x, op_records.module_op(module))
            if isinstance(module, (nn.Flatten, nn.Unflatten) + einops_shapes.SHAPE_MODULES):
                return self._module_as_shape_op(n, module, values, args, result)
            return ops.unknown_op(self, n, values, args, result)
        # a leaf module with parameters and no converter
        names = [f"{n.target}.{pn}" for pn, _ in module.named_parameters()]
        self.unknown_modules[str(n.target)] = type(module).__name__
        if self.ctx.strict:
            raise ConversionError(unknown_module_message(str(n.target), module, names))
        return ops.map_tensors(result, lambda t: Unassigned(t.ndim, NodeType.HIDDEN))

    def _module_as_shape_op(self, n: fx.Node, module: nn.Module, values: list, args: tuple, result: Tensor) -> Any:
        if isinstance(module, nn.Flatten):
            fn = lambda t, rest, kw: t.flatten(module.start_dim, module.end_dim)  # noqa: E731
        elif isinstance(module, einops_shapes.SHAPE_MODULES):
            fn = lambda t, rest, kw: module(t)  # noqa: E731
        else:
            fn = lambda t, rest, kw: t.unflatten(module.dim, module.unflattened_size)  # noqa: E731
        x = values[0]
        if isinstance(x, SplitMap):
            return ops.map_from_probe(self.ctx, x.source, x.src_shape, fn(x.feat, (), {}), fn(x.rest, (), {}))
        if isinstance(x, NeuronMap):
            feat, rest = ops.probe_tensors(args[0].shape, x.dim)
            return ops.map_from_probe(self.ctx, x, args[0].shape, fn(feat, (), {}), fn(rest, (), {}))
        if isinstance(x, Unassigned):
            return Unassigned(result.ndim, x.node_type)
        if isinstance(x, ParamRef):
            return ParamRef(x.param, fn(x.index, (), {}), x.fns)
        return CONST

    def _call_function(self, n: fx.Node, values: list, args: tuple, kwargs: dict, result: Any) -> Any:
        target = n.target
        fconv = find_function_converter(target)
        if fconv is not None:
            out = fconv(self.ctx, target, values, n.name)
            if out is not NotImplemented:
                self._check(n, out, result)
                return out
        if inline.inlinable(target) and self.depth < inline.MAX_DEPTH:
            out = self._inline(n, values, args, kwargs)
            self._check(n, out, result)
            return out
        return ops.dispatch(self, n, values, args, kwargs, result)

    def _inline(self, n: fx.Node, values: list, args: tuple, kwargs: dict) -> Any:
        """Walk the body of an opaque Python function (fx.wrap) on this call; see inline.py."""
        module, pos_idx, kw_names = inline.function_module(n.target, args, kwargs)
        flow, real = inline.tensor_values(values, self.ctx.kwargs, args, kwargs, pos_idx, kw_names)
        gm = trace_graph(module, [f"t{i}" for i in range(len(real))], real, {})
        sub = DataflowWalker(gm, self.builder, self.ctx.strict, self.on_meta, root=self.root)
        sub.depth, sub.inputs = self.depth + 1, iter(flow)
        sub.unknown_modules, sub.unclaimed, sub.unreadable, sub.warnings = (
            self.unknown_modules, self.unclaimed, self.unreadable, self.warnings)
        with torch.no_grad():
            sub.run(*real)
        out = sub.values[next(m for m in reversed(gm.graph.nodes) if m.op == "output")]
        return out[0] if isinstance(out, (list, tuple)) and len(out) == 1 else out

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


def type_name(m: nn.Module | None) -> str:
    """The user's class name (a traced root is a GraphModule carrying the model's class name)."""
    if m is None:
        return "?"
    return type(m).__name__ if isinstance(m, fx.GraphModule) else type(m).__qualname__


def module_of(root: nn.Module, n: fx.Node) -> nn.Module | None:
    """The innermost module whose forward produced node `n` (the module itself for call_module)."""
    if n.op == "call_module":
        return _submodule(root, str(n.target))
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return root
    path = list(stack.values())[-1][0]
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _submodule(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:  # a converted root is called through a one-module holder
        return root


def where(root: nn.Module, n: fx.Node) -> str:
    """'op 'view' (node view_3) in module 'blocks.0.attn' (Attention)': for messages."""
    if n.op == "call_module":
        return f"module '{n.target}' ({type_name(_submodule(root, str(n.target)))})"
    op = getattr(n.target, "__name__", str(n.target))
    stack = n.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    owner = module_of(root, n)
    return f"op '{op}' (node {n.name}) in module '{path or '<root>'}' ({type_name(owner)})"


def walk(model: nn.Module, call: ExampleCall, strict: bool) -> tuple[GraphBuilder, DataflowWalker]:
    """Trace and interpret `model` on the example `call`, returning the filled builder.

    The example pass runs on a meta-device copy of the model (shapes only: no compute, no
    memory for activations, nothing of the user's model touched); if some op has no meta
    kernel it is rerun on the real model under no_grad. An op of the model raising on the
    real tensors is an ExampleInputError (the call is not one the model accepts).
    """
    meta_model = _meta_copy(model)
    if meta_model is not None:
        try:
            return _walk(meta_model, call.map(lambda t: t.to("meta")), strict, on_meta=True)
        except ConversionError:
            raise
        except Exception:  # a missing meta kernel or data-dependent op: use real tensors
            pass
    try:
        return _walk(model, call, strict, on_meta=False)
    except _ModelRaised as exc:
        raise ExampleInputError(
            f"{type(model).__name__} raised on the example call {call.describe()} at {exc.where}: "
            f"{type(exc.exc).__name__}: {exc.exc}\nPass a call the model accepts: "
            f"example_inputs=(...) (and example_kwargs={{...}}), or build the graph from a real "
            f"batch (GMNOptimizer does this at the model's first forward)."
        ) from exc.exc


def _walk(model: nn.Module, call: ExampleCall, strict: bool, on_meta: bool) -> tuple[GraphBuilder, DataflowWalker]:
    gm, values = trace(model, call)
    builder = GraphBuilder(model)
    walker = DataflowWalker(gm, builder, strict, on_meta, root=model)
    with torch.no_grad():
        walker.run(*values)
    out_node = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    out_maps = [v for v in ops.flatten_values(walker.values[out_node]) if isinstance(v, NeuronMap)]
    if out_maps:
        builder.mark_outputs(torch.cat([m.nodes for m in out_maps]))
        dims = {m.dim for m in out_maps}
        late = max(dims) >= 2  # features after the batch and another dim ([B, tokens, C]): recorded
        if any(m.ops for m in out_maps) or late:  # the output is read through ops too (pool + flatten last)
            lid = builder.new_layer("<output>", "output")
            builder.note_reads(lid, ops.merge_ops(walker.ctx, out_maps))
            if late and len(dims) == 1:
                builder.set_layer_op(lid, {"feature_dim": dims.pop()})
            elif late:
                builder.mark_inexact([lid], "outputs with features along different dims")
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

