"""INR classification experiment: every method x seed on an INR set, a Markdown table and JSON.

Weight-space methods (GMN, DeepSets, StatNN, PerParameterMLP) read each INR's weights; the
references are an MLP and a CNN on the raw images with the same split (and, with ``--probes``, an
MLP on the INR's values at the probe points). The models and the training function live in
`metaopt.weightspace.inr_classify`.

CLI: ``python -m experiments.inr_classify --inrs DIR --method all --seeds 3 --out DIR``
(console script ``metaopt-inr-classify``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from experiments.results import command_line, update_results_json
from experiments.seeds import mean_std, over_seeds
from metaopt.weightspace.inr_classify import IMAGE_METHODS, ClassifyConfig, train_classifier
from metaopt.weightspace.inr_data import INRSet, load_inr_set
from metaopt.weightspace.inr_models import PROBE_REFERENCE, WEIGHT_METHODS

METHOD_NAMES = {
    "gmn": "GMN (group readout)", "deepsets": "DeepSets", "statnn": "StatNN", "mlp": "PerParameterMLP",
    PROBE_REFERENCE: "MLP on the INR's values at the probe points (reference)",
    "image_mlp": "MLP on images (reference)", "image_cnn": "CNN on images (reference)",
}


# Method names of docs/results/inr.json (the pixel references say what they read).
RESULT_NAMES = {"gmn": "gmn", "deepsets": "deepsets", "statnn": "statnn", "mlp": "per_parameter_mlp",
                "image_mlp": "mlp_pixels", "image_cnn": "cnn_pixels", PROBE_REFERENCE: "probe_pixels"}


def _run_file(runs_dir: Path, method: str, cfg: ClassifyConfig) -> Path:
    """Where one finished run is stored: method, seed and a hash of the whole config."""
    digest = hashlib.sha1(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:10]
    return runs_dir / f"{method}_s{cfg.seed}_{digest}.json"


def run_classification(inrs: INRSet, methods: list[str], seeds: int, cfg: ClassifyConfig, progress: bool = True,
                       runs_dir: Path | None = None) -> dict[str, Any]:
    """Every method x seed; returns per-run results and per-method mean/std of test accuracy.

    ``runs_dir``: every finished run is stored there (JSON, keyed by method, seed and config) and
    runs already there are loaded instead of retrained, so an interrupted command resumes.
    """

    def one(method: str, seed: int) -> dict[str, Any]:
        c = replace(cfg, seed=seed)
        path = _run_file(runs_dir, method, c) if runs_dir is not None else None
        if path is not None and path.is_file():
            return json.loads(path.read_text())
        res = train_classifier(method, inrs, c, progress=progress)[1]
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(res))
            tmp.replace(path)
        return res

    runs = over_seeds(
        methods, seeds, cfg.seed, one,
        (lambda r: f"{r['method']:>10} seed {r['seed']}: test acc {r['test_acc']:.4f} (train {r['train_acc']:.4f}, "
                   f"{r['seconds']} s)") if progress else None,
    )
    summary = {}
    for method in methods:
        mean, std, n = mean_std(runs, method, "test_acc")
        summary[method] = {
            "name": METHOD_NAMES[method], "test_acc_mean": mean, "test_acc_std": std, "seeds": n,
            "params": next(r["params"] for r in runs if r["method"] == method),
        }
    return {"config": asdict(cfg), "inrs": str(inrs.root), "num_train_inrs": int((~inrs.is_test).sum()),
            "num_test_images": int(inrs.image_is_test.sum()), "summary": summary, "runs": runs}


def results_section(inrs: INRSet) -> str | None:
    """Where an INR set's results go in docs/results/inr.json: top level for shared-init sets,
    "random_init" for sets whose INRs start from their own random init."""
    return None if inrs.meta.get("config", {}).get("shared_init", False) else "random_init"


def results_entries(result: dict[str, Any], section: str | None) -> dict[str, Any]:
    """{method: {acc_mean, acc_std, n_seeds}} (under ``section`` if given), method names as in RESULT_NAMES
    (GMN / PerParameterMLP with probe features: ``gmn_probes`` / ``per_parameter_mlp_probes``); acc_std is
    the sample std over seeds (0 for one seed)."""
    probed = result["config"].get("probes", 0) > 0
    rows = {RESULT_NAMES.get(m, m) + ("_probes" if probed and m in ("gmn", "mlp") else ""):
            {"acc_mean": s["test_acc_mean"], "acc_std": s["test_acc_std"], "n_seeds": s["seeds"]}
            for m, s in result["summary"].items()}
    return {section: rows} if section else rows


def markdown_table(result: dict[str, Any]) -> str:
    """Accuracy table (mean +- std over seeds) as Markdown."""
    lines = ["| method | params | test accuracy (mean +- std) | seeds |", "|---|---:|---:|---:|"]
    for s in result["summary"].values():
        lines.append(f"| {s['name']} | {s['params']:,} | {100 * s['test_acc_mean']:.2f} +- {100 * s['test_acc_std']:.2f} % | {s['seeds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.inr_classify", description=__doc__.split("\n")[0])
    p.add_argument("--inrs", required=True, help="INR set folder (python -m inner_tasks.inr)")
    p.add_argument("--method", default="all", help=f"one of {WEIGHT_METHODS + IMAGE_METHODS + (PROBE_REFERENCE,)}, "
                   "comma-separated, or 'all'")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=None, help="results folder (default: <inrs>/classify)")
    p.add_argument("--epochs", type=int, default=ClassifyConfig.epochs)
    p.add_argument("--hidden", type=int, default=ClassifyConfig.hidden)
    p.add_argument("--layers", type=int, default=ClassifyConfig.layers)
    p.add_argument("--lr", type=float, default=ClassifyConfig.lr)
    p.add_argument("--batch-size", type=int, default=ClassifyConfig.batch_size)
    p.add_argument("--augment", action="store_true", help="train with random permutation / sign-flip augmentation "
                   "(a no-op for the invariant models unless --no-canonical)")
    p.add_argument("--no-canonical", action="store_true", help="do not sign-canonicalise hidden neurons (bias >= 0)")
    p.add_argument("--probes", type=int, default=0, help="GMN / PerParameterMLP: neuron activations at this many "
                   "fixed probe points as node features (0 = weights only)")
    p.add_argument("--dropout", type=float, default=ClassifyConfig.dropout)
    p.add_argument("--weight-decay", type=float, default=ClassifyConfig.weight_decay)
    p.add_argument("--input-rotate", type=float, default=0.0, help="weight-space methods: augment with image "
                   "rotations in +-DEG degrees, applied exactly to the INR's first layer")
    p.add_argument("--input-scale", type=float, default=0.0, help="... and isotropic scalings 1 +- S")
    p.add_argument("--input-shift", type=float, default=0.0, help="... and shifts +-T (coordinates span [-1, 1])")
    p.add_argument("--results-json", default=None, help="also merge {method: {acc_mean, acc_std}} into this JSON "
                   "(e.g. docs/results/inr.json; random-init sets under 'random_init'), with the command")
    p.add_argument("--results-section", default=None, help="override the JSON section (default: top level for "
                   "shared-init sets, 'random_init' otherwise; 'top' = top level)")
    p.add_argument("--no-resume", action="store_true", help="retrain runs already stored in <out>/runs")
    p.add_argument("--no-references", action="store_true", help="with 'all': skip the image MLP/CNN references")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.method == "all":
        methods = list(WEIGHT_METHODS) + ([] if a.no_references else list(IMAGE_METHODS))
        if a.probes and not a.no_references:
            methods.append(PROBE_REFERENCE)
    else:
        methods = [m.strip() for m in a.method.split(",")]
        known = WEIGHT_METHODS + IMAGE_METHODS + (PROBE_REFERENCE,)
        bad = [m for m in methods if m not in known]
        if bad:
            p.error(f"unknown method(s) {bad}; choose from {known} or 'all'")
        if PROBE_REFERENCE in methods and a.probes <= 0:
            p.error(f"{PROBE_REFERENCE} needs --probes > 0")
    cfg = ClassifyConfig(hidden=a.hidden, layers=a.layers, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, augment=a.augment,
                         canonical=not a.no_canonical, probes=a.probes, dropout=a.dropout, weight_decay=a.weight_decay,
                         input_rotate=a.input_rotate, input_scale=a.input_scale, input_shift=a.input_shift)
    inrs = load_inr_set(a.inrs)
    out = Path(a.out or Path(a.inrs) / "classify")
    result = run_classification(inrs, methods, a.seeds, cfg, runs_dir=None if a.no_resume else out / "runs")
    command = command_line("python -m experiments.inr_classify", argv)
    result["command"] = command
    out.mkdir(parents=True, exist_ok=True)
    if a.results_json:
        section = results_section(inrs) if a.results_section is None else (None if a.results_section == "top" else a.results_section)
        update_results_json(a.results_json, results_entries(result, section), depth=2 if section else 1, command=command)
        print(f"updated {a.results_json}" + (f" [{section}]" if section else ""))
    (out / "classify.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown_table(result)
    (out / "classify.md").write_text(table + "\n")
    print(table)
    print(f"wrote {out / 'classify.json'} and {out / 'classify.md'}")


if __name__ == "__main__":
    main()
