"""The meta-objective: mean log loss of the inner task over a truncation.

Log makes tasks whose losses differ by orders of magnitude (cross-entropy ~1, INR MSE ~1e-5)
contribute comparable gradients (d log L = dL / L) and rewards relative progress.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOSS_FLOOR = 1e-10  # log(0) guard: below this a loss counts as solved


def log_loss(loss: Tensor) -> Tensor:
    """``log(max(loss, LOSS_FLOOR))`` elementwise (non-finite losses stay non-finite, so they are caught)."""
    return torch.log(loss.clamp_min(LOSS_FLOOR))


def late_weights(groups: list, steps: int, power: float) -> list[float]:
    """Each group's weight for the truncation about to run: ``(fraction of its trajectory done at the
    truncation's end) ** power``. 0 weighs every truncation alike (the mean log loss over the whole
    trajectory); > 0 weighs the end of training most, which is what "reach a low loss by the end of the
    budget" (the held-out evaluation) measures. Computed before the truncation advances the groups."""
    if power == 0:
        return [1.0] * len(groups)
    return [min(1.0, (g.step + steps) / g.horizon) ** power for g in groups]


def truncation_meta_loss(losses: list[Tensor]) -> Tensor:
    """Mean over steps (and members) of log loss; ``losses`` is one tensor [M] per inner step."""
    if not losses:
        raise ValueError("truncation_meta_loss: no inner losses were recorded (truncation length 0?).")
    return log_loss(torch.stack(losses)).mean()
