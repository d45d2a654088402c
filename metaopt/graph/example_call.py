"""One real call of a model (positional and keyword arguments), bound to its `forward` signature.

A model is converted from the dataflow of one call, so the example must be a call the model
accepts: tensors become fx placeholders (their real values give exact shapes), while Python
values (None, flags, sizes) are *concrete* in the trace, so `if mask is not None:` branches the
way the real call does instead of being traced down a path the call never takes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class ExampleCall:
    """Positional `args` and keyword `kwargs` of one call of a model."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def of(example_inputs: Any, example_kwargs: dict[str, Any] | None = None) -> "ExampleCall":
        """From `to_graph`'s arguments: a tensor, a tuple/list of positional args, or an ExampleCall."""
        if isinstance(example_inputs, ExampleCall):
            return example_inputs
        args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        return ExampleCall(args, dict(example_kwargs or {}))

    def tensors(self) -> list[Tensor]:
        """Every tensor of the call, in argument order (for cache keys and device moves)."""
        return _flat_tensors(list(self.args) + list(self.kwargs.values()))

    def map(self, fn) -> "ExampleCall":
        """The same call with `fn` applied to every tensor (e.g. moved to the meta device)."""
        return ExampleCall(_map(self.args, fn), {k: _map(v, fn) for k, v in self.kwargs.items()})

    def describe(self) -> str:
        """Shapes of the call, for error messages."""
        def one(v: Any) -> str:
            return f"Tensor{tuple(v.shape)}" if isinstance(v, Tensor) else type(v).__name__
        parts = [one(a) for a in self.args] + [f"{k}={one(v)}" for k, v in self.kwargs.items()]
        return f"({', '.join(parts)})"

    def bind(self, forward: Any) -> tuple[list[str], list[Any], dict[str, Any]]:
        """(parameter names, values in signature order, concrete args) of `forward` for this call.

        Every parameter of `forward` gets a value (defaults filled in), so an fx graph traced with
        the returned concrete args runs from the value list. Non-tensor values are concrete.
        """
        try:
            sig = inspect.signature(forward)
        except (TypeError, ValueError):
            sig = None
        variadic = sig is None or any(
            p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()
        )
        if variadic:
            if self.kwargs:
                raise TypeError(
                    "keyword example inputs need a forward without *args/**kwargs in its signature"
                )
            return [f"input_{i}" for i in range(len(self.args))], list(self.args), {}
        bound = sig.bind(*self.args, **self.kwargs)  # TypeError names a missing/unexpected arg
        bound.apply_defaults()
        names = list(bound.arguments)
        values = list(bound.arguments.values())
        concrete = {n: v for n, v in bound.arguments.items() if _is_concrete(v)}
        return names, values, concrete


def _is_concrete(v: Any) -> bool:
    """Plain Python data (None, numbers, strings, flags, tuples of them): fixed in the trace."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (tuple, list)):
        return all(_is_concrete(x) for x in v)
    return False


def _flat_tensors(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _flat_tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _flat_tensors(v)]
    return []


def _map(x: Any, fn) -> Any:
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, (tuple, list)):
        return type(x)(_map(v, fn) for v in x)
    if isinstance(x, dict):
        return {k: _map(v, fn) for k, v in x.items()}
    return x

