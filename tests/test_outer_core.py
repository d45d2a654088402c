"""One update core: a meta-training inner step (``outer_train.unroll.inner_step``, or
``metaopt.optim.core.step``) is exactly one `GMNOptimizer` step, and second-order meta-gradients
stay finite where Adam's second moment is exactly zero."""

from __future__ import annotations

import math
import copy

import pytest
import torch
from torch import nn

from metaopt.optim import FeatureConfig, GMNOptimizer, GraphIndex, Hyper, OptState, RuleConfig, UpdateRule, core
from outer_train.tasks import TaskGroup
from outer_train.tbptt import tbptt_gradient
from outer_train.unroll import batched_graph, inner_step
from test_optim_common import flat_params
from test_outer_common import ModelTask, unflat

LR, BETAS, EPS, WD = 1e-2, (0.8, 0.95), 1e-6, 0.05  # none of them Adam's defaults


def _classifier_task() -> ModelTask:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    make = lambda g: (torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g))  # noqa: E731
    return ModelTask(model, torch.zeros(2, 6), make, nn.functional.cross_entropy)


@pytest.mark.parametrize("kind", ["gmn", "mlp"])
@pytest.mark.parametrize("path", ["inner_step", "core.step"])
@pytest.mark.parametrize("extra", ["none", "relative_lr", "horizon", "snr", "lr_free", "lr_free_options"])
def test_meta_training_step_equals_gmn_optimizer_step(kind: str, path: str, extra: str) -> None:
    """Five steps with k = 2 (refreshes on steps 1, 3, 5; the scale held on 2 and 4), non-default
    betas, eps and weight decay, a rule with alpha != 0: parameters and the whole optimizer state
    agree to 1e-6 at every step, each side running on its own trajectory (also with the feature
    that reads the lr, which the optimizer takes from its param groups and meta-training from Hyper,
    and with the horizon features: the optimizer's total_steps, the trajectory's horizon; and with the
    snr features, whose bias correction reads the non-default betas on both sides; and lr-free, where
    Prodigy's estimate sets the step, the scale is normalised and a relative-lr rule reads its own
    default lr on both sides; and lr-free with Prodigy's options, a growth rate that binds and an
    estimate reading every third edge on every second step after two warm-up steps, and a rule whose geometric-mean scale
    corrects the estimate, global_bound)."""
    task = _classifier_task()
    torch.manual_seed(0)
    free = extra.startswith("lr_free")
    options = extra == "lr_free_options"
    growth, stride, every, warmup, start = (1.2, 3, 2, 2, 2e-6) if options else (math.inf, 1, 1, 0, core.D0)
    lr = 0.7 if free else LR  # lr-free: the multiplier of the estimate
    features = FeatureConfig(relative_lr=extra in ("relative_lr", "lr_free", "lr_free_options"), horizon=extra == "horizon", snr=extra == "snr")
    rule = UpdateRule(RuleConfig(kind=kind, hidden=8, alpha=0.5, refresh_every=2, features=features,
                                 global_bound=0.05 if options else 0.0))
    if options:  # a trained correction of d: part of the network's mean output and a constant
        with torch.no_grad():
            rule.global_gate.fill_(0.5), rule.global_offset.fill_(0.01)
    model = copy.deepcopy(task.model)
    opt = GMNOptimizer(model, rule=rule, lr=lr, betas=BETAS, eps=EPS, weight_decay=WD, graph=task.graph, total_steps=5,
                       lr_free=free, **({"growth_rate": growth, "estimate_stride": stride, "estimate_every": every,
                          "estimate_warmup": warmup, "d0": start} if options else {}))
    group = TaskGroup.from_task(task, [0], horizon=5, lr=lr, betas=BETAS, eps=EPS, weight_decay=WD, lr_free=free,
                                growth_rate=growth, estimate_stride=stride, estimate_every=every, estimate_warmup=warmup,
                                d0=start)
    assert group.hyper == Hyper(lr, *BETAS, EPS, WD, total_steps=5, growth_rate=growth, d0=start)
    graph_inputs = batched_graph(rule, [group])
    prepared, index = rule.prepare(task.graph, "cpu"), GraphIndex.from_graph(task.graph, "cpu")
    params = flat_params(model)
    state = OptState.zeros(index.num_edges, start=params if free else None, stride=stride, every=every, warmup=warmup,
                           sizes=tuple(p.numel() for p in model.parameters()))
    if free:  # as if well into a run (from d0 = 1e-6 five steps barely move): both sides start at d = 1e-3
        # (with options: a numerator as if the run had come far, so that the growth rate binds at every step)
        d0, numerator = (1e-5, 1.0) if options else (1e-3, 0.0)
        state.distance = group.states[0].distance = core.DistanceEstimate(numerator, d=d0, last=d0)
        opt.state["distance"] = opt.state["distance_last"] = d0
        opt.state["distance_numerator"] = numerator
    batches = task.batches(0)
    previous_scale = None
    for t in range(1, 6):
        x, y = next(batches)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if path == "inner_step":
            inner_step(rule, [group], graph_inputs, 0, [[(x, y)]])
            params, state = group.params[0], group.states[0]
        else:
            grad = torch.func.grad(task.functional_loss)(unflat(task, params), (x, y))
            grad = torch.cat([g.reshape(-1) for g in grad.values()])
            params, state = core.step(rule, prepared, index, params, grad, state,
                                      Hyper(lr, *BETAS, EPS, WD, total_steps=5, growth_rate=growth, d0=start))
        assert state.step == t
        torch.testing.assert_close(params.detach(), flat_params(model), rtol=0, atol=1e-6)
        for key in ("exp_avg", "exp_avg_sq", "lr_scale", *(("grad_sum",) if free else ())):
            torch.testing.assert_close(getattr(state, key).detach(), opt._buffers[key], rtol=1e-5, atol=1e-6)
        if free:
            assert state.distance.d == pytest.approx(opt.distance, rel=1e-5) and (t == 1 or state.distance.numerator != 0)
        if options:  # growing at the capped rate on steps 1, 2 (warm-up) and 4 (standing for steps 3 and 4)
            grown = t if t <= warmup or t % 2 == 0 else t - 1
            assert state.distance.d == pytest.approx(d0 * growth**grown, rel=1e-9) and state.distance.d < state.distance.peak
            assert state.grad_sum.numel() == sum(-(-p.numel() // 3) for p in model.parameters())  # each tensor's every 3rd
        scale = state.lr_scale.detach()
        assert (scale - 1).abs().max() > 1e-3  # the rule is not Adam
        if free:  # lr-free, the network's geometric-mean scale is 1, or within exp(+-global_bound) of it
            log_g = abs(float(scale.log().mean()))
            assert 1e-4 < log_g < 0.05 if options else log_g < 1e-5
        if t % 2 == 0:  # not a refresh step: the scale of the step before is reused
            assert torch.equal(scale, previous_scale)
        else:
            assert previous_scale is None or not torch.equal(scale, previous_scale)
        previous_scale = scale.clone()
    assert opt.rule_refreshes == 3


def test_core_step_is_pure() -> None:
    task = _classifier_task()
    rule = UpdateRule(RuleConfig(kind="gmn", hidden=8, alpha=0.3, refresh_every=1))
    params = flat_params(task.model)
    state = OptState.zeros(params.numel())
    before = (params.clone(), copy.deepcopy(state))
    new_params, new_state = core.step(rule, task.graph, GraphIndex.from_graph(task.graph, "cpu"), params,
                                      torch.randn_like(params), state, Hyper(LR))
    assert torch.equal(params, before[0]) and state.step == 0
    for key in ("exp_avg", "exp_avg_sq", "lr_scale"):
        assert torch.equal(getattr(state, key), getattr(before[1], key))
    assert new_state.step == 1 and not torch.equal(new_params, params)


def _dead_unit_task(dead: int) -> ModelTask:
    """A ReLU MLP whose first ``dead`` of 8 hidden units never fire (bias -100): their incoming
    weights, biases and outgoing weights get exactly zero gradient, so Adam's v stays exactly 0
    there. With all 8 dead, whole tensors (the first layer's weight and bias, the second layer's
    weight) never get a gradient, like a parameter the loss never uses."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        model[0].bias[:dead] = -100.0
    make = lambda g: (torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g))  # noqa: E731
    return ModelTask(model, torch.zeros(2, 4), make)


def _second_order_grads(members: int, dead: int) -> list[torch.Tensor]:
    task = _dead_unit_task(dead)
    torch.manual_seed(0)
    rule = UpdateRule(RuleConfig(kind="gmn", hidden=8, alpha=0.5, refresh_every=2))
    groups = [TaskGroup.from_task(task, list(range(members)), horizon=4, lr=1e-2)]
    grads, res = tbptt_gradient(rule, groups, batched_graph(rule, groups), 4, second_order=True)
    v = groups[0].states[0].exp_avg_sq
    assert int((v == 0).sum()) == 6 * dead  # the dead units' weights (4 each), biases and outgoing weights
    return grads


@pytest.mark.parametrize("dead", [4, 8])
@pytest.mark.parametrize("members", [1, 2])  # a loop and vmap over members
def test_second_order_meta_gradient_is_finite_with_dead_units(members: int, dead: int, monkeypatch) -> None:
    grads = _second_order_grads(members, dead)
    flat = torch.cat([g.reshape(-1) for g in grads])
    assert torch.isfinite(flat).all() and flat.abs().max() > 0
    # what the safe sqrt prevents: the plain sqrt's gradient at v = 0 is inf * 0 = NaN
    import metaopt.optim.core as core_mod
    import metaopt.optim.features as features_mod

    monkeypatch.setattr(core_mod, "safe_sqrt", torch.sqrt)
    monkeypatch.setattr(features_mod, "safe_sqrt", torch.sqrt)
    naive = torch.cat([g.reshape(-1) for g in _second_order_grads(members, dead)])
    assert not torch.isfinite(naive).all()


def _regression_task() -> ModelTask:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 5), nn.SiLU(), nn.Linear(5, 2))
    make = lambda g: (torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g))  # noqa: E731
    return ModelTask(model, torch.zeros(2, 3), make)


def test_batched_inner_step_of_many_members_equals_one_optimizer_each() -> None:
    """Two architectures x two members (vmapped), one rule forward over the batch of all four graphs
    per refresh: every member follows its own GMNOptimizer run on its own batches."""
    tasks = [_classifier_task(), _regression_task()]
    losses = [nn.functional.cross_entropy, nn.functional.mse_loss]
    torch.manual_seed(0)
    rule = UpdateRule(RuleConfig(kind="gmn", hidden=8, alpha=0.5, refresh_every=2))
    groups = [TaskGroup.from_task(t, [0, 1], horizon=4, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD) for t in tasks]
    assert all(g.vmappable for g in groups)
    graph_inputs = batched_graph(rule, groups)
    runs = []  # (group index, member, model, optimizer, batch stream)
    for gi, (task, group) in enumerate(zip(tasks, groups)):
        for mi, seed in enumerate(group.member_seeds):
            model = copy.deepcopy(task.model)
            opt = GMNOptimizer(model, rule=rule, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, graph=task.graph)
            runs.append((gi, mi, model, opt, task.batches(seed)))
    for _ in range(4):
        batches = [[None, None], [None, None]]
        for gi, mi, model, opt, stream in runs:
            x, y = batches[gi][mi] = next(stream)
            opt.zero_grad()
            losses[gi](model(x), y).backward()
            opt.step()
        inner_step(rule, groups, graph_inputs, 0, batches)
        for gi, mi, model, opt, _ in runs:
            torch.testing.assert_close(groups[gi].params[mi].detach(), flat_params(model), rtol=0, atol=1e-6)
            torch.testing.assert_close(groups[gi].states[mi].lr_scale.detach(), opt._buffers["lr_scale"], rtol=1e-5, atol=1e-6)
    # the members really differ (their own batches), and so do their scales
    assert not torch.equal(groups[0].states[0].lr_scale, groups[0].states[1].lr_scale)
