"""The optimizer's parameter graph, built from the model's first real call when no input is known.

Why: a graph is read off one call of the model, and only the user's own batches are calls the
model surely accepts (image size, set size, keyword flags). So unless an input is declared
(`example_inputs=` or a model's `example_inputs()` method) or is a safe guess (a plain
`nn.Sequential` or a single converted layer, whose graph does not depend on the batch's leading
dims), `GMNOptimizer(model)` registers a forward pre-hook that converts the model from the first
real call's args and kwargs, once, then removes itself: the graph exists before the first step.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from torch import nn

from metaopt.graph import ConversionError, ExampleCall, ExampleInputError, ParameterGraph, to_graph
from metaopt.graph.registry import find_converter


def unwrap(model: nn.Module) -> nn.Module:
    """The module a wrapper trains: ``torch.compile``'s ``OptimizedModule`` (``._orig_mod``),
    ``DistributedDataParallel`` / ``DataParallel`` (``.module``, also what Accelerate's ``prepare``
    returns in a distributed run), unwrapped repeatedly. The graph is read off this module: torch.fx
    cannot trace the wrappers' own ``forward``. Their ``parameters()`` are the inner module's, in the
    same order (checked by the optimizer), so edge k of its graph is still element k of the flat vector.
    """
    while True:
        inner = None
        if type(model).__name__ == "OptimizedModule":
            inner = getattr(model, "_orig_mod", None)
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def build_graph(model: nn.Module, example: Any, example_kwargs: dict[str, Any] | None = None) -> ParameterGraph:
    """Convert `model` with strict=False (unknown layers become free edges, with one warning)."""
    try:
        return to_graph(model, example, example_kwargs=example_kwargs, strict=False)
    except ConversionError as exc:
        raise type(exc)(
            f"GMNOptimizer could not build the parameter graph of {type(model).__name__}: {exc}\n"
            "Pass example_inputs=<a batch the model accepts> or graph=to_graph(model, ...), or "
            "construct the optimizer without them so the graph is built at the first forward."
        ) from exc


def check_graph(graph: ParameterGraph, params: list) -> None:
    """The graph must describe exactly these parameters (edge k = element k of the flat vector)."""
    shapes = [tuple(p.shape) for p in params]
    if [tuple(s) for s in graph.param_shapes] != shapes:
        raise ValueError(
            "GMNOptimizer: the graph's parameter shapes do not match model.parameters() "
            f"(graph has {len(graph.param_shapes)} tensors, model {len(shapes)}); build the "
            "graph with to_graph(model) for this very model."
        )


def input_is_known(model: nn.Module) -> bool:
    """Whether the graph can be built now, without a real batch, and be the one a batch gives.

    True for models declaring `example_inputs()`, a single converted layer, and an `nn.Sequential`
    whose first parametric layer has a converter (inputs guessed from it). A custom `forward`
    may reduce or reshape over axes a guessed input lacks (a set axis, an image size), so it
    waits for the first real call.
    """
    if callable(getattr(model, "example_inputs", None)) or find_converter(model) is not None:
        return True
    if type(model) is not nn.Sequential:
        return False
    first = next((m for m in model.modules() if any(True for _ in m.parameters(recurse=False))), None)
    return first is not None and find_converter(first) is not None


def graph_now(model: nn.Module) -> ParameterGraph | None:
    """The graph from a declared or safely guessed input, or None: wait for the first real call."""
    if not input_is_known(model):
        return None
    try:
        return build_graph(model, None)
    except ExampleInputError:
        if callable(getattr(model, "example_inputs", None)):
            raise  # the model's own declared input is wrong: say so now
        return None  # the guess was rejected; the first real batch will do


class FirstCallGraph:
    """A forward pre-hook that builds the graph from the model's first call, then removes itself.

    Registered on the module the user calls (a wrapper's hook runs eagerly, outside a compiled
    frame); the graph is built from the unwrapped module with the same call's args and kwargs.

    `on_built(graph)` receives it; the owner is held weakly, so a model outliving its optimizer
    keeps no optimizer alive (the hook then just removes itself).
    """

    def __init__(self, model: nn.Module, on_built: Callable[[ParameterGraph], None]) -> None:
        self._on_built = weakref.WeakMethod(on_built)  # type: ignore[arg-type]
        self.error: BaseException | None = None
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    @property
    def pending(self) -> bool:
        """True until the model's first forward call."""
        return self._handle is not None

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __getstate__(self) -> dict[str, Any]:
        """A deep copy or pickle of the model (an EMA copy, ``torch.save(model)``) is not this
        optimizer's model: its copy of the hook is inert (and a WeakMethod cannot be pickled)."""
        return {"_on_built": None, "error": None, "_handle": None}

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self.remove()  # before converting: the conversion calls modules (and must not recurse)
        on_built = self._on_built() if self._on_built is not None else None
        if on_built is None:
            return None
        try:
            on_built(build_graph(unwrap(module), ExampleCall(tuple(args), dict(kwargs))))
        except Exception as exc:  # surfaces here, at the forward, and again at step()
            self.error = exc
            raise
        return None


def not_built_error(first_call: FirstCallGraph | None) -> RuntimeError:
    """The error for a step that needs the graph before it exists."""
    if first_call is not None and first_call.error is not None:
        return RuntimeError(
            f"GMNOptimizer.step(): building the parameter graph at the model's first forward "
            f"failed: {first_call.error}"
        )
    return RuntimeError(
        "GMNOptimizer.step() was called before the model's first forward call: its parameter "
        "graph is built from the first real batch (no example input was given and none can be "
        "inferred). Run loss = f(model(batch)); loss.backward() before step(), or construct the "
        "optimizer with example_inputs=<a batch the model accepts> or graph=to_graph(model, batch)."
    )
