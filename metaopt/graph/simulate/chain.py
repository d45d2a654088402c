"""Replays the parameter-free ops recorded between layers (op_records.py) on neuron values.

A neuron's value is [k, B, *S] here (k neurons read together): dim 0 the neurons, dim 1 the batch.
"""

from __future__ import annotations

from torch import Tensor

from ..op_records import F_BY_NAME


def apply(v: Tensor, ops: list[dict], where: str) -> Tensor:
    for op in ops:
        v = _apply_one(v, op, where)
    return v


def _apply_one(v: Tensor, op: dict, where: str) -> Tensor:
    kind = op["op"]
    if kind == "call":
        fn, kw = op["fn"], op["kwargs"]
        nsp = int(fn[-2]) if fn.endswith("d") and fn[-2].isdigit() else v.dim() - 2
        lead, sp = v.shape[:-nsp], v.shape[-nsp:]
        out = F_BY_NAME[fn](v.reshape(-1, 1, *sp), **kw)  # every neuron and sample its own channel
        return out.reshape(*lead, *out.shape[2:])
    if kind == "reshape":
        return v.reshape(v.shape[0], *op["shape"])
    if kind == "reduce":
        dims = [d + 1 for d in op["dims"]]
        fn = {"max": "amax", "min": "amin"}.get(op["fn"], op["fn"])
        if fn in ("prod",):
            for d in sorted(dims, reverse=True):
                v = v.prod(d, keepdim=op["keepdim"])
            return v
        return getattr(v, fn)(dim=dims, keepdim=op["keepdim"])
    if kind == "scalar":
        c, fn, rev = op["value"], op["fn"], op["reverse"]
        if fn == "add":
            return v + c
        if fn == "sub":
            return c - v if rev else v - c
        if fn == "mul":
            return v * c
        return v / c
    raise NotImplementedError(f"simulate: {where} reads neurons through {op.get('why', kind)}")
