"""The settled growth rate (GMNOptimizer(lr_free=True, settled_growth_rate=r)): the lr-free estimate
grows freely from d0 until its first estimate that does not raise d, and from then on by at most r per
step. The rule of the estimate itself; the optimizer and the functional core (meta-training's form)
agree with it on; the flags survive a checkpoint (and a state saved before the option loads
unsettled); bad values are refused."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from metaopt.optim import GMNOptimizer, Hyper, core
from metaopt.optim.optimizer import DISTANCE_SETTLED, TENSOR_DISTANCES
from test_optim_common import flat_params
from test_optim_per_tensor import _normed, _task, _train
from test_outer_common import lr_free_pair, step_both

BETAS, EPS, WD = (0.8, 0.95), 1e-6, 0.05  # none of them Adam's defaults


def _after(est: core.DistanceEstimate, d_hat: float, h: Hyper, span: int = 1) -> core.DistanceEstimate:
    """The estimate after a term whose ratio alone is ``d_hat`` (no decay of the old numerator)."""
    return core._next_estimate(est, d_hat, 1.0, 1.0, 0.0, h, span)


@pytest.mark.parametrize("span", [1, 10])
def test_growth_is_free_until_the_estimate_settles_and_capped_after(span: int) -> None:
    """From d0 the estimate takes every larger ratio whole (the search for its scale); the first estimate
    that does not raise d settles it, and from then on d grows by at most r per step (r^span for an
    estimate standing for span steps) towards the largest ratio so far; without the option, the same
    ratios are taken whole throughout (Prodigy)."""
    r = 1.05
    capped, free = Hyper(1.0, settled_growth_rate=r), Hyper(1.0)
    est = core.DistanceEstimate.begin()
    trace = []
    for d_hat in (0.0, 1e-4, 3e-3, 2e-3, 1.0, 1.0):  # the first term: x = x_0, nothing to read
        est = _after(est, d_hat, capped, span)
        trace.append((est.d, est.settled))
    assert trace[:4] == [(core.D0, False), (1e-4, False), (3e-3, False), (3e-3, True)]
    assert trace[4][0] == pytest.approx(3e-3 * r**span) and trace[5][0] == pytest.approx(3e-3 * r ** (2 * span))
    assert est.peak == 1.0 and est.settled
    plain = core.DistanceEstimate.begin()
    for d_hat in (0.0, 1e-4, 3e-3, 2e-3, 1.0):
        plain = _after(plain, d_hat, free, span)
    assert plain.d == 1.0 and plain.settled  # settling is recorded either way; it caps nothing without the option
    # growth_rate caps from the start; the settled rate only tightens it once settled
    both = _after(_after(core.DistanceEstimate.begin(), 1e-4, Hyper(1.0, growth_rate=1.5, settled_growth_rate=r)),
                  1.0, Hyper(1.0, growth_rate=1.5, settled_growth_rate=r), span)
    assert both.d == pytest.approx(1e-4 * 1.5**span) and not both.settled


def test_core_step_equals_the_optimizer_through_settling() -> None:
    """Sixty steps lr-free with per-tensor estimates on shared sums, the estimate every second step,
    settled_growth_rate 1.01, non-default betas, eps and weight decay: the functional core (meta-training's
    form) and the optimizer agree on the parameters, every estimate and its settled flag; the network's and
    some tensors' estimates settle, and then grow no faster than the rate."""
    task = _task()
    model, opt, rule, prepared, index, params, state = lr_free_pair(
        task, BETAS, EPS, WD, dict(estimate_every=2, per_tensor=0.7, shared_sums=True, settled_growth_rate=1.01),
        dict(every=2, per_tensor=0.7, shared_sums=True))
    h = Hyper(1.0, *BETAS, EPS, WD, settled_growth_rate=1.01)
    batches = task.batches(0)
    history = []
    for _ in range(60):
        params, state = step_both(task, model, opt, rule, prepared, index, params, state, h, next(batches))
        torch.testing.assert_close(params, flat_params(model), rtol=1e-5, atol=1e-6)
        assert state.distance.d == pytest.approx(opt.distance, rel=1e-5)
        assert state.distance.settled == bool(opt.state[DISTANCE_SETTLED])
        rows = opt.state[TENSOR_DISTANCES]
        assert [e.d for e in state.tensor_distances.estimates] == pytest.approx(rows[:, 1].tolist(), rel=1e-5)
        assert [e.settled for e in state.tensor_distances.estimates] == [bool(s) for s in rows[:, 4].tolist()]
        history.append(state.distance)
    settled_at = next(i for i, e in enumerate(history) if e.settled)
    for before, after in zip(history[settled_at:], history[settled_at + 1:]):
        assert after.d <= before.d * 1.01**2 * (1 + 1e-12)  # an estimate every 2nd step stands for 2
    assert any(e.d < e.peak for e in history[settled_at:])  # the cap held d below the largest ratio
    assert any(e.settled for e in state.tensor_distances.estimates)


def test_settled_flags_resume_exactly_and_older_states_load_unsettled() -> None:
    """The flags are part of the state: a resumed run is the same bit for bit; a state saved before the
    option (per-tensor rows of 4 columns, no network flag) loads with every estimate unsettled."""
    kw = dict(rule="adam", lr_free=True, estimate_every=2, per_tensor=0.5, settled_growth_rate=1.02)
    model = _normed()
    opt = GMNOptimizer(model, **kw)
    _train(model, opt, 41)
    assert opt.state[DISTANCE_SETTLED] == 1 and bool((opt.state[TENSOR_DISTANCES][:, 4] == 1).any())
    clone = copy.deepcopy(model)
    opt2 = GMNOptimizer(clone, **kw)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    _train(model, opt, 10), _train(clone, opt2, 10)
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)
    old = copy.deepcopy(opt.state_dict())
    packed = old["state"]
    packed[TENSOR_DISTANCES] = packed[TENSOR_DISTANCES][:, :4]
    del packed[DISTANCE_SETTLED]
    opt3 = GMNOptimizer(copy.deepcopy(model), **kw)
    opt3.load_state_dict(old)
    assert opt3.state[DISTANCE_SETTLED] == 0 and not opt3.state[TENSOR_DISTANCES][:, 4].any()
    assert opt3.state[TENSOR_DISTANCES][:, :4].equal(opt.state[TENSOR_DISTANCES][:, :4])


def test_bad_settled_growth_rates_are_refused() -> None:
    for bad in (0.5, True, "fast", -math.inf):
        with pytest.raises(ValueError, match="settled_growth_rate is a factor >= 1"):
            GMNOptimizer(_normed(), rule="adam", lr_free=True, settled_growth_rate=bad)
    with pytest.raises(ValueError, match="pass lr_free=True"):
        GMNOptimizer(_normed(), rule="adam", lr=1e-3, settled_growth_rate=1.02)
    assert GMNOptimizer(_normed(), rule="adam", lr_free=True, settled_growth_rate=math.inf).settled_growth_rate == math.inf
