"""Generate a model zoo on disk: parallel, resumable, with checksummed safetensors shards.

Workers train models and write each one to pending/<id>.safetensors (weights + record in the file's
metadata). The main process stores each new architecture's graph structure and, once every model of a
shard group is done, writes the shard atomically, appends the records to models.jsonl and removes the
pending files. A restart verifies shards against their recorded sha256 (a corrupt shard's models are
retrained), keeps valid pending files, and trains only what is missing.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from tqdm.auto import tqdm

from metaopt import to_graph
from metaopt.weightspace.zoo_io import (
    FORMAT_VERSION,
    append_records,
    architecture_id,
    atomic_save_tensors,
    atomic_write_bytes,
    read_records,
    save_structure,
    shard_name,
    tensor_sha256,
    verify_shard,
    write_records,
)

from ..models import build_model, spec_to_dict, spec_to_json
from .presets import PRESETS, sample_config
from .train import example_input, train_config

DEFAULT_N = {"varying-cnns": 2000, "diverse-archs": 3000, "diverse-archs-spread": 3000}  # ~15 min each on 2 idle CPU cores (measured CPU s/model)
DEFAULT_SHARD_SIZE = 64


@dataclass
class GenerationReport:
    """What one `generate` call did (used by tests and printed by the CLI)."""

    trained: list[int] = field(default_factory=list)
    resumed_pending: int = 0
    already_done: int = 0
    corrupt_shards: list[str] = field(default_factory=list)
    total: int = 0


def _train_to_pending(preset: str, zoo_seed: int, model_id: int, tiny: bool, pending_dir: str) -> dict[str, Any]:
    """Worker body: train one model, write pending/<id>.safetensors, return its record."""
    cfg = sample_config(preset, zoo_seed, model_id, tiny)
    model, metrics = train_config(cfg)
    weights = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).float()
    tensors = {"weights": weights}
    buffers = [b for _, b in model.named_buffers() if b.is_floating_point()]
    if buffers:
        tensors["buffers"] = torch.cat([b.reshape(-1) for b in buffers]).float()
    spec_json = spec_to_json(cfg.spec)
    record = {
        "id": model_id, "arch_id": architecture_id(spec_json), "family": cfg.family,
        "spec": spec_to_dict(cfg.spec), "layout": cfg.layout, "hparams": cfg.hparams, "seed": cfg.seed,
        **metrics, "num_params": weights.numel(), "sha256": tensor_sha256(weights),
        "nbytes": weights.numel() * weights.element_size(),
    }
    atomic_save_tensors(Path(pending_dir) / f"{model_id}.safetensors", tensors, {"record": json.dumps(record)})
    return record


def _init_worker() -> None:
    torch.set_num_threads(1)  # one core per worker process; tiny models gain nothing from more


def _read_pending(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """(record, tensors) of a pending file, or None if it is unreadable or does not match its record."""
    try:
        with safe_open(str(path), "pt") as f:
            record = json.loads(f.metadata()["record"])
        tensors = load_file(str(path))
    except (SafetensorError, OSError, KeyError, ValueError, TypeError):
        return None
    if "weights" not in tensors or tensor_sha256(tensors["weights"]) != record.get("sha256"):
        return None
    return record, tensors


class ZooGenerator:
    """Owns one zoo folder: recovery, architecture structures, consolidation into shards."""

    def __init__(self, out: str | Path, preset: str, n: int, seed: int = 0, tiny: bool = False,
                 shard_size: int = DEFAULT_SHARD_SIZE) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown zoo preset {preset!r}; choose one of {PRESETS}")
        if n < 1:
            raise ValueError(f"--n must be >= 1, got {n}")
        self.root = Path(out)
        self.preset, self.n, self.seed, self.tiny, self.shard_size = preset, n, seed, tiny, shard_size
        self.pending_dir = self.root / "pending"
        self.shard_dir = self.root / "shards"
        self.arch_dir = self.root / "archs"
        self.records_path = self.root / "models.jsonl"
        for d in (self.pending_dir, self.shard_dir, self.arch_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._write_info()
        self.records: dict[int, dict[str, Any]] = {}
        self.pending: dict[int, Path] = {}

    def _write_info(self) -> None:
        info_path = self.root / "zoo.json"
        info = {"format_version": FORMAT_VERSION, "preset": self.preset, "seed": self.seed, "tiny": self.tiny,
                "shard_size": self.shard_size, "data": "sklearn digits 8x8, 1347 train / 450 test"}
        if info_path.is_file():
            old = json.loads(info_path.read_text())
            clash = {k: (old.get(k), v) for k, v in info.items() if old.get(k) != v}
            if clash:
                raise ValueError(
                    f"{info_path}: this folder holds a zoo generated with different settings {clash} "
                    f"(old, new); use another --out or the same settings to resume"
                )
        atomic_write_bytes(info_path, json.dumps({**info, "n": self.n}, indent=1, sort_keys=True).encode())

    # ---- recovery ------------------------------------------------------------------------------
    def recover(self, report: GenerationReport) -> None:
        """Load records, drop models of corrupt shards, keep valid pending files, remove stale ones."""
        self.records = read_records(self.records_path)
        by_shard: dict[str, list[dict[str, Any]]] = {}
        for r in self.records.values():
            by_shard.setdefault(r["shard"], []).append(r)
        dropped = False
        for shard, rs in sorted(by_shard.items()):
            why = verify_shard(self.shard_dir / shard, rs)
            if why is not None:
                tqdm.write(f"zoo: {self.shard_dir / shard} is corrupt ({why}); its {len(rs)} models will be retrained")
                report.corrupt_shards.append(shard)
                (self.shard_dir / shard).unlink(missing_ok=True)
                for r in rs:
                    del self.records[r["id"]]
                dropped = True
        if dropped or len(self.records) != sum(1 for line in self._lines() if line.strip()):
            write_records(self.records_path, self.records.values())  # also drops duplicates / torn lines
        for tmp in list(self.root.rglob("*.tmp*")):
            tmp.unlink()  # leftovers of writes interrupted before their rename
        for path in sorted(self.pending_dir.glob("*.safetensors")):
            mid = int(path.stem)
            if mid in self.records or _read_pending(path) is None:
                path.unlink()  # already consolidated, or torn / corrupt: retrain
            else:
                self.pending[mid] = path
        report.already_done = len([i for i in self.records if i < self.n])
        report.resumed_pending = len([i for i in self.pending if i < self.n])

    def _lines(self) -> list[str]:
        return self.records_path.read_text().splitlines() if self.records_path.is_file() else []

    # ---- architectures and shards --------------------------------------------------------------
    def ensure_architecture(self, record: dict[str, Any]) -> None:
        """Store the graph structure of record's architecture once (built here via metaopt.to_graph)."""
        arch_id = record["arch_id"]
        if (self.arch_dir / f"{arch_id}.json").is_file() and (self.arch_dir / f"{arch_id}.safetensors").is_file():
            return
        from ..models import spec_from_dict

        spec = spec_from_dict(record["spec"])
        model = build_model(spec, seed=0)
        x = example_input(record["layout"])
        graph = to_graph(model, x)
        bufs = [(n, list(b.shape)) for n, b in model.named_buffers() if b.is_floating_point()]
        save_structure(graph, self.arch_dir, arch_id, {
            "spec": record["spec"], "family": record["family"], "layout": record["layout"],
            "input_shape": list(x.shape[1:]), "num_params": graph.num_params,
            "buffer_names": [b[0] for b in bufs], "buffer_shapes": [b[1] for b in bufs],
        })

    def _group(self, model_id: int) -> list[int]:
        k = model_id // self.shard_size
        return list(range(k * self.shard_size, min((k + 1) * self.shard_size, self.n)))

    def try_consolidate(self, model_id: int) -> bool:
        """If every model of model_id's shard group is done, write the shard and its records."""
        group = self._group(model_id)
        new = [i for i in group if i in self.pending]
        if not new or any(i not in self.records and i not in self.pending for i in group):
            return False
        name = shard_name(model_id, self.shard_size)
        path = self.shard_dir / name
        old = [i for i in group if i in self.records]
        tensors = load_file(str(path)) if old else {}
        tensors = {k: v for k, v in tensors.items() if k.split(".")[0] in {str(i) for i in old}}
        recs = []
        for i in new:
            loaded = _read_pending(self.pending[i])
            if loaded is None:  # corrupted after recovery: retrain on the next run
                self.pending.pop(i).unlink()
                return False
            rec, t = loaded
            tensors[str(i)] = t["weights"]
            if "buffers" in t:
                tensors[f"{i}.buffers"] = t["buffers"]
            recs.append({**rec, "shard": name})
        atomic_save_tensors(path, tensors, {"format_version": str(FORMAT_VERSION)})
        append_records(self.records_path, recs)
        for rec in recs:
            self.records[rec["id"]] = rec
            self.pending.pop(rec["id"]).unlink()
        return True


