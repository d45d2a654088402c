"""Next-byte language modelling on the stdlib corpus."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.text import load_stdlib_corpus, sample_windows
from .base import Batch, Task
from .spec import TaskSpec

_EVAL_SEED = 1234  # fixed, so every evaluation of every task reads the same validation windows


class LanguageModelTask(Task):
    """Random windows of `context` bytes; loss = next-byte cross-entropy, metric = bits per byte."""

    metric_name = "bits_per_byte"
    higher_is_better = False

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__(spec)
        self.corpus = load_stdlib_corpus(spec.data.get("max_bytes", 1_000_000))
        self.context = int(spec.data.get("context", getattr(spec.model, "context", 64)))
        model_context = getattr(spec.model, "context", self.context)
        if self.context > model_context:
            raise ValueError(f"data context {self.context} exceeds the model's positional table ({model_context})")

    def train_batches(self, seed: int | None = None) -> Iterator[Batch]:
        """Endless random training windows, order fixed by `seed` (default spec.seed)."""
        g = torch.Generator().manual_seed(self.spec.seed if seed is None else seed)
        while True:
            yield sample_windows(self.corpus.train, self.spec.batch_size, self.context, g)

    def eval_batches(self) -> Iterator[Batch]:
        """A fixed set of validation windows (data['eval_batches'] batches, default 4)."""
        g = torch.Generator().manual_seed(_EVAL_SEED)
        for _ in range(int(self.spec.data.get("eval_batches", 4))):
            yield sample_windows(self.corpus.val, self.spec.batch_size, self.context, g)

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        """Mean next-byte cross-entropy (nats)."""
        return F.cross_entropy(output.flatten(0, 1), batch[1].flatten())

    def metric(self, output: Tensor, batch: Batch) -> Tensor:
        """Bits per byte (cross-entropy in base 2)."""
        return self.loss(output, batch) / math.log(2.0)
