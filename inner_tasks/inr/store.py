"""On-disk INR sets: the SIREN's parameter-graph structure once, sharded weights, a JSONL index.

Layout of an INR set folder (the interface `metaopt.weightspace.inr_data` reads, without models):

    structure.safetensors   x, edge_index, edge_attr, aux_edge_index, aux_edge_attr of the SIREN graph
    structure.json          format, param_names/param_shapes/layers, siren config (widths, w0 per layer),
                            pixel-coordinate convention, data set, fit config
    images.safetensors      images [N, C, H, W] (the fit targets), labels [N], split [N] (0 train, 1 test)
    shards/shard_XXXXX.safetensors   weights [B, E] (edge order), image_index, seed, psnr per INR
    index.jsonl             one line per INR: shard, row, image_index, label, psnr, seed, split
    psnr.json               PSNR distribution (written at the end of a run)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

FORMAT = "metaopt-inr-set/1"
SPLIT_NAMES = ("train", "test")


def _atomic_save(tensors: dict[str, Tensor], path: Path) -> None:
    """Write safetensors to a temp name then rename: a killed run never leaves a half shard."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _atomic_json(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_structure(out: Path, graph: Any, meta: dict[str, Any]) -> None:
    """Store the shared graph structure (tensors + JSON), or check an existing one matches `meta`.

    A resumed run with different settings would mix incompatible INRs, so that raises instead.
    """
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "structure.json"
    record = {"format": FORMAT, **graph.structure_meta(), **meta}
    if json_path.exists():
        old = json.loads(json_path.read_text())
        if old != json.loads(json.dumps(record, sort_keys=True)):
            diff = sorted(k for k in set(old) | set(record) if old.get(k) != json.loads(json.dumps(record)).get(k))
            raise ValueError(
                f"{json_path} was written with different settings (differs in {diff}); resume with the same "
                "arguments, or pass a new --out folder (or --overwrite to start over)"
            )
        return
    _atomic_save(graph.structure_tensors(), out / "structure.safetensors")
    _atomic_json(record, json_path)


def write_images(out: Path, images: Tensor, labels: Tensor, split: Tensor) -> None:
    """Store the fit targets once (image index = row), so image baselines need no data code."""
    path = out / "images.safetensors"
    if path.exists():
        old = load_file(str(path))
        if old["images"].shape != images.shape or not torch.equal(old["labels"], labels):
            raise ValueError(f"{path} holds different images; use a new --out folder or --overwrite")
        return
    _atomic_save({"images": images.float(), "labels": labels.long(), "split": split.to(torch.uint8)}, path)


def shard_path(out: Path, shard: int) -> Path:
    return out / "shards" / f"shard_{shard:05d}.safetensors"


def done_shards(out: Path) -> set[int]:
    """Shards that are complete: file present and their rows in index.jsonl (rows are appended last)."""
    index = out / "index.jsonl"
    if not index.exists():
        return set()
    shards = set()
    for line in index.read_text().splitlines():
        if line.strip():
            shards.add(int(json.loads(line)["shard"]))
    return {s for s in shards if shard_path(out, s).exists()}


def write_shard(out: Path, shard: int, weights: Tensor, image_index: Tensor, seeds: Tensor, psnr: Tensor,
                labels: Tensor, split: Tensor) -> None:
    """Write one shard, then append its rows to index.jsonl (so a listed shard is always complete)."""
    (out / "shards").mkdir(parents=True, exist_ok=True)
    _atomic_save(
        {"weights": weights.float(), "image_index": image_index.long(), "seed": seeds.long(), "psnr": psnr.float()},
        shard_path(out, shard),
    )
    rows = [
        json.dumps({
            "shard": shard, "row": r, "image_index": int(image_index[r]), "label": int(labels[r]),
            "psnr": round(float(psnr[r]), 4), "seed": int(seeds[r]), "split": SPLIT_NAMES[int(split[r])],
        })
        for r in range(weights.shape[0])
    ]
    with open(out / "index.jsonl", "a") as f:
        f.write("\n".join(rows) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_index(out: Path) -> list[dict[str, Any]]:
    """Rows of index.jsonl for complete shards, in (shard, row) order, one per INR (no duplicates)."""
    done = done_shards(out)
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    for line in (out / "index.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r["shard"] in done:
                rows[(r["shard"], r["row"])] = r  # a refitted shard's later rows win
    return [rows[k] for k in sorted(rows)]


def psnr_report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """PSNR distribution overall and per split: count, mean, std, min, quantiles, share above 30/40 dB."""
    def stats(values: list[float]) -> dict[str, float]:
        if not values:
            return {"count": 0}
        t = torch.tensor(values, dtype=torch.float64)
        q = torch.quantile(t, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)).tolist()
        return {
            "count": len(values), "mean": float(t.mean()), "std": float(t.std()) if len(values) > 1 else 0.0,
            "min": float(t.min()), "p05": q[0], "p25": q[1], "median": q[2], "p75": q[3], "p95": q[4],
            "max": float(t.max()), "frac_ge_30db": float((t >= 30).double().mean()),
            "frac_ge_40db": float((t >= 40).double().mean()),
        }
    out = {"all": stats([r["psnr"] for r in rows])}
    for s in SPLIT_NAMES:
        out[s] = stats([r["psnr"] for r in rows if r["split"] == s])
    return out
