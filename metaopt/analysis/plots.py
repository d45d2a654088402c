"""Figures of the CKA study: heatmaps, averaged-CKA curves (paper Figs 2-3), sample grid (Fig 4)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def _annotated(ax, m: Tensor, title: str, row_labels: list[str], col_labels: list[str]) -> None:
    im = ax.imshow(m.numpy(), vmin=0.0, vmax=1.0, cmap="magma", origin="lower")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            v = float(m[i, j])
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(col_labels)), col_labels, fontsize=7, rotation=45)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
    ax.set_title(title, fontsize=9)
    return im


def plot_heatmaps(panels: list[tuple[str, Tensor, list[str], list[str]]], path: Path, suptitle: str) -> None:
    """One annotated CKA heatmap per (title, matrix, row labels, column labels), in a grid of 3 columns."""
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False)
    im = None
    for ax, (title, m, rl, cl) in zip(axes.flat, panels):
        im = _annotated(ax, m, title, rl, cl)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="CKA")
    fig.suptitle(suptitle, fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_curves(curves: dict[str, dict[int, tuple[Tensor, Tensor]]], labels: dict[str, list[str]], path: Path, suptitle: str) -> None:
    """Averaged CKA(l, a) over layer a with +-1 std bands, one panel per architecture (paper Figs 2-3).

    curves[arch][l] = (mean [L], std [L]) of CKA between layer l of one seed and layer a of another.
    """
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.0), squeeze=False)
    colours = ["#87ceeb", "#1f3fbf", "#555555"]
    for ax, (arch, per_layer) in zip(axes.flat, curves.items()):
        for c, (l, (mean, std)) in zip(colours, sorted(per_layer.items())):
            x = torch.arange(1, len(mean) + 1)
            ax.plot(x, mean, "o-", color=c, label=f"CKA({l + 1}, a)")
            ax.fill_between(x.numpy(), (mean - std).numpy(), (mean + std).numpy(), color=c, alpha=0.2)
        ax.set_xticks(range(1, len(labels[arch]) + 1), labels[arch], fontsize=7, rotation=30)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("layer a (other seed)", fontsize=8)
        ax.set_title(arch, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes.flat[0].set_ylabel("averaged CKA over seed pairs", fontsize=8)
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_samples(images: Tensor, renders: Tensor, captions: list[str], path: Path, title: str, max_items: int = 12) -> None:
    """Grid of (image, INR render) pairs with captions (paper Fig 4); an empty set writes a note image."""
    n = min(len(images), max_items)
    cols = min(n, 6) if n else 1
    rows = max(1, (n + cols - 1) // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.9 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no such sample", ha="center", va="center")
    for k in range(n):
        r, c = divmod(k, cols)
        for row, img, cap in ((2 * r, images[k], captions[k]), (2 * r + 1, renders[k], "INR render")):
            ax = axes[row, c]
            shown = img.permute(1, 2, 0).clamp(0, 1).numpy()
            ax.imshow(shown[..., 0] if shown.shape[-1] == 1 else shown, cmap="gray", vmin=0, vmax=1)
            ax.set_title(cap, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
