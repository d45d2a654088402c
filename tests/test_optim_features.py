"""Features: per-tensor scale robustness, factored node moments, time features, shapes and names."""

from __future__ import annotations

import math

import pytest
import torch

from metaopt.graph import ParameterGraph
from metaopt.graph.schema import EDGE_ATTR_DTYPE, INDEX_DTYPE
from metaopt.optim import FeatureConfig, GraphIndex, compute_features
from metaopt.optim.features import per_tensor_rms, safe_sqrt


def _random_graph(shapes, num_nodes=9, seed=0) -> ParameterGraph:
    g = torch.Generator().manual_seed(seed)
    e = sum(math.prod(s) for s in shapes)
    return ParameterGraph(
        x=torch.zeros(num_nodes, 4, dtype=torch.long),
        edge_index=torch.randint(0, num_nodes - 1, (2, e), generator=g).to(INDEX_DTYPE),  # last node isolated
        edge_attr=torch.zeros(e, 5, dtype=EDGE_ATTR_DTYPE),
        aux_edge_index=torch.zeros(2, 0, dtype=INDEX_DTYPE),
        aux_edge_attr=torch.zeros(0, 5, dtype=EDGE_ATTR_DTYPE),
        param_names=[f"p{i}" for i in range(len(shapes))],
        param_shapes=[list(s) for s in shapes],
        layers=[],
        num_nodes=num_nodes,
    )


SHAPES = [(4, 3), (4,), (2, 4), (2,)]


def _values(e, seed=0):
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(e, generator=g)
    param = torch.randn(e, generator=g)
    m = torch.randn(e, generator=g) * 0.3
    v = torch.rand(e, generator=g) + 0.1
    log_scale = torch.randn(e, generator=g) * 0.5
    return grad, param, m, v, log_scale


def test_shapes_and_names_agree():
    cfg = FeatureConfig()
    graph = _random_graph(SHAPES)
    idx = GraphIndex.from_graph(graph, "cpu")
    f = compute_features(idx, *_values(graph.num_params), step=7, config=cfg)
    assert f.edge.shape == (graph.num_params, cfg.edge_dim) == (26, 8)
    assert f.node.shape == (9, cfg.node_dim) and f.graph.shape == (1, cfg.graph_dim)
    assert cfg.edge_names()[-1] == "log_lr_scale"
    assert torch.equal(f.edge[:, -1], _values(graph.num_params)[4])  # the lr scale is passed as it is
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("method", ["loop", "segment"])
def test_per_tensor_rms_and_normalisation(method):
    idx = GraphIndex.from_graph(_random_graph(SHAPES), "cpu")
    rows = torch.randn(3, 26) * torch.tensor([1.0, 1e-4, 1e3]).unsqueeze(1)
    got = per_tensor_rms(rows, idx, method)
    for i, chunk in enumerate(rows.split([12, 4, 8, 2], dim=1)):
        torch.testing.assert_close(got[:, i], chunk.pow(2).mean(1).sqrt())
    assert torch.equal(per_tensor_rms(torch.zeros(2, 26), idx, method), torch.zeros(2, 4))


def test_edge_features_are_invariant_to_a_tensors_scale():
    """Rescaling one tensor's weights and gradient history (v by c^2) leaves every edge feature
    unchanged: the rule is scale-robust per tensor (and bias correction cancels the same way)."""
    cfg = FeatureConfig()
    graph = _random_graph(SHAPES)
    idx = GraphIndex.from_graph(graph, "cpu")
    grad, param, m, v, ls = _values(graph.num_params)
    base = compute_features(idx, grad, param, m, v, ls, 3, cfg).edge
    c = torch.ones(graph.num_params)
    c[12:16] = 1e3  # tensor p1
    c[16:24] = 1e-3  # tensor p2
    scaled = compute_features(idx, grad * c, param * c, m * c, v * c * c, ls, 3, cfg).edge
    cols = [i for i, n in enumerate(cfg.edge_names()) if n not in ("adam_momentum", "grad_over_rms")]
    torch.testing.assert_close(scaled[:, cols], base[:, cols], rtol=1e-4, atol=1e-5)
    # the two ratio features are scale-free already, up to eps relative to the rms
    torch.testing.assert_close(scaled, base, rtol=1e-3, atol=1e-3)


def test_clipped_gradient_is_bounded_and_equal_below_the_clip():
    cfg = FeatureConfig(clip=1.5)
    graph = _random_graph(SHAPES)
    idx = GraphIndex.from_graph(graph, "cpu")
    grad, param, m, v, ls = _values(graph.num_params)
    grad[3] = 50.0  # an outlier
    f = compute_features(idx, grad, param, m, v, ls, 1, cfg).edge
    assert f[:, 1].abs().max() <= 1.5
    small = f[:, 0].abs() < 1.5
    assert torch.equal(f[small, 1], f[small, 0]) and f[3, 1] == 1.5 and f[3, 0] > 1.5


