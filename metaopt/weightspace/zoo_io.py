"""On-disk model zoos: the interface between zoo generation (inner_tasks) and weight-space learning.

Layout of a zoo folder (format version 1)::

    zoo.json                       preset, generation config, format version
    archs/<arch_id>.safetensors    graph structure: x, edge_index, edge_attr, aux_edge_index, aux_edge_attr
    archs/<arch_id>.json           spec, param/buffer names and shapes, graph layers, input shape
    shards/shard_<k>.safetensors   weights of models k*S .. (k+1)*S-1: "<id>" -> float32 [P] (edge order),
                                   "<id>.buffers" -> float32 [B] (BatchNorm running stats, if any)
    models.jsonl                   one JSON record per model (see `MODEL_RECORD_KEYS`), incl. shard
                                   name, sha256 and byte size of its weights, for corruption checks
    pending/<id>.safetensors       a trained model not yet consolidated into its shard (record in the
                                   safetensors metadata); a crash never loses finished models

Readers need only this module: graphs are rebuilt from the stored structure, never from model code,
so `metaopt` does not depend on `inner_tasks`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..graph import ParameterGraph

FORMAT_VERSION = 1
STRUCTURE_KEYS = ParameterGraph.STRUCTURE_KEYS
MODEL_RECORD_KEYS = (
    "id", "arch_id", "family", "spec", "hparams", "seed", "train_acc", "train_loss", "test_acc",
    "test_loss", "num_params", "shard", "sha256", "nbytes",
)


class ZooFormatError(ValueError):
    """A zoo folder is missing files or holds data that does not match the documented format."""


# ---- small file helpers ------------------------------------------------------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """`safetensors.save_file` through a temporary file and rename (crash-safe)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def tensor_sha256(t: Tensor) -> str:
    """sha256 of a tensor's raw bytes (float32, contiguous): detects any flipped bit in a shard."""
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def architecture_id(spec_json: str) -> str:
    """Short stable id of an architecture: sha1 of its canonical spec JSON."""
    return hashlib.sha1(spec_json.encode()).hexdigest()[:12]


def shard_name(model_id: int, shard_size: int) -> str:
    """File name of the shard holding `model_id` (shards group consecutive ids)."""
    return f"shard_{model_id // shard_size:05d}.safetensors"


# ---- graph structures --------------------------------------------------------------------------
def save_structure(graph: ParameterGraph, folder: Path, arch_id: str, extra: dict[str, Any]) -> None:
    """Store a graph's structure tensors and its parameter/layer lists (plus `extra`, e.g. the spec)."""
    tensors = graph.structure_tensors()
    meta = {"arch_id": arch_id, **graph.structure_meta(), **extra}
    atomic_save_tensors(folder / f"{arch_id}.safetensors", tensors)
    atomic_write_bytes(folder / f"{arch_id}.json", json.dumps(meta, sort_keys=True).encode())


def load_structure(folder: Path, arch_id: str) -> tuple[ParameterGraph, dict[str, Any]]:
    """Rebuild the `ParameterGraph` of `arch_id` and return it with its JSON metadata."""
    st, js = folder / f"{arch_id}.safetensors", folder / f"{arch_id}.json"
    for p in (st, js):
        if not p.is_file():
            raise ZooFormatError(f"{p}: missing architecture file; a zoo stores archs/<arch_id>.safetensors and .json")
    try:
        tensors = load_file(str(st))
        meta = json.loads(js.read_text())
    except (SafetensorError, json.JSONDecodeError, OSError) as e:
        raise ZooFormatError(f"architecture {arch_id} in {folder}: unreadable ({e}); regenerate the zoo") from e
    missing = [k for k in STRUCTURE_KEYS if k not in tensors]
    if missing:
        raise ZooFormatError(f"{st}: lacks structure tensors {missing}; expected {list(STRUCTURE_KEYS)}")
    return ParameterGraph.from_structure(tensors, meta), meta


# ---- records and shards -----------------------------------------------------------------------
def read_records(path: Path) -> dict[int, dict[str, Any]]:
    """Records of models.jsonl by id (a later line for the same id wins; a torn last line is ignored)."""
    out: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return out
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # interrupted append: the model is still in pending/ or retrained
                continue
            raise ZooFormatError(f"{path}:{i + 1}: not valid JSON; each line must be one model record") from None
        out[int(rec["id"])] = rec
    return out


def write_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Rewrite models.jsonl atomically (used when corrupt shards are dropped)."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in sorted(records, key=lambda r: r["id"]))
    atomic_write_bytes(path, text.encode())


def append_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records to models.jsonl and fsync (one line each)."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def verify_shard(path: Path, records: list[dict[str, Any]]) -> str | None:
    """None if the shard holds every record's weights with the recorded size and sha256, else why not."""
    return _load_verified(path, records)[1]


