"""Per-tensor distance estimates (GMNOptimizer(lr_free=True, per_tensor=a)): every tensor also keeps its
own Prodigy estimate d_i and moves by d^(1 - a) * d_i^a. One tensor is the network's estimate; the
optimizer and the functional core (`core.step`) take the same steps; a tensor far from zero (a
LayerNorm gain at 1) gets a larger step than the network's; the state resumes bit for bit; bad
combinations are refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from metaopt.optim import FeatureConfig, GMNOptimizer, GraphIndex, Hyper, OptState, RuleConfig, UpdateRule, core
from metaopt.optim.optimizer import TENSOR_DISTANCES
from test_optim_common import flat_params
from test_outer_common import ModelTask, step_both
from training_loop import train_losses

BETAS, EPS, WD = (0.8, 0.95), 1e-6, 0.05  # none of them Adam's defaults


def _data(inputs: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, inputs, generator=g)
    return x, torch.sin(x[:, :3]) + 0.1 * torch.randn(64, 3, generator=g)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    return train_losses(model, opt, nn.functional.mse_loss, *_data(), steps)


def _normed(seed: int = 0) -> nn.Module:
    """A small MLP with a LayerNorm, whose gain starts at 1 while the weights start near 0."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 3))


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_one_tensor_is_the_networks_estimate(share: float) -> None:
    """With a single tensor its own estimate is the network's: every share gives the plain lr-free run
    (the per-tensor estimate, moment shrink and step factor are other code than the network's)."""
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 3, bias=False))
    b = copy.deepcopy(a)
    opt_a = GMNOptimizer(a, rule="adam", lr_free=True, estimate_every=3)
    opt_b = GMNOptimizer(b, rule="adam", lr_free=True, estimate_every=3, per_tensor=share)
    _train(a, opt_a, 30), _train(b, opt_b, 30)
    assert opt_a.distance > 100 * core.D0
    row = opt_b.state[TENSOR_DISTANCES][0].tolist()
    assert row[1] == pytest.approx(opt_a.distance, rel=1e-6) and opt_b.distance == pytest.approx(opt_a.distance, rel=1e-6)
    torch.testing.assert_close(a[0].weight, b[0].weight, rtol=1e-5, atol=1e-7)


def test_a_tensor_far_from_zero_gets_a_larger_step_and_loss_goes_down() -> None:
    """The LayerNorm gain (at 1) estimates a larger distance than the network's d, which the weights near
    0 dominate; each tensor's step factor is (d_i / d)^a, and training works."""
    model = _normed()
    opt = GMNOptimizer(model, rule="adam", lr_free=True, per_tensor=0.7)
    losses = _train(model, opt, 60)
    assert losses[-1] < 0.3 * losses[0]
    rows = opt.state[TENSOR_DISTANCES]
    d = opt.distance
    gain = [i for i, p in enumerate(model.parameters()) if p is model[1].weight][0]
    assert rows[gain, 1] > 2 * d  # the gain's own estimate is well above the network's
    est = core.DistanceEstimate(d=d, last=d)
    factors = core.TensorDistances(0.7, tuple(p.numel() for p in model.parameters()),
                                   tuple(core.DistanceEstimate.from_row(r) for r in rows.tolist())).factors(est)
    for f, r in zip(factors, rows.tolist()):
        assert f == pytest.approx((r[2] / d) ** 0.7, rel=1e-9)


def _task() -> ModelTask:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3))
    make = lambda g: (torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g))  # noqa: E731
    return ModelTask(model, torch.zeros(2, 6), make, nn.functional.cross_entropy)


@pytest.mark.parametrize("stride, scale_per_tensor, shared", [(1, False, False), (3, False, False), (1, True, False),
                                                              (1, False, True), (3, False, True)])
