"""The two torch.fx tracers the converter uses: symbolic first, shape-concrete as the fallback.

Plain symbolic tracing keeps shapes symbolic, so code that needs a real size during tracing
(`self.mask[:, :, :T, :T]` with `T = x.size(1)`, `if x.shape[-1] != self.dim:`) cannot be traced.
We convert from a real call anyway, so the fallback traces with the call's shapes: torch.fx's
MetaTracer runs every op on meta tensors beside the proxies and answers `size()`/`shape` with the
real sizes (the graph is then specialised to the call's shapes, which the structure cache keys on).
Values stay symbolic, so control flow on tensor *values* still cannot be traced.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.fx.experimental.meta_tracer import MetaProxy, MetaTracer

from . import einops_shapes, inline
from .registry import find_converter, registered_functions


def _is_leaf(m: nn.Module) -> bool:
    return find_converter(m) is not None or einops_shapes.is_einops_module(m)


def _leaf_functions() -> tuple:
    """Functions recorded as one call: einops shape functions, and Python functions with a converter."""
    return einops_shapes.SHAPE_FUNCTIONS + tuple(f for f in registered_functions() if inline.inlinable(f))


class SymbolicTracer(fx.Tracer):
    """fx tracer whose leaves are torch.nn built-ins, every module and function with a converter, and einops."""

    def __init__(self) -> None:
        super().__init__(autowrap_modules=(math,), autowrap_functions=_leaf_functions())

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_leaf(m) or super().is_leaf_module(m, qualname)


_CONSTRUCTORS = ("new_zeros", "new_ones", "new_full", "new_empty")


class _ShapeProxy(MetaProxy):
    """MetaProxy with `size(0)` fixed (torch's MetaProxy treats dim 0 as 'no dim'), and
    `x.new_zeros(sizes)` & co. built as real constants: with real sizes they depend on nothing
    traced, so code that fills them in place (Swin's shifted-window mask) can run."""

    def __getattr__(self, k: str) -> Any:
        meta = self.__dict__.get("_tensor_meta")
        if k in _CONSTRUCTORS and meta is not None:
            device = getattr(self.tracer, "device", None) or "cpu"
            return lambda *a, **kw: getattr(torch.empty(0, dtype=meta.dtype, device=device), k)(*a, **kw)
        return super().__getattr__(k)

    def size(self, dim: int | None = None) -> Any:
        meta = getattr(self, "_tensor_meta", None)
        if meta is not None:
            return meta.size() if dim is None else meta.size(dim)
        return self.tracer.create_proxy("call_method", "size", (self,) if dim is None else (self, dim), {})


class ShapeTracer(MetaTracer):
    """The same leaves, with real sizes during tracing (meta tensors run beside the proxies)."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        super().__init__(autowrap_modules=(math,), autowrap_functions=_leaf_functions())
        self.device = device  # where constants built from sizes live: the call's device

    def proxy(self, node: fx.Node) -> MetaProxy:
        return _ShapeProxy(node, self)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_leaf(m) or super().is_leaf_module(m, qualname)


def trace_graph(model: nn.Module, names: list[str], values: list[Any], concrete: dict[str, Any]
                ) -> fx.GraphModule:
    """Trace `model.forward` symbolically, else with the call's real shapes; raise the first error."""
    try:
        tracer = SymbolicTracer()
        graph = tracer.trace(model, concrete_args=concrete or None)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as first:
        metas = {n: v.to("meta") for n, v in zip(names, values) if isinstance(v, Tensor)}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MetaTracer warns per op without a meta kernel
                device = next((v.device for v in values if isinstance(v, Tensor)), None)
                tracer = ShapeTracer(device)
                graph = tracer.trace(model, meta_args=metas, concrete_args=concrete or None)
            return fx.GraphModule(tracer.root, graph, type(model).__name__)
        except Exception:
            raise first from None