def _load_verified(path: Path, records: list[dict[str, Any]]) -> tuple[dict[str, Tensor], str | None]:
    """(shard tensors, None) if every record's weights match its size and sha256, else ({}, reason)."""
    if not path.is_file():
        return {}, "file missing"
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        return {}, f"unreadable ({e})"
    for rec in records:
        key = str(rec["id"])
        if key not in tensors:
            return {}, f"model {key} missing"
        w = tensors[key]
        if w.numel() * w.element_size() != rec["nbytes"] or tensor_sha256(w) != rec["sha256"]:
            return {}, f"model {key} size or checksum mismatch"
    return tensors, None


# ---- the reader used by weight-space learning -------------------------------------------------
@dataclass
class Zoo:
    """A loaded zoo: records, one graph structure per architecture, flat weights per model (edge order)."""

    records: list[dict[str, Any]]
    graphs: dict[str, ParameterGraph]
    weights: list[Tensor]
    arch_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    name: str = "zoo"

    def __len__(self) -> int:
        return len(self.records)

    def targets(self, key: str = "test_acc") -> Tensor:
        """float32 [N] of a record field (default: test accuracy)."""
        return torch.tensor([float(r[key]) for r in self.records], dtype=torch.float32)

    def arch_ids(self) -> list[str]:
        return [r["arch_id"] for r in self.records]

    def graph_of(self, i: int) -> ParameterGraph:
        """Structure of model i (shared tensors; cheap)."""
        return self.graphs[self.records[i]["arch_id"]].copy_structure()

    def subset(self, idx: Iterable[int]) -> "Zoo":
        """A Zoo with the models `idx` (shares graphs and weight tensors)."""
        idx = list(idx)
        archs = {self.records[i]["arch_id"] for i in idx}
        return Zoo(
            [self.records[i] for i in idx], {a: self.graphs[a] for a in archs},
            [self.weights[i] for i in idx], {a: self.arch_meta.get(a, {}) for a in archs}, self.name,
        )


def load_zoo(folder: str | Path, verify: bool = True) -> Zoo:
    """Read a zoo written by `python -m inner_tasks.zoo` (see the module docstring for the layout).

    With verify=True every model's weights are checked against the recorded sha256; a mismatch
    raises `ZooFormatError` naming the shard (rerun the generator on the folder to regenerate it).
    """
    root = Path(folder)
    zj = root / "zoo.json"
    if not zj.is_file():
        raise ZooFormatError(
            f"{zj}: missing; a generated zoo folder holds zoo.json, models.jsonl, archs/ and shards/ "
            f"(python -m inner_tasks.zoo), an external Small CNN Zoo folder holds weights.npy, layout.csv, metrics.csv"
        )
    info = json.loads(zj.read_text())
    if info.get("format_version") != FORMAT_VERSION:
        raise ZooFormatError(f"{zj}: format_version {info.get('format_version')} != {FORMAT_VERSION}")
    recs = read_records(root / "models.jsonl")
    if not recs:
        raise ZooFormatError(f"{root / 'models.jsonl'}: no model records (generation not run or not finished)")
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for r in recs.values():
        by_shard.setdefault(r["shard"], []).append(r)
    weights: dict[int, Tensor] = {}
    for shard, rs in sorted(by_shard.items()):
        path = root / "shards" / shard
        if verify:
            tensors, why = _load_verified(path, rs)
            if why is not None:
                raise ZooFormatError(f"{path}: {why}; rerun the generator on {root} to regenerate the shard")
        else:
            try:
                tensors = load_file(str(path))
            except (SafetensorError, OSError, ValueError) as e:
                raise ZooFormatError(f"{path}: unreadable ({e}); rerun the generator on {root}") from e
            missing = [r["id"] for r in rs if str(r["id"]) not in tensors]
            if missing:
                raise ZooFormatError(f"{path}: lacks models {missing[:5]}; rerun the generator on {root}")
        for r in rs:
            weights[r["id"]] = tensors[str(r["id"])]
    ids = sorted(recs)
    graphs, metas = {}, {}
    for a in sorted({recs[i]["arch_id"] for i in ids}):
        graphs[a], metas[a] = load_structure(root / "archs", a)
    for i in ids:
        if weights[i].numel() != graphs[recs[i]["arch_id"]].num_params:
            raise ZooFormatError(f"{root}: model {i} has {weights[i].numel()} weights, its architecture has "
                                 f"{graphs[recs[i]['arch_id']].num_params} parameters")
    return Zoo([recs[i] for i in ids], graphs, [weights[i] for i in ids], metas, info.get("preset", root.name))
