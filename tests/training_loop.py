"""The plain training loop the optimizer tests share: full-batch steps, the loss before each step."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def train_losses(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 x: Tensor, y: Tensor, steps: int) -> list[float]:
    """``steps`` steps of ``opt`` on ``loss_fn(model(x), y)``; the loss at each step, before it moves."""
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
