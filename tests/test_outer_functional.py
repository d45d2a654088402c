"""metaopt.optim.functional: one functional step is exactly one GMNOptimizer step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from metaopt import to_graph
from metaopt.nn import prepare_graph
from metaopt.optim import GMNOptimizer, GraphIndex, RuleConfig, UpdateRule, compute_features
from metaopt.optim.functional import FunctionalState, features_fn, step_fn


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize(
    "kind,weight_decay,residual_scale",
    [("gmn", 0.05, "adam"), ("gmn", 0.0, "none"), ("mlp", 0.0, "adam"), ("none", 0.05, "adam")],
)
def test_functional_step_equals_gmn_optimizer_step(kind: str, weight_decay: float, residual_scale: str) -> None:
    model = _model()
    graph = to_graph(model, torch.zeros(2, 6))
    torch.manual_seed(0)
    rule = UpdateRule(RuleConfig(kind=kind, hidden=8, layers=1, alpha=0.5 if kind != "none" else 0.0,
                                 residual_scale=residual_scale))
    opt = GMNOptimizer(model, rule=rule, lr=1e-2, weight_decay=weight_decay, graph=graph)
    params = _flat(model)
    state = FunctionalState.zeros(params.numel(), rule.features)
    prepared, index = prepare_graph(graph), GraphIndex.from_graph(graph, "cpu")
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        opt.step()
        params, state = step_fn(rule, prepared, params, grads, state, 1e-2, weight_decay=weight_decay, index=index)
        torch.testing.assert_close(params, _flat(model), rtol=0, atol=1e-6)
        params = _flat(model)  # both continue from identical parameters
    assert state.step == 4


def test_features_fn_matches_compute_features_and_is_differentiable() -> None:
    model = _model()
    graph = to_graph(model, torch.zeros(2, 6))
    index = GraphIndex.from_graph(graph, "cpu")
    e = graph.num_params
    g = torch.Generator().manual_seed(2)
    grad, param, m = (torch.randn(e, generator=g) for _ in range(3))
    v = torch.rand(e, generator=g) * 1e-3
    cfg = RuleConfig().features
    mom = torch.randn(len(cfg.momentum_decays), e, generator=g)
    ref = compute_features(index, grad, param, m, v, mom, 7, cfg)
    param = param.clone().requires_grad_()
    got = features_fn(index, grad, param, m, v, mom, 7, cfg)
    for a, b in ((got.edge, ref.edge), (got.node, ref.node), (got.graph, ref.graph)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    got.edge.sum().backward()
    assert param.grad is not None and torch.isfinite(param.grad).all()


def test_step_fn_is_pure() -> None:
    model = _model()
    graph = to_graph(model, torch.zeros(2, 6))
    rule = UpdateRule(RuleConfig(kind="gmn", hidden=8, layers=1, alpha=0.3))
    params = _flat(model)
    state = FunctionalState.zeros(params.numel(), rule.features)
    before = (params.clone(), copy.deepcopy(state))
    step_fn(rule, graph, params, torch.randn_like(params), state, 1e-2)
    assert torch.equal(params, before[0]) and torch.equal(state.exp_avg, before[1].exp_avg) and state.step == 0
