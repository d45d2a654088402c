"""Meta-gradient estimators: TBPTT against finite differences, PES against the true gradient,
a few meta-steps lowering the meta-loss, and non-finite meta-gradients being skipped."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from metaopt import to_graph
from metaopt.optim import RuleConfig, UpdateRule
from outer_train import train as train_mod
from outer_train.config import resolve
from outer_train.pes import pes_gradient
from outer_train.tasks import TaskGroup, TaskSampler
from outer_train.tbptt import tbptt_gradient, unroll_truncation
from outer_train.train import MetaTrainer
from outer_train.unroll import batched_graph

TINY = ['tasks.families=["teacher_student"]', "tasks.max_params=120", "tasks.groups=1", "tasks.group_size=2",
        "rule.hidden=4", "rule.layers=1", "tasks.permute_augment=false", "log.progress=false", "threads=1"]


class QuadraticTask:
    """Linear least squares: the loss is an exact quadratic in the parameters (Task protocol subset)."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.graph = to_graph(self.model, torch.zeros(2, 4))
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(64, 1, generator=g)
        self.spec = None

    def init_params(self, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {"weight": torch.randn(1, 4, generator=g), "bias": torch.zeros(1)}

    def init_buffers(self) -> dict[str, torch.Tensor]:
        return {}

    def train_batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.x, self.y

    def eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield self.x, self.y

    def functional_loss(self, params, batch, buffers=None) -> torch.Tensor:
        return nn.functional.mse_loss(torch.func.functional_call(self.model, params, (batch[0],)), batch[1])


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def test_tbptt_meta_gradient_matches_finite_differences() -> None:
    cfg = resolve("quick", None, TINY + ["rule.alpha=0.05"])
    torch.manual_seed(0)
    rule = UpdateRule(RuleConfig(kind="gmn", hidden=4, layers=1, alpha=0.05))
    state = TaskGroup.draw(TaskSampler(cfg.tasks, 0), rule.features).state_dict()
    fresh = lambda: [TaskGroup.from_state_dict(copy.deepcopy(state))]  # noqa: E731
    graph = batched_graph(fresh())
    grads, _ = tbptt_gradient(rule, fresh(), graph, 4, second_order=True)
    g = torch.Generator().manual_seed(1)
    direction = [torch.randn(p.shape, generator=g) for p in rule.parameters()]
    analytic = float(sum((a * d).sum() for a, d in zip(grads, direction)))

    def meta_loss(h: float) -> float:
        r = copy.deepcopy(rule)
        with torch.no_grad():
            for p, d in zip(r.parameters(), direction):
                p.add_(d, alpha=h)
            return float(unroll_truncation(r, fresh(), graph, 4).meta_loss)

    h = 2e-3
    numeric = (meta_loss(h) - meta_loss(-h)) / (2 * h)
    assert abs(analytic) > 1e-5
    assert abs(numeric - analytic) <= 0.03 * abs(analytic)


def test_pes_estimate_is_unbiased_for_the_true_gradient_on_a_quadratic() -> None:
    torch.manual_seed(0)
    task = QuadraticTask()
    rule = UpdateRule(RuleConfig(kind="mlp", hidden=4, layers=0, alpha=0.2))
    feats = rule.features
    make = lambda particles: [TaskGroup.from_task(task, [0], 20, 0.05, feats, particles)]  # noqa: E731
    graph = batched_graph(make(1))
    true = _flat(tbptt_gradient(rule, make(1), graph, 3, second_order=True)[0])
    gen = torch.Generator().manual_seed(0)
    ratios = []
    for _ in range(40):
        est = _flat(pes_gradient(rule, make(2), graph, 3, 1e-3, generator=gen)[0])
        ratios.append(float(est @ true) / float(true @ true))
    mean = sum(ratios) / len(ratios)
    # E[g_pes . g] = |g|^2 (unbiased); one draw has relative std ~sqrt(2), 40 draws ~0.22.
    print(f"PES projection ratio {mean:.3f}")
    assert 0.5 < mean < 1.5, mean


def test_a_few_meta_steps_lower_the_meta_loss(tmp_path: Path) -> None:
    cfg = resolve("quick", None, TINY + [f'out_dir="{tmp_path}"', "meta.lr=0.05", "tasks.unroll_min=30",
                                         "tasks.unroll_max=30", "tasks.truncation=10"])
    trainer = MetaTrainer(cfg)
    probe_rule = UpdateRule(trainer.rule.config)
    probe = TaskGroup.draw(TaskSampler(cfg.tasks, 123), probe_rule.features).state_dict()

    def probe_loss() -> float:
        groups = [TaskGroup.from_state_dict(copy.deepcopy(probe))]
        with torch.no_grad():
            return float(unroll_truncation(trainer.rule, groups, batched_graph(groups), 20).meta_loss)

    before = probe_loss()
    for _ in range(12):
        trainer.meta_step()
    after = probe_loss()
    assert after < before - 0.2, (before, after)  # >= 18% lower geometric-mean loss
    assert float(trainer.rule.alpha.detach()) != 0.0


def test_non_finite_meta_gradient_is_skipped_and_counted(tmp_path: Path, monkeypatch) -> None:
    cfg = resolve("quick", None, TINY + [f'out_dir="{tmp_path}"'])
    trainer = MetaTrainer(cfg)
    real = train_mod.tbptt_gradient
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        grads, res = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            grads[0] = grads[0] + float("nan")
        return grads, res

    monkeypatch.setattr(train_mod, "tbptt_gradient", poisoned)
    trainer.meta_step()
    before = copy.deepcopy(trainer.rule.state_dict())
    opt_before = copy.deepcopy(trainer.meta_opt.state_dict()["state"])
    metrics = trainer.meta_step()
    assert metrics["skipped"] == 1.0 and trainer.counters["skipped"] == 1
    for k, v in trainer.rule.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(torch.equal(opt_before[i]["exp_avg"], s["exp_avg"]) for i, s in trainer.meta_opt.state_dict()["state"].items())
    assert trainer.meta_step()["skipped"] == 1.0
    assert all(torch.isfinite(p).all() for p in trainer.rule.parameters())
