"""A reference inner loop: train a task with torch.optim.Adam (tests, figures, baselines)."""

from __future__ import annotations

import math
from itertools import islice

import torch

from .base import Task


def train_with_adam(task: Task, steps: int, lr: float | None = None, seed: int | None = None) -> list[float]:
    """Train task.model in place for `steps` Adam steps; returns the training loss before each step.

    Stops early (returning what it has, last entry non-finite) if the loss diverges.
    """
    opt = torch.optim.Adam(task.model.parameters(), lr=task.spec.reference_lr if lr is None else lr)
    task.model.train()
    losses: list[float] = []
    for batch in islice(task.train_batches(seed), steps):
        loss = task.loss(task.model(batch[0]), batch)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return losses