def test_node_features_are_factored_second_moments():
    cfg = FeatureConfig()
    graph = _random_graph(SHAPES)
    idx = GraphIndex.from_graph(graph, "cpu")
    grad, param, m, v, ls = _values(graph.num_params)
    node = compute_features(idx, grad, param, m, v, ls, 1, cfg).node
    src, dst = graph.edge_index.long()
    g_rms = v.mean().sqrt()
    for n in range(graph.num_nodes):
        ins, outs = v[dst == n], v[src == n]
        want_in = ins.mean().sqrt() / g_rms if len(ins) else torch.tensor(0.0)
        want_out = outs.mean().sqrt() / g_rms if len(outs) else torch.tensor(0.0)
        torch.testing.assert_close(node[n], torch.stack([want_in, want_out]))
    assert torch.equal(node[-1], torch.zeros(2))  # isolated node


def test_time_features_and_non_finite_inputs():
    cfg = FeatureConfig(time_scales=(10.0, 1000.0))
    graph = _random_graph(SHAPES)
    idx = GraphIndex.from_graph(graph, "cpu")
    grad, param, m, v, ls = _values(graph.num_params)
    param[0] = float("inf")
    f = compute_features(idx, grad, param, m, v, ls, 50, cfg)
    torch.testing.assert_close(f.graph, torch.tensor([[math.tanh(5.0), math.tanh(0.05)]]))
    assert torch.isfinite(f.edge).all() and torch.isfinite(f.node).all()


def test_config_and_inputs_are_validated():
    with pytest.raises(ValueError, match="time scales"):
        FeatureConfig(time_scales=(0.0,))
    graph = _random_graph(SHAPES)
    idx = GraphIndex.from_graph(graph, "cpu")
    grad, param, m, v, ls = _values(graph.num_params)
    with pytest.raises(ValueError, match="flat"):
        compute_features(idx, grad, param, m, v, ls[:-1], 1, FeatureConfig())
    bad = _random_graph(SHAPES)
    bad.param_shapes = [[4, 3]]
    with pytest.raises(ValueError, match="one-edge-per-parameter"):
        GraphIndex.from_graph(bad, "cpu")


def test_time_features_stop_at_max_step_and_the_option_round_trips():
    from metaopt.optim.features import time_features

    capped = FeatureConfig(max_step=200)
    assert torch.equal(time_features(5000, capped, "cpu"), time_features(200, capped, "cpu"))
    assert not torch.equal(time_features(5000, FeatureConfig(), "cpu"), time_features(200, FeatureConfig(), "cpu"))
    assert torch.equal(time_features(150, capped, "cpu"), time_features(150, FeatureConfig(), "cpu"))
    assert FeatureConfig.from_dict(capped.to_dict()) == capped


def test_safe_sqrt_has_finite_gradients_at_zero():
    """Second-order meta-gradients differentiate through sqrt(v) where v == 0 (a dead unit):
    torch.sqrt gives inf * 0 = NaN there, safe_sqrt gives 0 and the same values."""
    v = torch.tensor([0.0, 4.0, 0.25], requires_grad=True)
    out = safe_sqrt(v)
    assert torch.equal(out.detach(), v.detach().sqrt())
    (grad,) = torch.autograd.grad(out.sum() * 0 + (out * torch.tensor([1.0, 1.0, 1.0])).sum(), v)
    assert torch.isfinite(grad).all() and grad[0] == 0 and grad[1] == 0.25
    naive = torch.autograd.grad((v.sqrt() * 0).sum(), v)[0]
    assert torch.isnan(naive[0])  # what the plain sqrt does


