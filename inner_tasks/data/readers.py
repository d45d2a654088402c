"""Readers for real image data a user has on disk: MNIST / FashionMNIST IDX files, CIFAR-10 batches.

Nothing is downloaded. Missing or malformed files raise `DataFormatError` / `FileNotFoundError`
naming the file and the format that was expected, so the user knows what to put where.
"""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from .types import ImageDataset

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FORMAT = (
    "IDX: 2 zero bytes, a type byte (0x08 uint8 ... 0x0E float64), a byte with the number of dims, "
    "one big-endian uint32 per dim, then the values (optionally gzip-compressed, *.gz)"
)
CIFAR_FORMAT = (
    "CIFAR-10 python batch: a pickled dict with b'data' (uint8 array [N, 3072], 1024 red then 1024 "
    "green then 1024 blue values per row) and b'labels' (N ints in 0..9)"
)
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


class DataFormatError(ValueError):
    """A data file exists but does not hold what its format promises."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or .gz) into a numpy array of its declared dtype and shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} not found (expected {IDX_FORMAT})")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataFormatError(f"{path}: not a valid gzip file ({err}); expected gzip-compressed {IDX_FORMAT}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataFormatError(f"{path}: bad IDX header {raw[:4]!r}; expected {IDX_FORMAT}")
    ndim = raw[3]
    header_len = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header_len:
        raise DataFormatError(f"{path}: IDX header declares {ndim} dims but the file is {len(raw)} bytes; expected {IDX_FORMAT}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header_len != expected:
        raise DataFormatError(
            f"{path}: IDX header declares shape {shape} of {dtype} ({expected} bytes of data) but the file "
            f"holds {len(raw) - header_len}; the file is truncated or not IDX ({IDX_FORMAT})"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str, fmt: str) -> Path:
    """Locate `stem` (or `stem.gz`) in folder or folder/raw (torchvision's layout)."""
    for d in (folder, folder / "raw"):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    raise FileNotFoundError(f"{stem} (or {stem}.gz) not found in {folder} or {folder / 'raw'}; expected {fmt}")


def _load_mnist_like(folder: Path, split: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if split not in MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    img_path = _find(folder, MNIST_FILES[split][0], IDX_FORMAT)
    lbl_path = _find(folder, MNIST_FILES[split][1], IDX_FORMAT)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataFormatError(f"{img_path}: {name} images must be uint8 [N, H, W], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataFormatError(
            f"{lbl_path}: {name} labels must be [N] with N = {images.shape[0]} (the image count in {img_path.name}), got {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataFormatError(f"{lbl_path}: {name} labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_mnist(folder: str | Path, fashion: bool = False) -> ImageDataset:
    """MNIST (or FashionMNIST: same file names and format) from the four IDX files in `folder`."""
    folder, name = Path(folder), "fashion_mnist" if fashion else "mnist"
    xtr, ytr = _load_mnist_like(folder, "train", name)
    xte, yte = _load_mnist_like(folder, "test", name)
    return ImageDataset(xtr, ytr, xte, yte, 10, name)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays and plain containers: a data file must not run arbitrary code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays are allowed)")


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> uint8 images [N, 3, 32, 32] and int64 labels [N]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch {path} not found (expected {CIFAR_FORMAT})")
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as err:  # any unpickling failure means the file is not a CIFAR batch
        raise DataFormatError(f"{path}: could not unpickle ({err}); expected {CIFAR_FORMAT}") from err
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: holds a {type(obj).__name__}, not a dict; expected {CIFAR_FORMAT}")
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise DataFormatError(f"{path}: dict keys {sorted(obj)} lack 'data' and/or 'labels'; expected {CIFAR_FORMAT}")
    data, labels = np.asarray(obj["data"]), np.asarray(obj["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataFormatError(f"{path}: 'data' is {data.dtype} {data.shape}; expected {CIFAR_FORMAT}")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataFormatError(f"{path}: 'labels' must be {data.shape[0]} ints in 0..9, got shape {labels.shape}; expected {CIFAR_FORMAT}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(folder: str | Path) -> ImageDataset:
    """CIFAR-10 from its python batches in `folder` (or folder/cifar-10-batches-py) as floats in [0, 1]."""
    folder = Path(folder)
    if not (folder / "test_batch").is_file() and (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    out = []
    for split in ("train", "test"):
        parts = [read_cifar_batch(folder / name) for name in CIFAR_FILES[split]]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        out += [torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y)]
    return ImageDataset(out[0], out[1], out[2], out[3], 10, "cifar10")
