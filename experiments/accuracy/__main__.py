"""CLI: python -m experiments.accuracy --zoo [NAME=]DIR [--zoo ...] --split 50|5|ood|all
--method gmn|deepsets|dmc|statnn|all --seeds 3 --out DIR."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from metaopt.weightspace.accuracy import METHODS, SPLITS, PredictorConfig

from .run import open_zoo, run_grid, write_results


def _choices(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = list(allowed) if value == "all" else value.split(",")
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SystemExit(f"--{what}: unknown {bad}; choose from {list(allowed)} or 'all' (comma-separated allowed)")
    return items


def main(argv: list[str] | None = None) -> int:
    """Run the grid and write accuracy.json / accuracy.md / scatter plots; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m experiments.accuracy", description=__doc__)
    ap.add_argument("--zoo", action="append", required=True,
                    help="[NAME=]DIR; repeat for several zoos (columns of the table). DIR is a generated zoo "
                         "or a Small CNN Zoo folder (weights.npy, layout.csv, metrics.csv)")
    ap.add_argument("--split", default="all", help="50 | 5 | ood | all (or comma-separated)")
    ap.add_argument("--method", default="all", help="gmn | deepsets | dmc | statnn | all (or comma-separated)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="out/accuracy")
    ap.add_argument("--workers", type=int, default=1, help="runs in parallel processes (1 torch thread each)")
    for name, default in vars(PredictorConfig()).items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = ap.parse_args(argv)
    splits = _choices(args.split, SPLITS, "split")
    methods = _choices(args.method, METHODS, "method")
    cfg = PredictorConfig(**{k: getattr(args, k) for k in vars(PredictorConfig())})
    zoos: dict[str, str] = {}
    for spec in args.zoo:
        name, _, path = spec.rpartition("=")
        name = name or open_zoo(path).name
        zoos[name] = path
    torch.set_num_threads(1)
    runs = run_grid(zoos, splits, methods, args.seeds, cfg, args.workers)
    command = "python -m experiments.accuracy " + shlex.join(sys.argv[1:] if argv is None else argv)
    table = write_results(Path(args.out), runs, zoos, splits, methods, cfg, command)
    print(table)
    print(f"wrote {args.out}/accuracy.json, accuracy.md, scatter_*.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
