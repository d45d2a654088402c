"""The spike guard (GMNOptimizer(spike_guard=ratio)): a sustained gradient-norm spike halves the log of
every lr boost (scale > 1), never pushes a scale below 1, stays in force across refreshes, is lifted
after a clean interval, survives state_dict; one noisy step or a slow rise never trips it; off
(bit-identical) by default."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaopt.optim import GMNOptimizer, RuleConfig, UpdateRule


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _rule(refresh_every: int = 5) -> UpdateRule:
    torch.manual_seed(1)  # a random MLP rule whose scales lie above 1 (1.25-1.55 here)
    return UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=2.0, bound=2.0, refresh_every=refresh_every))


def _opt(model: nn.Module, guard: float | None = 3.0, rule: UpdateRule | str | None = None) -> GMNOptimizer:
    return GMNOptimizer(model, rule=rule or _rule(), lr=1e-2, example_inputs=torch.randn(2, 4), spike_guard=guard)


def _step(opt: GMNOptimizer, model: nn.Module, gain: float = 1.0) -> None:
    g = torch.Generator().manual_seed(int(opt.state["steps_taken"]))
    for p in model.parameters():
        p.grad = gain * torch.randn(p.shape, generator=g)
    opt.step()


def _scale(opt: GMNOptimizer) -> torch.Tensor:
    return opt._buffers["lr_scale"].clone()


def test_off_by_default_and_refuses_bad_ratios():
    a, b = _model(), _model()
    oa, ob = _opt(a, guard=None), _opt(b)
    for _ in range(12):  # no spike: the guard changes nothing
        _step(oa, a), _step(ob, b)
    assert ob.spike_trips == 0
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    for bad in (1.0, 0.5, -2, True):
        with pytest.raises(ValueError, match="spike_guard"):
            _opt(_model(), guard=bad)


def test_one_noisy_step_or_a_slow_rise_never_trips():
    model = _model()
    opt = _opt(model)
    for gain in [1, 1, 1, 100, 1, 1, 30, 1, 1] + [1.1**k for k in range(60)]:  # then 300x over 60 steps
        _step(opt, model, gain)
    assert opt.spike_trips == 0 and opt.state["spike_level"] == 0


def test_a_spike_halves_the_log_boosts_only_and_the_halving_outlives_a_refresh():
    model = _model()
    opt = _opt(model)
    for _ in range(6):  # refreshes at steps 1 and 6; the running mean settles
        _step(opt, model)
    opt._buffers["lr_scale"][::2] = 0.7  # scales on both sides of 1 (this rule's are all above)
    for _ in range(2):  # steps 7-8: the norm jumps 100x; two high steps are not yet a spike
        _step(opt, model, gain=100.0)
    assert opt.spike_trips == 0
    before = _scale(opt)
    assert (before > 1.01).any() and (before < 0.99).any()
    _step(opt, model, gain=100.0)  # step 9: the third: a spike
    after = _scale(opt)
    assert opt.spike_trips == 1 and opt.state["spike_level"] == 1
    boosted = before > 1
    torch.testing.assert_close(after[boosted], before[boosted].sqrt())
    assert torch.equal(after[~boosted], before[~boosted])  # never below the rule's own scale, never below Adam
    _step(opt, model)  # step 10: back to normal
    twin_model = _model()
    twin_model.load_state_dict(model.state_dict())
    twin = _opt(twin_model, guard=None)
    twin.load_state_dict(opt.state_dict())  # the same state, no guard
    _step(opt, model)  # step 11: refresh, but the interval had a trip: the halving stays
    _step(twin, twin_model)  # the rule's own new scale
    assert opt.state["spike_level"] == 1
    own, got = _scale(twin), _scale(opt)
    up = own > 1
    assert up.any()
    torch.testing.assert_close(got[up], own[up].sqrt())
    assert torch.equal(got[~up], own[~up])
    for _ in range(5):  # steps 12-16: a clean interval, then the refresh at step 16 lifts the halving
        _step(opt, model)
    assert opt.state["spike_level"] == 0 and opt.spike_trips == 1


def test_guard_state_survives_state_dict_and_adam_never_trips():
    model = _model()
    opt = _opt(model)
    for gain in (1, 1, 1, 100, 100, 100):
        _step(opt, model, gain)
    assert opt.spike_trips == 1
    other = _opt(_model())
    other.load_state_dict(opt.state_dict())
    assert other.spike_trips == 1 and other.state["spike_level"] == 1
    assert other.state["spike_norm_ema"] == opt.state["spike_norm_ema"]
    adam_model = _model()
    adam = _opt(adam_model, rule="adam")
    for gain in (1, 1, 1, 100, 100, 100):
        _step(adam, adam_model, gain)
    assert adam.spike_trips == 0  # an identity rule has no boost to damp
