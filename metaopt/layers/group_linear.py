"""Group-equivariant linear layers built by parameter sharing.

Each layer stores only its *free* parameters and expands them into the dense map it applies
(`expanded_weight()`), so a few scalars are used in many dense entries:

- `SetLinear`: permutations S_n of a set (DeepSets): y_i = Lambda x_i + Gamma mean_j x_j + b.
- `CyclicLinear`: cyclic shifts C_n of regular-representation features [..., C, n].
- `C4LiftingConv2d`: images [B, C, H, W] -> C4 feature maps [B, C', 4, H, W] (rotated filters).
- `C4GroupConv2d`: C4 feature maps -> C4 feature maps (p4 group convolution).

Graph encoding (metaopt/graph/converters/group.py, docs/layers.md): channels are nodes, and each
free parameter is ONE edge of type GROUP_SHARED from its input-channel node to its output-channel
node, whose K0 column is the index of the equivariant basis map it multiplies: the relative group
element (s - r) mod n for C_n / C4, 0 (own element) or 1 (set mean) for S_n; K1, K2 hold the
centred kernel offset of the un-rotated filter tap. That basis index plus the layer type fixes
every dense entry the parameter stands for, so the round trip is exact (edges are the free
parameters in order) and hidden-channel permutations stay node relabellings, which a GMN is
equivariant to.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

C4_ORDER = 4


def _uniform_(t: Tensor, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(max(1, fan_in))
    nn.init.uniform_(t, -bound, bound)


def _check_kernel(kernel_size: int, layer: str) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"{layer}: kernel_size must be odd (got {kernel_size}); rotating an even kernel moves its "
            f"centre, which breaks exact C4 equivariance."
        )


class SetLinear(nn.Module):
    """Permutation-equivariant (DeepSets) layer on sets [..., n, C_in] -> [..., n, C_out].

    y_i = Lambda x_i + Gamma mean_j x_j + b: two [C_out, C_in] free matrices shared by all n^2
    element pairs (Lambda on the diagonal, Gamma on every pair), whatever the set size.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.lam = nn.Parameter(torch.empty(out_features, in_features))
        self.gam = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for t in (self.lam, self.gam) + ((self.bias,) if self.bias is not None else ()):
            _uniform_(t.data, 2 * self.in_features)

    def example_inputs(self) -> tuple[Tensor]:
        return (torch.randn(2, 5, self.in_features),)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"SetLinear expects a set [..., n, {self.in_features}], got shape {tuple(x.shape)}."
            )
        y = F.linear(x, self.lam, self.bias) + F.linear(x.mean(dim=-2, keepdim=True), self.gam)
        return y

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class CyclicLinear(nn.Module):
    """C_n-equivariant linear map on regular-representation features [..., C_in, n] -> [..., C_out, n].

    out[o, r] = sum_{i, s} w[o, i, (s - r) mod n] x[i, s] + b[o]: a circulant block per channel
    pair, so a cyclic shift of the group axis of the input shifts the output's the same way.
    """

    def __init__(self, in_channels: int, out_channels: int, order: int = C4_ORDER, bias: bool = True) -> None:
        super().__init__()
        if order < 1:
            raise ValueError(f"CyclicLinear: group order must be >= 1, got {order}.")
        self.in_channels, self.out_channels, self.order = in_channels, out_channels, order
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, order))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _uniform_(self.weight.data, self.in_channels * self.order)
        if self.bias is not None:
            _uniform_(self.bias.data, self.in_channels * self.order)

    def example_inputs(self) -> tuple[Tensor]:
        return (torch.randn(2, self.in_channels, self.order),)

    def expanded_weight(self) -> Tensor:
        """The dense map [C_out, n, C_in, n] (out channel, out element r, in channel, in element s)."""
        n = self.order
        r = torch.arange(n, device=self.weight.device).view(n, 1)
        s = torch.arange(n, device=self.weight.device).view(1, n)
        w = self.weight[:, :, (s - r) % n]  # [O, I, r, s]
        return w.permute(0, 2, 1, 3)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[-2:] != (self.in_channels, self.order):
            raise ValueError(
                f"CyclicLinear expects [..., {self.in_channels}, {self.order}] (channels, group "
                f"elements), got shape {tuple(x.shape)}."
            )
        y = torch.einsum("oris,...is->...or", self.expanded_weight(), x)
        return y if self.bias is None else y + self.bias.view(-1, 1)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, order={self.order}, bias={self.bias is not None}"


