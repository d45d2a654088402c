"""Meta-gradient estimators: TBPTT against finite differences, PES against the true gradient,
a few meta-steps lowering the meta-loss, non-finite meta-gradients being skipped (and a run of them
stopping training), and the estimator registry."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from metaopt.optim import RuleConfig, UpdateRule
from outer_train import estimators
from outer_train.__main__ import main
from outer_train.config import ConfigError, resolve
from outer_train.pes import PESState, pes_gradient
from outer_train.tasks import TaskGroup, TaskSampler
from outer_train.tbptt import tbptt_gradient, unroll_truncation
from outer_train.train import MetaTrainer, MetaTrainingError, train
from outer_train.unroll import batched_graph
from test_outer_common import quadratic_task

TINY = ['tasks.families=["teacher_student"]', "tasks.max_params=120", "tasks.groups=1", "tasks.group_size=2",
        "rule.hidden=4", "rule.layers=1", "tasks.permute_augment=false", "log.progress=false", "threads=1"]


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def test_tbptt_meta_gradient_matches_finite_differences() -> None:
    cfg = resolve("quick", None, TINY + ["rule.alpha=0.05"])
    torch.manual_seed(0)
    rule = UpdateRule(RuleConfig(kind="gmn", hidden=4, layers=1, alpha=0.05, refresh_every=2))  # refreshes 1, 3
    state = TaskGroup.draw(TaskSampler(cfg.tasks, 0)).state_dict()
    fresh = lambda: [TaskGroup.from_state_dict(copy.deepcopy(state))]  # noqa: E731
    graph = batched_graph(rule, fresh())
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
    task = quadratic_task()
    rule = UpdateRule(RuleConfig(kind="mlp", hidden=4, layers=0, alpha=0.2, refresh_every=1))
    make = lambda particles: [TaskGroup.from_task(task, [0], 20, 0.05, num_particles=particles)]  # noqa: E731
    graph = batched_graph(rule, make(1))
    true = _flat(tbptt_gradient(rule, make(1), graph, 3, second_order=True)[0])
    gen = torch.Generator().manual_seed(0)
    ratios = []
    for _ in range(40):
        est = _flat(pes_gradient(rule, PESState(), make(2), graph, 3, 1e-3, generator=gen)[0])
        ratios.append(float(est @ true) / float(true @ true))
    mean = sum(ratios) / len(ratios)
    # E[g_pes . g] = |g|^2 (unbiased); one draw has relative std ~sqrt(2), 40 draws ~0.22.
    print(f"PES projection ratio {mean:.3f}")
    assert 0.5 < mean < 1.5, mean


def test_pes_accumulates_perturbations_per_trajectory_and_starts_new_ones_from_zero() -> None:
    """xi is the estimator's state: the sum of the eps a trajectory saw; a new task's xi is its first eps."""
    task = quadratic_task()
    rule = UpdateRule(RuleConfig(kind="mlp", hidden=4, layers=0, alpha=0.2, refresh_every=1))
    first = TaskGroup.from_task(task, [0], 20, 0.05, num_particles=2)
    graph = batched_graph(rule, [first])
    state = PESState()
    eps = []
    for seed in range(2):
        gen = torch.Generator().manual_seed(seed)
        eps.append(torch.randn(sum(p.numel() for p in rule.parameters()), generator=gen) * 1e-3)
        pes_gradient(rule, state, [first], graph, 3, 1e-3, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(state.xi[first.key], eps[0] + eps[1])
    assert first.step == 6  # both particles ran 3 steps per truncation; the group advanced once per truncation
    second = TaskGroup.from_task(task, [1], 20, 0.05, num_particles=2)
    pes_gradient(rule, state, [second], graph, 3, 1e-3, generator=torch.Generator().manual_seed(2))
    assert list(state.xi) == [second.key]  # the finished trajectory's xi is dropped
    torch.testing.assert_close(state.xi[second.key], torch.randn(eps[0].shape, generator=torch.Generator().manual_seed(2)) * 1e-3)
    restored = PESState()
    restored.load_state_dict(state.state_dict())
    assert torch.equal(restored.xi[second.key], state.xi[second.key])


def test_a_few_meta_steps_lower_the_meta_loss(tmp_path: Path) -> None:
    cfg = resolve("quick", None, TINY + [f'out_dir="{tmp_path}"', "meta.lr=0.05", "tasks.unroll_min=30",
                                         "tasks.unroll_max=30", "tasks.truncation=10"])
    trainer = MetaTrainer(cfg)
    probe = TaskGroup.draw(TaskSampler(cfg.tasks, 123)).state_dict()

    def probe_loss() -> float:
        groups = [TaskGroup.from_state_dict(copy.deepcopy(probe))]
        with torch.no_grad():
            return float(unroll_truncation(trainer.rule, groups, batched_graph(trainer.rule, groups), 20).meta_loss)

    before = probe_loss()
    for _ in range(12):
        trainer.meta_step()
    after = probe_loss()
    assert after < before - 0.2, (before, after)  # >= 18% lower geometric-mean loss
    assert float(trainer.rule.alpha.detach()) != 0.0


def _poison(trainer: MetaTrainer, monkeypatch, which) -> dict[str, int]:
    """Make the trainer's estimator return NaN meta-gradients on the calls ``which(n)`` selects."""
    real = trainer.estimator.gradient
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        grads, res = real(*args, **kwargs)
        calls["n"] += 1
        if which(calls["n"]):
            grads[0] = grads[0] + float("nan")
        return grads, res

    monkeypatch.setattr(trainer.estimator, "gradient", poisoned)
    return calls


