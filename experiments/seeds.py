"""Running every method over seeds and summarising a metric: the loop the weight-space drivers share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def over_seeds(methods: list[str], seeds: int, base_seed: int, run: Callable[[str, int], dict[str, Any]],
               describe: Callable[[dict[str, Any]], str] | None = None) -> list[dict[str, Any]]:
    """``run(method, seed)`` for every method and seeds ``base_seed .. base_seed + seeds - 1``;
    each result is printed with ``describe`` when given."""
    runs = []
    for method in methods:
        for s in range(seeds):
            res = run(method, base_seed + s)
            runs.append(res)
            if describe is not None:
                print(describe(res))
    return runs


def mean_std(runs: list[dict[str, Any]], method: str, key: str) -> tuple[float, float, int]:
    """Mean, sample std (0 for one run) and count of ``key`` over the runs of ``method``."""
    x = torch.tensor([r[key] for r in runs if r["method"] == method], dtype=torch.float64)
    return float(x.mean()), float(x.std()) if len(x) > 1 else 0.0, len(x)
