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

from torch import Tensor, fx, nn
from torch.fx.experimental.meta_tracer import MetaTracer

from . import einops_shapes
from .registry import find_converter


def _is_leaf(m: nn.Module) -> bool:
    return find_converter(m) is not None or einops_shapes.is_einops_module(m)


class SymbolicTracer(fx.Tracer):
    """fx tracer whose leaves are torch.nn built-ins, every module with a converter, and einops."""

    def __init__(self) -> None:
        super().__init__(autowrap_modules=(math,), autowrap_functions=einops_shapes.SHAPE_FUNCTIONS)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_leaf(m) or super().is_leaf_module(m, qualname)


class ShapeTracer(MetaTracer):
    """The same leaves, with real sizes during tracing (meta tensors run beside the proxies)."""

    def __init__(self) -> None:
        super().__init__(autowrap_modules=(math,), autowrap_functions=einops_shapes.SHAPE_FUNCTIONS)

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
                tracer = ShapeTracer()
                graph = tracer.trace(model, meta_args=metas, concrete_args=concrete or None)
            return fx.GraphModule(tracer.root, graph, type(model).__name__)
        except Exception:
            raise first from None
