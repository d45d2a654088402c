"""Atomic, resumable checkpoints of a meta-training run.

Layout: ``<run>/checkpoints/step_000040/{main.pt, rank0.pt, rank1.pt, ...}`` plus a ``latest``
file naming the newest complete one. Every file is written to a temporary name and renamed
(atomic on POSIX), and ``latest`` moves only after every rank's file and ``main.pt`` exist, so a
run killed at any instant resumes from a complete checkpoint. ``main.pt`` holds what is shared
(rule, meta-optimizer, step, counters); ``rank<r>.pt`` what each process owns (its RNG states,
task sampler, inner task groups with parameters, optimizer and PES state).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to ``path`` via a temporary file and rename (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:06d}"


def save_rank(root: Path, step: int, rank: int, payload: dict[str, Any]) -> None:
    """Write this process's part of the checkpoint at ``step``."""
    d = step_dir(root, step)
    d.mkdir(parents=True, exist_ok=True)
    atomic_save(payload, d / f"rank{rank}.pt")


def commit(root: Path, step: int, main_payload: dict[str, Any], world_size: int, keep: int) -> None:
    """Main process: write ``main.pt``, point ``latest`` at ``step``, prune old checkpoints."""
    d = step_dir(root, step)
    missing = [r for r in range(world_size) if not (d / f"rank{r}.pt").is_file()]
    if missing:
        raise RuntimeError(f"checkpoint {d}: rank files {missing} are missing; cannot commit it.")
    atomic_save(main_payload, d / "main.pt")
    atomic_write_text(root / LATEST, d.name + "\n")
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and (p / "main.pt").is_file())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest(root: Path) -> Path | None:
    """The newest committed checkpoint directory, or None."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    d = root / pointer.read_text().strip()
    if not (d / "main.pt").is_file():
        raise RuntimeError(
            f"{pointer} names {d}, which has no main.pt; the checkpoint folder was edited by hand. "
            "Delete the run directory or fix the pointer."
        )
    return d


def load(d: Path, rank: int, world_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(main payload, this rank's payload) of checkpoint directory ``d``."""
    main = torch.load(d / "main.pt", weights_only=False)
    if main.get("world_size") != world_size:
        raise RuntimeError(
            f"checkpoint {d} was written by {main.get('world_size')} processes, this run has {world_size}; "
            "resume with the same number of processes."
        )
    return main, torch.load(d / f"rank{rank}.pt", weights_only=False)
