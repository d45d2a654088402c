"""GMN: shapes, symmetry (invariance / equivariance), batching, structural edges, autocast, checkpointing."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from metaopt.graph.schema import EDGE_ATTR_DTYPE, EDGE_FEATURES, INDEX_DTYPE, EdgeType
from metaopt import to_graph
from metaopt.nn import GMN, PerParameterMLP, prepare_graph, value_features
from test_nn_helpers import (
    edge_correspondence,
    make_mlp,
    permute_mlp_hidden,
    relabel_hidden_nodes,
)

KW = dict(hidden=16, layers=3, edge_in=2, node_in=1, graph_in=2, edge_out=3, node_out=2, graph_out=4)


def _values(g, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(g.num_params, 2, generator=gen),
        torch.randn(g.num_nodes, 1, generator=gen),
        torch.randn(1, 2, generator=gen),
    )


@pytest.fixture(params=[GMN, PerParameterMLP], ids=["gmn", "ppmlp"])
def net_cls(request):
    return request.param


def test_output_shapes_and_optional_heads(net_cls):
    g = to_graph(make_mlp([4, 7, 3], seed=0))
    ev, nv, gv = _values(g)
    out = net_cls(**KW)(g, ev, nv, gv)
    assert out.edge.shape == (g.num_params, 3)
    assert out.node.shape == (g.num_nodes, 2)
    assert out.graph.shape == (1, 4)
    bare = net_cls(hidden=8, layers=1, edge_in=1, graph_out=1)(g, ev[:, 0])
    assert bare.edge is None and bare.node is None and bare.graph.shape == (1, 1)


def test_relabelled_graph_gives_permuted_outputs(net_cls):
    """Renumbering interchangeable nodes: edge and graph outputs unchanged, node outputs move."""
    g = to_graph(make_mlp([4, 7, 6, 3], seed=0))
    ev, nv, gv = _values(g)
    net = net_cls(**KW).eval()
    new, perm = relabel_hidden_nodes(g, seed=5)
    nv_new = torch.empty_like(nv)
    nv_new[perm] = nv
    a, b = net(g, ev, nv, gv), net(new, ev, nv_new, gv)
    torch.testing.assert_close(a.edge, b.edge, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.graph, b.graph, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.node, b.node[perm], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_permuted_model_gives_corresponding_outputs(net_cls, seed):
    """Permuting a network's hidden neurons permutes the edge outputs the same way; graph output fixed."""
    model = make_mlp([5, 8, 8, 3], seed=seed)
    g = to_graph(model)
    net = net_cls(hidden=16, layers=3, edge_in=1, edge_out=2, graph_out=2).eval()
    perm_model = permute_mlp_hidden(model, seed=seed + 10)
    corr = edge_correspondence(g, model, lambda m: permute_mlp_hidden(m, seed=seed + 10))
    a = net(g, g.params_to_edges(model))
    b = net(g, g.params_to_edges(perm_model))
    torch.testing.assert_close(b.edge, a.edge[corr], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.graph, a.graph, atol=1e-5, rtol=1e-4)


def test_not_trivially_constant():
    g = to_graph(make_mlp([4, 7, 3], seed=0))
    net = GMN(**KW).eval()
    ev, nv, gv = _values(g, 0)
    ev2, _, _ = _values(g, 1)
    a, b = net(g, ev, nv, gv), net(g, ev2, nv, gv)
    for f in ("edge", "node", "graph"):
        assert (getattr(a, f) - getattr(b, f)).abs().max() > 1e-3, f
    # edges of one layer with different values get different outputs (no collapse to per-type constants)
    assert a.edge[:28].std(0).min() > 1e-4


def test_message_passing_spreads_information_perparameter_does_not():
    """A last-layer edge's output depends on a first-layer weight (3 hops) only with message passing."""
    g = to_graph(make_mlp([4, 7, 6, 3], seed=0))
    _, nv, gv = _values(g)
    for cls, spreads in ((GMN, True), (PerParameterMLP, False)):
        ev = _values(g)[0].requires_grad_(True)
        net = cls(**KW).eval()
        net(g, ev, nv, gv).edge[-5].sum().backward()
        assert ev.grad[-5].abs().max() > 1e-3
        far = ev.grad[0].abs().max()
        assert (far > 1e-7) if spreads else (far == 0), (cls.__name__, far)


