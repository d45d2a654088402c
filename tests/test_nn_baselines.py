"""Weight-space baselines: exact statistics, slot layout, order sensitivity and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn


from metaopt import to_graph
from metaopt.nn import DMC, DeepSets, StatNN, segment_stats, value_features
from metaopt.nn.baselines import STATS_PER_CHANNEL
from metaopt.nn.encoders import FEATURES_PER_VALUE
from test_nn_helpers import make_mlp


def test_segment_stats_match_torch():
    sizes = [1, 7, 30, 2]
    values = torch.randn(sum(sizes))
    seg = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))
    seg_stats = segment_stats(values, seg, 5)  # segment 4 is empty
    q = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    for s, chunk in enumerate(torch.split(values, sizes)):
        ref = torch.cat([chunk.mean()[None], chunk.var(unbiased=False)[None], torch.quantile(chunk, q)])
        torch.testing.assert_close(seg_stats[s], ref)
    assert torch.equal(seg_stats[4], torch.zeros(7))


def test_statnn_slots_keep_first_and_last_tensors():
    net = StatNN(hidden=8, max_tensors=4)
    deep = make_mlp([3, 4, 4, 4, 4, 2], seed=0)  # 10 tensors > 4 slots
    g = to_graph(deep)
    v = g.params_to_edges(deep)
    f = net.features(g, v).view(5, -1)  # 4 slots + the whole-graph slot
    k = STATS_PER_CHANNEL * FEATURES_PER_VALUE
    params = list(deep.parameters())
    for slot, p in zip(range(4), [params[0], params[1], params[-2], params[-1]]):
        stats = segment_stats(p.detach().flatten(), torch.zeros(p.numel(), dtype=torch.long), 1)
        torch.testing.assert_close(f[slot, :k], value_features(stats)[0])
        assert f[slot, -1] == 1.0 and torch.isclose(f[slot, -2], torch.log1p(torch.tensor(float(p.numel()))))
    small = make_mlp([3, 2], seed=0)  # 2 tensors fill the head slots 0, 1; tail slots stay empty
    gs = to_graph(small)
    fs = net.features(gs, gs.params_to_edges(small)).view(5, -1)
    assert fs[:, -1].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert torch.equal(fs[2], torch.zeros_like(fs[2]))
    three = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2, bias=False))  # 3 tensors
    gt = to_graph(three)
    ft = net.features(gt, gt.params_to_edges(three)).view(5, -1)
    assert ft[:, -1].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]


def test_dmc_sees_parameter_order_deepsets_does_not():
    model = make_mlp([4, 6, 2], seed=0)
    g = to_graph(model)
    v = g.params_to_edges(model)
    shuffled = v[torch.randperm(v.numel())]
    ds, dmc = DeepSets(hidden=16).eval(), DMC(hidden=16).eval()
    torch.testing.assert_close(ds(g, shuffled), ds(g, v), atol=1e-5, rtol=1e-4)
    assert (dmc(g, shuffled) - dmc(g, v)).abs().max() > 1e-4
    assert dmc(g, v).shape == (1, 1) and ds(g, v[:, None]).shape == (1, 1)


def test_baselines_train_gradients_flow():
    model = make_mlp([4, 6, 2], seed=0)
    g = to_graph(model)
    v = g.params_to_edges(model)
    for net in (DeepSets(hidden=8, graph_out=3), DMC(hidden=8, graph_out=3), StatNN(hidden=8, graph_out=3)):
        out = net(g, v)
        assert out.shape == (1, 3)
        out.sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_baseline_errors():
    g = to_graph(make_mlp([4, 6, 2], seed=0))
    with pytest.raises(ValueError, match="one row per parameter edge"):
        DeepSets()(g, torch.randn(g.num_params - 1))
    with pytest.raises(ValueError, match="expected"):
        StatNN(edge_in=2)(g, torch.randn(g.num_params, 3))
    with pytest.raises(ValueError, match="odd"):
        DMC(kernel=4)
    with pytest.raises(ValueError, match="max_tensors"):
        StatNN(max_tensors=1)
