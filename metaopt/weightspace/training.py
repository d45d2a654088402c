"""The epoch loop shared by the weight-space trainers (INR classification and INR editing).

Both train a small network on a fixed set of samples with the same recipe: AdamW, a one-cycle
learning rate, gradient clipping at norm 1, shuffled mini-batches; only the per-batch loss differs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm import tqdm


def fit_epochs(
    model: nn.Module,
    index: Tensor,
    batch_loss: Callable[[Tensor], Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    generator: torch.Generator,
    desc: str = "train",
    progress: bool = False,
) -> list[float]:
    """Train ``model`` for ``epochs`` passes over the sample ids ``index``; returns the mean loss of each epoch.

    ``batch_loss(ids)`` returns the mean loss of the samples ``ids`` (a slice of a shuffled ``index``).
    ``generator`` draws the shuffles; pass the same one to ``batch_loss`` for augmentation so a seed
    fixes the whole run.
    """
    if epochs < 1 or batch_size < 1 or len(index) == 0:
        raise ValueError(f"fit_epochs: need epochs >= 1, batch_size >= 1 and samples, got {epochs}, {batch_size}, {len(index)}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    # A last batch of one sample is merged into the one before (BatchNorm heads cannot train on a batch of 1).
    starts = list(range(0, len(index), batch_size))
    if len(starts) > 1 and len(index) - starts[-1] == 1:
        starts.pop()
    ends = starts[1:] + [len(index)]
    steps = epochs * len(starts)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    curve = []
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        model.train()
        perm = index[torch.randperm(len(index), generator=generator)]
        total = 0.0
        for i, j in zip(starts, ends):
            ids = perm[i:j]
            loss = batch_loss(ids)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(ids)
        curve.append(total / len(index))
    return curve