@pytest.mark.parametrize("method", ["loop", "segment"])
def test_gradients_are_finite_where_a_whole_tensor_is_zero(method, monkeypatch):
    """Second-order meta-gradients differentiate the features through gradients and moments that are
    exactly 0 over whole tensors (a parameter that never gets a gradient) or everywhere (a constant
    loss): the per-tensor normalisation and the global rms must pass 0, not NaN, back there."""
    import metaopt.optim.features as features_mod

    real = features_mod.per_tensor_rms
    monkeypatch.setattr(features_mod, "per_tensor_rms", lambda rows, index: real(rows, index, method))
    graph = _random_graph(SHAPES)
    idx = GraphIndex.from_graph(graph, "cpu")
    grad, param, m, v, ls = _values(graph.num_params)
    for zero in (slice(12, 16), slice(None)):  # tensor p1 only; every tensor
        inputs = [t.clone() for t in (grad, param, m, v)]
        for t in (inputs[0], inputs[2], inputs[3]):
            t[zero] = 0.0
        inputs = [t.requires_grad_() for t in inputs]
        f = compute_features(idx, *inputs, ls, 5, FeatureConfig())
        w = torch.randn(f.edge.shape, generator=torch.Generator().manual_seed(0))
        grads = torch.autograd.grad((f.edge * w).sum() + f.node.sum(), inputs)
        assert all(torch.isfinite(g).all() for g in grads), zero
        plain = compute_features(idx, *(t.detach() for t in inputs), ls, 5, FeatureConfig())
        assert torch.equal(f.edge, plain.edge) and torch.equal(f.node, plain.node)  # values as without autograd
        assert torch.equal(f.edge[zero, 0], torch.zeros_like(f.edge[zero, 0]))


# ---- the relative-lr feature (FeatureConfig(relative_lr=True)) -------------------------------------
def _relative_lr_expected(param, lr_per_tensor):
    out, i = [], 0
    for shape, lr in zip(SHAPES, lr_per_tensor):
        n = math.prod(shape)
        rms = max(float(param[i : i + n].square().mean().sqrt()), 1e-3)
        out += [max(-3.0, min(3.0, (math.log10(lr / rms) + 2) / 2))] * n
        i += n
    return torch.tensor(out)


@pytest.mark.parametrize("grad_enabled", [False, True])
def test_relative_lr_feature_is_log_lr_over_weight_rms_per_tensor(grad_enabled):
    """The extra last column: (log10(lr / max(rms(p), 1e-3)) + 2) / 2 per tensor, clamped to +-3, for
    one lr or one per tensor; a zero tensor (a bias at init) reads the floor; the other columns are
    exactly those of the rule without it, in both the differentiable and the no-grad path."""
    cfg = FeatureConfig(relative_lr=True)
    assert cfg.edge_names()[-1] == "log10_lr_over_param_rms" and cfg.edge_dim == FeatureConfig().edge_dim + 1
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    assert FeatureConfig.from_dict({k: v for k, v in FeatureConfig().to_dict().items() if k != "relative_lr"}) \
        == FeatureConfig()  # rules saved before the feature existed load without it
    graph = _random_graph(SHAPES)
    idx = GraphIndex.from_graph(graph, "cpu")
    grad, param, m, v, ls = _values(graph.num_params)
    param[12:16] = 0.0  # the (4,) bias
    param[16:24] *= 30.0  # large weights: a small relative step
    with torch.set_grad_enabled(grad_enabled):
        for lr in (1e-3, torch.tensor([1e-1, 1e-4, 3e-2, 1e-6])):
            f = compute_features(idx, grad, param, m, v, ls, 4, cfg, lr=lr)
            lrs = [float(lr)] * 4 if isinstance(lr, float) else lr.tolist()
            torch.testing.assert_close(f.edge[:, -1], _relative_lr_expected(param, lrs), rtol=1e-5, atol=1e-6)
            base = compute_features(idx, grad, param, m, v, ls, 4, FeatureConfig())
            assert torch.equal(f.edge[:, :-1], base.edge) and torch.equal(f.node, base.node)


def test_relative_lr_feature_needs_a_positive_lr():
    cfg = FeatureConfig(relative_lr=True)
    idx = GraphIndex.from_graph(_random_graph(SHAPES), "cpu")
    with pytest.raises(ValueError, match="needs the learning rate"):
        compute_features(idx, *_values(26), 1, cfg)
    with pytest.raises(ValueError, match="lr > 0"):
        compute_features(idx, *_values(26), 1, cfg, lr=0.0)


