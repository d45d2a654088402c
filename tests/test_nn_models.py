"""GMN on real parameter graphs (metaopt.to_graph): hidden-unit / channel / head permutations of
MLPs with LayerNorm and residuals, ResNets with BatchNorm, transformers and DeepSets nets give
correspondingly permuted edge and node outputs and the same graph outputs; batches of different
architectures equal each graph alone; weights matter."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from metaopt import to_graph
from metaopt.graph import NodeType
from metaopt.nn import DMC, GMN, DeepSets, PerParameterMLP, StatNN
from model_zoo import MLP, DeepSets as DeepSetsNet, ResNet, TinyLM, all_models
from permutations import extend_relabelling, layer_nodes, permute_heads, permute_in, permute_out, relabel
from test_nn_helpers import edge_correspondence

ATOL = dict(atol=2e-5, rtol=1e-4)


def _mlp_case():
    model = MLP((5, 8, 8, 8, 3), act=nn.ReLU, layernorm=True, residual=True)
    p = torch.randperm(8)

    def permute(m):
        for i in range(3):  # the residual stream: all three hidden layers share one permutation
            permute_out(m.layers[i], p)
            permute_out(m.norms[i], p)
        for i in range(1, 4):
            permute_in(m.layers[i], p)
        return m

    def sigma(g):
        s = torch.arange(g.num_nodes)
        for i in range(3):
            relabel(s, layer_nodes(g, f"layers.{i}"), p)
        return s

    return model, permute, sigma, (torch.randn(2, 5),)


def _resnet_case():
    model = ResNet(widths=(6, 8), blocks=(2, 1)).eval()
    stream = torch.randperm(6)
    inner = [torch.randperm(6), torch.randperm(6), torch.randperm(8)]

    def permute(m):
        permute_out(m.stem, stream), permute_out(m.bn, stream)
        for blk in (m.layers[0], m.layers[1]):
            permute_in(blk.conv1, stream)
            permute_out(blk.conv2, stream), permute_out(blk.bn2, stream)
        permute_in(m.layers[2].conv1, stream), permute_in(m.layers[2].shortcut[0], stream)
        for blk, q in zip(m.layers, inner):
            permute_out(blk.conv1, q), permute_out(blk.bn1, q), permute_in(blk.conv2, q)
        return m

    def sigma(g):
        s = torch.arange(g.num_nodes)
        relabel(s, layer_nodes(g, "stem"), stream)
        for i in range(2):
            relabel(s, layer_nodes(g, f"layers.{i}.conv2"), stream)
        for i, q in enumerate(inner):
            relabel(s, layer_nodes(g, f"layers.{i}.conv1"), q)
        return s

    return model, permute, sigma, (torch.randn(2, 3, 8, 8),)


def _transformer_case():
    model = TinyLM(vocab=11, dim=12, heads=3, depth=2).eval()
    head_perms = [torch.randperm(3) for _ in range(2)]
    ff_perms = [torch.randperm(24) for _ in range(2)]
    units: list[torch.Tensor] = []

    def permute(m):
        units.clear()
        for blk, hp, fp in zip(m.blocks, head_perms, ff_perms):
            units.append(permute_heads(blk.self_attn, hp))
            permute_out(blk.linear1, fp), permute_in(blk.linear2, fp)
        return m

    def sigma(g):
        s = torch.arange(g.num_nodes)
        for i, (hp, fp, unit) in enumerate(zip(head_perms, ff_perms, units)):
            name = f"blocks.{i}.self_attn"
            for t in (NodeType.QUERY, NodeType.KEY, NodeType.VALUE):
                relabel(s, layer_nodes(g, name, (t,)), unit)
            relabel(s, layer_nodes(g, name, (NodeType.HEAD,)), hp)
            relabel(s, layer_nodes(g, f"blocks.{i}.linear1"), fp)
        return s

    return model, permute, sigma, (torch.randint(0, 11, (2, 7)),)


def _deepsets_case():
    model = DeepSetsNet(din=3, hidden=8, dout=2)
    p1, p2 = torch.randperm(8), torch.randperm(8)

    def permute(m):
        permute_out(m.eq1.lam, p1), permute_out(m.eq1.gam, p1)
        permute_in(m.eq2.lam, p1), permute_in(m.eq2.gam, p1)
        permute_out(m.rho[0], p2), permute_in(m.rho[2], p2)
        return m

    def sigma(g):
        s = torch.arange(g.num_nodes)
        relabel(s, layer_nodes(g, "eq1.lam"), p1)
        relabel(s, layer_nodes(g, "eq1.gam"), p1)
        relabel(s, layer_nodes(g, "rho.0"), p2)
        return s

    return model, permute, sigma, (torch.randn(2, 5, 3),)


CASES = {"mlp_ln_res": _mlp_case, "resnet_bn": _resnet_case, "transformer": _transformer_case, "deepsets": _deepsets_case}


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
