"""Readers for MNIST/FashionMNIST IDX files and CIFAR-10 batches, on tiny files written here."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from inner_tasks.data import DataFormatError, load_cifar10, load_image_dataset, load_mnist, read_cifar_batch, read_idx


def write_idx(path: Path, array: np.ndarray, code: int = 0x08, compress: bool = False) -> Path:
    """IDX as specified: 0, 0, type code, ndims, big-endian uint32 dims, big-endian data."""
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(dtype).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_mnist(folder: Path, n_train: int = 6, n_test: int = 4, compress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(0)
    imgs = rng.randint(0, 256, size=(n_train + n_test, 28, 28)).astype(np.uint8)
    labels = rng.randint(0, 10, size=n_train + n_test).astype(np.uint8)
    sfx = ".gz" if compress else ""
    write_idx(folder / f"train-images-idx3-ubyte{sfx}", imgs[:n_train], compress=compress)
    write_idx(folder / f"train-labels-idx1-ubyte{sfx}", labels[:n_train], compress=compress)
    write_idx(folder / f"t10k-images-idx3-ubyte{sfx}", imgs[n_train:], compress=compress)
    write_idx(folder / f"t10k-labels-idx1-ubyte{sfx}", labels[n_train:], compress=compress)
    return imgs, labels


def test_read_idx_round_trip_all_dtypes(tmp_path: Path) -> None:
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a.idx", a, 0x0C)), a)
    f = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "f.idx.gz", f, 0x0D, compress=True)), f)


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist_reads_written_files(tmp_path: Path, compress: bool) -> None:
    imgs, labels = write_mnist(tmp_path, compress=compress)
    ds = load_mnist(tmp_path)
    assert ds.x_train.shape == (6, 1, 28, 28) and ds.x_test.shape == (4, 1, 28, 28)
    torch.testing.assert_close(ds.x_train[:, 0] * 255, torch.from_numpy(imgs[:6]).float())
    assert ds.y_test.tolist() == labels[6:].tolist() and ds.y_test.dtype == torch.int64


def test_fashion_mnist_and_registry_with_root_and_resize(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    assert load_mnist(tmp_path, fashion=True).name == "fashion_mnist"
    ds = load_image_dataset("fashion_mnist", 16, root=str(tmp_path))
    assert ds.x_train.shape == (6, 1, 16, 16)


def test_mnist_missing_file_names_it(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.*IDX"):
        load_mnist(tmp_path)


def test_idx_malformed_files_raise_with_file_and_format(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "g", np.zeros((4, 5, 5), np.uint8))
    truncated = tmp_path / "trunc"
    truncated.write_bytes(good.read_bytes()[:-7])
    with pytest.raises(DataFormatError, match="trunc.*declares shape \\(4, 5, 5\\).*truncated"):
        read_idx(truncated)
    bad_magic = tmp_path / "magic"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataFormatError, match="magic: bad IDX header.*2 zero bytes"):
        read_idx(bad_magic)
    bad_gz = tmp_path / "x.gz"
    bad_gz.write_bytes(b"not gzip")
    with pytest.raises(DataFormatError, match="x.gz: not a valid gzip"):
        read_idx(bad_gz)


def test_mnist_label_count_mismatch(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(DataFormatError, match="train-labels-idx1-ubyte.*N = 6"):
        load_mnist(tmp_path)


def write_cifar(folder: Path, per_batch: int = 3) -> list[np.ndarray]:
    rng = np.random.RandomState(1)
    arrays = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.randint(0, 256, size=(per_batch, 3072)).astype(np.uint8)
        labels = rng.randint(0, 10, size=per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f)
        arrays.append(data)
    return arrays


def test_load_cifar10_reads_written_batches(tmp_path: Path) -> None:
    sub = tmp_path / "cifar-10-batches-py"
    sub.mkdir()
    arrays = write_cifar(sub)
    ds = load_cifar10(tmp_path)  # finds the standard subfolder
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    # row layout: 1024 red, then green, then blue values, each row-major 32x32
    red_first_row = torch.from_numpy(arrays[0][0, :32].astype(np.float32)) / 255
    torch.testing.assert_close(ds.x_train[0, 0, 0], red_first_row)
    blue_pixel = arrays[-1][2, 2048 + 5 * 32 + 7] / 255
    assert float(ds.x_test[2, 2, 5, 7]) == pytest.approx(blue_pixel)


def test_cifar_malformed_and_missing(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4.*CIFAR-10 python batch"):
        load_cifar10(tmp_path)
    bad = tmp_path / "bad"
    with open(bad, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataFormatError, match="bad: 'data' is uint8 \\(2, 100\\)"):
        read_cifar_batch(bad)
    nokey = tmp_path / "nokey"
    with open(nokey, "wb") as f:
        pickle.dump({b"images": np.zeros((2, 3072), np.uint8)}, f)
    with pytest.raises(DataFormatError, match="lack 'data' and/or 'labels'"):
        read_cifar_batch(nokey)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01garbage")
    with pytest.raises(DataFormatError, match="garbage: could not unpickle"):
        read_cifar_batch(garbage)


class _Evil:
    def __reduce__(self):
        return (print, ("side effect",))


def test_cifar_reader_refuses_code_in_pickles(tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    with open(evil, "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f)
    with pytest.raises(DataFormatError, match="refusing to unpickle builtins.print"):
        read_cifar_batch(evil)
