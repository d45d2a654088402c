"""The plateau decay's boost (GMNOptimizer(lr_free=True, plateau_block=B, plateau_boost=True)): at a block's end
a doubling of the lr-free step is granted where the block's gradient norm fell 4x since the block before and
sits 10^4 below its largest sample, at most twice for True (an int n: at most n); each is ramped in over the next 10 samples (2^(1/10) per
sample), and a spike (a sample 100x above the last block's mean, or not finite) takes every doubling back for
good. The decision itself; the boost is exactly the lr raised by hand on the same steps; on a separable
classification it boosts and ends lower than the unboosted run; it survives a checkpoint and states of 0.8
load; the functional core agrees; bad values are refused. Anchored (``plateau_anchor``, 0.11), a doubling is of
the step at its grant: the estimate's growth after it counts towards the doubling instead of compounding with it."""

from __future__ import annotations

import copy
from dataclasses import replace
import functools
import math

import pytest
import torch
from torch import nn

from metaopt.optim import GMNOptimizer, core
from metaopt.optim.optimizer import PLATEAU_KEYS
from metaopt.optim.rules import RETIRED_RULES
from test_optim_per_tensor import _normed
from test_optim_plateau import _blocks as _plateau_blocks


_blocks = functools.partial(_plateau_blocks, boost=True)  # a boosting decay through closed blocks of samples


def test_boosts_where_the_gradient_keeps_falling_deep_in_the_fit() -> None:
    """A boost needs a block before, a 4x fall since it and a mean 10^4 below the peak; each doubling ramps in
    by 2^(1 / PLATEAU_RAMP) per sample after it is granted; at most PLATEAU_BOOST_MAX; none without the setting;
    cuts are counted apart and still come on a level block."""
    granted = _blocks(1.0, 1e-5)
    assert granted.boosts == 1 and granted.ramp == 0 and granted.scale == 1.0
    for k in range(1, 2 * core.PLATEAU_RAMP):
        granted = granted.sampled(1e-5)
        assert granted.ramp == min(k, core.PLATEAU_RAMP)
        assert granted.scale == core.PLATEAU_BOOST ** (min(k, core.PLATEAU_RAMP) / core.PLATEAU_RAMP)
    assert granted.scale == core.PLATEAU_BOOST
    assert _blocks(1.0, 1e-5, 1e-6, per_block=30).boosts == 2
    assert _blocks(1.0, 1e-5, 1e-6, 1e-7, per_block=30).scale == 4.0
    assert _blocks(1.0, 1e-5, 1e-6, 1e-7, 1e-8).boosts == core.PLATEAU_BOOST_MAX == 2
    assert _blocks(1e-5).boosts == 0  # the first block: nothing to compare with
    assert _blocks(1.0, 1e-3).boosts == 0  # fell 1000x, but only 10^3 below the peak: still the first descent
    assert _blocks(1.0, 1e-5, 0.5e-5).boosts == 1  # fell 2x: no second boost
    assert _blocks(1.0, 1e-5, 1e-6, boost=False).boosts == 0
    assert _blocks(1.0, 1e-5, 1e-6, 1e-7, boost=1).boosts == 1  # plateau_boost=1 (GMNOptimizer(model) since 0.10)
    assert _blocks(1.0, 1e-5, 1e-6, 1e-7, 1e-8, boost=3).boosts == 3
    # True is 0.9's cap (states saved by 0.9 record the setting as True)
    assert core.PlateauDecay(boost=True).boost == core.PLATEAU_BOOST_MAX == 2 and core.PlateauDecay().boost == 0
    level = _blocks(1.0, 1e-5, 1e-5, per_block=30)
    assert level.boosts == 1 and level.cuts == 1 and level.scale == core.PLATEAU_BOOST * core.PLATEAU_FACTOR
    assert core.PlateauDecay.from_row(level.row(), boost=True) == level


