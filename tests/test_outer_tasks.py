"""Task groups: staggered starts cut only each slot's first trajectory, to whole truncations."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from metaopt import GMNOptimizer
from metaopt.optim import RuleConfig, UpdateRule, core
from outer_train.config import resolve
from outer_train.tasks import TaskGroup, TaskSampler
from outer_train.train import MetaTrainer, train
from outer_train.unroll import batched_graph, inner_step

SETS = ['tasks.families=["teacher_student"]', "tasks.max_params=300", "tasks.groups=3", "tasks.group_size=1",
        "tasks.unroll_min=20", "tasks.unroll_max=400", "tasks.truncation=10", "rule.refresh_every=10",
        "tasks.permute_augment=false", "rule.hidden=4", "threads=1", "log.progress=false"]


def _draw(cfg, counter: int, stagger: bool) -> TaskGroup:
    sampler = TaskSampler(cfg.tasks, cfg.seed)
    sampler.counter = counter
    return TaskGroup.draw(sampler, stagger=stagger)


def test_staggered_draw_cuts_the_horizon_to_whole_truncations() -> None:
    cfg = resolve("quick", None, SETS)
    k = cfg.tasks.truncation
    cut_any = False
    for counter in range(8):
        full, cut = _draw(cfg, counter, False), _draw(cfg, counter, True)
        assert full.horizon % k == 0 and full.horizon >= cfg.tasks.unroll_min
        assert cut.horizon % k == 0 and k <= cut.horizon <= full.horizon, (counter, cut.horizon, full.horizon)
        assert cut.spec == full.spec and cut.member_seeds == full.member_seeds  # the same task, only shorter
        cut_any |= cut.horizon < full.horizon
    assert cut_any


def test_only_each_slots_first_group_is_staggered(tmp_path: Path) -> None:
    cfg = resolve("quick", None, SETS + [f'out_dir="{tmp_path}"'])
    assert cfg.tasks.stagger  # on by default
    trainer = MetaTrainer(cfg)
    trainer.refresh_groups()
    first = [g.horizon for g in trainer.groups]
    full = [_draw(cfg, c, False).horizon for c in range(3)]
    assert all(h <= f and h % 10 == 0 for h, f in zip(first, full))
    assert first == [_draw(cfg, c, True).horizon for c in range(3)] and first != full

    for g in trainer.groups:  # every slot finishes its first trajectory
        g.step = g.horizon
    trainer.refresh_groups()
    later = [(g.horizon, g.lr) for g in trainer.groups]
    assert later == [(d.horizon, d.lr) for d in (_draw(cfg, c, False) for c in range(3, 6))]  # drawn in full

    plain = MetaTrainer(resolve("quick", None, SETS + [f'out_dir="{tmp_path}"', "tasks.stagger=false"]))
    plain.refresh_groups()
    assert [g.horizon for g in plain.groups] == full


def test_particles_are_copies_of_every_member(tmp_path: Path) -> None:
    cfg = resolve("quick", None, SETS + ["tasks.group_size=2"])
    sampler = TaskSampler(cfg.tasks, cfg.seed)
    group = TaskGroup.draw(sampler, num_particles=2)
    assert len(group.params) == len(group.states) == 4  # particle-major: p0m0, p0m1, p1m0, p1m1
    assert torch.equal(group.params[0], group.params[2]) and torch.equal(group.params[1], group.params[3])
    assert not torch.equal(group.params[0], group.params[1])
    assert group.params[0] is not group.params[2]
    assert all(s.step == 0 and torch.equal(s.lr_scale, torch.ones_like(s.lr_scale)) for s in group.states)
    assert group.hyper.beta1 == cfg.tasks.beta1 and group.hyper.weight_decay == cfg.tasks.weight_decay


def test_horizon_known_prob_hides_some_horizons_and_survives_checkpoints() -> None:
    """At probability 1 every group tells the rule its horizon (Hyper.total_steps = horizon) and the
    draws are those of a config without the option; below 1 some groups run horizon-unknown
    (total_steps 0), and a checkpointed group keeps its mode."""
    cfg = resolve("quick", None, SETS)
    told = [_draw(cfg, c, False) for c in range(12)]
    assert all(g.show_horizon and g.hyper.total_steps == g.horizon for g in told)
    half = resolve("quick", None, SETS + ["tasks.horizon_known_prob=0.5"])
    mixed = [_draw(half, c, False) for c in range(12)]
    assert {g.show_horizon for g in mixed} == {True, False}
    hidden = next(g for g in mixed if not g.show_horizon)
    assert hidden.hyper.total_steps == 0
    restored = TaskGroup.from_state_dict(hidden.state_dict())
    assert not restored.show_horizon and restored.hyper == hidden.hyper


def test_lr_free_groups_start_at_their_params_and_survive_checkpoints(tmp_path: Path) -> None:
    """tasks.lr_free: the inner lr is the multiplier of Prodigy's estimate (within [lr_scale_min,
    lr_scale_max], no reference lr), each member's state starts at its own init, and a checkpointed
    group resumes bit for bit (the estimate's tensors and scalars included); a short meta-training
    run in this mode takes its steps."""
    cfg = resolve("quick", None, SETS + ["tasks.lr_free=true", "tasks.lr_scale_min=0.5", "tasks.lr_scale_max=2"])
    group = _draw(cfg, 0, False)
    assert group.lr_free and 0.5 <= group.lr <= 2.0
    for p, s in zip(group.params, group.states):
        assert torch.equal(s.start, p) and s.start is not p and s.distance is not None
    rule = UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=0.5, refresh_every=100))
    inner_step(rule, [group], batched_graph(rule, [group]), 0, [group.next_batches()])
    restored = TaskGroup.from_state_dict(group.state_dict())
    assert restored.lr_free and restored.states[0].distance == group.states[0].distance
    for a, b in zip(restored.states, group.states):
        for k, v in b.tensors().items():
            assert torch.equal(getattr(a, k), v)
    assert restored.states[0].distance.last == core.D0  # the first step moved by d0
    result = train(resolve("quick", None, SETS + ["tasks.lr_free=true", "meta.steps=2", f'out_dir="{tmp_path}"']))
    assert result["step"] == 2 and result["skipped_total"] == 0 and math.isfinite(result["meta_loss"])


def test_lr_free_estimate_options_reach_groups_and_survive_checkpoints() -> None:
    """tasks.growth_rate / tasks.estimate_stride / tasks.estimate_warmup: the group's Hyper carries the growth
    rate, its states hold x_0 and s for every stride-th edge only and the warm-up, and all survive a
    checkpoint (a group saved before the warm-up existed resumes without one); outside lr-free mode the
    options are refused."""
    sets = SETS + ["tasks.lr_free=true", "tasks.growth_rate=1.05", "tasks.estimate_stride=4", "tasks.estimate_every=3",
                   "tasks.estimate_warmup=7", "tasks.d0=1e-4"]
    group = _draw(resolve("quick", None, sets), 0, False)
    assert group.hyper.growth_rate == 1.05 and group.estimate_stride == 4
    assert group.hyper.d0 == 1e-4 and all(s.distance == core.DistanceEstimate.begin(1e-4) for s in group.states)
    assert group.estimate_warmup == 7 and all(s.warmup == 7 and s.every == 3 for s in group.states)
    for p, s in zip(group.params, group.states):  # every 4th entry of each tensor, from its first (Prodigy's)
        sampled = torch.cat([t[::4] for t in p.split(group.numels)])
        assert s.stride == 4 and torch.equal(s.start, sampled) and s.grad_sum.numel() == sampled.numel()
    rule = UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=0.5, refresh_every=100))
    inner_step(rule, [group], batched_graph(rule, [group]), 0, [group.next_batches()])
    restored = TaskGroup.from_state_dict(group.state_dict())
    assert restored.hyper == group.hyper and restored.states[0].stride == 4
    assert restored.estimate_warmup == 7 and restored.states[0].warmup == 7
    assert torch.equal(restored.states[0].grad_sum, group.states[0].grad_sum)
    flat_sampled = group.state_dict()  # x_0 as metaopt < 0.3.3 sampled it (the flat vector's every 4th entry)
    for s, p in zip(flat_sampled["states"], group.params):
        s["start"] = p[::4].clone()
    if flat_sampled["states"][0]["start"].numel() != group.states[0].start.numel():
        with pytest.raises(ValueError, match="start the run afresh"):
            TaskGroup.from_state_dict(flat_sampled)
    old = group.state_dict()
    del old["estimate_warmup"], old["d0"]
    assert TaskGroup.from_state_dict(old).states[0].warmup == 0 and TaskGroup.from_state_dict(old).hyper.d0 == core.D0
    assert _draw(resolve("quick", None, SETS + ["tasks.lr_free=true"]), 0, False).states[0].warmup == core.ESTIMATE_WARMUP
    with pytest.raises(ValueError, match="lr_free"):
        resolve("quick", None, SETS + ["tasks.growth_rate=1.05"])
    with pytest.raises(ValueError, match="estimate_stride"):
        resolve("quick", None, SETS + ["tasks.lr_free=true", "tasks.estimate_stride=0"])
    with pytest.raises(ValueError, match="estimate_warmup"):
        resolve("quick", None, SETS + ["tasks.lr_free=true", "tasks.estimate_warmup=-1"])
    with pytest.raises(ValueError, match="lr_free"):  # as GMNOptimizer refuses it without lr_free=True
        resolve("quick", None, SETS + ["tasks.estimate_warmup=5"])
    with pytest.raises(ValueError, match="lr_free"):
        resolve("quick", None, SETS + ["tasks.d0=1e-4"])
    with pytest.raises(ValueError, match="d0"):
        resolve("quick", None, SETS + ["tasks.lr_free=true", "tasks.d0=0.0"])


def test_per_tensor_groups_keep_each_tensors_estimate_and_survive_checkpoints(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """tasks.per_tensor: meta-training's inner optimizer keeps every tensor's own estimate as
    GMNOptimizer(per_tensor=a) does; a checkpointed group resumes bit for bit (each tensor's estimate and
    its gradient sum included); a short meta-training run in this mode takes its steps; without lr-free
    the option is refused; with a strided estimate each tensor's sum holds its sampled entries only."""
    cfg = resolve("quick", None, SETS + ["tasks.lr_free=true", "tasks.per_tensor=0.5", "tasks.estimate_every=2",
                                         "tasks.estimate_warmup=2"])
    group = _draw(cfg, 0, False)
    assert group.per_tensor == 0.5
    for s in group.states:
        assert s.tensor_distances.share == 0.5 and s.tensor_distances.sizes == tuple(group.numels)
    rule = UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=0.5, refresh_every=10))
    graph = batched_graph(rule, [group])
    for _ in range(5):
        inner_step(rule, [group], graph, 0, [group.next_batches()])
    ests = group.states[0].tensor_distances.estimates
    assert len({e.d for e in ests}) > 1 and all(e.d > core.D0 for e in ests)  # each its own, and grown
    restored = TaskGroup.from_state_dict(group.state_dict())
    assert restored.per_tensor == 0.5
    assert restored.states[0].tensor_distances == group.states[0].tensor_distances
    assert torch.equal(restored.states[0].tensor_grad_sum, group.states[0].tensor_grad_sum)
    batches = group.next_batches()
    inner_step(rule, [group], graph, 0, [batches])
    inner_step(rule, [restored], batched_graph(rule, [restored]), 0, [batches])
    for a, b in zip(restored.params, group.params):
        assert torch.equal(a, b)
    result = train(resolve("quick", None, SETS + ["tasks.lr_free=true", "tasks.per_tensor=0.7", "meta.steps=2",
                                                  "tasks.estimate_every=5", f'out_dir="{tmp_path}"']))
    assert result["step"] == 2 and result["skipped_total"] == 0 and math.isfinite(result["meta_loss"])
    # the rule records the mode it was meta-trained in, and GMNOptimizer runs it so by default
    rule = UpdateRule.from_pretrained(Path(result["run_dir"]) / "rule")
    assert rule.config.lr_free == {"per_tensor": 0.7, "estimate_every": 5}
    opt = GMNOptimizer(torch.nn.Linear(3, 2), rule=rule)
    assert opt.lr_free and (opt.per_tensor, opt.estimate_every, opt.param_groups[0]["lr"]) == (0.7, 5, 1.0)
    monkeypatch.setattr(core, "MIN_TENSOR_SAMPLE", 4)  # the quick tasks' small tensors read every 3rd entry too
    strided = _draw(resolve("quick", None, SETS + ["tasks.lr_free=true", "tasks.per_tensor=0.5",
                                                   "tasks.estimate_stride=3"]), 0, False)
    want = sum(-(-n // 3) if n >= 12 else n for n in strided.numels)
    assert want < sum(strided.numels)
    assert all(s.tensor_grad_sum.numel() == s.start.numel() == want for s in strided.states)
    for _ in range(5):  # the first estimate is at x_0 (no gap yet): the estimates grow from the second on
        inner_step(rule, [strided], batched_graph(rule, [strided]), 0, [strided.next_batches()])
    assert all(e.d > core.D0 for e in strided.states[0].tensor_distances.estimates)
    for bad in (["tasks.per_tensor=0.5"], ["tasks.lr_free=true", "tasks.per_tensor=1.5"]):
        with pytest.raises(ValueError, match="per_tensor"):
            resolve("quick", None, SETS + bad)


def test_shared_sums_groups_keep_no_tensor_sums_and_survive_checkpoints() -> None:
    """tasks.shared_sums: meta-training's inner optimizer keeps no per-tensor gradient sum (each tensor's
    estimate reads the network's, as GMNOptimizer(shared_sums=True)); every tensor still has its own
    estimate, a checkpointed group resumes bit for bit, and without per-tensor estimates the option is
    refused."""
    cfg = resolve("quick", None, SETS + ["tasks.lr_free=true", "tasks.per_tensor=0.5", "tasks.shared_sums=true",
                                         "tasks.estimate_every=2"])
    group = _draw(cfg, 0, False)
    assert group.shared_sums and all(s.tensor_grad_sum is None for s in group.states)
    rule = UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=0.5, refresh_every=10))
    graph = batched_graph(rule, [group])
    for _ in range(5):
        inner_step(rule, [group], graph, 0, [group.next_batches()])
    state = group.states[0]
    assert state.tensor_grad_sum is None and "tensor_grad_sum" not in state.tensors()
    ests = state.tensor_distances.estimates
    assert len({e.d for e in ests}) > 1 and all(e.d > core.D0 for e in ests)
    assert sum(e.numerator for e in ests) == pytest.approx(state.distance.numerator, rel=1e-5)
    restored = TaskGroup.from_state_dict(group.state_dict())
    assert restored.shared_sums and restored.states[0].tensor_distances == state.tensor_distances
    batches = group.next_batches()
    inner_step(rule, [group], graph, 0, [batches])
    inner_step(rule, [restored], batched_graph(rule, [restored]), 0, [batches])
    for a, b in zip(restored.params, group.params):
        assert torch.equal(a, b)
    from outer_train.compare import Comparison

    comparison = Comparison(cfg, steps=10, n_tasks=1)  # the comparisons run the rule as the inner optimizer ran
    assert comparison.lr_free_options["shared_sums"] is True and comparison.lr_free_options["per_tensor"] == 0.5
    with pytest.raises(ValueError, match="shared_sums"):
        resolve("quick", None, SETS + ["tasks.lr_free=true", "tasks.shared_sums=true"])


