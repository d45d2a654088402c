"""INR editing experiment: "no edit" plus every editor x seed on an INR set, a Markdown table and JSON.

The editors (a GMN / PerParameterMLP edge head trained with a rendering loss) live in
`metaopt.weightspace.inr_edit`.

CLI: ``python -m experiments.inr_edit --inrs DIR --seeds 2 --out DIR`` (console script ``metaopt-inr-edit``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from experiments.seeds import mean_std, over_seeds
from metaopt.weightspace.inr_data import INRSet, load_inr_set
from metaopt.weightspace.inr_edit import EDIT_METHODS, TRANSFORMS, EditConfig, evaluate_editor, train_editor

METHOD_NAMES = {"gmn": "GMN edge head", "mlp": "PerParameterMLP edge head", "none": "no edit"}


def run_editing(inrs: INRSet, methods: list[str], seeds: int, cfg: EditConfig, progress: bool = True) -> dict[str, Any]:
    """'no edit' plus every method x seed; returns runs and per-method mean/std of the test MSE."""
    runs: list[dict[str, Any]] = [{"method": "none", "seed": 0, **evaluate_editor(None, inrs, cfg.transform)}]
    runs += over_seeds(
        methods, seeds, cfg.seed, lambda m, seed: train_editor(m, inrs, replace(cfg, seed=seed), progress=progress)[1],
        (lambda r: f"edit {r['method']:>4} seed {r['seed']}: test MSE {r['test_mse']:.5f} ({r['seconds']} s)")
        if progress else None,
    )
    summary = {}
    for method in ["none", *methods]:
        mse, mse_std, n = mean_std(runs, method, "test_mse")
        summary[method] = {"name": METHOD_NAMES[method], "test_mse_mean": mse, "test_mse_std": mse_std,
                           "test_psnr_mean": mean_std(runs, method, "test_psnr")[0], "seeds": n}
    return {"config": asdict(cfg), "inrs": str(inrs.root), "summary": summary, "runs": runs}


def markdown_table(result: dict[str, Any]) -> str:
    """MSE table (mean +- std over seeds) as Markdown."""
    t = result["config"]["transform"]
    lines = [f"| method ({t}) | test MSE (mean +- std) | test PSNR (dB) | seeds |", "|---|---:|---:|---:|"]
    for s in result["summary"].values():
        lines.append(f"| {s['name']} | {s['test_mse_mean']:.5f} +- {s['test_mse_std']:.5f} | {s['test_psnr_mean']:.2f} | {s['seeds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.inr_edit", description=__doc__.split("\n")[0])
    p.add_argument("--inrs", required=True)
    p.add_argument("--method", default="all", help=f"one of {EDIT_METHODS}, comma-separated, or 'all'")
    p.add_argument("--transform", default="dilate", choices=TRANSFORMS)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--out", default=None, help="results folder (default: <inrs>/edit)")
    p.add_argument("--epochs", type=int, default=EditConfig.epochs)
    p.add_argument("--hidden", type=int, default=EditConfig.hidden)
    p.add_argument("--layers", type=int, default=EditConfig.layers)
    p.add_argument("--lr", type=float, default=EditConfig.lr)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    methods = list(EDIT_METHODS) if a.method == "all" else [m.strip() for m in a.method.split(",")]
    bad = [m for m in methods if m not in EDIT_METHODS]
    if bad:
        p.error(f"unknown method(s) {bad}; choose from {EDIT_METHODS} or 'all'")
    cfg = EditConfig(transform=a.transform, hidden=a.hidden, layers=a.layers, epochs=a.epochs, lr=a.lr, augment=not a.no_augment)
    inrs = load_inr_set(a.inrs)
    result = run_editing(inrs, methods, a.seeds, cfg)
    out = Path(a.out or Path(a.inrs) / "edit")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"edit_{a.transform}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown_table(result)
    (out / f"edit_{a.transform}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
