"""The optimizer's refresh runs without autograd through faster code (features written into one
buffer, lite networks in cache-sized edge chunks); both must give the values of the differentiable
forms meta-training uses (features bit for bit, networks to float rounding), or the shipped rule
would act differently than it was trained."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

import metaopt.nn.lite as lite
from metaopt import to_graph
from metaopt.optim import GraphIndex, RuleConfig, UpdateRule, core


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 5))


def _state(e: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, core.OptState]:
    g = torch.Generator().manual_seed(seed)
    grad, param = torch.randn(e, generator=g), torch.randn(e, generator=g)
    state = core.OptState(torch.randn(e, generator=g) * 0.1, torch.rand(e, generator=g),
                          torch.exp(torch.randn(e, generator=g)), 7)
    grad[:40] = 0.0  # a whole dead row of the first weight, and an all-zero bias tensor below
    state.exp_avg[:40] = 0.0
    state.exp_avg_sq[:40] = 0.0
    return grad, param, state


def test_features_without_autograd_equal_the_differentiable_ones() -> None:
    model = _model()
    graph = to_graph(model)
    index = GraphIndex.from_graph(graph, "cpu")
    grad, param, state = _state(graph.num_params)
    bias = slice(12 * 40, 12 * 40 + 40)
    grad[bias], state.exp_avg[bias], state.exp_avg_sq[bias], param[bias] = 0.0, 0.0, 0.0, 0.0
    rule = UpdateRule(RuleConfig(kind="gmn"))
    with torch.enable_grad():
        ref = core.rule_features(index, grad, param, state, rule)
    with torch.no_grad():
        fast = core.rule_features(index, grad, param, state, rule)
    assert torch.equal(fast.edge, ref.edge) and torch.equal(fast.node, ref.node) and torch.equal(fast.graph, ref.graph)


@pytest.mark.parametrize("kind", ["gmn", "mlp"])
@pytest.mark.parametrize("graphs", [1, 3])
@pytest.mark.parametrize("type_runs", [16, 0])
def test_chunked_lite_networks_equal_the_full_size_pass(monkeypatch, kind: str, graphs: int, type_runs: int) -> None:
    """The no-grad path (feature-major, in chunks smaller than the edge count and not dividing it;
    edge types added run by run, or gathered per edge where a chunk has too many runs) changes
    outputs by float rounding at most (other BLAS kernels, other summation order)."""
    monkeypatch.setattr(lite, "_MAX_TYPE_RUNS", type_runs)
    torch.manual_seed(1)
    rule = UpdateRule(RuleConfig(kind=kind, alpha=0.7))
    model = _model()
    graph = to_graph(model)
    batch = Batch.from_data_list([graph] * graphs) if graphs > 1 else graph
    prepared = rule.prepare(batch, "cpu")
    index = GraphIndex.from_graph(graph, "cpu")
    feats = []
    for s in range(graphs):
        grad, param, state = _state(graph.num_params, seed=s)
        feats.append(core.rule_features(index, grad, param, state, rule))
    from metaopt.optim import Features

    merged = Features(torch.cat([f.edge for f in feats]), torch.cat([f.node for f in feats]),
                      torch.cat([f.graph for f in feats]))
    with torch.enable_grad():
        full = rule.log_scale(prepared, merged).detach()
    monkeypatch.setattr(lite, "CHUNK", 333)
    with torch.no_grad():
        chunked = rule.log_scale(prepared, merged)
    assert merged.edge.shape[0] > 3 * 333
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)


def test_incidence_product_sums_rows_per_node_like_index_add() -> None:
    """The CSR product the chunked lite path uses equals ``index_add_`` (nodes without edges stay 0)."""
    from metaopt.nn.lite import _incidence

    gen = torch.Generator().manual_seed(0)
    node = torch.randint(0, 7, (50,), generator=gen) * 2  # odd nodes have no edges
    h = torch.randn(50, 8, generator=gen)
    expected = torch.zeros(15, 8).index_add_(0, node, h)
    torch.testing.assert_close(_incidence(node, 15) @ h, expected, rtol=1e-6, atol=1e-6)