def test_settled_growth_rate_reaches_the_inner_optimizer_and_survives_checkpoints() -> None:
    """tasks.settled_growth_rate: meta-training's inner optimizer caps the estimate's growth once settled,
    as GMNOptimizer(settled_growth_rate=r); the settled flags survive a checkpoint and the comparisons run
    the rule with the same option; without lr_free, or below 1, it is refused."""
    cfg = resolve("quick", None, SETS + ["tasks.lr_free=true", "tasks.per_tensor=0.5", "tasks.settled_growth_rate=1.01",
                                         "tasks.estimate_every=2"])
    group = _draw(cfg, 0, False)
    assert group.settled_growth_rate == 1.01 and group.hyper.settled_growth_rate == 1.01
    rule = UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=0.5, refresh_every=10))
    graph = batched_graph(rule, [group])
    for _ in range(12):
        inner_step(rule, [group], graph, 0, [group.next_batches()])
    state = group.states[0]
    assert not state.distance.settled  # this task's estimate still grows at step 12: settle it by hand
    tens = state.tensor_distances
    state.distance = replace(state.distance, settled=True)
    state.tensor_distances = replace(tens, estimates=(replace(tens.estimates[0], settled=True), *tens.estimates[1:]))
    restored = TaskGroup.from_state_dict(group.state_dict())
    assert restored.settled_growth_rate == 1.01
    assert restored.states[0].distance == state.distance and restored.states[0].distance.settled
    assert restored.states[0].tensor_distances == state.tensor_distances
    d = state.distance.d
    batches = group.next_batches()
    for _ in range(2):  # an estimate every 2nd step: one in these two
        inner_step(rule, [group], graph, 0, [batches])
        inner_step(rule, [restored], batched_graph(rule, [restored]), 0, [batches])
        batches = group.next_batches()
    for a, b in zip(restored.params, group.params):
        assert torch.equal(a, b)
    assert d < group.states[0].distance.d <= d * 1.01**2 * (1 + 1e-12)  # grew, by at most the settled rate
    from outer_train.compare import Comparison

    assert Comparison(cfg, steps=10, n_tasks=1).lr_free_options["settled_growth_rate"] == 1.01
    for bad in (["tasks.settled_growth_rate=1.01"], ["tasks.lr_free=true", "tasks.settled_growth_rate=0.9"]):
        with pytest.raises(ValueError, match="settled_growth_rate"):
            resolve("quick", None, SETS + bad)