def test_core_step_equals_the_optimizer(stride: int, scale_per_tensor: bool, shared: bool,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Six steps of a rule (alpha != 0, refresh every 2, a correction of d) lr-free with per_tensor, the
    estimate every second step after 3 warm-up steps (reading every entry, or a sample of the tensors
    large enough and all of the others: strides 5 and 1 here), non-default betas, eps and weight decay:
    the functional core (meta-training's form) and the optimizer agree on the parameters, the whole state
    and every tensor's estimate; also with the rule's scale normalised per tensor (``scale_per_tensor``),
    and with the tensors' estimates reading the network's sum (``shared_sums``)."""
    monkeypatch.setattr(core, "MIN_TENSOR_SAMPLE", 4)  # this task's tensors (3-48 entries) at mixed strides
    task = _task()
    torch.manual_seed(0)
    rule = UpdateRule(RuleConfig(kind="gmn", hidden=8, alpha=0.5, refresh_every=2, global_bound=0.05,
                                 features=FeatureConfig(relative_lr=True)))
    with torch.no_grad():
        rule.global_gate.fill_(0.5), rule.global_offset.fill_(0.01)
    model = copy.deepcopy(task.model)
    lr, share = 0.7, 0.6
    opt = GMNOptimizer(model, rule=rule, lr=lr, betas=BETAS, eps=EPS, weight_decay=WD, graph=task.graph,
                       lr_free=True, estimate_every=2, estimate_warmup=3, per_tensor=share, estimate_stride=stride,
                       scale_per_tensor=scale_per_tensor, shared_sums=shared)
    prepared, index = rule.prepare(task.graph, "cpu"), GraphIndex.from_graph(task.graph, "cpu")
    params = flat_params(model)
    sizes = tuple(p.numel() for p in model.parameters())
    state = OptState.zeros(index.num_edges, start=params, every=2, per_tensor=share, sizes=sizes, warmup=3,
                           stride=stride, scale_per_tensor=scale_per_tensor, shared_sums=shared)
    assert (state.tensor_grad_sum is None) == shared == ("tensor_grad_sum" not in opt._state_keys)
    strides = core.tensor_strides(sizes, stride, True)
    assert strides == ((1,) * 6 if stride == 1 else (5, 1, 1, 1, 5, 1))  # sizes 48, 8, 8, 8, 24, 3
    assert state.start.numel() == sum(-(-n // k) for n, k in zip(sizes, strides)) == sum(opt._sampled)
    # as if well into a run (from d0 = 1e-6 six steps barely move): d = 1e-3, each tensor's own around it,
    # numerators as if the run had come far, so that the estimates grow
    d0 = 1e-3
    own = tuple(core.DistanceEstimate(0.1, d=d0 * 2.0 ** (i - 2), last=d0 * 2.0 ** (i - 2)) for i in range(len(sizes)))
    state.distance = core.DistanceEstimate(1.0, d=d0, last=d0)
    state.tensor_distances = core.TensorDistances(share, sizes, own)
    opt.state["distance"] = opt.state["distance_last"] = d0
    opt.state["distance_numerator"] = 1.0
    opt._store_tensor_estimates(own)
    h = Hyper(lr, *BETAS, EPS, WD)
    batches = task.batches(0)
    for t in range(1, 7):
        params, state = step_both(task, model, opt, rule, prepared, index, params, state, h, next(batches))
        torch.testing.assert_close(params, flat_params(model), rtol=1e-6, atol=1e-6)
        for key in ("exp_avg", "exp_avg_sq", "lr_scale"):
            torch.testing.assert_close(getattr(state, key), opt._buffers[key], rtol=1e-5, atol=1e-6, msg=key)
        for key in ("grad_sum",) + (() if shared else ("tensor_grad_sum",)):  # weighted by d^2 / d0 (up to 1e5 here): float32 rounding of
            # the largest entries (a few 1e-7 of them) is what an entry that nearly cancels can differ by
            mine = getattr(state, key)
            torch.testing.assert_close(mine, opt._buffers[key], rtol=1e-4, atol=1e-6 * float(mine.abs().max()), msg=key)
        assert state.distance.d == pytest.approx(opt.distance, rel=1e-6)
        mine = [e.d for e in state.tensor_distances.estimates]
        assert mine == pytest.approx(opt.state[TENSOR_DISTANCES][:, 1].tolist(), rel=1e-6)
    assert state.distance.d > d0 and all(e.d > o.d for e, o in zip(state.tensor_distances.estimates, own))  # all grew


@pytest.mark.parametrize("stride, shared", [(1, False), (4, False), (1, True), (4, True)])
def test_state_dict_resumes_exactly_and_state_is_2x_plus_3_over_k(stride: int, shared: bool,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """x_0 and both gradient sums hold the sampled entries only: 5x the parameters at stride 1 (rule="adam":
    no scale), 2x plus three times ceil(n / k_i) per tensor at stride k (every tensor sampled from its first
    entry, k_i a prime near k that divides none of its dimensions, and all of a tensor too small for
    MIN_TENSOR_SAMPLE samples); with shared sums one sum less (4x, Prodigy's; 2x + 2 ceil(n / k_i)). The
    state resumes bit for bit; a state saved with another stride, or with the other kind of sums, is refused."""
    monkeypatch.setattr(core, "MIN_TENSOR_SAMPLE", 4)  # at this model's sizes (80, 16 x 3, 48, 3): strides 7, 3, 5, 1
    model = _normed()
    kw = dict(rule="adam", lr_free=True, estimate_every=4, per_tensor=0.5, estimate_stride=stride, shared_sums=shared)
    opt = GMNOptimizer(model, **kw)
    _train(model, opt, 18)  # inside a block of 4
    clone = copy.deepcopy(model)
    opt2 = GMNOptimizer(clone, **kw)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert torch.equal(opt2.state[TENSOR_DISTANCES], opt.state[TENSOR_DISTANCES])
    _train(model, opt, 10), _train(clone, opt2, 10)
    for pa, pb in zip(model.parameters(), clone.parameters()):
        assert torch.equal(pa, pb)
    numels = [p.numel() for p in model.parameters()]
    strides = (1,) * 6 if stride == 1 else (7, 3, 3, 3, 5, 1)
    assert core.tensor_strides(tuple(numels), stride, True) == strides
    sampled = sum(-(-n // k) for n, k in zip(numels, strides))
    sums = 2 if shared else 3  # x_0 and the network's sum, and each tensor's own sum unless shared
    assert sum(v.numel() for k, v in opt._buffers.items() if k != "step") == 2 * sum(numels) + sums * sampled  # rule="adam": no scale
    rows = opt.state[TENSOR_DISTANCES]
    assert bool((rows[:, 1] > 10 * core.D0).all())  # every tensor's own estimate grew, the 3-entry bias's too
    other = dict(kw, shared_sums=not shared)
    with pytest.raises(ValueError, match=f"shared_sums={shared}"):
        GMNOptimizer(_normed(), **other).load_state_dict(copy.deepcopy(opt.state_dict()))
    key = "grad_sum" if shared else "tensor_grad_sum"
    if stride > 1:
        assert opt.state[model[0].weight][key].shape == (-(-80 // 7),)
        assert opt.state[model[3].bias][key].shape == (3,)  # 3 entries: all read
        with pytest.raises(ValueError, match="another estimate_stride"):
            GMNOptimizer(_normed(), **dict(kw, estimate_stride=1)).load_state_dict(opt.state_dict())


def test_bad_arguments_and_states_are_refused() -> None:
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(ValueError, match="per_tensor"):
            GMNOptimizer(_normed(), rule="adam", lr_free=True, per_tensor=bad)
    for kwargs in ({}, {"lr_free": True, "spike_guard": 4.0}):
        with pytest.raises(ValueError, match="per_tensor"):
            GMNOptimizer(_normed(), rule="adam", per_tensor=0.5, **kwargs)
    model = _normed()
    plain = GMNOptimizer(model, rule="adam", lr_free=True)
    _train(model, plain, 3)
    with pytest.raises(ValueError, match="per-tensor estimates"):
        GMNOptimizer(copy.deepcopy(model), rule="adam", lr_free=True, per_tensor=0.5).load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="per_tensor"):
        OptState.zeros(10, start=torch.zeros(10), per_tensor=0.5, sizes=(4, 5))


def test_each_tensors_moments_and_step_follow_its_own_blended_step_size() -> None:
    """A tensor moves by d^(1-a) d_i^a; its moments change units by the ratio of that step size to the
    last one (its own, not the network's), and without an estimate nothing changes."""
    a = 0.75
    net = core.DistanceEstimate(d=4e-3, last=1e-3)
    own = (core.DistanceEstimate(d=8e-3, last=8e-3), core.DistanceEstimate(d=1e-2, last=1e-4))
    tens = core.TensorDistances(a, (3, 2), own)
    blend = lambda d, d_i: d ** (1 - a) * d_i**a  # noqa: E731
    assert tens.shrinks(net) == pytest.approx([blend(1e-3, 8e-3) / blend(4e-3, 8e-3), blend(1e-3, 1e-4) / blend(4e-3, 1e-2)])
    assert tens.factors(net) == pytest.approx([blend(1e-3, 8e-3) / 1e-3, blend(1e-3, 1e-4) / 1e-3])
    held = tens.held()
    assert held.shrinks(core.DistanceEstimate(d=4e-3, last=4e-3)) == [1.0, 1.0]
    m, v = [torch.ones(3), torch.ones(2)], [torch.ones(3), torch.ones(2)]
    core.shrink_tensor_moments(m, v, [0.5, 0.25], inplace=True)
    assert m[0].tolist() == [0.5] * 3 and v[1].tolist() == [0.0625] * 2


def test_small_tensors_are_read_whole_and_the_network_estimate_counts_each_sample_by_its_stride() -> None:
    """With per-tensor estimates a strided estimate reads a large tensor at a prime stride near k that
    divides none of its dimensions (so it visits every column: every 10th entry of a 64-wide weight reads
    even columns only), at least MIN_TENSOR_SAMPLE entries of a mid-sized one, and all of a small one (a
    LayerNorm gain): from a handful of entries a tensor's own estimate runs away. The network's estimate
    counts each tensor's sampled sums ``stride`` times, so a sample denser in small tensors still weighs
    tensors by their size; one stride for all is Prodigy's."""
    m = core.MIN_TENSOR_SAMPLE
    sizes = (32, 10 * m, 100 * m, 3 * m, 64 * 64 * 16)
    strides = core.tensor_strides(sizes, 10, True)
    assert strides == (1, 7, 11, 1, 11)
    assert all(n % k for n, k in zip(sizes, strides) if k > 1) and all(n // k >= m for n, k in zip(sizes, strides) if k > 1)
    assert core.tensor_strides((32, 10 * m), 10, False) == (10, 10)  # Prodigy's slice_p: one stride
    assert core.tensor_strides((32, 10 * m), 1, True) == (1, 1)
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(6, generator=g), torch.randn(4, generator=g)]
    grads = [torch.randn(6, generator=g), torch.randn(4, generator=g)]
    start = [p + 0.1 * torch.randn(p.shape, generator=g) for p in params]
    h, est = Hyper(1.0), core.DistanceEstimate(1.0, d=1e-3, last=1e-3)

    def d_of(strides):
        sums = [torch.zeros_like(p) for p in params]
        return core.estimate_distance(params, grads, start, sums, est, h, 5, inplace=False, strides=strides)[0].d
    w = core._estimate_weight(est, h, 5, 1)
    decay = 0.999**0.5
    dots = [float(torch.dot(gr, s - p)) for gr, s, p in zip(grads, start, params)]
    norms = [float((w * gr).abs().sum()) for gr in grads]
    want = (decay * 1.0 + w * (dots[0] + 3 * dots[1])) / (norms[0] + 3 * norms[1])
    assert d_of([1, 3]) == pytest.approx(max(want, 1e-3), rel=1e-5)
    assert d_of([2, 2]) == pytest.approx(d_of(None), rel=1e-6)  # one stride for all cancels


def test_scale_per_tensor_lets_the_rule_share_the_step_out_within_each_tensor_only():
    """normalise_scale with sizes: each tensor's geometric-mean scale is the rule's correction of d (read
    from the network's g), the shares within a tensor are the rule's; one tensor is the network form."""
    torch.manual_seed(0)
    rule = UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=2.0, bound=2.0)).with_global_bound(1.5)
    with torch.no_grad():
        rule.global_gate.fill_(2.0), rule.global_offset.fill_(0.1)
    log_scale = torch.randn(10, requires_grad=True)
    scale = log_scale.exp()
    sizes = (3, 5, 2)
    out = core.normalise_scale(scale, rule, sizes=sizes)
    network = core.normalise_scale(scale, rule)
    correction = float(network.log().mean())  # the network form's mean is the correction
    for o, t in zip(out.split(list(sizes)), scale.split(list(sizes))):
        assert float(o.log().mean()) == pytest.approx(correction, abs=1e-5)
        torch.testing.assert_close((o / o[0]).detach(), (t / t[0]).detach())
    torch.testing.assert_close(core.normalise_scale(scale, rule, sizes=(10,)), network)
    out.sum().backward()  # differentiable (meta-training normalises alike)
    assert log_scale.grad is not None and torch.isfinite(log_scale.grad).all()


def test_scale_per_tensor_needs_per_tensor_estimates():
    model = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="scale_per_tensor=True .* needs lr-free per_tensor > 0"):
        GMNOptimizer(model, per_tensor=0.0, scale_per_tensor=True)
    with pytest.raises(ValueError, match="scale_per_tensor=True"):
        GMNOptimizer(model, lr=1e-3, scale_per_tensor=True)  # a fixed lr has no per-tensor estimates
    with pytest.raises(ValueError, match="needs per_tensor > 0"):
        OptState.zeros(10, start=torch.zeros(10), sizes=(8, 2), scale_per_tensor=True)
    with pytest.raises(ValueError, match="is the identity"):
        GMNOptimizer(model, scale_per_tensor=True)  # GMNOptimizer(model) runs no rule: nothing to normalise
    assert GMNOptimizer(model, rule="lrfree", scale_per_tensor=True).scale_per_tensor


def test_scale_per_tensor_keeps_gru_gate_biases_from_running_away():
    """A byte-level GRU LM (benchmarks.bench_user_loops): under the lr-free GMN rule (rule="lrfree", the
    default of 0.4) the rule's largest scales and the per-tensor estimates' largest factors fall on the
    gate biases, which grow to rms ~4.5 within 400 steps (~10 by 1,000) and saturate the gates; with the
    scale per tensor, and under GMNOptimizer(model) (no rule), they stay near 1. (The text is the running
    Python's stdlib, so the figures move with its build: 2.4 / 0.56 / 1.4 on CPython 3.11.7.)"""
    from benchmarks.bench_user_loops import loops, train

    def bias_rms_and_loss(**kw):
        holder = {}

        def make(m):
            holder["m"] = m
            return GMNOptimizer(m, **kw)

        run = train(loops()["gru_lm"], make, 400, seed=0)
        return float(holder["m"].gru.bias_ih_l0.detach().pow(2).mean().sqrt()), run["final_loss"]

    gmn_rms, gmn_loss = bias_rms_and_loss(rule="lrfree")
    rms, loss = bias_rms_and_loss(rule="lrfree", scale_per_tensor=True)
    assert gmn_rms > 2.0 and rms < 0.5 * gmn_rms
    assert loss < gmn_loss - 0.1
    base_rms, base_loss = bias_rms_and_loss()
    assert base_rms < 0.75 * gmn_rms and base_loss < gmn_loss - 0.1


def test_shared_sums_each_tensors_estimate_is_the_networks_ratio_over_its_entries() -> None:
    """shared_sums=True: every tensor's estimate reads the network's terms (weights and gradient sum),
    restricted to its entries: the tensors' numerators add up to the network's, each tensor's largest
    estimate so far is at least its current ratio numerator_i / ||s_i||_1 (s_i: its slice of the network's
    sum), the estimates differ between tensors, and training works."""
    from metaopt.optim.optimizer import DISTANCE_NUMERATOR

    model = _normed()
    opt = GMNOptimizer(model, rule="adam", lr_free=True, estimate_every=3, per_tensor=0.5, shared_sums=True)
    losses = _train(model, opt, 31)  # the last step takes an estimate (steps 1, 4, ..., 31)
    assert losses[-1] < 0.5 * losses[0]
    rows = opt.state[TENSOR_DISTANCES]
    assert float(rows[:, 0].sum()) == pytest.approx(float(opt.state[DISTANCE_NUMERATOR]), rel=1e-6)
    norms = [float(opt.state[p]["grad_sum"].abs().sum()) for p in model.parameters()]
    for (numerator, _, _, peak, _), norm in zip(rows.tolist(), norms):
        assert peak >= numerator / norm * (1 - 1e-6)
    assert len({round(r, 12) for r in rows[:, 1].tolist()}) == len(norms)  # each tensor its own estimate
    with pytest.raises(ValueError, match="per_tensor > 0"):
        GMNOptimizer(_normed(), rule="adam", lr_free=True, shared_sums=True)
    with pytest.raises(ValueError, match="pass lr_free=True"):
        GMNOptimizer(_normed(), rule="adam", lr=1e-3, shared_sums=True)
    with pytest.raises(TypeError, match="shared_sums is True, False or None"):
        GMNOptimizer(_normed(), rule="adam", lr_free=True, per_tensor=0.5, shared_sums=1)
