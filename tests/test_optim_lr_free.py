"""lr-free mode (GMNOptimizer(lr_free=True)): the step size is Prodigy's distance estimate. With
rule="adam" the optimizer is Prodigy (the authors' package, to float rounding); with a rule, the
rule's scale is normalised to geometric mean 1; the estimate survives state_dict; the estimate
makes the final loss nearly independent of the lr multiplier where a fixed lr is not."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from metaopt.optim import GMNOptimizer, RuleConfig, UpdateRule
from metaopt.optim.core import D0
from training_loop import train_losses


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    return x, torch.sin(x[:, :3]) + 0.1 * torch.randn(64, 3, generator=g)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    return train_losses(model, opt, nn.functional.mse_loss, *_data(), steps)


# growth_rate 1.1 binds from the second estimate on; stride k samples every k-th entry of each tensor from
# its first, as Prodigy's slice_p (the model's tensors sit at flat offsets 0, 80, 96, 144: a sampling of the
# flat vector's positions 0, 3, 6, ... would read other entries).
# d0: Prodigy's start of the estimate (its first estimate above d0 is taken whole, with a growth rate too)
@pytest.mark.parametrize("growth_rate,stride,d0", [(math.inf, 1, D0), (1.1, 1, D0), (math.inf, 2, D0), (1.1, 3, D0),
                                                   (1.1, 1, 1e-4), (math.inf, 1, 1e-3)])
def test_adam_rule_is_prodigy(growth_rate: float, stride: int, d0: float):
    prodigyopt = pytest.importorskip("prodigyopt")
    a, b = _model(), _model()
    # eps: Prodigy adds d * eps to sqrt(v) in its units, Adam's bias-corrected eps differs by sqrt(1 - beta2^t);
    # with a negligible eps the two are the same arithmetic.
    ref = prodigyopt.Prodigy(a.parameters(), lr=1.0, use_bias_correction=True, safeguard_warmup=False, eps=1e-30,
                             growth_rate=growth_rate, slice_p=stride, d0=d0)
    opt = GMNOptimizer(b, rule="adam", lr_free=True, eps=1e-30, growth_rate=growth_rate, estimate_stride=stride, d0=d0)
    assert opt.distance == d0
    x, y = _data()
    grown = 0
    for t in range(40):
        for m, o in ((a, ref), (b, opt)):
            o.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()
            o.step()
        assert opt.distance == pytest.approx(ref.param_groups[0]["d"], rel=1e-5)
        last = opt.state["distance_last"]
        assert opt.distance <= growth_rate * last * (1 + 1e-12) or last == d0  # the first estimate is taken whole
        grown += opt.distance > last
    assert opt.distance > (1e3 if growth_rate == math.inf else 30) * D0 and opt.distance > d0  # it grew from d0
    assert grown >= 5
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-5)


def test_rule_scale_is_normalised_and_loss_goes_down():
    torch.manual_seed(1)
    rule = UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=2.0, bound=2.0, refresh_every=5))
    model = _model()
    opt = GMNOptimizer(model, rule=rule, lr_free=True, example_inputs=torch.randn(2, 5))
    assert opt.param_groups[0]["lr"] == 1.0  # lr is the multiplier of the estimate
    losses = _train(model, opt, 60)
    scale = opt._buffers["lr_scale"]
    assert not torch.allclose(scale, torch.ones_like(scale))  # the rule still shares the step out ...
    assert math.exp(float(scale.log().mean())) == pytest.approx(1.0, rel=1e-4)  # ... at geometric mean 1
    assert opt.rule_refreshes == 12
    assert losses[-1] < 0.5 * losses[0]


def test_global_bound_corrects_d_within_its_bound_and_starts_as_the_rule_it_continues(tmp_path):
    """RuleConfig.global_bound b > 0: the scale's geometric mean g becomes
    exp(b * tanh((gate * log g + offset) / b)), never past exp(+-b), the shares between parameters the
    rule's; gate = offset = 0 (a rule continued with it) is exactly the normalised rule. The two
    scalars are saved with the rule; negative bounds are refused."""
    from metaopt.optim.core import normalise_scale

    torch.manual_seed(1)
    plain = UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=2.0, bound=2.0, refresh_every=5))
    rule = plain.with_global_bound(1.5)
    scale = torch.exp(torch.tensor([0.3, 0.1, -0.1, 0.5]))  # log g = 0.2
    torch.testing.assert_close(normalise_scale(scale, rule), normalise_scale(scale))  # starts normalised
    assert float(normalise_scale(scale).log().mean()) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        rule.global_gate.fill_(2.0), rule.global_offset.fill_(0.1)
    kept = normalise_scale(scale, rule).detach()
    assert float(kept.log().mean()) == pytest.approx(1.5 * math.tanh((2.0 * 0.2 + 0.1) / 1.5), rel=1e-5)
    torch.testing.assert_close(kept / kept[0], scale / scale[0])  # the shares between parameters are the rule's
    assert float(normalise_scale(scale * 1e6, rule).detach().log().mean()) == pytest.approx(1.5, rel=1e-5)  # saturates

    def run(r: UpdateRule) -> tuple[list[float], GMNOptimizer]:
        model = _model()
        opt = GMNOptimizer(model, rule=r, lr_free=True, example_inputs=torch.randn(2, 5))
        return _train(model, opt, 60), opt

    fresh = plain.with_global_bound(1.5)
    assert run(fresh)[0] == run(plain)[0]  # gate = offset = 0: the same run
    rule.save_pretrained(tmp_path / "rule")
    loaded = UpdateRule.from_pretrained(tmp_path / "rule")
    assert loaded.config.global_bound == 1.5 and float(loaded.global_offset.detach()) == pytest.approx(0.1)
    losses, opt = run(loaded)
    log_g = float(opt._buffers["lr_scale"].log().mean())
    assert 1e-3 < abs(log_g) < 1.5  # the rule corrects d, within its bound
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="global_bound"):
        RuleConfig(global_bound=-1.0)


def test_less_sensitive_to_lr_than_a_fixed_lr():
    """At 1/3x and 3x the multiplier the lr-free final loss moves less than Adam's over the same span."""
    def final(lr: float, lr_free: bool) -> float:
        model = _model()
        return _train(model, GMNOptimizer(model, rule="adam", lr=lr, lr_free=lr_free), 150)[-1]

    free = [final(m, True) for m in (1 / 3, 1.0, 3.0)]
    fixed = [final(lr, False) for lr in (1e-3 / 3, 1e-3, 3e-3)]
    spread = lambda v: max(v) / min(v)  # noqa: E731
    assert spread(free) < spread(fixed)