def _step_alike(rule: UpdateRule, group: TaskGroup, graph, restored: TaskGroup, steps: int = 20) -> None:
    """Steps a group and its restored copy on the same batches; their parameters stay equal to the bit."""
    for _ in range(steps):
        batches = group.next_batches()
        inner_step(rule, [group], graph, 0, [batches])
        inner_step(rule, [restored], batched_graph(rule, [restored]), 0, [batches])
    for a, b in zip(restored.params, group.params):
        assert torch.equal(a, b)


def test_plateau_block_reaches_the_inner_optimizer_and_survives_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """tasks.plateau_block: meta-training's inner optimizer decays its step on plateaus of the gradient norm,
    as GMNOptimizer(plateau_block=B) (blocks of 4 steps here, the drop condition off so that cuts come); the
    decay's fields survive a checkpoint mid-block and the resumed group steps as the original; the comparisons
    run the rule with the same option; without lr_free, or below 0, it is refused."""
    monkeypatch.setattr(core, "PLATEAU_DROP", 1.0)
    monkeypatch.setattr(core, "PLATEAU_SAMPLE_EVERY", 1)
    cfg = resolve("quick", None, SETS + ["tasks.lr_free=true", "tasks.plateau_block=4"])
    group = _draw(cfg, 0, False)
    assert group.plateau_block == 4 and group.states[0].plateau == core.PlateauDecay()
    rule = UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=0.5, refresh_every=10))
    graph = batched_graph(rule, [group])
    for _ in range(30):
        inner_step(rule, [group], graph, 0, [group.next_batches()])
    inner_step(rule, [group], graph, 0, [group.next_batches()])  # mid-block
    state = group.states[0]
    assert state.plateau.blocks == 7 and state.plateau.samples == 3
    restored = TaskGroup.from_state_dict(group.state_dict())
    assert restored.plateau_block == 4 and restored.states[0].plateau == state.plateau
    _step_alike(rule, group, graph, restored)
    assert restored.states[0].plateau == group.states[0].plateau and group.states[0].plateau.cuts >= 1
    from outer_train.compare import Comparison

    assert Comparison(cfg, steps=10, n_tasks=1).lr_free_options["plateau_block"] == 4
    for bad in (["tasks.plateau_block=500"], ["tasks.lr_free=true", "tasks.plateau_block=-1"],
                ["tasks.lr_free=true", "tasks.plateau_boost=true"]):
        with pytest.raises(ValueError, match="plateau_block"):
            resolve("quick", None, SETS + bad)


