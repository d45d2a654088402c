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


def steps_and_clock_figure(runs: dict[str, tuple[list[float], list[float]]], title: str):
    """Training loss against steps (left) and against wall-clock seconds (right), log loss.
    ``runs``: label -> (losses, seconds after each step)."""
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for label, (ys, ts) in runs.items():
        by_step.plot(range(1, len(ys) + 1), ys, label=label, lw=1.1)
        n = min(len(ys), len(ts))
        by_time.plot(ts[:n], ys[:n], label=label, lw=1.1)
    by_step.set_yscale("log")
    by_step.set_xlabel("step")
    by_time.set_xlabel("wall-clock seconds (whole loop, optimizer construction included)")
    by_step.set_ylabel("training loss")
    fig.suptitle(title, fontsize=9)
    by_step.legend(fontsize=7)
    fig.tight_layout()
    return fig
