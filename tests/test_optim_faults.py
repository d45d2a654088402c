"""Faults: non-finite gradients skip the step, non-finite rule output falls back to Adam (scale 1)
per edge, and the lr-scale rule computes exactly Adam's step times ``exp(bound * tanh(alpha * d))``,
refreshed on steps 1, k+1, 2k+1, ... and held in between."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from metaopt.optim import GMNOptimizer, compute_features
from metaopt.optim.features import GraphIndex
from test_optim_common import linear_rule, mlp, to_graph


def _data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)


def _backward(model, x, y):
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gradient_skips_the_whole_step(bad):
    torch.manual_seed(0)
    a = mlp()
    b = copy.deepcopy(a)
    x, y = _data()
    opt = GMNOptimizer(a, rule="adam", lr=1e-2)
    ref = torch.optim.Adam(b.parameters(), lr=1e-2)
    for step in range(6):
        _backward(a, x, y)
        if step == 2:
            a[2].weight.grad[3, 4] = bad
            params = [p.clone() for p in a.parameters()]
            state = {k: v.clone() for k, v in opt._buffers.items()}
            opt.step()
            assert all(torch.equal(p, q) for p, q in zip(a.parameters(), params))
            assert all(torch.equal(opt._buffers[k], v) for k, v in state.items())
            assert all(torch.isfinite(p).all() for p in a.parameters())
            continue
        opt.step()
        _backward(b, x, y)
        ref.step()
    assert opt.skipped_steps == 1 and opt.state["skipped_steps"] == 1
    assert opt.state["steps_taken"] == 5
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_the_finite_check_leaves_gradients_bit_identical():
    """The fused NaN/Inf check (GradScaler's, with scale 1.0) must not change a gradient a user reads."""
    torch.manual_seed(0)
    model = mlp()
    opt = GMNOptimizer(model, rule="default")
    _backward(model, *_data())
    model[0].weight.grad[0, 0] = 1e-45  # a subnormal survives too
    before = [p.grad.clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before))
    assert opt.skipped_steps == 0


def _reference_run(model, graph, rule, data, steps, lr, betas, eps, wd):
    """Independent re-computation of the lr-scale rule from its definition (flat, edge order):
    Adam's moments every step; on steps 1, k+1, 2k+1, ... the scale s = exp(bound * tanh(alpha * d))
    from the rule network's output d on this step's features; in between s is held;
    p <- p * (1 - lr * wd) - lr * s * m_hat / (sqrt(v_hat) + eps). Returns the parameters and
    scales after every step."""
    index = GraphIndex.from_graph(graph, "cpu")
    e = graph.num_params
    m, v, s = torch.zeros(e), torch.zeros(e), torch.ones(e)
    b1, b2 = betas
    k, bound, alpha = rule.config.refresh_every, rule.config.bound, float(rule.alpha.detach())
    p = torch.cat([t.detach().reshape(-1) for t in model.parameters()])
    out = []
    for t in range(1, steps + 1):
        x, y = data[t - 1]
        with torch.no_grad():
            for q, w in zip(model.parameters(), p.split([q.numel() for q in model.parameters()])):
                q.copy_(w.view_as(q))
        _backward(model, x, y)
        g = torch.cat([q.grad.reshape(-1) for q in model.parameters()])
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if (t - 1) % k == 0:
            feats = compute_features(index, g, p, m, v, s.log(), t, rule.features)
            with torch.no_grad():
                d = rule.net(graph, edge_values=feats.edge, node_values=feats.node, graph_values=feats.graph).edge[:, 0]
            s = torch.exp(bound * torch.tanh(alpha * d))
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = p * (1 - lr * wd) - lr * s * m_hat / (v_hat.sqrt() + eps)
        out.append((p.clone(), s.clone()))
    return out


