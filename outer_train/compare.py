"""Side-by-side inner training with a rule (through the real `GMNOptimizer`) and with torch Adam."""

from __future__ import annotations

import copy
import math
from itertools import islice

import torch

from inner_tasks import Task, build_task
from metaopt.optim import GMNOptimizer, UpdateRule

from .config import TrainConfig
from .tasks import TaskSampler


def train_curve(task: Task, make_opt, steps: int, init_seed: int, data_seed: int) -> list[float]:
    """Training losses of ``steps`` steps from init ``init_seed``; stops at the first non-finite loss."""
    model = copy.deepcopy(task.model)
    with torch.no_grad():
        for p, v in zip(model.parameters(), task.init_params(init_seed).values()):
            p.copy_(v)
    opt = make_opt(model)
    model.train()
    losses: list[float] = []
    for batch in islice(task.train_batches(data_seed), steps):
        loss = task.loss(model(batch[0]), batch)
        losses.append(float(loss))
        if not math.isfinite(losses[-1]):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return losses


def rule_vs_adam(rule: UpdateRule, cfg: TrainConfig, steps: int) -> dict[str, list[float]]:
    """Curves of the rule and of Adam at the task's reference lr on one fixed meta-training task."""
    sampler = TaskSampler(cfg.tasks, cfg.seed + 1_000_003, rank=0)
    spec = sampler.sample_spec(sampler.rng())
    task = build_task(spec)
    frozen = copy.deepcopy(rule).eval()
    lr = spec.reference_lr
    graph = task.graph
    return {
        "learned": train_curve(task, lambda m: GMNOptimizer(m, rule=frozen, lr=lr, graph=graph), steps, spec.seed, spec.seed),
        "adam": train_curve(task, lambda m: torch.optim.Adam(m.parameters(), lr=lr), steps, spec.seed, spec.seed),
    }
