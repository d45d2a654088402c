"""Elementwise functions of neurons: by Activation code, or by the exact spec a layer records."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..schema import Activation

BY_CODE: dict[Activation, Callable[[Tensor], Tensor]] = {
    Activation.NONE: lambda v: v,
    Activation.RELU: torch.relu,
    Activation.GELU: F.gelu,
    Activation.TANH: torch.tanh,
    Activation.SIGMOID: torch.sigmoid,
    Activation.SILU: F.silu,
    Activation.SIN: torch.sin,
    Activation.ELU: F.elu,
    Activation.SOFTPLUS: F.softplus,
    Activation.MISH: F.mish,
    Activation.HARDSWISH: F.hardswish,
    Activation.LEAKY_RELU: F.leaky_relu,  # graphs without a recorded slope: torch's default 0.01
}

BY_NAME: dict[str, Callable[..., Tensor]] = {
    "relu": F.relu, "relu6": F.relu6, "leaky_relu": F.leaky_relu, "elu": F.elu, "celu": F.celu,
    "selu": F.selu, "gelu": F.gelu, "softplus": F.softplus, "hardtanh": F.hardtanh,
    "hardsigmoid": F.hardsigmoid, "hardswish": F.hardswish, "mish": F.mish, "silu": F.silu,
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "softsign": F.softsign, "tanhshrink": F.tanhshrink,
    "sin": torch.sin, "cos": torch.cos, "exp": torch.exp, "square": torch.square, "abs": torch.abs,
}


def function(code: int, spec: dict | None, where: str) -> Callable[[Tensor], Tensor]:
    """The function of neurons tagged `code` whose layer recorded `spec` (or None)."""
    if spec is not None:
        fn = BY_NAME.get(spec["fn"])
        if fn is None or spec.get("unknown"):
            raise NotImplementedError(f"simulate: {where} applies '{spec['fn']}', which is not a known "
                                      f"elementwise function")
        kwargs = {k: v for k, v in spec.items() if k != "fn"}
        return lambda v: fn(v, **kwargs)
    act = Activation(code)
    if act not in BY_CODE:
        raise NotImplementedError(f"simulate: {where} applies activation {act.name}, which the graph does "
                                  f"not identify exactly (convert again to record its function)")
    return BY_CODE[act]
