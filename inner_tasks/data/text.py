"""A byte-level text corpus built from the Python standard library's own source files.

Every Python install carries these files, so the corpus needs no download. The file list is sorted
and site-packages is excluded (it differs between installs), so a given Python version always
yields the same bytes.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

BYTE_VOCAB = 256
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


@dataclass(frozen=True)
class TextCorpus:
    """uint8 token streams (bytes) for training and validation, and the files they came from."""

    train: Tensor
    val: Tensor
    files: tuple[str, ...]
    vocab_size: int = BYTE_VOCAB


def stdlib_source_files(root: str | Path | None = None) -> list[Path]:
    """All *.py files under the stdlib directory (or `root`), sorted by relative path."""
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    if not base.is_dir():
        raise FileNotFoundError(f"standard library directory {base} not found; pass root= to a folder of .py files")
    files = [p for p in base.rglob("*.py") if not (_SKIP_DIRS & set(p.relative_to(base).parts))]
    return sorted(files, key=lambda p: p.relative_to(base).as_posix())


@lru_cache(maxsize=4)
def load_stdlib_corpus(max_bytes: int = 1_000_000, val_fraction: float = 0.1, root: str | None = None) -> TextCorpus:
    """Concatenate sorted stdlib sources up to `max_bytes`; the last `val_fraction` is validation.

    The split is contiguous (the validation bytes come from different files than most training
    bytes), which keeps validation honest for a language model.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    chunks, total, used = [], 0, []
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    for path in stdlib_source_files(base):
        data = path.read_bytes()
        if not data:
            continue
        take = data[: max_bytes - total]
        chunks.append(take + b"\n")
        used.append(path.relative_to(base).as_posix())
        total += len(take) + 1
        if total >= max_bytes:
            break
    blob = b"".join(chunks)[:max_bytes]
    if len(blob) < 1000:
        raise ValueError(f"corpus under {base} has only {len(blob)} bytes; need at least 1000")
    tokens = torch.frombuffer(bytearray(blob), dtype=torch.uint8).clone()
    n_val = max(1, int(len(tokens) * val_fraction))
    return TextCorpus(tokens[:-n_val], tokens[-n_val:], tuple(used))


def sample_windows(tokens: Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random contiguous windows: inputs [B, T] and next-byte targets [B, T] (int64)."""
    if len(tokens) <= seq_len + 1:
        raise ValueError(f"token stream of length {len(tokens)} is too short for seq_len={seq_len}")
    starts = torch.randint(0, len(tokens) - seq_len - 1, (batch_size,), generator=generator)
    idx = starts.unsqueeze(1) + torch.arange(seq_len + 1)
    windows = tokens[idx].long()
    return windows[:, :-1], windows[:, 1:]
