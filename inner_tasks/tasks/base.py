"""The Task protocol: a model, its parameter graph, seeded data, loss, metric and a functional form."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..models.specs import build_model, count_params
from .spec import TaskSpec

Batch = tuple[Tensor, Tensor]  # (inputs, targets)


class Task(ABC):
    """A training task built from a `TaskSpec`; deterministic given the spec's seed.

    `model` is built once (init fixed by spec.seed); `functional_loss(params, batch)` runs the same
    architecture on any params dict via torch.func.functional_call, so meta-training can
    differentiate through inner steps and vmap over tasks that share an architecture.
    """

    metric_name: str = "metric"
    higher_is_better: bool = True

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.model: nn.Module = build_model(spec.model, seed=spec.seed)
        self._graph: Any = None
        self._initial_buffers = {k: v.detach().clone() for k, v in self.model.named_buffers()}

    # ---- structure -----------------------------------------------------------------------
    @property
    def graph(self) -> Any:
        """The model's `ParameterGraph` (metaopt.to_graph), built on first use and cached."""
        if self._graph is None:
            from metaopt import to_graph

            self._graph = to_graph(self.model, (self.example_inputs(),))
        return self._graph

    def example_inputs(self, n: int = 2) -> Tensor:
        """The first `n` evaluation inputs: a correctly shaped input for tracing (to_graph, fx)."""
        return next(iter(self.eval_batches()))[0][:n]

    @property
    def num_params(self) -> int:
        """Scalar parameter count (= parameter-graph edge count)."""
        return count_params(self.model)

    def init_params(self, seed: int | None = None) -> dict[str, Tensor]:
        """A fresh parameter dict (detached, requires_grad=False) from init seed `seed` (default: spec.seed)."""
        model = build_model(self.spec.model, seed=self.spec.seed if seed is None else seed)
        return {k: v.detach().clone() for k, v in model.named_parameters()}

    def init_buffers(self) -> dict[str, Tensor]:
        """A fresh copy of the model's buffers (BatchNorm running stats) at initialisation."""
        return {k: v.clone() for k, v in self._initial_buffers.items()}

    # ---- data ----------------------------------------------------------------------------
    @abstractmethod
    def train_batches(self, seed: int | None = None) -> Iterator[Batch]:
        """Endless training batches; the order is fixed by `seed` (default spec.seed)."""

    @abstractmethod
    def eval_batches(self) -> Iterator[Batch]:
        """A finite, fixed sequence of evaluation batches (held-out data)."""

    # ---- objective -----------------------------------------------------------------------
    @abstractmethod
    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        """Scalar training loss of `output` (the model's output on batch[0]) against batch[1]."""

    @abstractmethod
    def metric(self, output: Tensor, batch: Batch) -> Tensor:
        """Scalar evaluation metric on one batch (named `metric_name`; see `higher_is_better`)."""

    def functional_loss(
        self, params: Mapping[str, Tensor], batch: Batch, buffers: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """Loss of the architecture evaluated with `params` (a dict like `init_params()`), train mode.

        `buffers` defaults to fresh initial buffers; pass your own dict to carry BatchNorm running
        stats across steps (they are updated in place, outside autograd). Models without buffers
        (all but BatchNorm ones) can be vmapped over stacked params.
        """
        state = dict(self.init_buffers() if buffers is None else buffers)
        state.update(params)
        output = functional_call(self.model, state, (batch[0],))
        return self.loss(output, batch)

    # ---- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, params: Mapping[str, Tensor] | None = None, buffers: Mapping[str, Tensor] | None = None) -> dict[str, float]:
        """Mean loss and metric over `eval_batches()` in eval mode, for the model or a params dict."""
        was_training = self.model.training
        self.model.eval()
        try:
            total_loss = total_metric = 0.0
            n = 0
            for batch in self.eval_batches():
                if params is None:
                    out = self.model(batch[0])
                else:
                    state = dict(dict(self.model.named_buffers()) if buffers is None else buffers)
                    state.update(params)
                    out = functional_call(self.model, state, (batch[0],))
                w = batch[0].shape[0]
                total_loss += float(self.loss(out, batch)) * w
                total_metric += float(self.metric(out, batch)) * w
                n += w
        finally:
            self.model.train(was_training)
        return {"loss": total_loss / n, self.metric_name: total_metric / n}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.name or self.spec.family}, params={self.num_params}, seed={self.spec.seed})"