def generate(out: str | Path, preset: str, n: int | None = None, workers: int = 2, seed: int = 0,
             tiny: bool = False, shard_size: int = DEFAULT_SHARD_SIZE, progress: bool = True,
             stop_after: int | None = None) -> GenerationReport:
    """Generate (or resume) zoo `preset` with `n` models in folder `out`; see the module docstring.

    stop_after: stop abruptly after training that many models, without consolidating (simulates an
    interruption, for tests).
    """
    n = DEFAULT_N.get(preset, 0) if n is None else n
    gen = ZooGenerator(out, preset, n, seed, tiny, shard_size)
    report = GenerationReport(total=n)
    gen.recover(report)
    for mid in sorted(gen.pending):
        gen.ensure_architecture(_read_pending(gen.pending[mid])[0])
        gen.try_consolidate(mid)
    todo = [i for i in range(n) if i not in gen.records and i not in gen.pending]
    bar = tqdm(total=n, initial=n - len(todo), desc=f"zoo {preset}", disable=not progress, smoothing=0.05)
    stopped = False

    def done(record: dict[str, Any]) -> None:
        nonlocal stopped
        report.trained.append(record["id"])
        gen.pending[record["id"]] = gen.pending_dir / f"{record['id']}.safetensors"
        bar.update(1)
        bar.set_postfix(acc=f"{record['test_acc']:.2f}")
        if stop_after is not None and len(report.trained) >= stop_after:
            stopped = True
            return
        gen.ensure_architecture(record)
        gen.try_consolidate(record["id"])

    prev_threads = torch.get_num_threads()
    try:
        if workers <= 1:
            torch.set_num_threads(1)
            for i in todo:
                done(_train_to_pending(preset, seed, i, tiny, str(gen.pending_dir)))
                if stopped:
                    break
        else:
            ctx = mp.get_context("spawn")  # fork after torch's thread pools start can deadlock
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
                futures: set[Future] = set()
                queue = list(todo)
                while (queue or futures) and not stopped:
                    while queue and len(futures) < 2 * workers:  # bounded queue: an interrupt loses little
                        futures.add(pool.submit(_train_to_pending, preset, seed, queue.pop(0), tiny,
                                                str(gen.pending_dir)))
                    finished, futures = wait(futures, return_when=FIRST_COMPLETED)
                    for f in finished:
                        done(f.result())
                for f in futures:
                    f.cancel()
    finally:
        torch.set_num_threads(prev_threads)
        bar.close()
    if stopped:
        return report
    for mid in sorted(gen.pending):  # groups completed by models that finished last
        gen.try_consolidate(mid)
    left = [i for i in gen.pending if i < n]
    if left:
        raise RuntimeError(f"zoo: models {left[:5]}... left in {gen.pending_dir} after generation")
    if not gen.pending:  # models beyond n (from an earlier, larger run) stay pending for a later one
        shutil.rmtree(gen.pending_dir, ignore_errors=True)
    return report
