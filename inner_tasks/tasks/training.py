"""The one inner training loop: train a task's model with any torch optimizer, timed.

Meta-training's monitor (``outer_train.compare``), the held-out evaluation (``outer_train.evaluate``),
tests and figures all train through `train_task`, so "how a task is trained" is written once: an
ordinary PyTorch loop (forward, loss, ``zero_grad``, backward, ``opt.step()``) that records the
loss before each step and the wall-clock seconds after it, and stops at the first non-finite loss.
``make_opt`` may also return ``(optimizer, lr_scheduler)`` (Lightning's ``configure_optimizers``
convention): the scheduler steps after every optimizer step, inside the timed loop.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
from torch import nn

from .base import Task


@dataclass
class TrainRun:
    """Losses before each step, wall-clock seconds after each step (optimizer construction
    included), and the trained model."""

    losses: list[float]
    times: list[float] = field(default_factory=list)
    model: nn.Module | None = None

    @property
    def diverged(self) -> bool:
        return not all(math.isfinite(x) for x in self.losses)


def train_task(
    task: Task,
    make_opt: Callable[[nn.Module], torch.optim.Optimizer | tuple[torch.optim.Optimizer, Any]],
    steps: int,
    seed: int | None = None,
    init_seed: int | None = None,
    in_place: bool = False,
) -> TrainRun:
    """Train ``steps`` steps with ``make_opt(model)`` on batches in order ``seed``.

    ``init_seed`` loads ``task.init_params(init_seed)`` first (None: the model as it is);
    ``in_place=False`` trains a deep copy of ``task.model``. Batches are drawn before the clock
    starts, so data loading is not timed.
    """
    model = task.model if in_place else copy.deepcopy(task.model)
    if init_seed is not None:
        with torch.no_grad():
            for p, v in zip(model.parameters(), task.init_params(init_seed).values()):
                p.copy_(v)
    batches = list(islice(task.train_batches(seed), steps))
    model.train()
    run = TrainRun([], [], model)
    t0 = time.perf_counter()
    opt, scheduler = make_opt(model), None
    if isinstance(opt, tuple):
        opt, scheduler = opt
    for batch in batches:
        loss = task.loss(model(batch[0]), batch)
        run.losses.append(float(loss.detach()))
        if not math.isfinite(run.losses[-1]):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        run.times.append(time.perf_counter() - t0)
    return run


def train_with_adam(task: Task, steps: int, lr: float | None = None, seed: int | None = None) -> list[float]:
    """Train task.model in place for `steps` Adam steps (lr: the task's reference lr by default);
    returns the training loss before each step (the last entry non-finite if it diverged)."""
    lr = task.spec.reference_lr if lr is None else lr
    return train_task(task, lambda m: torch.optim.Adam(m.parameters(), lr=lr), steps, seed, in_place=True).losses
