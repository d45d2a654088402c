"""Procedural shapes: images drawn from signed distance functions, deterministic per seed.

Each image holds one shape of a class from `SHAPE_CLASSES`, at a random position, size and rotation,
filled or outlined with a random stroke width, with additive Gaussian noise. Drawing is vectorised
over images (no per-pixel or per-image Python loop), so thousands of images take milliseconds.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .types import ImageDataset

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "bar")


def _sd_box(px: Tensor, py: Tensor, bx: Tensor, by: Tensor) -> Tensor:
    """Signed distance to an axis-aligned box with half extents (bx, by)."""
    qx, qy = px.abs() - bx, py.abs() - by
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    return outside + torch.maximum(qx, qy).clamp(max=0)


def _sd_triangle(px: Tensor, py: Tensor, r: Tensor) -> Tensor:
    """Signed distance to an equilateral triangle with half side r, centred, pointing up (Quilez)."""
    k = math.sqrt(3.0)
    px = px.abs() - r
    py = -py + r / k  # image rows grow downwards; flip so the apex points up
    fold = px + k * py > 0
    px, py = torch.where(fold, (px - k * py) / 2, px), torch.where(fold, (-k * px - py) / 2, py)
    px = px - torch.clamp(px, min=-2 * r, max=torch.zeros_like(r))
    return -torch.sqrt(px**2 + py**2) * torch.sign(py)


def _signed_distance(cls: Tensor, px: Tensor, py: Tensor, r: Tensor) -> Tensor:
    """Signed distance (pixels) of every pixel to each image's shape; cls/r are [n, 1, 1]."""
    d_circle = torch.sqrt(px**2 + py**2) - r
    d_square = _sd_box(px, py, 0.75 * r, 0.75 * r)
    d_tri = _sd_triangle(px, py, 0.95 * r)
    d_cross = torch.minimum(_sd_box(px, py, r, 0.3 * r), _sd_box(px, py, 0.3 * r, r))
    d_bar = _sd_box(px, py, r, 0.3 * r)
    stacked = torch.stack([d_circle, d_square, d_tri, d_cross, d_bar])  # [5, n, H, W]
    return stacked.gather(0, cls.expand_as(px).unsqueeze(0)).squeeze(0)


def make_shapes(
    n: int,
    size: int = 16,
    seed: int = 0,
    num_classes: int = len(SHAPE_CLASSES),
    channels: int = 1,
    noise: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """Draw n shape images [n, channels, size, size] in [0, 1] and balanced int64 labels [n].

    Same (n, size, seed, num_classes, channels, noise) gives bit-identical output.
    """
    if not 1 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPE_CLASSES)}, got {num_classes}")
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels for shapes to be recognisable, got {size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (colour), got {channels}")
    g = torch.Generator().manual_seed(seed)

    def u(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, 1, 1, generator=g)

    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    r = u(0.2, 0.38) * size
    cx = r + 0.5 + torch.rand(n, 1, 1, generator=g) * (size - 2 * r - 1).clamp(min=0)
    cy = r + 0.5 + torch.rand(n, 1, 1, generator=g) * (size - 2 * r - 1).clamp(min=0)
    theta = u(0.0, 2 * math.pi)
    filled = torch.rand(n, 1, 1, generator=g) < 0.5
    stroke = u(1.0, max(1.5, 0.12 * size))
    sigma = u(0.0, noise)
    colour = 0.3 + 0.7 * torch.rand(n, channels, 1, 1, generator=g)
    eps = torch.randn(n, channels, size, size, generator=g)

    coords = torch.arange(size, dtype=torch.float32) + 0.5
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    dx, dy = gx - cx, gy - cy  # [n, H, W]
    cos, sin = torch.cos(theta), torch.sin(theta)
    px, py = cos * dx + sin * dy, -sin * dx + cos * dy  # rotate into the shape's frame
    d = _signed_distance(labels.view(n, 1, 1), px, py, r)
    d = torch.where(filled, d, d.abs() - stroke / 2)
    intensity = (0.5 - d).clamp(0.0, 1.0)  # one-pixel anti-aliased edge
    images = intensity.unsqueeze(1) * colour + sigma.unsqueeze(1) * eps
    return images.clamp_(0.0, 1.0), labels


def load_shapes_split(
    n_train: int = 2000,
    n_test: int = 500,
    size: int = 16,
    seed: int = 0,
    num_classes: int = len(SHAPE_CLASSES),
    channels: int = 1,
    noise: float = 0.1,
) -> ImageDataset:
    """Train and test shape images from two disjoint generator streams of one seed."""
    xtr, ytr = make_shapes(n_train, size, 2 * seed, num_classes, channels, noise)
    xte, yte = make_shapes(n_test, size, 2 * seed + 1, num_classes, channels, noise)
    return ImageDataset(xtr, ytr, xte, yte, num_classes, "shapes")
