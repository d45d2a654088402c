"""Side-by-side inner training with a rule (through the real `GMNOptimizer`) and with torch Adam."""

from __future__ import annotations

import copy

import torch

from inner_tasks import build_task
from inner_tasks.tasks import train_task
from metaopt.optim import GMNOptimizer, UpdateRule

from .config import TrainConfig
from .tasks import TaskSampler


def rule_vs_adam(rule: UpdateRule, cfg: TrainConfig, steps: int) -> dict[str, list[float]]:
    """Curves of the rule and of Adam at the task's reference lr on one fixed meta-training task."""
    sampler = TaskSampler(cfg.tasks, cfg.seed + 1_000_003, rank=0)
    spec = sampler.sample_spec(sampler.rng())
    task = build_task(spec)
    frozen = copy.deepcopy(rule).eval()
    lr = spec.reference_lr
    graph = task.graph
    return {
        "learned": train_task(task, lambda m: GMNOptimizer(m, rule=frozen, lr=lr, graph=graph), steps, spec.seed,
                              spec.seed).losses,
        "adam": train_task(task, lambda m: torch.optim.Adam(m.parameters(), lr=lr), steps, spec.seed, spec.seed).losses,
    }