def test_state_dict_resumes_exactly_and_state_is_4x_as_prodigy():
    model = _model()
    opt = GMNOptimizer(model, rule="adam", lr_free=True)
    _train(model, opt, 20)
    clone = copy.deepcopy(model)
    opt2 = GMNOptimizer(clone, rule="adam", lr_free=True)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt2.distance == opt.distance and opt2.distance > D0
    _train(model, opt, 10), _train(clone, opt2, 10)
    for pa, pb in zip(model.parameters(), clone.parameters()):
        assert torch.equal(pa, pb)
    n = sum(p.numel() for p in model.parameters())
    assert sum(v.numel() for k, v in opt._buffers.items() if k != "step") == 4 * n  # Prodigy: m, v, x_0, s
    st = opt.state[next(model.parameters())]
    assert {"start", "grad_sum"} <= set(st)


def test_partial_gradients_and_bad_arguments():
    model = _model()
    opt = GMNOptimizer(model, rule="adam", lr_free=True)
    x, y = _data()
    frozen = model[0].weight
    for _ in range(5):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        frozen.grad = None  # a parameter without a gradient this step is not moved
        before = frozen.detach().clone()
        opt.step()
        assert torch.equal(frozen, before)
    assert math.isfinite(opt.distance)
    with pytest.raises(TypeError, match="lr_free"):
        GMNOptimizer(_model(), rule="adam", lr_free="yes")  # type: ignore[arg-type]


def test_spike_guard_halves_and_caps_the_distance_estimate():
    """lr-free + spike guard (also with rule="adam", which has no scale to damp): a sustained gradient
    spike halves d and caps it there, the estimate cannot take it back, a clean interval doubles the
    cap, and with every halving lifted the cap goes."""
    model = _model()
    opt = GMNOptimizer(model, rule="adam", lr_free=True, spike_guard=3.0)
    _train(model, opt, 30)  # d grows from d0
    d = opt.distance
    assert d > 1e3 * D0 and opt.spike_trips == 0
    x, y = _data()
    for gain in (100.0, 100.0, 100.0):  # three steps far above the running mean of the gradient norm
        opt.zero_grad()
        (gain * nn.functional.mse_loss(model(x), y)).backward()
        opt.step()
    assert opt.spike_trips == 1 and opt.state["spike_level"] == 1
    assert opt.distance == pytest.approx(d / 2) and opt.state["distance_cap"] == pytest.approx(d / 2)
    _train(model, opt, 69)  # to step 102: the interval before the boundary at step 101 held the trip
    assert opt.state["spike_level"] == 1 and opt.distance == pytest.approx(d / 2)  # capped: not taken back
    _train(model, opt, 100)  # to step 202: a clean interval, so the boundary at step 201 lifts the halving
    assert opt.state["spike_level"] == 0 and opt.state["distance_cap"] == 0.0


