"""Spatial feature grids: learnable feature vectors on a grid, bilinearly interpolated at query points.

Used by grid-based implicit neural representations: `FeatureGrid2d` (one 2-D grid) and
`TriPlaneGrid` (three axis-aligned 2-D planes for 3-D queries, features summed or concatenated),
each followed by an MLP decoder, e.g. ``nn.Sequential(FeatureGrid2d(8, 16), nn.Linear(8, 32), ...)``.

Conventions (the parameter graph relies on them, see metaopt/graph/converters/grid.py):
queries live in [-1, 1]^d; grid corners sit exactly at -1 and 1 (`align_corners=True`); outside
the domain features fade to zero (zero padding). A plane's columns run along its first axis and its
rows along its second: query (x, y) reads column x, row y of a [C, H, W] grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (column axis, row axis) of each tri-plane plane: xy, xz, yz.
PLANE_AXES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2))
GRID2D_AXES: tuple[tuple[int, int], ...] = ((0, 1),)


def _sample(planes: Tensor, pts: Tensor) -> Tensor:
    """Bilinear samples of planes [P, C, H, W] at pts [P, M, 2] -> [M, P, C]."""
    out = F.grid_sample(planes, pts.unsqueeze(2), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[..., 0].permute(2, 0, 1)  # [P, C, M] -> [M, P, C]


def _as_pair(resolution: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if h < 1 or w < 1:
        raise ValueError(f"grid resolution must be positive, got {resolution}")
    return h, w


class FeatureGrid2d(nn.Module):
    """A [C, H, W] grid of learnable features; maps query points [..., 2] to features [..., C]."""

    def __init__(self, channels: int, resolution: int | tuple[int, int], init_std: float = 0.1) -> None:
        super().__init__()
        h, w = _as_pair(resolution)
        self.channels, self.resolution = channels, (h, w)
        self.grid = nn.Parameter(torch.randn(channels, h, w) * init_std)

    def example_inputs(self) -> tuple[Tensor]:
        return (torch.rand(4, 2) * 2 - 1,)

    def forward(self, coords: Tensor) -> Tensor:
        if coords.shape[-1] != 2:
            raise ValueError(f"FeatureGrid2d expects query points [..., 2], got shape {tuple(coords.shape)}.")
        lead = coords.shape[:-1]
        pts = coords.reshape(1, -1, 2).to(self.grid.dtype)
        return _sample(self.grid.unsqueeze(0), pts)[:, 0].reshape(*lead, self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, resolution={self.resolution}"


class TriPlaneGrid(nn.Module):
    """Three [C, R, R] feature planes (xy, xz, yz); maps 3-D points [..., 3] to features.

    `reduce="sum"` adds the three planes' features ([..., C]); `"concat"` concatenates them
    plane by plane ([..., 3C]).
    """

    def __init__(self, channels: int, resolution: int, reduce: str = "sum", init_std: float = 0.1) -> None:
        super().__init__()
        if reduce not in ("sum", "concat"):
            raise ValueError(f"TriPlaneGrid: reduce must be 'sum' or 'concat', got {reduce!r}.")
        r, _ = _as_pair(resolution)
        self.channels, self.resolution, self.reduce = channels, r, reduce
        self.planes = nn.Parameter(torch.randn(len(PLANE_AXES), channels, r, r) * init_std)

    @property
    def out_features(self) -> int:
        return self.channels * (len(PLANE_AXES) if self.reduce == "concat" else 1)

    def example_inputs(self) -> tuple[Tensor]:
        return (torch.rand(4, 3) * 2 - 1,)

    def forward(self, coords: Tensor) -> Tensor:
        if coords.shape[-1] != 3:
            raise ValueError(f"TriPlaneGrid expects query points [..., 3], got shape {tuple(coords.shape)}.")
        lead = coords.shape[:-1]
        flat = coords.reshape(-1, 3).to(self.planes.dtype)
        pts = torch.stack([flat[:, list(axes)] for axes in PLANE_AXES])  # [3, M, 2]
        feats = _sample(self.planes, pts)  # [M, 3, C]
        out = feats.sum(1) if self.reduce == "sum" else feats.reshape(feats.shape[0], -1)
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, resolution={self.resolution}, reduce={self.reduce!r}"