def test_non_finite_meta_gradient_is_skipped_and_counted(tmp_path: Path, monkeypatch) -> None:
    cfg = resolve("quick", None, TINY + [f'out_dir="{tmp_path}"'])
    trainer = MetaTrainer(cfg)
    _poison(trainer, monkeypatch, lambda n: n == 2)
    trainer.meta_step()
    before = copy.deepcopy(trainer.rule.state_dict())
    opt_before = copy.deepcopy(trainer.meta_opt.state_dict()["state"])
    metrics = trainer.meta_step()
    assert metrics["skipped"] == 1.0 and trainer.counters["skipped"] == 1 and trainer.consecutive_skips == 1
    for k, v in trainer.rule.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(torch.equal(opt_before[i]["exp_avg"], s["exp_avg"]) for i, s in trainer.meta_opt.state_dict()["state"].items())
    assert trainer.meta_step()["skipped"] == 1.0
    assert trainer.consecutive_skips == 0  # a finite step resets the run of skips
    assert all(torch.isfinite(p).all() for p in trainer.rule.parameters())


class _AlwaysNaN:
    """Wraps the configured estimator; every meta-gradient it returns is NaN."""

    calls = 0

    def __init__(self, cfg) -> None:
        self.inner = estimators.TBPTT(cfg)
        self.num_particles = self.inner.num_particles

    def gradient(self, rule, groups, graph_inputs, record_ratio):
        type(self).calls += 1
        grads, res = self.inner.gradient(rule, groups, graph_inputs, record_ratio)
        return [torch.full_like(g, float("nan")) for g in grads], res


def test_consecutive_non_finite_meta_gradients_stop_the_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(estimators.ESTIMATORS, "tbptt", _AlwaysNaN)
    _AlwaysNaN.calls = 0
    cfg = resolve("quick", None, TINY + [f'out_dir="{tmp_path}"', 'name="nan"', "meta.steps=10",
                                         "meta.max_consecutive_skips=3", "log.compare_every=0", "log.hist_every=0"])
    with pytest.raises(MetaTrainingError, match="last 3 meta-gradients were non-finite"):
        train(cfg)
    assert _AlwaysNaN.calls == 3  # stopped at once, not at meta.steps
    assert (tmp_path / "nan" / "checkpoints" / "step_000003").is_dir()  # the state it stopped in is kept
    assert not (tmp_path / "nan" / "final.json").exists()

    # the entry point turns the error into exit status 1 (python -m outer_train raises SystemExit(main()))
    argv = ["--preset", "quick", "--steps", "10", "--out", str(tmp_path), "--name", "nan_cli", "--set",
            "meta.max_consecutive_skips=2", "--set", "log.compare_every=0", "--set", "log.hist_every=0"]
    for s in TINY:
        argv += ["--set", s]
    _AlwaysNaN.calls = 0
    assert main(argv) == 1
    assert _AlwaysNaN.calls == 2
    with pytest.raises(ConfigError, match="max_consecutive_skips"):
        resolve("quick", None, ["meta.max_consecutive_skips=0"])


def test_a_registered_estimator_drives_a_meta_step(tmp_path: Path) -> None:
    """A toy estimator (the meta-gradient of the mean log loss after a 1-step unroll, by TBPTT
    with its own truncation) is picked by estimator.kind and moves the rule."""

    class OneStep:
        num_particles = 1
        calls = 0

        def __init__(self, cfg) -> None:
            self.cfg = cfg

        def gradient(self, rule, groups, graph_inputs, record_ratio):
            type(self).calls += 1
            return tbptt_gradient(rule, groups, graph_inputs, self.cfg.tasks.truncation, vmap=False)

    name = "toy_one_step"
    try:
        estimators.register_estimator(name)(OneStep)
        with pytest.raises(ValueError, match="already registered"):
            estimators.register_estimator(name)(OneStep)
        with pytest.raises(ValueError, match="already registered"):
            estimators.register_estimator("tbptt")(OneStep)
        cfg = resolve("quick", None, TINY + [f'out_dir="{tmp_path}"', f"estimator.kind={name}", "meta.lr=0.01"])
        trainer = MetaTrainer(cfg)
        assert isinstance(trainer.estimator, OneStep)
        before = float(trainer.rule.alpha.detach())
        metrics = trainer.meta_step()
        assert OneStep.calls == 1 and metrics["skipped"] == 0.0
        assert metrics["alpha"] != before and torch.isfinite(torch.tensor(metrics["meta_loss"]))
    finally:
        estimators.ESTIMATORS.pop(name, None)
    with pytest.raises(ConfigError, match="estimator.kind must be one of"):
        resolve("quick", None, [f"estimator.kind={name}"])


