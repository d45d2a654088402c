"""The image sets INRs are fitted to, by CLI name, with a deterministic train/test split."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from inner_tasks.data import load_cifar10, load_digits_split, load_mnist, load_shapes_split
from inner_tasks.data.types import ImageDataset

# CLI name -> (default image size, default root subfolder under $METAOPT_DATA or None if built in)
SOURCES: dict[str, tuple[int, str | None]] = {
    "digits": (16, None),
    "shapes": (16, None),
    "mnist-dir": (28, "mnist"),
    "fashion-mnist-dir": (28, "fashion_mnist"),
    "cifar10-dir": (32, "cifar10"),
}


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0.0, 1.0)


def _take(ds: ImageDataset, n: int | None) -> ImageDataset:
    """Keep the first images of each split, splitting `n` in the data set's train/test proportion."""
    total = ds.x_train.shape[0] + ds.x_test.shape[0]
    if n is None or n >= total:
        return ds
    if n < 2:
        raise ValueError(f"--n must be >= 2 (one train and one test image), got {n}")
    n_test = max(1, round(n * ds.x_test.shape[0] / total))
    n_train = n - n_test
    return ImageDataset(
        ds.x_train[:n_train], ds.y_train[:n_train], ds.x_test[:n_test], ds.y_test[:n_test], ds.num_classes, ds.name
    )


def load_source(name: str, size: int | None = None, root: str | None = None, n: int | None = None) -> ImageDataset:
    """Images in [0, 1] for `name` in SOURCES, resized to `size` (default per source), first `n` kept.

    digits: sklearn's 1797 8x8 digits upsampled bilinearly (fixed stratified 75/25 split);
    shapes: 2000 train + 500 test procedural shapes; *-dir: read from `root` or $METAOPT_DATA/<name>.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown INR data source {name!r}; choose one of {sorted(SOURCES)}")
    default_size, sub = SOURCES[name]
    size = size or default_size
    if name == "digits":
        ds = load_digits_split(size=size)
    elif name == "shapes":
        n_train, n_test = (2000, 500) if n is None else (n - max(1, n // 5), max(1, n // 5))
        ds = load_shapes_split(n_train=n_train, n_test=n_test, size=size)
    else:
        if root is None:
            env = os.environ.get("METAOPT_DATA")
            if env is None:
                raise FileNotFoundError(
                    f"--data {name} reads files from disk: pass --root <folder with the {sub} files> "
                    f"or set $METAOPT_DATA to a folder holding '{sub}/' (nothing is downloaded)"
                )
            root = os.path.join(env, sub)
        ds = load_cifar10(root) if name == "cifar10-dir" else load_mnist(root, fashion=name == "fashion-mnist-dir")
        ds = ImageDataset(_resize(ds.x_train, size), ds.y_train, _resize(ds.x_test, size), ds.y_test, ds.num_classes, ds.name)
    return _take(ds, n)
