"""Built-in data: deterministic, correctly split, and holding what it claims."""

from __future__ import annotations

import pytest
import torch

from inner_tasks.data import (
    SET_DISTRIBUTIONS,
    SHAPE_CLASSES,
    load_digits_split,
    load_image_dataset,
    load_sets_split,
    load_stdlib_corpus,
    load_teacher_student,
    make_sets,
    make_shapes,
    sample_windows,
    stdlib_source_files,
)


def test_digits_split_is_fixed_stratified_and_disjoint() -> None:
    a, b = load_digits_split(), load_digits_split()
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert len(a.x_train) + len(a.x_test) == 1797 and a.image_shape == (1, 8, 8)
    frac = torch.bincount(a.y_test, minlength=10).float() / torch.bincount(torch.cat([a.y_train, a.y_test])).float()
    assert torch.all((frac - 0.25).abs() < 0.01)  # every class split 75/25
    train_rows = {tuple(r.tolist()) for r in a.x_train.flatten(1)}
    overlap = sum(tuple(r.tolist()) in train_rows for r in a.x_test.flatten(1))
    assert overlap <= 3  # digits holds a handful of exact duplicate images, nothing more
    assert 0.0 <= float(a.x_train.min()) and float(a.x_train.max()) <= 1.0


@pytest.mark.parametrize("size", [16, 28])
def test_digits_upsampling_keeps_split_and_content(size: int) -> None:
    small, big = load_digits_split(), load_digits_split(size=size)
    assert big.x_train.shape[1:] == (1, size, size) and torch.equal(big.y_train, small.y_train)
    down = torch.nn.functional.adaptive_avg_pool2d(big.x_train[:50], 8)
    assert (down - small.x_train[:50]).abs().mean() < 0.08


def test_shapes_deterministic_balanced_and_seed_dependent() -> None:
    x1, y1 = make_shapes(100, 20, seed=3)
    x2, y2 = make_shapes(100, 20, seed=3)
    x3, _ = make_shapes(100, 20, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert x1.shape == (100, 1, 20, 20) and 0 <= float(x1.min()) and float(x1.max()) <= 1
    assert torch.bincount(y1).tolist() == [20] * len(SHAPE_CLASSES)
    assert (x1.flatten(1).amax(1) > 0.25).all()  # every image holds a visible shape (intensity >= 0.3)
    xc, _ = make_shapes(8, 12, seed=0, num_classes=3, channels=3)
    assert xc.shape == (8, 3, 12, 12)


def test_shape_classes_are_distinguishable_without_noise() -> None:
    """Class means of clean, centred-ish drawings differ: labels match what is drawn."""
    x, y = make_shapes(500, 16, seed=0, noise=0.0)
    mass = x.flatten(1).sum(1)
    means = torch.stack([mass[y == c].mean() for c in range(len(SHAPE_CLASSES))])
    assert means.unique().numel() == len(SHAPE_CLASSES)
    bar, circle = SHAPE_CLASSES.index("bar"), SHAPE_CLASSES.index("circle")
    assert means[bar] < means[circle]  # a thin bar covers less area than a disk of the same size


def test_shapes_split_uses_disjoint_streams() -> None:
    ds = load_image_dataset("shapes", 16, 0, 50, 20)
    assert ds.x_train.shape == (50, 1, 16, 16) and ds.x_test.shape == (20, 1, 16, 16)
    assert not torch.equal(ds.x_train[:10], ds.x_test[:10])


def test_stdlib_corpus_is_deterministic_and_split() -> None:
    files = stdlib_source_files()
    assert len(files) > 100 and all(p.suffix == ".py" and "site-packages" not in p.parts for p in files)
    assert [p.as_posix() for p in files] == sorted(p.as_posix() for p in files)
    c = load_stdlib_corpus(200_000)
    load_stdlib_corpus.cache_clear()
    c2 = load_stdlib_corpus(200_000)
    assert torch.equal(c.train, c2.train) and torch.equal(c.val, c2.val)
    assert len(c.train) + len(c.val) == 200_000 and len(c.val) == 20_000
    assert b"def " in bytes(c.train[:20_000].tolist())


def test_windows_are_next_byte_targets() -> None:
    tokens = torch.arange(100, dtype=torch.uint8)
    x, y = sample_windows(tokens, 4, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 10) and x.dtype == torch.int64
    assert torch.equal(y, x + 1)


def test_set_targets_are_what_they_say() -> None:
    x, y = make_sets(50, 6, 3, "sum", seed=1)
    torch.testing.assert_close(y[:, 0], x.sum((1, 2)) / 6)
    x, y = make_sets(50, 6, 3, "max", seed=1)
    torch.testing.assert_close(y[:, 0], x.amax(1).sum(-1))
    x, y = make_sets(2000, 32, 2, "distribution", seed=1)
    assert set(y.unique().tolist()) == set(range(len(SET_DISTRIBUTIONS)))
    for c in range(len(SET_DISTRIBUTIONS)):  # every distribution has unit variance: shape, not scale
        assert abs(float(x[y == c].var()) - 1.0) < 0.1
    with pytest.raises(ValueError, match="unknown set target"):
        make_sets(2, target="median")
    a, b = load_sets_split(20, 10, seed=2), load_sets_split(20, 10, seed=2)
    assert torch.equal(a.x_train, b.x_train)


def test_teacher_student_is_deterministic_and_learnable_signal() -> None:
    a, b, c = load_teacher_student(seed=1), load_teacher_student(seed=1), load_teacher_student(seed=2)
    assert torch.equal(a.y_train, b.y_train) and not torch.equal(a.y_train, c.y_train)
    assert abs(float(a.y_train.std()) - 1.0) < 0.1
    # targets are a non-trivial function of x: a linear fit leaves clear residual, but explains something
    xb = torch.cat([a.x_train, torch.ones(len(a.x_train), 1)], 1)
    resid = a.y_train - xb @ torch.linalg.lstsq(xb, a.y_train).solution
    assert 0.02 < float(resid.var()) < 0.98


def test_unknown_image_dataset_and_missing_root() -> None:
    with pytest.raises(ValueError, match="unknown image data set"):
        load_image_dataset("imagenet")
    with pytest.raises(FileNotFoundError, match="METAOPT_DATA"):
        load_image_dataset("mnist")
