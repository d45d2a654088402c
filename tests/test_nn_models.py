"""GMN on real parameter graphs (metaopt.to_graph): hidden-unit / channel / head permutations of
MLPs with LayerNorm and residuals, ResNets with BatchNorm, transformers and DeepSets nets give
correspondingly permuted edge and node outputs and the same graph outputs; batches of different
architectures equal each graph alone; weights matter."""

from __future__ import annotations

import copy

import pytest
import torch
from torch_geometric.data import Batch

from metaopt import to_graph
from metaopt.nn import DMC, GMN, DeepSets, PerParameterMLP, StatNN
from model_zoo import all_models
from permutations import SYMMETRY_CASES, extend_relabelling
from test_nn_helpers import edge_correspondence

ATOL = dict(atol=2e-5, rtol=1e-4)

CASES = SYMMETRY_CASES


@pytest.mark.parametrize("case", list(CASES))
def test_permutation_symmetry_on_real_graphs(case):
    torch.manual_seed(0)
    model, permute, sigma_seed, inputs = CASES[case]()
    graph = to_graph(model, inputs)
    permuted = permute(copy.deepcopy(model))
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs), permuted(*inputs), atol=1e-4, rtol=1e-4)
    sigma = extend_relabelling(graph, sigma_seed(graph))
    corr = edge_correspondence(graph, model, permute)
    va, vb = graph.params_to_edges(model), graph.params_to_edges(permuted)
    assert torch.equal(vb, va[corr]) and not torch.equal(va, vb)
    for cls in (GMN, PerParameterMLP):
        net = cls(hidden=16, layers=2, edge_in=1, edge_out=2, node_out=2, graph_out=3).eval()
        a, b = net(graph, va), net(graph, vb)
        torch.testing.assert_close(b.edge, a.edge[corr], **ATOL)
        torch.testing.assert_close(b.node[sigma], a.node, **ATOL)
        torch.testing.assert_close(b.graph, a.graph, **ATOL)
    for base in (DeepSets(hidden=16), StatNN(hidden=16)):  # set/statistics baselines are invariant too
        torch.testing.assert_close(base(graph, vb), base(graph, va), **ATOL)


@pytest.fixture(scope="module")
def zoo():
    torch.manual_seed(0)
    names = ["mlp", "mlp_ln_res", "resnet", "bottleneck", "flatcnn", "vit", "lm_tied", "mha", "deepsets", "conv3d"]
    models = all_models()
    return [(models[n], to_graph(models[n])) for n in names]


def test_batch_of_architectures_equals_each_alone(zoo):
    graphs = [g for _, g in zoo]
    values = [g.params_to_edges(m)[:, None] for m, g in zoo]
    batch = Batch.from_data_list(graphs)
    allv = torch.cat(values)
    gmn = GMN(hidden=16, layers=2, edge_in=1, edge_out=1, node_out=1, graph_out=2).eval()
    out = gmn(batch, allv)
    baselines = [DeepSets(hidden=16), StatNN(hidden=16), DMC(hidden=16)]
    base_out = [b(batch, allv) for b in baselines]
    e0 = n0 = 0
    for i, (g, v) in enumerate(zip(graphs, values)):
        alone = gmn(g, v)
        torch.testing.assert_close(out.edge[e0 : e0 + g.num_params], alone.edge, **ATOL)
        torch.testing.assert_close(out.node[n0 : n0 + g.num_nodes], alone.node, **ATOL)
        torch.testing.assert_close(out.graph[i], alone.graph[0], **ATOL)
        for b, bo in zip(baselines, base_out):
            torch.testing.assert_close(bo[i], b(g, v)[0], **ATOL)
        e0, n0 = e0 + g.num_params, n0 + g.num_nodes
    # different architectures are told apart, and different weights of one architecture too
    assert out.graph.std(0).min() > 1e-3
    model, g = zoo[2]
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    delta = gmn(g, g.params_to_edges(other)[:, None]).graph - out.graph[2]
    assert delta.abs().max() > 1e-3
