"""Turn a task's JSON data description into tensors (the only place that knows data sources).

data["source"] is one of:
- "image": {"name": digits|shapes|mnist|fashion_mnist|cifar10, "size", "n_train", "n_test",
  "layout": "image" | "sequence" (pixels as a 1-D sequence [C, H*W] for 1-D CNNs), "root"};
- "sets": {"target", "set_size", "dim", "n_train", "n_test"};
- "teacher_student": {"in_dim", "out_dim", "teacher_hidden", "teacher_depth", "noise", "n_train", "n_test"};
- "inr": {"name", "size", "index"}: fit one image, coordinates in [-1, 1]^2 -> pixel values;
- "text": {"max_bytes", "context", "eval_batches"} (used by LanguageModelTask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..data import load_image_dataset, load_sets_split, load_teacher_student

SOURCES: tuple[str, ...] = ("image", "sets", "teacher_student", "inr", "text")


@dataclass(frozen=True)
class SupervisedData:
    """Train/test tensors and the objective: "ce" (classification), "mse" (regression), "inr" (fitting)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    objective: str


def pixel_grid(size: int) -> Tensor:
    """Pixel-centre coordinates in [-1, 1]^2 as [size*size, 2] (row-major, (y, x) order)."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    gy, gx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([gy.flatten(), gx.flatten()], dim=1)


def supervised_data(data: dict[str, Any], seed: int) -> SupervisedData:
    """Tensors for a supervised task described by `data` (see module docstring); seeded draws use `seed`."""
    source = data.get("source")
    if source == "image":
        ds = load_image_dataset(
            data["name"], data.get("size"), seed, data.get("n_train", 2000), data.get("n_test", 500), data.get("root")
        )
        xtr, xte = ds.x_train, ds.x_test
        if data.get("layout", "image") == "sequence":
            xtr, xte = xtr.flatten(2), xte.flatten(2)
        return SupervisedData(xtr, ds.y_train, xte, ds.y_test, "ce")
    if source == "sets":
        ds = load_sets_split(
            data.get("n_train", 2000), data.get("n_test", 500), data.get("set_size", 16), data.get("dim", 2), data["target"], seed
        )
        return SupervisedData(ds.x_train, ds.y_train, ds.x_test, ds.y_test, "ce" if data["target"] == "distribution" else "mse")
    if source == "teacher_student":
        keys = ("n_train", "n_test", "in_dim", "out_dim", "teacher_hidden", "teacher_depth", "noise")
        ds = load_teacher_student(**{k: data[k] for k in keys if k in data}, seed=seed)
        return SupervisedData(ds.x_train, ds.y_train, ds.x_test, ds.y_test, "mse")
    if source == "inr":
        ds = load_image_dataset(data["name"], data.get("size"), 0)
        image = ds.x_train[data.get("index", 0) % len(ds.x_train)]  # [C, H, W]
        coords = pixel_grid(image.shape[-1])
        values = image.flatten(1).T.contiguous()  # [H*W, C]
        return SupervisedData(coords, values, coords, values, "inr")
    raise ValueError(f"data source {source!r} is not supervised data; expected one of {SOURCES[:-1]}")
