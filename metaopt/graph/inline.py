"""Opaque Python functions in a traced model (`torch.fx.wrap`ped ones) are walked through.

Libraries wrap functions that plain symbolic tracing cannot follow (torchvision's Swin wraps its
whole `shifted_window_attention`, which takes the qkv/proj weights as arguments): fx then records
one call and never looks inside, so every parameter passed in would be unread. We convert from a
real call, so we can trace such a function on *this* call's arguments (with the shape-concrete
tracer when needed) and walk its body in place, its tensor arguments carrying their dataflow
values (parameters stay parameters). torch's own functions are never inlined (they have rules or
are unknown ops); recursion is bounded.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn

MAX_DEPTH = 4  # nested wrapped functions (Swin: attention -> relative position bias)


def inlinable(target: Any) -> bool:
    """A plain Python function from outside torch (what fx.wrap leaves in a graph)."""
    if not inspect.isfunction(target):
        return False
    module = getattr(target, "__module__", "") or ""
    return not (module == "torch" or module.startswith(("torch.", "einops")))


def function_module(fn: Any, args: tuple, kwargs: dict) -> tuple[nn.Module, list[int], list[str]]:
    """A module whose forward(t0, t1, ...) calls `fn` with this call's Python values fixed.

    Returns the module, which positional args / keyword names are its tensor inputs (in order).
    fn is reached through the module's own globals, so an fx.wrap registration of its name in
    its home module does not stop tracing into it.
    """
    params, call, pos_idx, kw_names = [], [], [], []
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            params.append(f"t{len(params)}")
            call.append(params[-1])
            pos_idx.append(i)
        else:
            call.append(f"_args[{i}]")
    for k, v in kwargs.items():
        if isinstance(v, Tensor):
            params.append(f"t{len(params)}")
            call.append(f"{k}={params[-1]}")
            kw_names.append(k)
        else:
            call.append(f"{k}=_kwargs[{k!r}]")
    namespace: dict[str, Any] = {"_fn": fn, "_args": args, "_kwargs": kwargs}
    exec(f"def forward(self, {', '.join(params)}):\n    return _fn({', '.join(call)})", namespace)  # noqa: S102
    cls = type(f"Inlined_{getattr(fn, '__name__', 'fn')}", (nn.Module,), {"forward": namespace["forward"]})
    return cls(), pos_idx, kw_names


def tensor_values(values: list, kw_values: dict, args: tuple, kwargs: dict, pos_idx: list[int],
                  kw_names: list[str]) -> tuple[list[Any], list[Tensor]]:
    """(dataflow values, real tensors) of the function's tensor inputs, in placeholder order."""
    flow = [values[i] for i in pos_idx] + [kw_values[k] for k in kw_names]
    real = [args[i] for i in pos_idx] + [kwargs[k] for k in kw_names]
    return flow, real

