"""Read external zoos in the Small CNN Zoo layout (Unterthiner et al. 2020) into a `Zoo`.

Expected folder contents:
- ``weights.npy``: float array [N, P], one row of flattened parameters per network.
- ``layout.csv``: one row per parameter tensor, in row order, with columns ``varname`` (e.g.
  ``sequential/conv2d/kernel:0``), ``start_idx``, ``end_idx`` (slice of a weights row, end exclusive)
  and ``shape`` (e.g. ``(3, 3, 1, 16)``); ``size`` is optional. Shapes are TensorFlow/Keras order:
  conv kernels [kh, kw, in, out], dense kernels [in, out], biases [out]; each bias follows its kernel.
- ``metrics.csv`` (or ``metrics.csv.gz``): one row per network with a ``test_accuracy`` column; an
  optional ``config.activation`` (or ``activation``) column names each network's nonlinearity.

Each row is mapped onto the parameter graph of the equivalent PyTorch CNN (convs with the same
kernels, then global average pooling and the dense layers; the zoo's stride 2 is kept) with kernels
permuted to PyTorch order, so the rest of the pipeline treats it like a generated zoo.
"""

from __future__ import annotations

import ast
import csv
import gzip
import math
from pathlib import Path
from typing import Any

from einops import rearrange
import numpy as np
import torch
from torch import nn

from ..graph import to_graph
from .zoo_io import Zoo, ZooFormatError

LAYOUT_COLUMNS = ("varname", "start_idx", "end_idx", "shape")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "elu": nn.ELU,
               "linear": nn.Identity, "selu": nn.SELU}


def is_small_cnn_zoo(path: str | Path) -> bool:
    """True if `path` looks like a Small CNN Zoo folder (it holds weights.npy)."""
    return (Path(path) / "weights.npy").is_file()