@pytest.mark.parametrize("kind", ["pes", "tbptt"])
def test_meta_train_new_inputs_moves_only_the_added_input_columns(tmp_path: Path, kind: str) -> None:
    """meta.train = "new_inputs" with rule.horizon on a stored rule: after meta-steps only the two
    horizon columns of the graph projection changed (PES perturbs nothing else); everything the
    stored rule had is bit-identical."""
    from outer_train.train import trainable_mask

    torch.manual_seed(0)
    stored = UpdateRule(RuleConfig(kind="gmn", hidden=4, alpha=0.3, refresh_every=10))
    stored.save_pretrained(tmp_path / "stored")
    cfg = resolve("quick", None, TINY + [f'out_dir="{tmp_path}"', 'name="new"', f'rule.init_from="{tmp_path / "stored"}"',
                                         "rule.horizon=true", 'meta.train="new_inputs"', f'estimator.kind="{kind}"',
                                         "rule.refresh_every=10", "tasks.truncation=10", "tasks.unroll_min=20",
                                         "tasks.unroll_max=40", "meta.lr=0.05", "log.compare_every=0", "log.hist_every=0"])
    trainer = MetaTrainer(cfg)
    mask = trainable_mask(cfg, trainer.rule)
    assert int(mask.sum()) == trainer.rule.net.graph_proj.weight.shape[0] * 2
    before = {k: v.clone() for k, v in trainer.rule.state_dict().items()}
    for _ in range(3):
        trainer.meta_step()
    after = trainer.rule.state_dict()
    for name, old in before.items():
        if name == "net.graph_proj.weight":
            assert torch.equal(after[name][:, :-2], old[:, :-2]) and not torch.equal(after[name][:, -2:], old[:, -2:])
        else:
            assert torch.equal(after[name], old), name

    with pytest.raises(ConfigError, match="needs rule.init_from"):
        resolve("quick", None, TINY + ['meta.train="new_inputs"'])
    plain = resolve("quick", None, TINY + [f'rule.init_from="{tmp_path / "stored"}"', 'meta.train="new_inputs"'])
    with pytest.raises(ValueError, match="no inputs beyond"):
        trainable_mask(plain, UpdateRule.from_pretrained(tmp_path / "stored"))


def test_late_power_weighs_each_truncation_by_the_fraction_of_its_trajectory_done() -> None:
    """late_power p: a group's meta-gradient is scaled by ((step + K) / horizon) ** p, computed before the
    truncation (the same for PES's two particles); p = 0 is the unweighted estimate; the reported
    meta-loss stays unweighted."""
    from outer_train.meta_loss import late_weights

    task = quadratic_task()
    rule = UpdateRule(RuleConfig(kind="mlp", hidden=4, layers=0, alpha=0.2, refresh_every=1))

    def group(step: int, particles: int) -> TaskGroup:
        g = TaskGroup.from_task(task, [0], 20, 0.05, num_particles=particles)
        g.step = step
        return g

    assert late_weights([group(2, 1), group(15, 1), group(18, 1)], 3, 2.0) == pytest.approx([0.25**2, 0.81, 1.0])
    assert late_weights([group(2, 1)], 3, 0.0) == [1.0]
    graph = batched_graph(rule, [group(2, 1)])
    w = (5 / 20) ** 2
    for estimate in (
        lambda p: pes_gradient(rule, PESState(), [group(2, 2)], graph, 3, 1e-3,
                               generator=torch.Generator().manual_seed(0), late_power=p),
        lambda p: tbptt_gradient(rule, [group(2, 1)], graph, 3, late_power=p),
    ):
        (g0, r0), (g2, r2) = estimate(0.0), estimate(2.0)
        torch.testing.assert_close(_flat(g2), w * _flat(g0))
        assert float(r2.meta_loss) == pytest.approx(float(r0.meta_loss))
    with pytest.raises(ConfigError, match="late_power"):
        resolve("quick", None, TINY + ["estimator.late_power=-1"])
