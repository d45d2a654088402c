"""CLI: python -m experiments.accuracy --zoo [NAME=]DIR [--zoo ...] --split 50|5|ood|all
--method gmn|deepsets|dmc|statnn|hparams_gb|all --seeds 3 --out DIR [--results-json PATH] [--probes P]."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from metaopt.weightspace.accuracy import METHODS, SCHEDULES, SELECT_ON, SPLITS, PredictorConfig

from ..results import command_line
from .run import NEEDS_PROBES, PROBE_METHODS, REFERENCE_METHODS, open_zoo, run_grid, write_results


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
    ap.add_argument("--method", default="all", help="gmn | gmn_probes | deepsets | dmc | statnn | hparams_gb | all (or "
                    "comma-separated); hparams_gb = gradient boosting on the stored hyperparameters (reference, no "
                    "weights); probe_acc = a line from the models' accuracy on the probe digits (--probes P); gmn_probes = the "
                    "GMN with probe features (--probes P); 'all' includes the probe methods when P > 0")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="out/accuracy")
    ap.add_argument("--workers", type=int, default=1, help="runs in parallel processes (1 torch thread each)")
    ap.add_argument("--results-json", default=None, help="also merge the mean/std table into this JSON "
                    "(e.g. docs/results/accuracy.json): {zoo: {split: {method: {r2_mean, ...}}}}, each with its command")
    ap.add_argument("--probes", type=int, default=0, help="gmn_probes: every neuron's response to this many fixed "
                    "training digits as node features (generated zoos only; cached in <zoo>/probe_features)")
    ap.add_argument("--probe-seed", type=int, default=0, help="which fixed probe digits (with --probes)")
    ap.add_argument("--probe-softmax", action="store_true", help="gmn_probes: the output nodes also get each probe's "
                    "class probabilities (softmax over the outputs of its logits)")
    ap.add_argument("--probe-acc-input", action="store_true", help="gmn_probes: each model's accuracy on the probe "
                    "digits (the probe_acc reference's input) as a graph-level input of the GMN")
    ap.add_argument("--results-name", action="append", default=[], metavar="METHOD=NAME",
                    help="store METHOD's rows under NAME in --results-json (e.g. gmn_probes=gmn_probes64: a second "
                         "configuration beside the first); repeatable")
    ap.add_argument("--no-resume", action="store_true", help="rerun every run instead of loading finished ones "
                    "from <out>/runs (runs are stored there as they finish, keyed by all their settings)")
    for name, default in vars(PredictorConfig()).items():
        if isinstance(default, bool):  # a switch (type=bool would read "False" as True)
            ap.add_argument(f"--{name.replace('_', '-')}", action="store_true")
            continue
        kw = {"choices": SCHEDULES} if name == "schedule" else {"choices": SELECT_ON} if name == "select_on" else {}
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default, **kw)
    args = ap.parse_args(argv)
    splits = _choices(args.split, SPLITS, "split")
    with_probes = args.probes > 0 or args.method != "all"  # 'all' includes the probe methods when P > 0
    allowed = (METHODS[:1] + (PROBE_METHODS if with_probes else ()) + METHODS[1:]
               + tuple(m for m in REFERENCE_METHODS if with_probes or m not in NEEDS_PROBES))
    methods = _choices(args.method, allowed, "method")
    if any(m in NEEDS_PROBES for m in methods) and args.probes <= 0:
        raise SystemExit(f"--method {','.join(m for m in methods if m in NEEDS_PROBES)} needs --probes P (P > 0)")
    cfg = PredictorConfig(**{k: getattr(args, k) for k in vars(PredictorConfig())})
    if (cfg.dropout or cfg.output_nodes or cfg.residual_base) and any(
            m not in ("gmn",) + PROBE_METHODS + REFERENCE_METHODS for m in methods):
        raise SystemExit("--dropout / --output-nodes / --residual-base act on the GMN only; run the baselines without them")
    if cfg.residual_base and not args.probe_acc_input:
        raise SystemExit("--residual-base needs graph-level inputs for its line: add --probe-acc-input")
    names = dict(item.split("=", 1) for item in args.results_name if "=" in item)
    if len(names) != len(args.results_name) or any(m not in methods for m in names):
        raise SystemExit(f"--results-name: need METHOD=NAME with METHOD among {methods}, got {args.results_name}")
    zoos: dict[str, str] = {}
    for spec in args.zoo:
        name, _, path = spec.rpartition("=")
        name = name or open_zoo(path).name
        zoos[name] = path
    torch.set_num_threads(1)
    out = Path(args.out)
    runs = run_grid(zoos, splits, methods, args.seeds, cfg, args.workers, probes=args.probes,
                    probe_seed=args.probe_seed, resume_dir=None if args.no_resume else out / "runs",
                    probe_softmax=args.probe_softmax, probe_acc_input=args.probe_acc_input)
    command = command_line("python -m experiments.accuracy", argv)
    table = write_results(out, runs, zoos, splits, methods, cfg, command,
                          results_json=Path(args.results_json) if args.results_json else None,
                          results_names=names)
    print(table)
    print(f"wrote {args.out}/accuracy.json, accuracy.md, scatter_*.png" + (f", {args.results_json}" if args.results_json else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
