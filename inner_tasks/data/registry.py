"""One entry point for image data sets by name, so task specs can name their data in JSON."""

from __future__ import annotations

import os
from functools import lru_cache

import torch.nn.functional as F

from .digits import load_digits_split
from .readers import load_cifar10, load_mnist
from .shapes import load_shapes_split
from .types import ImageDataset

IMAGE_DATASETS: tuple[str, ...] = ("digits", "shapes", "mnist", "fashion_mnist", "cifar10")
# Folder used for real data sets when no root is given (nothing is ever downloaded).
DATA_ROOT_ENV = "METAOPT_DATA"


def _resize(ds: ImageDataset, size: int | None) -> ImageDataset:
    if size is None or ds.x_train.shape[-1] == size:
        return ds
    r = lambda x: F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)  # noqa: E731
    return ImageDataset(r(ds.x_train), ds.y_train, r(ds.x_test), ds.y_test, ds.num_classes, ds.name)


@lru_cache(maxsize=16)
def load_image_dataset(
    name: str, size: int | None = None, seed: int = 0, n_train: int = 2000, n_test: int = 500, root: str | None = None
) -> ImageDataset:
    """Load `name` from IMAGE_DATASETS, resized to size x size when given.

    digits/shapes are built in (seed only affects shapes; digits has one fixed split); mnist,
    fashion_mnist and cifar10 are read from `root` or $METAOPT_DATA/<name>. Results are cached,
    so treat the returned tensors as read-only.
    """
    if name == "digits":
        return load_digits_split(size=size or 8)
    if name == "shapes":
        return load_shapes_split(n_train=n_train, n_test=n_test, size=size or 16, seed=seed)
    if name in ("mnist", "fashion_mnist", "cifar10"):
        if root is None:
            env = os.environ.get(DATA_ROOT_ENV)
            if env is None:
                raise FileNotFoundError(
                    f"data set {name!r} is read from disk: pass root=<folder> or set ${DATA_ROOT_ENV} "
                    f"to a folder holding a '{name}' subfolder (nothing is downloaded)"
                )
            root = os.path.join(env, name)
        ds = load_cifar10(root) if name == "cifar10" else load_mnist(root, fashion=name == "fashion_mnist")
        return _resize(ds, size)
    raise ValueError(f"unknown image data set {name!r}; choose one of {IMAGE_DATASETS}")
