"""Loss-curve figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def loss_figure(curves: dict[str, list[float]], title: str):
    """Matplotlib figure of training-loss curves (log scale)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, ys in curves.items():
        ax.plot(range(len(ys)), ys, label=label, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("inner step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