def _read_csv(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ZooFormatError(f"{path}: unreadable as CSV ({e})") from e


def _parse_shape(text: str, where: str) -> tuple[int, ...]:
    try:
        value = ast.literal_eval(text.strip())
        shape = (value,) if isinstance(value, int) else tuple(int(v) for v in value)
    except (ValueError, SyntaxError, TypeError):
        raise ZooFormatError(f"{where}: shape {text!r} is not a tuple of ints like '(3, 3, 1, 16)'") from None
    return shape


def read_layout(path: Path) -> list[dict[str, Any]]:
    """Rows of layout.csv as {varname, start, end, shape}, checked for consistency."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; expected a CSV with columns {', '.join(LAYOUT_COLUMNS)} "
                                f"(one row per parameter tensor, Small CNN Zoo layout)")
    rows = _read_csv(path)
    if not rows or any(c not in rows[0] for c in LAYOUT_COLUMNS):
        raise ZooFormatError(f"{path}: needs columns {list(LAYOUT_COLUMNS)}, found {list(rows[0]) if rows else []}")
    out = []
    for i, r in enumerate(rows):
        where = f"{path}:{i + 2}"
        try:
            start, end = int(r["start_idx"]), int(r["end_idx"])
        except ValueError:
            raise ZooFormatError(f"{where}: start_idx/end_idx must be integers") from None
        shape = _parse_shape(r["shape"], where)
        if end - start != math.prod(shape):
            raise ZooFormatError(f"{where}: slice [{start}, {end}) has {end - start} values but shape {shape} "
                                 f"has {math.prod(shape)}")
        out.append({"varname": r["varname"], "start": start, "end": end, "shape": shape})
    return out


def _layers(layout: list[dict[str, Any]], path: Path) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Pair every kernel (rank 4 conv or rank 2 dense) with the bias row that follows it (if any)."""
    pairs, i = [], 0
    while i < len(layout):
        k = layout[i]
        if len(k["shape"]) not in (2, 4):
            raise ZooFormatError(f"{path}: row {k['varname']!r} has shape {k['shape']}; expected a conv kernel "
                                 f"[kh, kw, in, out] or dense kernel [in, out] here (biases follow their kernel)")
        bias = layout[i + 1] if i + 1 < len(layout) and len(layout[i + 1]["shape"]) == 1 else None
        if bias is not None and bias["shape"][0] != k["shape"][-1]:
            raise ZooFormatError(f"{path}: bias {bias['varname']!r} has {bias['shape'][0]} values, its kernel "
                                 f"{k['varname']!r} has {k['shape'][-1]} outputs")
        pairs.append((k, bias))
        i += 2 if bias is not None else 1
    convs = [k for k, _ in pairs if len(k["shape"]) == 4]
    if any(len(k["shape"]) == 4 for k, _ in pairs[len(convs):]):
        raise ZooFormatError(f"{path}: conv kernels must all come before the dense kernels")
    prev = None
    for k, _ in pairs:
        cin = k["shape"][2] if len(k["shape"]) == 4 else k["shape"][0]
        if prev is not None and cin != prev:
            raise ZooFormatError(f"{path}: {k['varname']!r} reads {cin} features but the previous layer has {prev}")
        prev = k["shape"][-1]
    return pairs


def equivalent_cnn(pairs: list[tuple[dict[str, Any], dict[str, Any] | None]], activation: str) -> nn.Sequential:
    """The PyTorch CNN with the zoo's tensors: conv(stride 2) + act ..., global average pool, dense layers."""
    act = ACTIVATIONS[activation]
    mods: list[nn.Module] = []
    convs = [(k, b) for k, b in pairs if len(k["shape"]) == 4]
    denses = [(k, b) for k, b in pairs if len(k["shape"]) == 2]
    for k, b in convs:
        kh, kw, cin, cout = k["shape"]
        mods += [nn.Conv2d(cin, cout, (kh, kw), stride=2, padding=(kh // 2, kw // 2), bias=b is not None), act()]
    if convs:
        mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    for j, (k, b) in enumerate(denses):
        mods.append(nn.Linear(k["shape"][0], k["shape"][1], bias=b is not None))
        if j < len(denses) - 1:
            mods.append(act())
    return nn.Sequential(*mods)


def _to_torch_order(weights: np.ndarray, pairs: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> torch.Tensor:
    """[N, P] rows in TF layout -> [N, P] in the PyTorch model's parameter (= graph edge) order."""
    w = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))
    n, parts = w.shape[0], []
    for k, b in pairs:
        block = w[:, k["start"] : k["end"]].reshape(n, *k["shape"])
        if len(k["shape"]) == 4:  # TF conv kernel (kh, kw, in, out) -> torch (out, in, kh, kw)
            block = rearrange(block, "n kh kw ci co -> n (co ci kh kw)")
        else:  # TF dense kernel (in, out) -> torch (out, in)
            block = rearrange(block, "n ci co -> n (co ci)")
        parts.append(block)
        if b is not None:
            parts.append(w[:, b["start"] : b["end"]])
    return torch.cat(parts, dim=1)


def load_small_cnn_zoo(folder: str | Path, image_size: int = 32) -> Zoo:
    """Read a Small CNN Zoo folder (see the module docstring) into a `Zoo` named after the folder.

    Networks with a non-finite accuracy or weight are skipped (the original zoo has a few diverged ones).
    """
    root = Path(folder)
    wpath = root / "weights.npy"
    if not wpath.is_file():
        raise FileNotFoundError(f"{wpath}: missing; expected a float array [N, P] of flattened parameters")
    try:
        weights = np.load(wpath, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ZooFormatError(f"{wpath}: not a readable .npy array ({e}); expected float [N, P]") from e
    if weights.ndim != 2 or not np.issubdtype(weights.dtype, np.floating):
        raise ZooFormatError(f"{wpath}: has shape {weights.shape} dtype {weights.dtype}; expected float [N, P]")
    layout = read_layout(root / "layout.csv")
    if max(r["end"] for r in layout) > weights.shape[1]:
        raise ZooFormatError(f"{root / 'layout.csv'}: slices reach index {max(r['end'] for r in layout)} but "
                             f"{wpath} rows have {weights.shape[1]} values")
    mpath = next((p for p in (root / "metrics.csv", root / "metrics.csv.gz") if p.is_file()), None)
    if mpath is None:
        raise FileNotFoundError(f"{root / 'metrics.csv'}: missing (also tried metrics.csv.gz); expected one row "
                                f"per network with a test_accuracy column")
    metrics = _read_csv(mpath)
    if len(metrics) != weights.shape[0]:
        raise ZooFormatError(f"{mpath}: {len(metrics)} rows but {wpath} has {weights.shape[0]} networks")
    if not metrics or "test_accuracy" not in metrics[0]:
        raise ZooFormatError(f"{mpath}: needs a test_accuracy column, found {list(metrics[0]) if metrics else []}")
    pairs = _layers(layout, root / "layout.csv")
    flat = _to_torch_order(weights, pairs)
    act_col = next((c for c in ("config.activation", "activation") if c in metrics[0]), None)
    graphs, records, kept = {}, [], []
    for i, row in enumerate(metrics):
        try:
            acc = float(row["test_accuracy"])
        except ValueError:
            raise ZooFormatError(f"{mpath}:{i + 2}: test_accuracy {row['test_accuracy']!r} is not a number") from None
        if not math.isfinite(acc) or not torch.isfinite(flat[i]).all():
            continue
        activation = (row[act_col].strip().lower() if act_col else "relu") or "relu"
        if activation not in ACTIVATIONS:
            raise ZooFormatError(f"{mpath}:{i + 2}: activation {activation!r} unknown; known: {sorted(ACTIVATIONS)}")
        arch = f"smallcnn-{activation}"
        if arch not in graphs:
            model = equivalent_cnn(pairs, activation)
            cin = pairs[0][0]["shape"][2]
            x = torch.zeros(1, cin, image_size, image_size) if len(pairs[0][0]["shape"]) == 4 else torch.zeros(1, cin)
            graphs[arch] = to_graph(model, x)
        records.append({"id": i, "arch_id": arch, "family": "small-cnn", "test_acc": acc,
                        "num_params": int(flat.shape[1]),
                        **{k: row[k] for k in ("train_accuracy", "test_loss") if k in row}})
        kept.append(i)
    if not records:
        raise ZooFormatError(f"{root}: no network with finite weights and accuracy")
    return Zoo(records, graphs, [flat[i] for i in kept], {a: {"source": str(root)} for a in graphs}, root.name)
