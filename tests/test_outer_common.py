"""Shared helpers for the meta-training tests: inner tasks built from a given nn.Module.

No tests live here; pytest imports it as a module (tests/ is on sys.path in prepend mode).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from metaopt import to_graph

Batch = tuple[torch.Tensor, torch.Tensor]


class ModelTask:
    """The Task protocol (the subset `TaskGroup.from_task` uses) over a fixed nn.Module.

    Every member starts from the module's own parameters; member ``seed`` draws its batches from
    ``make_batch(torch.Generator().manual_seed(seed))``, so a test can replay them exactly.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, make_batch: Callable[[torch.Generator], Batch],
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.mse_loss) -> None:
        self.model = model
        self.graph = to_graph(model, example)
        self.make_batch = make_batch
        self.loss_fn = loss
        self.spec = None

    def init_params(self, seed: int) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def init_buffers(self) -> dict[str, torch.Tensor]:
        return {}

    def batches(self, seed: int) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(seed)
        while True:
            yield self.make_batch(g)

    def train_batches(self, seed: int) -> Iterator[Batch]:
        return self.batches(seed)

    def eval_batches(self) -> Iterator[Batch]:
        return self.batches(10**6)

    def functional_loss(self, params, batch: Batch, buffers=None) -> torch.Tensor:
        return self.loss_fn(torch.func.functional_call(self.model, params, (batch[0],)), batch[1])


def quadratic_task() -> ModelTask:
    """Linear least squares: the loss is an exact quadratic in the parameters."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 4, generator=torch.Generator().manual_seed(0)))
        model.bias.zero_()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(64, 1, generator=g)
    return ModelTask(model, torch.zeros(2, 4), lambda gen: (x, y))


def unflat(task: ModelTask, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """A flat edge-ordered vector as the task model's named parameters (views), for ``torch.func``."""
    out, i = {}, 0
    for n, p in task.model.named_parameters():
        out[n] = flat[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


def step_both(task: ModelTask, model: nn.Module, opt: torch.optim.Optimizer, rule, graph, index, params: torch.Tensor,
              state, h, batch: Batch):
    """One cross-entropy step of ``opt`` on ``model`` and one of the functional core (``core.step``, meta-training's
    form) from the flat ``params`` / ``state`` on the same batch; returns the core's new params and state."""
    from metaopt.optim import core

    x, y = batch
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    grad = torch.func.grad(task.functional_loss)(unflat(task, params), (x, y))
    return core.step(rule, graph, index, params, torch.cat([g.reshape(-1) for g in grad.values()]), state, h)


def lr_free_pair(task: ModelTask, betas: tuple[float, float], eps: float, wd: float, opt_kw: dict, state_kw: dict):
    """The optimizer (``rule="adam"``, lr-free with ``opt_kw``) on a copy of ``task``'s model and the functional
    core's start from the same parameters (``OptState.zeros`` with ``state_kw``): what `step_both` steps side by
    side. Returns (model, opt, rule, prepared graph, index, flat params, state)."""
    import copy

    from metaopt import GMNOptimizer
    from metaopt.optim import GraphIndex, OptState
    from metaopt.optim.rules import resolve_rule

    model = copy.deepcopy(task.model)
    opt = GMNOptimizer(model, rule="adam", lr=1.0, betas=betas, eps=eps, weight_decay=wd, graph=task.graph,
                       lr_free=True, **opt_kw)
    rule = resolve_rule("adam")
    prepared, index = rule.prepare(task.graph, "cpu"), GraphIndex.from_graph(task.graph, "cpu")
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    sizes = tuple(p.numel() for p in model.parameters())
    state = OptState.zeros(index.num_edges, start=params, sizes=sizes, **state_kw)
    return model, opt, rule, prepared, index, params, state