def test_a_spike_takes_every_boost_back_for_good() -> None:
    """While boosted, a sample PLATEAU_SPIKE times above the last block's mean (or NaN / inf) takes the boosts
    back and no later block boosts; below that it is a sample like any other; unboosted, a spike is not one."""
    boosted = _blocks(1.0, 1e-5, 1e-6)
    assert boosted.sampled(0.9e-4).boosts == 2  # 90x the last block's mean
    for spike in (2e-4, 1.0, math.nan, math.inf):
        back = boosted.sampled(spike)
        assert back.boosts == 0 == back.ramp and back.spiked and back.scale == 1.0
    back = boosted.sampled(2e-4)
    assert back.samples == boosted.samples + 1  # the spike is still a sample of its block
    for level in (1e-7, 1e-8, 1e-9):
        for _ in range(3):
            back = back.sampled(level)
        back = back.closed()
    assert back.boosts == 0 and back.spiked
    assert _blocks(1.0, 1e-5, boost=False).sampled(1.0).spiked is False


def _separable(steps: int, plateau_block: int, boost: bool | int, lr_at: dict | None = None, batch: int = 0,
               **kw) -> tuple[nn.Module, GMNOptimizer, list[int], list[float]]:
    """A linearly separable 2-class problem fitted by a small MLP under cross-entropy (the gradient falls by
    orders of magnitude with the loss); returns the model, the optimizer, the step -> scale of each change of the
    boost's ramp (of the step's scale) and the losses."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 10, generator=g)
    y = (x @ torch.randn(10, generator=g) > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 2))
    opt = GMNOptimizer(model, **RETIRED_RULES["lrfree_plateau"].kwargs(plateau_block=plateau_block), plateau_boost=boost, **kw)
    g = torch.Generator().manual_seed(1)
    ramps, ramp, losses = {}, 0, []
    for t in range(1, steps + 1):
        if lr_at and t in lr_at:
            for group in opt.param_groups:
                group["lr"] = lr_at[t]
        i = torch.randint(0, len(x), (batch,), generator=g) if batch else slice(None)
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if boost and int(opt.state["plateau_ramp"]) != ramp:
            ramp = int(opt.state["plateau_ramp"])
            ramps[t] = core.PLATEAU_BOOST ** (ramp / core.PLATEAU_RAMP)
    return model, opt, ramps, losses


def test_on_a_separable_fit_it_boosts_and_the_boost_is_the_lr_raised_on_those_steps() -> None:
    """Cross-entropy on separable data: the gradient keeps falling, the boost doubles the step twice, ramped in
    on the sampled steps after two block ends, and the run ends at a lower loss than the same run without it.
    The unboosted run with its lr raised by hand on the same steps to the same scale is the same bit for bit."""
    block, steps = 100, 1200
    model, opt, ramps, losses = _separable(steps, block, True)
    assert opt.plateau_boosts == 2 and not opt.state["plateau_spiked"] and len(ramps) == 2 * core.PLATEAU_RAMP
    assert all(core.plateau_sample_due(t) for t in ramps) and max(ramps.values()) == 4.0
    _, plain, _, plain_losses = _separable(steps, block, False)
    assert plain.plateau_cuts == opt.plateau_cuts == 0
    assert losses[-1] < 0.5 * plain_losses[-1]
    by_hand, _, _, _ = _separable(steps, block, False, lr_at=ramps)
    for a, b in zip(model.parameters(), by_hand.parameters()):
        assert torch.equal(a, b)
    _, once, once_ramps, once_losses = _separable(steps, block, 1)  # at most one doubling
    assert once.plateau_boosts == 1 and max(once_ramps.values()) == 2.0 and len(once_ramps) == core.PLATEAU_RAMP
    assert losses[-1] < once_losses[-1] < plain_losses[-1]


def test_resumes_exactly_while_boosted_and_states_of_0_8_load_unboosted() -> None:
    """The boost's fields are part of the state: a run resumed mid-block with its boosts in force is the same
    bit for bit as the uninterrupted one; a state saved by 0.8 (no boost fields) loads with none."""
    model, opt, _, _ = _separable(1150, 100, True)
    assert opt.plateau_boosts == 2 and int(opt.state["plateau_samples"]) > 0
    clone = copy.deepcopy(model)
    opt2 = GMNOptimizer(clone, **RETIRED_RULES["lrfree_plateau"].kwargs(plateau_block=100), plateau_boost=True)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(64, 10, generator=g), torch.randint(0, 2, (64,), generator=g)
    for m, o in ((model, opt), (clone, opt2)):
        for _ in range(100):
            loss = nn.functional.cross_entropy(m(x), y)
            o.zero_grad()
            loss.backward()
            o.step()
    assert opt2.plateau_boosts == opt.plateau_boosts and opt2.plateau_cuts == opt.plateau_cuts
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)
    old = copy.deepcopy(opt.state_dict())
    for key in PLATEAU_KEYS[6:]:
        del old["state"][key]
    opt3 = GMNOptimizer(copy.deepcopy(model), **RETIRED_RULES["lrfree_plateau"].kwargs(plateau_block=100), plateau_boost=True)
    opt3.load_state_dict(old)
    assert opt3.plateau_boosts == 0 and opt3.plateau_cuts == opt.plateau_cuts


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="needs plateau_block > 0"):
        GMNOptimizer(_normed(), **RETIRED_RULES["lrfree_settled"].kwargs(), plateau_boost=True)
    for bad in (1.0, "2", None.__class__):
        with pytest.raises(TypeError, match="plateau_boost is True, False or the most doublings"):
            GMNOptimizer(_normed(), plateau_boost=bad)
    with pytest.raises(ValueError, match="an int >= 0, got -1"):
        GMNOptimizer(_normed(), plateau_boost=-1)
    with pytest.raises(ValueError, match="needs plateau_block > 0"):
        GMNOptimizer(_normed(), **RETIRED_RULES["lrfree_settled"].kwargs(), plateau_boost=1)
    with pytest.raises(ValueError, match="pass lr_free=True"):
        GMNOptimizer(_normed(), rule="adam", lr=1e-3, plateau_boost=True)
    with pytest.raises(ValueError, match="needs plateau_block > 0"):
        core.OptState.zeros(4, start=torch.zeros(4), plateau_boost=True)


@pytest.mark.parametrize("anchored", [False, True])
def test_core_step_equals_the_optimizer_through_boosts(monkeypatch: pytest.MonkeyPatch, anchored: bool) -> None:
    """Sixty steps lr-free with per-tensor estimates on shared sums, the estimate every second step, blocks of
    10 steps and the fall and depth conditions relaxed (so that boosts come within the run), non-default betas,
    eps and weight decay: the functional core (meta-training's form) and the optimizer agree on the parameters,
    the estimate and every boost."""
    from metaopt.optim import Hyper
    from test_optim_common import flat_params
    from test_optim_per_tensor import _task
    from test_outer_common import lr_free_pair, step_both

    monkeypatch.setattr(core, "PLATEAU_BOOST_FALL", 1.0)
    monkeypatch.setattr(core, "PLATEAU_BOOST_DROP", 1.0)
    monkeypatch.setattr(core, "PLATEAU_SAMPLE_EVERY", 2)
    betas, eps, wd = (0.8, 0.95), 1e-6, 0.05
    task = _task()
    model, opt, rule, prepared, index, params, state = lr_free_pair(
        task, betas, eps, wd, dict(estimate_every=2, per_tensor=0.7, shared_sums=True, plateau_block=10,
                                   plateau_boost=True, plateau_anchor=anchored),
        dict(every=2, per_tensor=0.7, shared_sums=True, plateau_block=10, plateau_boost=True, plateau_anchor=anchored))
    h = Hyper(1.0, *betas, eps, wd)
    batches = task.batches(0)
    seen = 0
    for _ in range(60):
        params, state = step_both(task, model, opt, rule, prepared, index, params, state, h, next(batches))
        torch.testing.assert_close(params, flat_params(model), rtol=1e-5, atol=1e-6)
        assert state.distance.d == pytest.approx(opt.distance, rel=1e-5)
        assert (state.plateau.boosts, state.plateau.cuts) == (opt.plateau_boosts, opt.plateau_cuts)
        assert state.plateau.anchor == pytest.approx(float(opt.state["plateau_anchor"]), rel=1e-5)
        seen = max(seen, opt.plateau_boosts)
    assert seen >= 1 and (state.plateau.anchor > 0) == anchored


def test_an_anchored_doubling_is_of_the_step_at_its_grant() -> None:
    """plateau_anchor: the first doubling anchors at the estimate the step moved by at its grant, and the boost
    tops the estimate up to its ramped multiple of the anchor and no further (1 once d has doubled by itself;
    cuts still halve); a spike clears the anchor; the anchor is part of the state's row (rows of 0.9 and 0.10,
    without it, load unanchored), and unanchored nothing changes."""
    full = core.PLATEAU_RAMP
    assert core.plateau_scale(0, full, 0.1, 0.1) == core.PLATEAU_BOOST
    assert core.plateau_scale(0, full, 0.1, 0.15) == pytest.approx(core.PLATEAU_BOOST / 1.5)
    assert core.plateau_scale(0, full, 0.1, 0.25) == 1.0 and core.plateau_scale(2, full, 0.1, 0.25) == 0.25
    assert core.plateau_scale(0, full // 2, 0.1, 0.1) == core.PLATEAU_BOOST ** 0.5
    assert core.plateau_scale(1, full, 0.0, 0.3) == core.plateau_scale(1, full)  # no anchor: the doubling as is
    p = core.PlateauDecay(boost=1, anchored=True)
    for level, d in ((1.0, 0.05), (1e-5, 0.1)):
        for _ in range(3):
            p = p.sampled(level)
        p = p.closed(0.0, d)
    assert p.boosts == 1 and p.anchor == 0.1  # granted at the second block's end, where the step moved by 0.1
    for _ in range(full):
        p = p.sampled(1e-5)
    assert p.scale == core.PLATEAU_BOOST and p.scale_at(0.1) == core.PLATEAU_BOOST
    assert p.scale_at(0.16) == pytest.approx(core.PLATEAU_BOOST * 0.1 / 0.16) and p.scale_at(0.3) == 1.0
    assert core.PlateauDecay.from_row(p.row(), boost=1, anchored=True) == p
    assert core.PlateauDecay.from_row(p.row()[:9], boost=1, anchored=True).anchor == 0.0  # 0.9's / 0.10's row
    plain = replace(p, anchored=False)
    assert plain.scale_at(0.3) == core.PLATEAU_BOOST  # unanchored: the doubling multiplies whatever d is
    back = p.sampled(1.0)  # a spike
    assert back.spiked and back.boosts == 0 and back.anchor == 0.0 and back.scale_at(0.3) == 1.0


def test_anchored_on_a_separable_fit_is_the_lr_raised_by_hand_to_the_anchored_multiple(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On the separable fit with one doubling, granted while the estimate still climbs (the fall and depth
    conditions relaxed): the anchored run is the unboosted run with its lr raised by hand on every step to
    core.plateau_scale(0, ramp, anchor, d) (d: the estimate the step moves by), bit for bit; the estimate
    outgrows the anchor, so the multiple fades from the doubling to 1, where the unanchored run keeps 2."""
    from metaopt.optim.optimizer import DISTANCE_LAST

    monkeypatch.setattr(core, "PLATEAU_BOOST_FALL", 1.0)
    monkeypatch.setattr(core, "PLATEAU_BOOST_DROP", 1.0)
    block, steps = 20, 300
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 10, generator=g)
    y = (x @ torch.randn(10, generator=g) > 0).long()

    def run(lr_at: dict | None = None, **kw) -> tuple[nn.Module, GMNOptimizer, dict[int, float]]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 2))
        opt = GMNOptimizer(model, **RETIRED_RULES["lrfree_plateau"].kwargs(plateau_block=block), **kw)
        factors, last = {}, 1.0
        for t in range(1, steps + 1):
            if lr_at and t in lr_at:
                for group in opt.param_groups:
                    group["lr"] = lr_at[t]
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if kw.get("plateau_boost"):
                factor = core.plateau_scale(0, int(opt.state["plateau_ramp"]), float(opt.state["plateau_anchor"]),
                                            float(opt.state[DISTANCE_LAST]))
                if factor != last:
                    factors[t], last = factor, factor
        return model, opt, factors

    model, opt, factors = run(plateau_boost=1, plateau_anchor=True)
    assert opt.plateau_boosts == 1 and opt.plateau_cuts == 0 and float(opt.state["plateau_anchor"]) > 0
    assert 1.0 < max(factors.values()) <= core.PLATEAU_BOOST and factors[max(factors)] == 1.0  # faded
    assert opt.distance > core.PLATEAU_BOOST * float(opt.state["plateau_anchor"])
    by_hand, _, _ = run(lr_at=factors, plateau_boost=False)
    for a, b in zip(model.parameters(), by_hand.parameters()):
        assert torch.equal(a, b)
    _, plain, plain_factors = run(plateau_boost=1)
    assert min(plain_factors) == min(factors) and plain_factors[max(plain_factors)] == core.PLATEAU_BOOST