# ---- the horizon features (FeatureConfig(horizon=True)) ---------------------------------------------
@pytest.mark.parametrize("grad_enabled", [False, True])
def test_horizon_features_are_the_fraction_done_and_whether_it_is_known(grad_enabled):
    """Two graph columns after the time features: min(step / total, 1) and 1 when the total is given;
    both 0 when it is not; everything else exactly as without them."""
    cfg = FeatureConfig(horizon=True)
    assert cfg.graph_names()[-2:] == ["training_fraction", "horizon_known"]
    assert cfg.graph_dim == FeatureConfig().graph_dim + 2 and cfg.edge_dim == FeatureConfig().edge_dim
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    assert FeatureConfig.from_dict({k: v for k, v in FeatureConfig().to_dict().items() if k != "horizon"}) \
        == FeatureConfig()  # rules saved before the feature existed load without it
    graph = _random_graph(SHAPES)
    idx = GraphIndex.from_graph(graph, "cpu")
    values = _values(graph.num_params)
    with torch.set_grad_enabled(grad_enabled):
        base = compute_features(idx, *values, 30, FeatureConfig())
        for total, expected in ((120, [0.25, 1.0]), (30, [1.0, 1.0]), (10, [1.0, 1.0]), (0, [0.0, 0.0])):
            f = compute_features(idx, *values, 30, cfg, total_steps=total)
            assert f.graph.shape == (1, cfg.graph_dim)
            torch.testing.assert_close(f.graph[0, -2:], torch.tensor(expected))
            assert torch.equal(f.graph[:, :-2], base.graph) and torch.equal(f.edge, base.edge)
    with pytest.raises(ValueError, match="total_steps must be >= 0"):
        compute_features(idx, *values, 3, cfg, total_steps=-1)


# ---- the signal-to-noise features (FeatureConfig(snr=True)) -----------------------------------------
@pytest.mark.parametrize("grad_enabled", [False, True])
def test_snr_features_are_adams_bias_corrected_ratio_and_its_tensor_rms(grad_enabled):
    """Two edge columns after the others: Adam's bias-corrected m_hat / (sqrt(v_hat) + eps), clamped
    to +-clip, and its rms over each parameter tensor, neither normalised (rescaling the gradients
    leaves them as they are); every other column is exactly that of the rule without them, in the
    differentiable and the no-grad path, with and without the relative-lr column before them."""
    graph = _random_graph(SHAPES)
    idx = GraphIndex.from_graph(graph, "cpu")
    grad, param, m, v, ls = _values(graph.num_params)
    m[0] = 50.0  # clamped
    step, betas = 7, (0.8, 0.99)
    corr = math.sqrt(1 - 0.99**step) / (1 - 0.8**step)
    ratio = (m / (v.sqrt() + 1e-8) * corr).clamp(-3, 3)
    rms, i = [], 0
    for shape in SHAPES:
        n = math.prod(shape)
        rms += [float((m[i : i + n] / (v[i : i + n].sqrt() + 1e-8) * corr).square().mean().sqrt())] * n
        i += n
    assert FeatureConfig.from_dict({k: v for k, v in FeatureConfig().to_dict().items() if k != "snr"}) == FeatureConfig()
    with torch.set_grad_enabled(grad_enabled):
        for relative in (False, True):
            cfg = FeatureConfig(snr=True, relative_lr=relative)
            assert cfg.edge_names()[-2:] == ["adam_ratio", "adam_ratio_tensor_rms"]
            assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
            f = compute_features(idx, grad, param, m, v, ls, step, cfg, lr=1e-3, betas=betas)
            torch.testing.assert_close(f.edge[:, -2], ratio, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(f.edge[:, -1], torch.tensor(rms), rtol=1e-5, atol=1e-6)
            assert f.edge[0, -2] == 3.0
            base = compute_features(idx, grad, param, m, v, ls, step, FeatureConfig(relative_lr=relative), lr=1e-3)
            assert torch.equal(f.edge[:, :-2], base.edge) and torch.equal(f.node, base.node)
            scaled = compute_features(idx, grad * 1e3, param, m * 1e3, v * 1e6, ls, step, cfg, lr=1e-3, betas=betas)
            torch.testing.assert_close(scaled.edge[:, -2:], f.edge[:, -2:], rtol=1e-4, atol=1e-6)


def test_snr_ratio_separates_consistent_gradients_from_noise():
    """What the feature is for: after 200 Adam steps on a constant gradient the tensor rms of the
    ratio is ~1; on zero-mean noise it is near sqrt((1 - beta1) / (1 + beta1)) = 0.23."""
    graph = _random_graph([(50, 40)], num_nodes=90)
    idx = GraphIndex.from_graph(graph, "cpu")
    g = torch.Generator().manual_seed(1)
    cfg, e = FeatureConfig(snr=True), graph.num_params
    for kind, lo, hi in (("constant", 0.98, 1.001), ("noise", 0.18, 0.28)):
        m, v, const = torch.zeros(e), torch.zeros(e), torch.randn(e, generator=g)
        for _ in range(200):
            grad = const if kind == "constant" else torch.randn(e, generator=g)
            m.mul_(0.9).add_(grad, alpha=0.1)
            v.mul_(0.999).addcmul_(grad, grad, value=0.001)
        f = compute_features(idx, grad, torch.randn(e), m, v, torch.zeros(e), 200, cfg)
        assert lo < float(f.edge[0, -1]) < hi, (kind, float(f.edge[0, -1]))