def test_guard_off_and_fixed_lr_unchanged():
    """Without the guard lr-free never caps d; with a fixed lr rule="adam" + guard still never trips."""
    model = _model()
    opt = GMNOptimizer(model, rule="adam", lr_free=True)
    _train(model, opt, 20)
    assert opt.state["distance_cap"] == 0 and opt.spike_trips == 0
    fixed = GMNOptimizer(_model(), rule="adam", lr=1e-3, spike_guard=3.0)
    assert not fixed.lr_free and fixed.state["distance_cap"] == 0


def test_loading_a_fixed_lr_state_into_lr_free_says_so():
    model = _model()
    fixed = GMNOptimizer(model, rule="adam", lr=1e-3)
    _train(model, fixed, 2)
    with pytest.raises(ValueError, match="without lr_free=True"):
        GMNOptimizer(model, rule="adam", lr_free=True).load_state_dict(fixed.state_dict())


def test_strided_estimate_state_resumes_and_costs_2_over_k():
    """estimate_stride=k: x_0 and s hold every k-th entry of each tensor (state 3x + 2 ceil(n / k) per
    tensor, per-parameter entries 1-D), a state_dict resumes bit for bit, and one saved with another stride
    is refused clearly."""
    model = _model()
    opt = GMNOptimizer(model, rule="adam", lr_free=True, estimate_stride=4, growth_rate=1.5)
    _train(model, opt, 20)
    n = sum(p.numel() for p in model.parameters())
    sampled = opt._buffers["start"].numel()
    assert sampled == sum(-(-p.numel() // 4) for p in model.parameters()) and opt._buffers["grad_sum"].numel() == sampled
    assert sum(v.numel() for k, v in opt._buffers.items() if k != "step") == 2 * n + 2 * sampled  # no scale: rule="adam"
    assert opt.state[model[0].weight]["start"].shape == (-(-80 // 4),)
    clone = copy.deepcopy(model)
    opt2 = GMNOptimizer(clone, rule="adam", lr_free=True, estimate_stride=4, growth_rate=1.5)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt2.distance == opt.distance > D0 and opt2.state["distance_peak"] == opt.state["distance_peak"]
    _train(model, opt, 10), _train(clone, opt2, 10)
    for pa, pb in zip(model.parameters(), clone.parameters()):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="another estimate_stride"):
        GMNOptimizer(_model(), rule="adam", lr_free=True).load_state_dict(opt.state_dict())


def test_growth_rate_is_a_warm_up_and_bad_options_are_refused():
    """A growth rate caps d's rise per step (so d stays below the unlimited run's early on) and the run
    still trains; options of the estimate without lr_free, a rate below 1 or a stride of 0 are errors."""
    runs = {}
    for rate in (math.inf, 1.05):
        model = _model()
        opt = GMNOptimizer(model, rule="adam", lr_free=True, growth_rate=rate)
        d = []
        for _ in range(60):
            _train(model, opt, 1)
            d.append(opt.distance)
        runs[rate] = (d, _train(model, opt, 1)[0])
    (free, _), (capped, loss) = runs[math.inf], runs[1.05]
    assert all(b <= 1.05 * a * (1 + 1e-12) for a, b in zip(capped, capped[1:]) if a > D0)  # the first jump is whole
    assert capped[20] < free[20] and loss < _train(_model(), torch.optim.SGD(_model().parameters(), lr=0.0), 1)[0]
    for bad in ({"growth_rate": 0.5}, {"estimate_stride": 0}, {"estimate_stride": 1.5}):
        with pytest.raises(ValueError, match="growth_rate|stride"):
            GMNOptimizer(_model(), rule="adam", lr_free=True, **bad)
    with pytest.raises(ValueError, match="pass lr_free=True"):
        GMNOptimizer(_model(), rule="adam", growth_rate=1.02)


@pytest.mark.parametrize("warmup", [0, 8])
def test_estimate_every_j_steps_moves_d_only_then_and_resumes_mid_block(warmup):
    """estimate_every=j: d changes on each of the first ``estimate_warmup`` steps (at least step 1) and
    then only on every j-th step after them (warm-up 0: steps 1, j + 1, 2j + 1, ...; in between a step
    reads no estimate), the run still trains as Prodigy does to within a small factor, and a state saved
    in the middle of a block resumes bit for bit."""
    model, every = _model(), 5
    opt = GMNOptimizer(model, rule="adam", lr_free=True, estimate_every=every, estimate_warmup=warmup)
    changed = []
    for t in range(1, 41):
        before = opt.distance
        _train(model, opt, 1)
        if opt.distance != before:
            changed.append(t)
    dense = max(warmup, 1)
    assert changed and all(t <= dense or (t - dense) % every == 0 for t in changed)
    assert any(t > dense for t in changed)
    if warmup:  # d grows step by step at the start (not on step 1: no gap from x_0 yet)
        assert len([t for t in changed if t <= dense]) >= 3
    prodigy = _model()
    ref = _train(prodigy, GMNOptimizer(prodigy, rule="adam", lr_free=True), 41)[-1]
    mine = _train(model, opt, 1)[0]
    assert mine < 0.5 * _train(_model(), torch.optim.SGD(_model().parameters(), lr=0.0), 1)[0]
    assert mine == pytest.approx(ref, rel=2.0)
    _train(model, opt, 2)  # to step 44: inside a block
    clone = copy.deepcopy(model)
    opt2 = GMNOptimizer(clone, rule="adam", lr_free=True, estimate_every=every, estimate_warmup=warmup)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    _train(model, opt, 12), _train(clone, opt2, 12)
    for pa, pb in zip(model.parameters(), clone.parameters()):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="estimate_every"):
        GMNOptimizer(_model(), rule="adam", lr_free=True, estimate_every=0)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="estimate_warmup"):
            GMNOptimizer(_model(), rule="adam", lr_free=True, estimate_every=every, estimate_warmup=bad)
    with pytest.raises(ValueError, match="pass lr_free=True"):
        GMNOptimizer(_model(), rule="adam", estimate_warmup=warmup + 1)


def test_d0_is_the_first_steps_size_and_a_larger_one_starts_faster():
    """d0: the estimate before the first step, so the first step moves each entry by ~d0 (Adam's first step
    is lr * sign(g)); from a larger d0 the estimate has less to grow and the loss falls sooner; it resumes
    from a saved state bit for bit; it is refused without lr_free or when not a finite number > 0."""
    first_moves = {}
    for d0 in (1e-6, 1e-4):
        model = _model()
        before = [p.detach().clone() for p in model.parameters()]
        opt = GMNOptimizer(model, rule="adam", lr_free=True, d0=d0)
        assert opt.distance == d0
        _train(model, opt, 1)
        first_moves[d0] = max((p - b).abs().max().item() for p, b in zip(model.parameters(), before))
        assert first_moves[d0] == pytest.approx(d0, rel=0.05)
    early = {d0: _train(m, GMNOptimizer(m, rule="adam", lr_free=True, d0=d0, per_tensor=0.5), 15)[-1]
             for d0, m in ((1e-6, _model()), (1e-4, _model()))}
    assert early[1e-4] < 0.9 * early[1e-6]
    model, clone = _model(), _model()
    opt = GMNOptimizer(model, rule="adam", lr_free=True, d0=1e-4, estimate_every=3)
    _train(model, opt, 5)
    opt2 = GMNOptimizer(clone, rule="adam", lr_free=True, d0=1e-4, estimate_every=3)
    clone.load_state_dict(model.state_dict())
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    _train(model, opt, 7), _train(clone, opt2, 7)
    for pa, pb in zip(model.parameters(), clone.parameters()):
        assert torch.equal(pa, pb)
    for bad in (0.0, -1e-3, math.inf, True, "1e-4"):
        with pytest.raises(ValueError, match="d0"):
            GMNOptimizer(_model(), rule="adam", lr_free=True, d0=bad)
    with pytest.raises(ValueError, match="pass lr_free=True"):
        GMNOptimizer(_model(), rule="adam", d0=1e-4)


def test_estimate_span_schedule():
    """`core.estimate_span`: 1 on the warm-up steps, ``every`` on each j-th step after them, else 0."""
    from metaopt.optim.core import estimate_span

    assert [estimate_span(t, 3, 0) for t in range(1, 9)] == [1, 0, 0, 3, 0, 0, 3, 0]
    assert [estimate_span(t, 3, 1) for t in range(1, 9)] == [1, 0, 0, 3, 0, 0, 3, 0]
    assert [estimate_span(t, 3, 4) for t in range(1, 12)] == [1, 1, 1, 1, 0, 0, 3, 0, 0, 3, 0]
    assert [estimate_span(t, 1, 4) for t in range(1, 8)] == [1] * 7


def test_a_loss_without_minimum_saturates_the_estimate_instead_of_raising():
    """On a linear loss d grows geometrically; past ~1e15 the estimate's weight leaves float32. The
    estimate then stops (d stays finite where it was) and steps go on, rather than a foreach op raising."""
    from benchmarks.bench_step import mlp_of_size

    torch.manual_seed(0)
    model = mlp_of_size(1e4)  # (bench_step's model, where this was met)
    opt = GMNOptimizer(model, rule="default", lr_free=True, estimate_every=10)
    for p in model.parameters():  # a fixed gradient: the loss <g, p>
        p.grad = torch.randn_like(p) * 1e-2
    for _ in range(300):
        opt.step()
    assert 1e12 < opt.distance < float("inf")
