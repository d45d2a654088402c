"""Supervised tasks on in-memory tensors: classification, regression, set tasks and INR fitting."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Batch, Task
from .sources import supervised_data
from .spec import TaskSpec

_METRICS = {"ce": ("accuracy", True), "mse": ("mse", False), "inr": ("psnr", True)}


class SupervisedTask(Task):
    """(x, y) minibatches from fixed tensors; cross-entropy + accuracy, MSE + test MSE, or MSE + PSNR."""

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__(spec)
        self.data = supervised_data(spec.data, spec.seed)
        self.metric_name, self.higher_is_better = _METRICS[self.data.objective]

    def train_batches(self, seed: int | None = None) -> Iterator[Batch]:
        """Shuffled minibatches, reshuffled every epoch; full batch when batch_size >= train size."""
        x, y = self.data.x_train, self.data.y_train
        n, bs = len(x), self.spec.batch_size
        if bs >= n:
            while True:
                yield x, y
        g = torch.Generator().manual_seed(self.spec.seed if seed is None else seed)
        while True:
            perm = torch.randperm(n, generator=g)
            for i in range(0, n - bs + 1, bs):
                idx = perm[i : i + bs]
                yield x[idx], y[idx]

    def eval_batches(self) -> Iterator[Batch]:
        """The whole test set in order, in chunks of 1024."""
        x, y = self.data.x_test, self.data.y_test
        for i in range(0, len(x), 1024):
            yield x[i : i + 1024], y[i : i + 1024]

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        """Cross-entropy for classification, mean squared error otherwise."""
        if self.data.objective == "ce":
            return F.cross_entropy(output, batch[1])
        return F.mse_loss(output, batch[1])

    def metric(self, output: Tensor, batch: Batch) -> Tensor:
        """Accuracy, MSE, or PSNR in dB (values in [0, 1])."""
        if self.data.objective == "ce":
            return (output.argmax(-1) == batch[1]).float().mean()
        mse = F.mse_loss(output, batch[1])
        if self.data.objective == "mse":
            return mse
        return -10.0 * torch.log10(mse.clamp(min=1e-10))