def _rotated_bank(w: Tensor, group_dim: int | None) -> Tensor:
    """Stack over r of rot90(w, r) (spatial last two dims), w's group axis rolled by r first.

    With the roll, slot [r, ..., s, :, :] holds rot^r of w[..., (s - r) mod 4, :, :].
    """
    out = []
    for r in range(C4_ORDER):  # the 4 rotations: a fixed-size loop, not over parameters
        wr = torch.roll(w, shifts=r, dims=group_dim) if group_dim is not None else w
        out.append(torch.rot90(wr, r, dims=(-2, -1)))
    return torch.stack(out, dim=1)


class C4LiftingConv2d(nn.Module):
    """Lifting convolution [B, C_in, H, W] -> [B, C_out, 4, H, W], equivariant to 90-degree rotations.

    Output slice r is the image correlated with the filters rotated by r * 90 degrees; rotating the
    input rotates every slice and shifts r by one. Odd kernel, stride 1, 'same' padding.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        _check_kernel(kernel_size, "C4LiftingConv2d")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.in_channels * self.kernel_size**2
        _uniform_(self.weight.data, fan_in)
        if self.bias is not None:
            _uniform_(self.bias.data, fan_in)

    def example_inputs(self) -> tuple[Tensor]:
        return (torch.randn(2, self.in_channels, 8, 8),)

    def expanded_weight(self) -> Tensor:
        """Dense filter bank [C_out, 4, C_in, k, k]: slot [o, r] is filter w[o] rotated r times."""
        return _rotated_bank(self.weight, None)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"C4LiftingConv2d expects images [B, {self.in_channels}, H, W], got {tuple(x.shape)}."
            )
        O, k = self.out_channels, self.kernel_size
        y = F.conv2d(x, self.expanded_weight().reshape(O * C4_ORDER, self.in_channels, k, k), padding=k // 2)
        y = y.view(x.shape[0], O, C4_ORDER, *y.shape[-2:])
        return y if self.bias is None else y + self.bias.view(1, O, 1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}"


class C4GroupConv2d(nn.Module):
    """p4 group convolution [B, C_in, 4, H, W] -> [B, C_out, 4, H, W].

    out[o, r] = sum_{i, s} x[i, s] * rot^r(w[o, i, (s - r) mod 4]) (cross-correlation), so rotating
    the input (spatially, and shifting its group axis by one) does the same to the output.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        _check_kernel(kernel_size, "C4GroupConv2d")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, C4_ORDER, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.in_channels * C4_ORDER * self.kernel_size**2
        _uniform_(self.weight.data, fan_in)
        if self.bias is not None:
            _uniform_(self.bias.data, fan_in)

    def example_inputs(self) -> tuple[Tensor]:
        return (torch.randn(2, self.in_channels, C4_ORDER, 8, 8),)

    def expanded_weight(self) -> Tensor:
        """Dense filter bank [C_out, 4, C_in, 4, k, k] indexed (o, r, i, s, u, v)."""
        return _rotated_bank(self.weight, 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5 or x.shape[1:3] != (self.in_channels, C4_ORDER):
            raise ValueError(
                f"C4GroupConv2d expects C4 feature maps [B, {self.in_channels}, 4, H, W], got "
                f"{tuple(x.shape)}; lift images first with C4LiftingConv2d."
            )
        B, O, I, k = x.shape[0], self.out_channels, self.in_channels, self.kernel_size
        bank = self.expanded_weight().reshape(O * C4_ORDER, I * C4_ORDER, k, k)
        y = F.conv2d(x.reshape(B, I * C4_ORDER, *x.shape[-2:]), bank, padding=k // 2)
        y = y.view(B, O, C4_ORDER, *y.shape[-2:])
        return y if self.bias is None else y + self.bias.view(1, O, 1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}"