def test_batch_equals_each_graph_alone(net_cls):
    models = [make_mlp([4, 7, 3], seed=0), make_mlp([2, 5, 5, 1], seed=1), make_mlp([6, 3], seed=2)]
    graphs = [to_graph(m) for m in models]
    vals = [_values(g, i) for i, g in enumerate(graphs)]
    net = net_cls(**KW).eval()
    batch = Batch.from_data_list(graphs)
    assert batch.edge_index.dtype == torch.int32
    out = net(
        batch,
        torch.cat([v[0] for v in vals]),
        torch.cat([v[1] for v in vals]),
        torch.cat([v[2] for v in vals]),
    )
    assert out.graph.shape == (3, 4)
    e0 = n0 = 0
    for i, (g, v) in enumerate(zip(graphs, vals)):
        alone = net(g, *v)
        torch.testing.assert_close(out.edge[e0 : e0 + g.num_params], alone.edge, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.node[n0 : n0 + g.num_nodes], alone.node, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.graph[i : i + 1], alone.graph, atol=1e-5, rtol=1e-4)
        e0, n0 = e0 + g.num_params, n0 + g.num_nodes


def _with_aux(g):
    """Add structural RESIDUAL edges from each input node i to output node i (as a skip would)."""
    g = g.copy_structure()
    inputs = torch.nonzero(g.x[:, 0] == 0).flatten()
    outputs = torch.nonzero(g.x[:, 0] == 2).flatten()
    k = min(len(inputs), len(outputs))
    g.aux_edge_index = torch.stack([inputs[:k], outputs[:k]]).to(INDEX_DTYPE)
    attr = torch.zeros(k, EDGE_FEATURES, dtype=torch.long)
    attr[:, 0] = EdgeType.RESIDUAL
    g.aux_edge_attr = attr.to(EDGE_ATTR_DTYPE)
    return g