@pytest.mark.parametrize("refresh_every", [1, 3])
def test_lr_scale_update_matches_the_definition(refresh_every):
    torch.manual_seed(0)
    model = mlp(din=16, hidden=8)
    shadow = copy.deepcopy(model)
    graph = to_graph(model)
    rule = linear_rule(alpha=0.3, refresh_every=refresh_every, bound=1.5)
    lr, betas, eps, wd = 1e-2, (0.85, 0.99), 1e-6, 0.05
    opt = GMNOptimizer(model, rule=rule, lr=lr, betas=betas, eps=eps, weight_decay=wd, graph=graph)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(7)]
    want = _reference_run(shadow, graph, rule, data, 7, lr, betas, eps, wd)
    rule.net.calls = 0
    for t, ((x, y), (want_p, want_s)) in enumerate(zip(data, want), start=1):
        _backward(model, x, y)
        opt.step()
        torch.testing.assert_close(graph.params_to_edges(model), want_p, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(opt._buffers["lr_scale"], want_s, rtol=1e-5, atol=1e-7)
        assert (want_s - 1).abs().mean() > 0.05  # the rule really changes Adam's step
        if t > 1 and (t - 1) % refresh_every != 0:  # held between refreshes
            assert torch.equal(want_s, want[t - 2][1])
    refreshes = len(range(1, 8, refresh_every))  # steps 1, k+1, 2k+1, ... up to 7
    assert rule.net.calls == opt.rule_refreshes == refreshes
    assert opt.rule_fallbacks == 0
    # the optimizer state is Adam's two moments plus the scale: 3x the parameters
    assert set(opt.state[next(model.parameters())]) == {"step", "exp_avg", "exp_avg_sq", "lr_scale"}


def test_lr_scale_stays_within_the_bound():
    torch.manual_seed(0)
    model = mlp(din=16, hidden=8)
    rule = linear_rule(alpha=50.0, bound=0.7)  # saturating tanh: the bound is what limits the scale
    opt = GMNOptimizer(model, rule=rule, lr=1e-2)
    _backward(model, torch.randn(16, 16), torch.randint(0, 10, (16,)))
    opt.step()
    s = opt._buffers["lr_scale"]
    lo, hi = torch.exp(torch.tensor(-0.7)), torch.exp(torch.tensor(0.7))
    assert bool((s >= lo * (1 - 1e-6)).all() and (s <= hi * (1 + 1e-6)).all())
    assert s.min() < lo * 1.01 and s.max() > hi * 0.99  # both ends are reached


def test_untrained_network_rule_is_exactly_adam_and_skips_the_network():
    """alpha = 0 with a real network: the scale is exactly 1, so the step is Adam's bit for bit
    (AdamW with weight decay) and the network never runs."""
    from metaopt.optim import RuleConfig, UpdateRule

    torch.manual_seed(0)
    a = mlp(din=16, hidden=8)
    b = copy.deepcopy(a)
    rule = UpdateRule(RuleConfig(kind="gmn", hidden=8, alpha=0.0, refresh_every=1))
    assert rule.is_identity
    opt = GMNOptimizer(a, rule=rule, lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1, foreach=True)
    x, y = torch.randn(16, 16), torch.randint(0, 10, (16,))
    for _ in range(4):
        for m, o in ((a, opt), (b, ref)):
            _backward(m, x, y)
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert opt.rule_refreshes == 0


def test_random_rule_changes_the_updates_vs_untrained():
    torch.manual_seed(0)
    a = mlp(din=16, hidden=8)
    b = copy.deepcopy(a)
    x, y = torch.randn(16, 16), torch.randint(0, 10, (16,))
    oa = GMNOptimizer(a, rule=linear_rule(alpha=0.0), lr=1e-2)
    ob = GMNOptimizer(b, rule=linear_rule(alpha=0.5), lr=1e-2)
    for _ in range(3):
        for m, o in ((a, oa), (b, ob)):
            _backward(m, x, y)
            o.step()
    diff = (to_graph(a).params_to_edges(a) - to_graph(b).params_to_edges(b)).abs()
    assert (diff > 1e-6).float().mean() > 0.9


def test_non_finite_rule_output_falls_back_to_adam_on_those_edges_only():
    torch.manual_seed(0)
    a = mlp(din=16, hidden=8)
    adam_model, rule_model = copy.deepcopy(a), copy.deepcopy(a)
    graph = to_graph(a)
    poisoned = torch.tensor([0, 5, 17, graph.num_params - 1])
    bad_rule = linear_rule(alpha=0.5)
    bad_rule.net.poison = poisoned
    opt = GMNOptimizer(a, rule=bad_rule, lr=1e-2)
    adam = GMNOptimizer(adam_model, rule=linear_rule(alpha=0.0), lr=1e-2)
    good = GMNOptimizer(rule_model, rule=linear_rule(alpha=0.5), lr=1e-2)
    x, y = torch.randn(16, 16), torch.randint(0, 10, (16,))
    for m, o in ((a, opt), (adam_model, adam), (rule_model, good)):
        _backward(m, x, y)
        o.step()
    scale = opt._buffers["lr_scale"]
    assert bool((scale[poisoned] == 1.0).all()) and torch.isfinite(scale).all()
    got, want_adam, want_rule = (graph.params_to_edges(m) for m in (a, adam_model, rule_model))
    assert torch.isfinite(got).all()
    # Adam's step up to float rounding (with a scale the bias correction moves into the step size)
    torch.testing.assert_close(got[poisoned], want_adam[poisoned], rtol=1e-6, atol=1e-8)
    assert not torch.allclose(got[poisoned], want_rule[poisoned], rtol=1e-4, atol=1e-6)
    keep = torch.ones(graph.num_params, dtype=torch.bool)
    keep[poisoned] = False
    torch.testing.assert_close(got[keep], want_rule[keep], rtol=1e-6, atol=1e-8)
    assert opt.rule_fallbacks == len(poisoned) and opt.state["rule_fallbacks"] == len(poisoned)


class Unknown(nn.Module):
    """A layer no converter knows: adds the running sum of its parameter."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x + torch.cumsum(self.scale, 0)


def test_unknown_layer_is_optimized_as_free_edges_with_one_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), Unknown(8), nn.ReLU(), nn.Linear(8, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = GMNOptimizer(model, lr=1e-2)
    assert len(caught) == 1 and "FREE edges" in str(caught[0].message) and "1.scale" in str(caught[0].message)
    assert opt.graph.num_params == sum(p.numel() for p in model.parameters())
    before = model[1].scale.clone()
    x = torch.randn(4, 8)
    model(x).pow(2).mean().backward()
    opt.step()
    assert not torch.equal(model[1].scale, before)


def test_skipped_step_does_not_advance_the_refresh_schedule():
    """With a learned rule (k = 2) a NaN gradient at step 3 skips the step: the optimizer then
    continues exactly like one that never saw it (refreshes on its steps 1, 3, 5, not shifted)."""
    torch.manual_seed(0)
    a = mlp(din=16, hidden=8)
    b = copy.deepcopy(a)
    graph = to_graph(a)
    opt = GMNOptimizer(a, rule=linear_rule(alpha=0.5, refresh_every=2), lr=1e-2, graph=graph)
    ref = GMNOptimizer(b, rule=linear_rule(alpha=0.5, refresh_every=2), lr=1e-2, graph=graph)
    gen = torch.Generator().manual_seed(2)
    for step in range(6):
        x, y = torch.randn(16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        _backward(a, x, y)
        if step == 2:
            a[0].bias.grad[0] = float("nan")
            opt.step()
            continue
        opt.step()
        _backward(b, x, y)
        ref.step()
    assert opt.skipped_steps == 1 and opt.state["steps_taken"] == ref.state["steps_taken"] == 5
    assert opt.rule_refreshes == ref.rule_refreshes == 3
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_param_groups_with_their_own_hyperparameters_match_the_definition():
    """One rule over the whole network; each group steps with its own lr, betas, eps and weight decay."""
    torch.manual_seed(0)
    model = mlp(din=16, hidden=8)
    shadow = copy.deepcopy(model)
    graph = to_graph(model)
    ps = list(model.parameters())
    groups = [{"params": ps[:2], "lr": 3e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}, {"params": ps[2:]}]
    opt = GMNOptimizer(model, rule=linear_rule(alpha=0.3, refresh_every=2), lr=1e-2, params=groups, graph=graph)
    n_first = ps[0].numel() + ps[1].numel()
    e = graph.num_params

    def per_edge(a, b):
        return torch.cat([torch.full((n_first,), a, dtype=torch.float64), torch.full((e - n_first,), b, dtype=torch.float64)]).float()

    lr, b1, b2, eps, wd = per_edge(3e-2, 1e-2), per_edge(0.8, 0.9), per_edge(0.99, 0.999), per_edge(1e-6, 1e-8), per_edge(0.1, 0.0)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(4)]
    want = _reference_run(shadow, graph, opt.rule, data, 4, lr, (b1, b2), eps, wd)
    for (x, y), (want_p, want_s) in zip(data, want):
        _backward(model, x, y)
        opt.step()
        torch.testing.assert_close(graph.params_to_edges(model), want_p, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(opt._buffers["lr_scale"], want_s, rtol=1e-5, atol=1e-7)
