"""Replays the parameter-free ops recorded between layers (op_records.py) on neuron values.

A neuron's value is [k, B, *S] here (k neurons read together): dim 0 the neurons, dim 1 the batch.
Parameter tables (param_add / param_cat ops) are read from the graph's edges through `state`,
for the neurons `nodes` being read.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..op_records import F_BY_NAME, SHAPE_RECORDS, apply_shape
from .recurrent import last_step


def apply(v: Tensor, ops: list[dict], where: str, state=None, nodes: Tensor | None = None) -> Tensor:
    for op in ops:
        v = _apply_one(v, op, where, state, nodes)
    return v


def _apply_one(v: Tensor, op: dict, where: str, state, nodes) -> Tensor:
    kind = op["op"]
    if kind == "call":
        fn, kw = op["fn"], op["kwargs"]
        nsp = int(fn[-2]) if fn.endswith("d") and fn[-2].isdigit() else v.dim() - 2
        lead, sp = v.shape[:-nsp], v.shape[-nsp:]
        out = F_BY_NAME[fn](v.reshape(-1, 1, *sp), **kw)  # every neuron and sample its own channel
        return out.reshape(*lead, *out.shape[2:])
    if kind == "reshape":
        return v.reshape(v.shape[0], *op["shape"])
    if kind in SHAPE_RECORDS:
        return apply_shape(v, op)
    if kind == "take":  # positions gathered from a one-sample value (recorded at conversion)
        if list(v.shape[1:]) != op["in_shape"]:
            raise NotImplementedError(f"simulate: {where} gathers positions of a value of shape "
                                      f"{op['in_shape']}, not {list(v.shape[1:])}")
        return v.reshape(v.shape[0], -1)[:, torch.tensor(op["index"])].reshape(v.shape[0], *op["shape"])
    if kind == "constant":  # a constant tensor read in place of neurons: row = the node's position
        from ..schema import NODE_POSITION
        c = torch.tensor(op["value"], dtype=v.dtype)
        return c[state.graph.x[nodes, NODE_POSITION].long()]
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
    if kind == "last_step":  # h_n / c_n of a recurrent layer
        return last_step(v, op)
    if kind == "param_add" and state is not None:
        return v + state.table(op["layer"], nodes, v.dim() - 1)
    if kind == "copies":  # the same neurons read through n chains, stacked on a new last dim
        return torch.stack([apply(v, c, where, state, nodes) for c in op["chains"]], -1)
    if kind == "attention" and state is not None:
        from .attention import handwritten  # attention reads neurons itself: imported when used
        return handwritten(state, op["layer"], v, nodes)
    if kind == "param_cat" and state is not None:
        d = op["dim"] + 1
        parts = []
        for part in op["parts"]:
            if part.get("neurons"):
                parts.append(v)
                continue
            t = state.table(part["layer"], nodes, v.dim() - 1)
            size = list(v.shape)
            size[d] = t.shape[d]
            parts.append(t.expand(size))
        return torch.cat(parts, d)
    raise NotImplementedError(f"simulate: {where} reads neurons through {op.get('why', kind)}")