def test_structural_edges_take_part_but_get_no_outputs():
    g = to_graph(make_mlp([3, 6, 3], seed=0))
    ga = _with_aux(g)
    ev, nv, gv = _values(g)
    net = GMN(**KW).eval()
    a, b = net(g, ev, nv, gv), net(ga, ev, nv, gv)
    assert b.edge.shape == a.edge.shape == (g.num_params, 3)
    assert (a.node - b.node).abs().max() > 1e-4
    # and the aux graph is still symmetric under relabelling
    new, perm = relabel_hidden_nodes(ga, seed=2)
    nv_new = torch.empty_like(nv)
    nv_new[perm] = nv
    c = net(new, ev, nv_new, gv)
    torch.testing.assert_close(c.edge, b.edge, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(c.node[perm], b.node, atol=1e-5, rtol=1e-4)
    batch = Batch.from_data_list([ga, g])
    out = net(batch, torch.cat([ev, ev]), torch.cat([nv, nv]), torch.cat([gv, gv]))
    torch.testing.assert_close(out.graph, torch.cat([b.graph, a.graph]), atol=1e-5, rtol=1e-4)


def test_direction_matters():
    """Reversing every edge (gradient flow instead of activation flow) changes the outputs."""
    g = to_graph(make_mlp([4, 4, 4], seed=0))
    rev = g.copy_structure()
    rev.edge_index = g.edge_index.flip(0)
    ev, nv, gv = _values(g)
    net = GMN(**KW).eval()
    assert (net(g, ev, nv, gv).node - net(rev, ev, nv, gv).node).abs().max() > 1e-4


def test_value_features_are_scale_robust_and_finite():
    v = torch.tensor([0.0, 1e-8, -1e-6, 1e-3, 1.0, -1e2, float("nan"), float("inf")])
    f = value_features(v[:, None])
    assert torch.isfinite(f).all() and f.shape == (8, 6)
    assert torch.equal(f[0], torch.zeros(6))
    # tiny values are distinguishable from zero and from each other (not lost in float noise)
    assert f[1].abs().max() > 0.03 and f[2].abs().max() > 0.2
    assert (f[1] > 0).all() and (f[2] < 0).all() and (f[5] < 0).all()  # sign kept at every scale
    # magnitudes stay ordered on the finest log scale
    assert f[1, 1] < f[3, 1] < f[4, 1] < f[7, 1]
    # everything stays within a modest range whatever the magnitude
    assert f[:6].abs().max() < 12


def test_prepared_inputs_match_graph_and_reset_output():
    g = to_graph(make_mlp([4, 7, 3], seed=0))
    ev, nv, gv = _values(g)
    net = GMN(**KW).eval()
    a, b = net(g, ev, nv, gv), net(prepare_graph(g), ev, nv, gv)
    torch.testing.assert_close(a.edge, b.edge)
    net.reset_output_(0.0)
    z = net(g, ev, nv, gv)
    assert z.edge.abs().max() == 0 and z.node.abs().max() == 0 and z.graph.abs().max() == 0


def test_checkpointing_gives_same_gradients():
    g = to_graph(make_mlp([4, 7, 3], seed=0))
    ev, nv, gv = _values(g)
    torch.manual_seed(0)
    net = GMN(**KW)
    net_ck = GMN(**KW, checkpoint=True)
    net_ck.load_state_dict(net.state_dict())
    grads = []
    for n in (net, net_ck):
        out = n(g, ev, nv, gv)
        (out.edge.square().sum() + out.graph.sum() + out.node.sum()).backward()
        grads.append([p.grad.clone() for p in n.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bf16_autocast_runs_and_stays_close():
    g = to_graph(make_mlp([6, 16, 16, 4], seed=0))
    ev, nv, gv = _values(g)
    ev[:, 1] *= 1e-6  # gradient-sized channel
    net = GMN(**KW)
    ref = net(g, ev, nv, gv)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(g, ev, nv, gv)
    for f in ("edge", "node", "graph"):
        r, o = getattr(ref, f), getattr(out, f).float()
        assert torch.isfinite(o).all()
        assert (o - r).abs().max() < 0.1 * r.abs().max() + 0.05, f
    (out.edge.float().square().mean() + out.graph.float().sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_errors_name_the_problem():
    g = to_graph(make_mlp([4, 7, 3], seed=0))
    net = GMN(hidden=8, layers=1, edge_in=2, edge_out=1)
    with pytest.raises(ValueError, match="parameter edges"):
        net(g, torch.randn(g.num_params + 1, 2))
    with pytest.raises(ValueError, match="edge_in=2"):
        net(g, None)
    with pytest.raises(ValueError, match="channels"):
        net(g, torch.randn(g.num_params, 3))
    with pytest.raises(ValueError, match="graph_in=0"):
        net(g, torch.randn(g.num_params, 2), graph_values=torch.randn(1, 1))


@pytest.mark.slow
def test_torch_compile_matches_eager():
    g = to_graph(make_mlp([4, 7, 3], seed=0))
    ev, nv, gv = _values(g)
    net = GMN(**KW).eval()
    prepared = prepare_graph(g)
    ref = net(prepared, ev, nv, gv)
    compiled = torch.compile(net)
    out = compiled(prepared, ev, nv, gv)
    torch.testing.assert_close(out.edge, ref.edge, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.graph, ref.graph, atol=1e-4, rtol=1e-4)
    out.edge.sum().backward()


def test_head_dropout_acts_in_training_only_and_keeps_checkpoint_keys():
    g = to_graph(make_mlp([4, 7, 3], seed=0))
    ev, nv, gv = _values(g)
    torch.manual_seed(0)
    plain = GMN(**KW)
    drop = GMN(**KW, head_dropout=0.5)
    assert plain.state_dict().keys() == drop.state_dict().keys()  # older checkpoints load either way
    drop.load_state_dict(plain.state_dict())
    plain.eval(), drop.eval()
    torch.testing.assert_close(drop(g, ev, nv, gv).graph, plain(g, ev, nv, gv).graph)  # identity in eval mode
    drop.train()
    torch.manual_seed(1)
    a = drop(g, ev, nv, gv).graph
    torch.manual_seed(2)
    assert not torch.allclose(a, drop(g, ev, nv, gv).graph)  # stochastic in training mode
    with pytest.raises(ValueError, match="head_dropout"):
        GMN(**KW, head_dropout=1.0)


def test_output_node_readout_is_ordered_and_hidden_permutation_invariant():
    """head_output_nodes: the graph head reads the output neurons' states by position; renumbering
    interchangeable nodes leaves the graph output unchanged."""
    from metaopt.graph.schema import NODE_POSITION, NODE_TYPE, NodeType
    from metaopt.nn.gmn import ordered_output_states

    g = to_graph(make_mlp([4, 7, 6, 3], seed=0))
    ev, nv, gv = _values(g)
    net = GMN(**KW, head_output_nodes=3).eval()
    new, perm = relabel_hidden_nodes(g, seed=5)
    nv_new = torch.empty_like(nv)
    nv_new[perm] = nv
    torch.testing.assert_close(net(g, ev, nv, gv).graph, net(new, ev, nv_new, gv).graph, atol=1e-5, rtol=1e-4)
    h = torch.randn(g.num_nodes, 5)
    states = ordered_output_states(h, prepare_graph(g), 4)  # one slot more than the 3 outputs: zeros
    outs = (g.x[:, NODE_TYPE] == int(NodeType.OUTPUT)).nonzero().flatten()
    outs = outs[g.x[outs, NODE_POSITION].argsort()]
    assert states.shape == (1, 4, 5) and len(outs) == 3
    torch.testing.assert_close(states[0, :3], h[outs])
    assert states[0, 3].abs().max() == 0
    # the head also reads the output nodes' raw values: changing one output node's value changes the prediction
    nv2 = nv.clone()
    nv2[outs[0]] += 1.0
    assert not torch.allclose(net(g, ev, nv, gv).graph, net(g, ev, nv2, gv).graph)
    assert net.graph_head.mlp[0].in_features == (4 + 3) * KW["hidden"] + 3 * KW["node_in"]
    with pytest.raises(ValueError, match="head_output_nodes"):
        GMN(**KW, head_output_nodes=-1)
