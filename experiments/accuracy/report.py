"""Aggregate accuracy-prediction runs: mean ± std over seeds, the paper-style Markdown table, scatter plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

METHOD_LABELS = {"deepsets": "DeepSets", "dmc": "DMC", "statnn": "StatNN", "gmn": "GMN", "gmn_probes": "GMN + probe features",
                 "hparams_gb": "hparams+arch GB (reference)", "probe_acc": "probe-digit accuracy line (reference)"}
SPLIT_LABELS = {"50": "50%", "5": "5%", "ood": "OOD"}
ZOO_LABELS = {"varying-cnns": "Varying CNNs", "diverse-archs": "Diverse Architectures",
              "diverse-archs-spread": "Diverse Architectures (per-family budgets)"}


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{zoo: {split: {method: {r2_mean, r2_std, tau_mean, tau_std, n}}}} over the runs' seeds."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["zoo"], r["split"], r["method"]), []).append(r)
    out: dict[str, Any] = {}
    for (zoo, split, method), rs in groups.items():
        r2 = np.array([r["r2"] for r in rs])
        tau = np.array([r["tau"] for r in rs])
        out.setdefault(zoo, {}).setdefault(split, {})[method] = {
            "r2_mean": float(r2.mean()), "r2_std": float(r2.std()), "tau_mean": float(tau.mean()),
            "tau_std": float(tau.std()), "n": len(rs),
        }
    return out


def markdown_table(summary: dict[str, Any], zoos: list[str], splits: list[str], methods: list[str]) -> str:
    """Rows split x method, columns R² and τ per zoo (the GMN paper's layout); best R² per split in bold."""
    head = "| split | method | " + " | ".join(f"{ZOO_LABELS.get(z, z)} R² | {ZOO_LABELS.get(z, z)} τ" for z in zoos) + " |"
    lines = [head, "|---|---|" + "---:|---:|" * len(zoos)]
    for split in splits:
        for method in methods:
            cells = []
            for z in zoos:
                s = summary.get(z, {}).get(split, {}).get(method)
                if s is None:
                    cells += ["–", "–"]
                    continue
                best = max(v["r2_mean"] for v in summary[z][split].values())
                r2 = f"{s['r2_mean']:.3f} ± {s['r2_std']:.3f}"
                cells += [f"**{r2}**" if s["r2_mean"] == best else r2, f"{s['tau_mean']:.3f} ± {s['tau_std']:.3f}"]
            lines.append(f"| {SPLIT_LABELS.get(split, split)} | {METHOD_LABELS.get(method, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def scatter_plot(runs: list[dict[str, Any]], path: Path, zoo: str) -> None:
    """Predicted vs true test accuracy, one panel per (split, method), seed 0 of each; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [r for r in runs if r["zoo"] == zoo]
    splits = [s for s in SPLIT_LABELS if any(r["split"] == s for r in rs)]
    methods = [m for m in METHOD_LABELS if any(r["method"] == m for r in rs)]
    fig, axes = plt.subplots(len(splits), len(methods), figsize=(3 * len(methods), 3 * len(splits)), squeeze=False)
    for i, split in enumerate(splits):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            sel = sorted((r for r in rs if r["split"] == split and r["method"] == method), key=lambda r: r["seed"])
            if not sel:
                ax.axis("off")
                continue
            r = sel[0]
            ax.scatter(r["true"], r["pred"], s=6, alpha=0.6)
            ax.plot([0, 1], [0, 1], "k--", lw=0.8)
            ax.set_xlim(0, 1)
            ax.set_ylim(min(0.0, min(r["pred"])), max(1.0, max(r["pred"])))
            ax.set_title(f"{SPLIT_LABELS[split]} {METHOD_LABELS[method]}: R²={r['r2']:.2f} τ={r['tau']:.2f}", fontsize=8)
            if i == len(splits) - 1:
                ax.set_xlabel("true test accuracy")
            if j == 0:
                ax.set_ylabel("predicted")
    fig.suptitle(f"{ZOO_LABELS.get(zoo, zoo)}: predicted vs true accuracy (seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