def test_anchor_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="plateau_anchor .* needs plateau_boost"):
        GMNOptimizer(_normed(), **RETIRED_RULES["lrfree_plateau"].kwargs(), plateau_anchor=True)
    with pytest.raises(TypeError, match="plateau_anchor is True or False"):
        GMNOptimizer(_normed(), plateau_anchor=1)
    with pytest.raises(ValueError, match="pass lr_free=True"):
        GMNOptimizer(_normed(), rule="adam", lr=1e-3, plateau_anchor=True)
    with pytest.raises(ValueError, match="needs plateau_boost"):
        core.OptState.zeros(4, start=torch.zeros(4), plateau_block=10, plateau_anchor=True)
    # a rule recording the anchor runs without it where its boost is switched off
    assert GMNOptimizer(_normed(), plateau_boost=0, plateau_anchor=None).plateau_anchor is False


def test_the_spike_guard_halves_an_anchored_step() -> None:
    """spike_guard with an anchored boost in force: the guard halves d and the anchor alike, so the step halves
    (the anchored boost does not top the halved d back up)."""
    from metaopt.optim.optimizer import DISTANCE, DISTANCE_LAST, SPIKE_NORM_EMA

    model = _normed()
    opt = GMNOptimizer(model, per_tensor=0.0, spike_guard=3.0, plateau_anchor=True)
    opt.state.update({DISTANCE: 0.15, DISTANCE_LAST: 0.15, "plateau_anchor": 0.1, "plateau_boosts": 1,
                      "plateau_ramp": core.PLATEAU_RAMP, SPIKE_NORM_EMA: 1e-3})
    step = 0.15 * core.plateau_scale(0, core.PLATEAU_RAMP, 0.1, 0.15)
    grads = [torch.ones_like(p) for p in model.parameters()]
    for _ in range(3):
        opt._watch_spikes(grads, None)
    d, anchor = float(opt.state[DISTANCE]), float(opt.state["plateau_anchor"])
    assert (d, anchor) == (0.075, 0.05) and d * core.plateau_scale(0, core.PLATEAU_RAMP, anchor, d) == step / 2
