"""einops `rearrange` / `repeat` (and the `Rearrange` layer) as shape ops the converter follows.

einops cannot run on fx proxies, so these functions are fx leaves (autowrapped: call them as
`rearrange(...)` after `from einops import rearrange`) and the `Rearrange` layer is a leaf module;
the walker then follows them like view/permute, by running them on probe tensors. einops'
`reduce` and `einsum` compute with the features and stay unknown ops.
"""

from __future__ import annotations

from typing import Any

try:
    import einops
    from einops.layers.torch import Rearrange
except ImportError:  # einops is a dependency, but the converter works without it
    einops = None
    Rearrange = None

SHAPE_FUNCTIONS: tuple[Any, ...] = (einops.rearrange, einops.repeat) if einops is not None else ()
SHAPE_MODULES: tuple[type, ...] = (Rearrange,) if Rearrange is not None else ()


def is_einops_module(m: Any) -> bool:
    """einops layers must be fx leaves (their forward cannot be traced)."""
    return type(m).__module__.startswith("einops.")
