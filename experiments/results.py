"""Machine-readable results beside the Markdown: small JSON files that several commands update in place.

`update_results_json(path, entries)` merges ``entries`` (nested dicts whose leaves are the result
records of one method) into the JSON file at ``path``: records this command produced replace the old
ones, every other record is kept, so the table can be filled by several commands (e.g. one per zoo or
per method) and a rerun of one of them updates only its rows. Every record carries the command that
produced it (``"command"``) and the date (``"date"``, UTC).
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any


def command_line(prog: str, argv: list[str] | None) -> str:
    """The command as typed: ``prog`` followed by the arguments (``sys.argv[1:]`` when ``argv`` is None)."""
    return prog + " " + shlex.join(sys.argv[1:] if argv is None else argv)


def _merge(old: dict[str, Any], new: dict[str, Any], depth: int) -> dict[str, Any]:
    out = dict(old)
    for k, v in new.items():
        out[k] = _merge(out.get(k, {}) if isinstance(out.get(k), dict) else {}, v, depth - 1) if depth > 1 else v
    return out


def update_results_json(path: str | Path, entries: dict[str, Any], depth: int, command: str) -> dict[str, Any]:
    """Merge ``entries`` into the JSON at ``path`` (created if missing) and return the whole content.

    ``depth`` is the nesting level of the result records (accuracy: zoo / split / method = 3; INR:
    method = 1, or section / method = 2); each record gets ``command`` and ``date`` added. The file is
    written atomically (temporary file, then rename).
    """
    path = Path(path)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")

    def stamp(d: dict[str, Any], level: int) -> dict[str, Any]:
        if level == 0:
            return {**d, "command": command, "date": date}
        return {k: stamp(v, level - 1) for k, v in d.items()}

    old = json.loads(path.read_text()) if path.is_file() else {}
    merged = _merge(old, stamp(entries, depth), depth)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return merged


def accuracy_markdown(data: dict[str, Any]) -> str:
    """The accuracy-prediction table of ``docs/results/accuracy.json``: rows split x method, columns R² and τ per zoo."""
    from experiments.accuracy.report import SPLIT_LABELS  # the split names the accuracy CLI writes

    zoos = list(data)
    methods = sorted({m for z in data.values() for s in z.values() for m in s})
    lines = ["| split | method | " + " | ".join(f"{z} R² | {z} τ" for z in zoos) + " |",
             "|---|---|" + "---:|---:|" * len(zoos)]
    for split in SPLIT_LABELS.values():
        for m in methods:
            recs = [data[z].get(split, {}).get(m) for z in zoos]
            if not any(recs):
                continue
            cells = [f"{r['r2_mean']:.3f} ± {r['r2_std']:.3f} | {r['tau_mean']:.3f} ± {r['tau_std']:.3f}" if r else "- | -"
                     for r in recs]
            lines.append(f"| {split} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


INR_LABELS = {
    "gmn": "GMN, weights only",
    "gmn_probes": "GMN + probe features",
    "per_parameter_mlp": "PerParameterMLP, weights only",
    "per_parameter_mlp_probes": "PerParameterMLP + probe features",
    "statnn": "StatNN",
    "deepsets": "DeepSets",
    "probe_pixels": "MLP on the INR's values at the probe points (reference)",
    "mlp_pixels": "MLP on the images (reference)",
    "cnn_pixels": "CNN on the images (reference)",
}


def inr_markdown(data: dict[str, Any]) -> str:
    """The INR-classification table of ``docs/results/inr.json``: rows method, columns test accuracy
    on shared-init and random-init INRs (mean ± sample std over seeds, seeds)."""
    sections = {"shared init": {k: v for k, v in data.items() if k != "random_init"},
                "random init": data.get("random_init", {})}
    methods = [m for m in INR_LABELS if any(m in sec for sec in sections.values())]
    methods += sorted({m for sec in sections.values() for m in sec} - set(methods))
    lines = ["| method | " + " | ".join(f"{name} test accuracy | seeds" for name in sections) + " |",
             "|---|" + "---:|---:|" * len(sections)]
    for m in methods:
        cells = []
        for sec in sections.values():
            r = sec.get(m)
            cells.append(f"{100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f} % | {r.get('n_seeds', '')}" if r else "- | -")
        lines.append(f"| {INR_LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def classify_runs_markdown(paths: list[str | Path]) -> str:
    """One row per (run folder, method) of ``experiments.inr_classify`` outputs (``<out>/classify.json``):
    the settings that differ from `ClassifyConfig`'s defaults, test and train accuracy. For ablations,
    where each folder is one variant."""
    from metaopt.weightspace.inr_classify import ClassifyConfig

    defaults = vars(ClassifyConfig())
    lines = ["| run | settings (besides the defaults) | method | seeds | test accuracy | train accuracy |",
             "|---|---|---|---:|---:|---:|"]
    for path in paths:
        data = json.loads(Path(path).read_text())
        cfg = data["config"]
        changed = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in cfg.items()
                            if k != "seed" and k in defaults and defaults[k] != v) or "-"
        for method, summ in data["summary"].items():
            train = [r["train_acc"] for r in data["runs"] if r["method"] == method and "train_acc" in r]
            train_cell = f"{100 * sum(train) / len(train):.1f} %" if train else "-"
            lines.append(f"| {Path(path).parent.name} | {changed} | {method} | {summ['seeds']} | "
                         f"{100 * summ['test_acc_mean']:.2f} % | {train_cell} |")
    return "\n".join(lines) + "\n"


def markdown_for(path: str | Path) -> str:
    """The table of a results JSON, chosen by its file name (``accuracy*.json`` or ``inr*.json``)."""
    path = Path(path)
    data = json.loads(path.read_text())
    if path.name.startswith("accuracy"):
        return accuracy_markdown(data)
    if path.name.startswith("inr"):
        return inr_markdown(data)
    raise SystemExit(f"{path}: expected accuracy*.json or inr*.json")


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.results docs/results/inr.json [--doc docs/inr_cka.md]``: print the table of
    a results JSON, or fill it into the doc's ``<!-- results:<name> -->`` block (name: the JSON's stem)."""
    import argparse

    from benchmarks.common import replace_block

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("results_json", nargs="+", help="accuracy*.json / inr*.json, or inr_classify outputs "
                   "(<out>/classify.json, one table of all of them: block results:<--name>)")
    p.add_argument("--doc", action="append", default=[], help="Markdown file(s) whose results block is filled")
    p.add_argument("--name", default="inr_ablation", help="block name of a table of classify.json files")
    a = p.parse_args(argv)
    runs = [path for path in a.results_json if Path(path).name == "classify.json"]
    tables = {f"results:{Path(path).stem}": markdown_for(path) for path in a.results_json if path not in runs}
    if runs:
        tables[f"results:{a.name}"] = classify_runs_markdown(runs)
    if not a.doc:
        print("\n".join(tables.values()), end="")
    for doc in a.doc:
        text = Path(doc).read_text()
        found = [marker for marker in tables if f"<!-- {marker}:start -->" in text]
        if not found:
            raise SystemExit(f"{doc} has none of the blocks {[f'<!-- {m}:start -->' for m in tables]}")
        for marker in found:
            replace_block(doc, marker, tables[marker])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
