"""Loss-curve figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _plot_losses(ax, runs: dict[str, tuple[list[float], list[float]]], xlabel: str) -> None:
    """``runs``: label -> (x values, losses); log y, legend."""
    for label, (xs, ys) in runs.items():
        n = min(len(xs), len(ys))
        ax.plot(xs[:n], ys[:n], label=label, lw=1.1)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=7)


def loss_figure(curves: dict[str, list[float]], title: str):
    """Matplotlib figure of training-loss curves against the step (log scale)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    _plot_losses(ax, {k: (list(range(len(v))), v) for k, v in curves.items()}, "inner step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def steps_and_clock_figure(runs: dict[str, tuple[list[float], list[float]]], title: str):
    """Training loss against steps (left) and against wall-clock seconds (right), log loss.
    ``runs``: label -> (losses, seconds after each step)."""
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    _plot_losses(by_step, {k: (list(range(1, len(ys) + 1)), ys) for k, (ys, _) in runs.items()}, "step")
    _plot_losses(by_time, {k: (ts, ys) for k, (ys, ts) in runs.items()},
                 "wall-clock seconds (whole loop)")
    by_step.set_ylabel("training loss")
    by_time.get_legend().remove()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