def test_plateau_boost_reaches_the_inner_optimizer_and_survives_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """tasks.plateau_boost: meta-training's inner optimizer also doubles its step where the gradient keeps
    falling (the fall and depth conditions relaxed so that boosts come); the setting and the boosts survive a
    checkpoint and the resumed group steps as the original; the comparisons run the rule with the same option."""
    monkeypatch.setattr(core, "PLATEAU_BOOST_FALL", 1.0)
    monkeypatch.setattr(core, "PLATEAU_BOOST_DROP", 1.0)
    monkeypatch.setattr(core, "PLATEAU_SAMPLE_EVERY", 1)
    cfg = resolve("quick", None, SETS + ["tasks.lr_free=true", "tasks.plateau_block=4", "tasks.plateau_boost=true"])
    group = _draw(cfg, 0, False)
    assert group.plateau_boost and group.states[0].plateau == core.PlateauDecay(boost=True)
    rule = UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=0.5, refresh_every=10))
    graph = batched_graph(rule, [group])
    for _ in range(30):
        inner_step(rule, [group], graph, 0, [group.next_batches()])
    restored = TaskGroup.from_state_dict(group.state_dict())
    assert restored.plateau_boost and restored.states[0].plateau == group.states[0].plateau
    _step_alike(rule, group, graph, restored)
    assert restored.states[0].plateau == group.states[0].plateau
    assert group.states[0].plateau.boosts == core.PLATEAU_BOOST_MAX and not group.states[0].plateau.spiked
    from outer_train.compare import Comparison

    assert Comparison(cfg, steps=10, n_tasks=1).lr_free_options["plateau_boost"] is True


