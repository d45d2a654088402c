"""scikit-learn's bundled 8x8 handwritten digits: deterministic split, optional upsampling."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .types import ImageDataset

DIGITS_NUM_CLASSES = 10


@lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # pixel values are 0..16
    return images, bunch.target.astype(np.int64)


def _split_indices(labels: np.ndarray, test_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: the same fraction of every class goes to test, fixed by split_seed."""
    rng = np.random.RandomState(split_seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def upsample(images: Tensor, size: int) -> Tensor:
    """Bilinearly resize [N, C, H, W] images to size x size (identity when already that size)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


def load_digits_split(size: int = 8, test_fraction: float = 0.25, split_seed: int = 0) -> ImageDataset:
    """Digits as float images in [0, 1], shape [N, 1, size, size], with a stratified train/test split.

    The split depends only on `test_fraction` and `split_seed`, so every caller sees the same one.
    """
    if size < 8:
        raise ValueError(f"digits are 8x8; size={size} would downsample them (use size >= 8)")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    images, labels = _raw_digits()
    tr, te = _split_indices(labels, test_fraction, split_seed)
    x = upsample(torch.from_numpy(images).unsqueeze(1), size)
    y = torch.from_numpy(labels)
    return ImageDataset(x[tr], y[tr], x[te], y[te], DIGITS_NUM_CLASSES, "digits")
