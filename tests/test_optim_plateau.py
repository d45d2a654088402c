"""The plateau decay (GMNOptimizer(lr_free=True, plateau_block=B)): ReduceLROnPlateau read off the gradient.
Every B steps the step is halved when the gradient's squared norm (geometric mean over the block's samples,
one every 10th step) has not fallen since the block before, once it is 10x below its largest sample. The
decision itself; off by default; a cut is exactly a halved lr from that step on; it cuts at a noise floor
(and the loss there falls below the constant step's) and never while the gradient falls with the loss; it
survives a checkpoint; bad values are refused."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from metaopt.optim import GMNOptimizer, core
from metaopt.optim.optimizer import PLATEAU_KEYS
from metaopt.optim.rules import RETIRED_RULES
from test_optim_per_tensor import _normed, _train


def _blocks(*levels: float, per_block: int = 3, boost: bool = False) -> core.PlateauDecay:
    """A decay (boosting with ``boost``) that has seen blocks of samples at these squared norms, each closed."""
    p = core.PlateauDecay(boost=boost)
    for level in levels:
        for _ in range(per_block):
            p = p.sampled(level)
        p = p.closed()
    return p


def test_cuts_when_the_gradient_stops_falling_past_its_first_descent() -> None:
    """No cut on the first block (nothing to compare), while the norm falls, or on a level norm that is not
    yet 10x below its peak (a plateau at chance from the start); a cut on a level or rising norm 10x below
    the peak; each cut halves the scale; samples of 0 or NaN are not counted; an empty block changes nothing."""
    assert _blocks(1.0).cuts == 0
    assert _blocks(1.0, 0.5, 0.2, 0.01).cuts == 0  # falling
    assert _blocks(1.0, 0.5, 0.5).cuts == 0  # level, but only 2x below the peak
    level = _blocks(1.0, 0.05, 0.05)
    assert level.cuts == 1 and level.scale == core.PLATEAU_FACTOR
    assert _blocks(1.0, 0.05, 0.08, 0.09).cuts == 2 and _blocks(1.0, 0.05, 0.08, 0.09).scale == 0.25
    p = _blocks(1.0, 0.05)
    assert p.sampled(0.0) == p and p.sampled(math.nan) == p and p.sampled(math.inf) == p
    assert p.closed() == p  # no samples in this block
    assert core.PlateauDecay.from_row(level.row()) == level
    # the comparison is of geometric means: one large sample does not hide a falling block
    q = core.PlateauDecay()
    for v in (1.0, 1.0, 1.0):
        q = q.sampled(v)
    q = q.closed()
    for v in (0.01, 0.01, 0.5):  # arithmetic mean 0.17, geometric 0.037
        q = q.sampled(v)
    q = q.closed()
    for v in (0.04, 0.04, 0.04):
        q = q.sampled(v)
    assert q.closed().cuts == 1  # 0.04 >= 0.037 and 25x below the peak


def _noisy_fit(steps: int, plateau_block: int, noise: float = 2.0, batch: int = 8, lr_at: dict | None = None,
               **kw) -> tuple[nn.Module, GMNOptimizer, list[int], float]:
    """A linear regression on small noisy batches (a noise floor once fitted); returns the model, the
    optimizer, the steps at which its cut count rose, and the loss on the whole noise-free data."""
    g = torch.Generator().manual_seed(0)
    w = 3.0 * torch.randn(20, 1, generator=g)
    x = torch.randn(4096, 20, generator=g)
    clean = x @ w
    y = clean + noise * torch.randn(4096, 1, generator=g)
    torch.manual_seed(0)
    model = nn.Linear(20, 1)
    opt = GMNOptimizer(model, **RETIRED_RULES["lrfree_plateau"].kwargs(plateau_block=plateau_block), **kw)
    g = torch.Generator().manual_seed(1)
    cut_steps, cuts = [], 0
    for t in range(1, steps + 1):
        if lr_at and t in lr_at:
            for group in opt.param_groups:
                group["lr"] = lr_at[t]
        i = torch.randint(0, len(x), (batch,), generator=g)
        loss = nn.functional.mse_loss(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if plateau_block and opt.plateau_cuts > cuts:
            cut_steps.append(t)
            cuts = opt.plateau_cuts
    with torch.no_grad():
        fit = nn.functional.mse_loss(model(x), clean).item()
    return model, opt, cut_steps, fit


def test_off_unless_asked_or_recorded_and_at_zero() -> None:
    """Off in Prodigy's mode and in the modes shipped before 0.8 (GMNOptimizer(model) records 500 since 0.8);
    at 0 (with 0.7-0.16's d0, 1e-6) the run is 0.7's default bit for bit and nothing is cut."""
    assert GMNOptimizer(_normed(), rule="adam", lr_free=True).plateau_block == 0
    assert GMNOptimizer(_normed(), **RETIRED_RULES["lrfree_settled"].kwargs()).plateau_block == 0
    a, b = _normed(), _normed()
    opt_a = GMNOptimizer(a, **RETIRED_RULES["lrfree_settled"].kwargs())
    opt_b = GMNOptimizer(b, plateau_block=0, d0=1e-6)
    _train(a, opt_a, 40), _train(b, opt_b, 40)
    assert opt_b.plateau_block == 0 and opt_a.plateau_cuts == 0 == opt_b.plateau_cuts
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_at_a_noise_floor_it_cuts_and_a_cut_is_a_halved_lr_from_that_step() -> None:
    """On noisy small batches the fitted regression's gradient stays level: the decay cuts, and the fit to
    the noise-free targets ends closer than under the constant estimated step. The same run without the
    option, its lr halved by hand on the steps the cuts came, is the same bit for bit (the cut acts on the
    step and on the estimate's weights exactly as the lr does)."""
    block = 200
    model, opt, cut_steps, fit = _noisy_fit(3000, block)
    assert len(cut_steps) >= 2 and all(t % block == 0 for t in cut_steps)
    _, plain, _, plain_fit = _noisy_fit(3000, 0)
    assert plain.plateau_cuts == 0
    assert fit < 0.5 * plain_fit
    by_hand, _, _, _ = _noisy_fit(3000, 0, lr_at={t: core.PLATEAU_FACTOR ** (k + 1) for k, t in enumerate(cut_steps)})
    for a, b in zip(model.parameters(), by_hand.parameters()):
        assert torch.equal(a, b)


def test_no_cut_while_the_gradient_falls_with_the_loss() -> None:
    """A noise-free regression (the data can be fitted): the gradient falls by orders of magnitude, and no
    cut comes while it does (to float32's roundoff, 1e-11 here by step 600, where the gradient is noise
    again and the decay does cut, harmlessly: from step 1,000 on)."""
    _, opt, cut_steps, fit = _noisy_fit(600, 200, noise=0.0, batch=64)
    assert cut_steps == [] and opt.plateau_cuts == 0 and fit < 1e-9


def test_resumes_exactly_mid_block_and_older_states_load_uncut() -> None:
    """The decay's fields are part of the state: a run resumed in the middle of a block is the same bit for
    bit as the uninterrupted one; a state saved without them loads with no cut and an empty block."""
    model, opt, cut_steps, _ = _noisy_fit(1750, 200)
    assert opt.plateau_cuts >= 1 and int(opt.state["plateau_samples"]) > 0
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(256, 20, generator=g), torch.randn(256, 1, generator=g)
    clone = copy.deepcopy(model)
    opt2 = GMNOptimizer(clone, **RETIRED_RULES["lrfree_plateau"].kwargs(plateau_block=200))
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for m, o in ((model, opt), (clone, opt2)):
        for t in range(300):
            loss = nn.functional.mse_loss(m(x[t % 32 * 8:(t % 32 + 1) * 8]), y[t % 32 * 8:(t % 32 + 1) * 8])
            o.zero_grad()
            loss.backward()
            o.step()
    assert opt2.plateau_cuts == opt.plateau_cuts
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)
    old = copy.deepcopy(opt.state_dict())
    for key in PLATEAU_KEYS:
        del old["state"][key]
    opt3 = GMNOptimizer(copy.deepcopy(model), **RETIRED_RULES["lrfree_plateau"].kwargs(plateau_block=200))
    opt3.load_state_dict(old)
    assert opt3.plateau_cuts == 0 and int(opt3.state["plateau_samples"]) == 0


def test_bad_blocks_are_refused() -> None:
    for bad in (-1, 1.5, True, "500"):
        with pytest.raises(ValueError, match="plateau_block is the length"):
            GMNOptimizer(_normed(), plateau_block=bad)
    with pytest.raises(ValueError, match="pass lr_free=True"):
        GMNOptimizer(_normed(), rule="adam", lr=1e-3, plateau_block=500)


def test_core_step_equals_the_optimizer_through_cuts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sixty steps lr-free with per-tensor estimates on shared sums, the estimate every second step, blocks
    of 10 steps and the drop condition off (so that cuts come within the run), non-default betas, eps and
    weight decay: the functional core (meta-training's form) and the optimizer agree on the parameters, the
    estimate and every cut."""
    from metaopt.optim import Hyper
    from test_optim_common import flat_params
    from test_optim_per_tensor import _task
    from test_outer_common import lr_free_pair, step_both

    monkeypatch.setattr(core, "PLATEAU_DROP", 1.0)
    monkeypatch.setattr(core, "PLATEAU_SAMPLE_EVERY", 2)
    betas, eps, wd = (0.8, 0.95), 1e-6, 0.05
    task = _task()
    model, opt, rule, prepared, index, params, state = lr_free_pair(
        task, betas, eps, wd, dict(estimate_every=2, per_tensor=0.7, shared_sums=True, plateau_block=10),
        dict(every=2, per_tensor=0.7, shared_sums=True, plateau_block=10))
    h = Hyper(1.0, *betas, eps, wd)
    batches = task.batches(0)
    for _ in range(60):
        params, state = step_both(task, model, opt, rule, prepared, index, params, state, h, next(batches))
        torch.testing.assert_close(params, flat_params(model), rtol=1e-5, atol=1e-6)
        assert state.distance.d == pytest.approx(opt.distance, rel=1e-5)
        assert state.plateau.cuts == opt.plateau_cuts
    assert opt.plateau_cuts >= 1


def test_the_decay_is_never_faster_than_one_over_t() -> None:
    """A norm that never stops rising (a lasting noise floor, past its first descent) is cut at every block
    only while the scale stays above PLATEAU_FLOOR * block / step; from then on the cuts thin out to the
    pace of 1 / t (the steps' sum diverges) and the scale never falls below that floor."""
    block, p, level = 500, core.PlateauDecay(), 1.0
    for step in range(1, 200_001):
        if step == 1:
            p = p.sampled(10.0)  # the first descent's peak
        if core.plateau_sample_due(step):
            level *= 1.0001
            p = p.sampled(level * 0.01)
        if step % block == 0:
            p = p.closed(core.PLATEAU_FLOOR * block / step)
            assert p.scale >= core.PLATEAU_FLOOR * block / step
        if step == 5_000:
            assert p.cuts == 7  # every block from the second on to step 4,000; the floor holds the next back
    assert p.cuts == 12 and p.scale > 0.5 * core.PLATEAU_FLOOR * block / 200_000