def test_plateau_anchor_reaches_the_inner_optimizer_and_survives_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """tasks.plateau_anchor: meta-training's inner optimizer anchors its doubling at the step of its grant (as
    GMNOptimizer(plateau_anchor=True)); the setting and the anchor survive a checkpoint and the resumed group
    steps as the original; without tasks.plateau_boost it is refused; the comparisons pass it on."""
    monkeypatch.setattr(core, "PLATEAU_BOOST_FALL", 1.0)
    monkeypatch.setattr(core, "PLATEAU_BOOST_DROP", 1.0)
    monkeypatch.setattr(core, "PLATEAU_SAMPLE_EVERY", 1)
    cfg = resolve("quick", None, SETS + ["tasks.lr_free=true", "tasks.plateau_block=4", "tasks.plateau_boost=true",
                                         "tasks.plateau_anchor=true"])
    group = _draw(cfg, 0, False)
    assert group.plateau_anchor and group.states[0].plateau == core.PlateauDecay(boost=True, anchored=True)
    rule = UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=0.5, refresh_every=10))
    graph = batched_graph(rule, [group])
    for _ in range(30):
        inner_step(rule, [group], graph, 0, [group.next_batches()])
    assert group.states[0].plateau.anchor > 0
    restored = TaskGroup.from_state_dict(group.state_dict())
    assert restored.plateau_anchor and restored.states[0].plateau == group.states[0].plateau
    _step_alike(rule, group, graph, restored)
    assert restored.states[0].plateau == group.states[0].plateau
    from outer_train.compare import Comparison

    assert Comparison(cfg, steps=10, n_tasks=1).lr_free_options["plateau_anchor"] is True
    with pytest.raises(ValueError, match="tasks.plateau_anchor"):
        resolve("quick", None, SETS + ["tasks.lr_free=true", "tasks.plateau_block=4", "tasks.plateau_anchor=true"])
