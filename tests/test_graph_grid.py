"""Spatial feature grids + MLP decoder: ordered GRID cell nodes with their coordinates on the edges,
one edge per grid value, exact round trip, the graph alone reproduces the model on random queries,
and channel / decoder permutations are graph relabellings while cell moves are not."""

import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from metaopt.graph import EdgeType, ExampleInputError, NodeType, simulate, to_graph
from metaopt.graph.converters.grid import cell_weights
from metaopt.graph.schema import EDGE_K0, EDGE_K1, EDGE_K2, EDGE_TYPE, NODE_POSITION, NODE_TYPE
from metaopt.layers import FeatureGrid2d, TriPlaneGrid

from permutations import assert_isomorphic, layer_nodes, permute_in, permute_out, relabel


def grid_mlp(grid: nn.Module, hidden=(16, 12), out=3) -> nn.Sequential:
    width = grid.out_features if isinstance(grid, TriPlaneGrid) else grid.channels
    layers, w = [grid], width
    for h in hidden:
        layers += [nn.Linear(w, h), nn.ReLU()]
        w = h
    return nn.Sequential(*layers, nn.Linear(w, out))


GRIDS = {
    "grid2d": lambda: FeatureGrid2d(4, (5, 7)),
    "triplane_sum": lambda: TriPlaneGrid(3, 6, "sum"),
    "triplane_concat": lambda: TriPlaneGrid(2, 4, "concat"),
}
DIMS = {"grid2d": 2, "triplane_sum": 3, "triplane_concat": 3}


def queries(d, n=64, margin=0.2):
    """Random query points in [-1 - margin, 1 + margin]^d (outside the domain features fade to zero)."""
    return (torch.rand(n, d) * 2 - 1) * (1 + margin)


# ---- structure ------------------------------------------------------------------------------------

def test_grid_cells_are_ordered_nodes_with_their_coordinates_on_the_edges():
    model = grid_mlp(FeatureGrid2d(4, (5, 7)))
    g = to_graph(model)
    cells = (g.x[:, NODE_TYPE] == NodeType.GRID).nonzero().squeeze(1)
    assert cells.numel() == 5 * 7
    assert torch.equal(g.x[cells, NODE_POSITION], torch.arange(35))  # ordered, row-major
    n = model[0].grid.numel()
    e = torch.arange(n)  # the grid is the first parameter: edges 0..n-1, in [C, H, W] order
    attr = g.edge_attr.long()
    assert bool((attr[e, EDGE_TYPE] == EdgeType.GRID_FEATURE).all())
    c, r, col = torch.meshgrid(torch.arange(4), torch.arange(5), torch.arange(7), indexing="ij")
    assert torch.equal(attr[e, EDGE_K0], torch.zeros(n, dtype=torch.long))
    assert torch.equal(attr[e, EDGE_K1], r.reshape(-1)) and torch.equal(attr[e, EDGE_K2], col.reshape(-1))
    src, dst = g.edge_index.long()
    assert torch.equal(src[e], cells[(r * 7 + col).reshape(-1)])  # value (c, r, col) leaves cell (r, col)
    feats = layer_nodes(g, "0")
    assert feats.numel() == 4 and torch.equal(dst[e], feats[c.reshape(-1)])  # ... into feature neuron c
    assert bool((g.x[feats, NODE_POSITION] == -1).all()), "feature channels are interchangeable"
    assert int((g.x[:, NODE_TYPE] == NodeType.INPUT).sum()) == 0  # the cells are the graph's inputs
    # the decoder reads the feature neurons like any neurons
    lin = attr[:, EDGE_TYPE] == EdgeType.LINEAR
    assert bool(torch.isin(feats, src[lin]).all())


@pytest.mark.parametrize("reduce,n_feats", [("sum", 3), ("concat", 9)])
def test_triplane_graph(reduce, n_feats):
    model = grid_mlp(TriPlaneGrid(3, 4, reduce))
    g = to_graph(model)
    cells = (g.x[:, NODE_TYPE] == NodeType.GRID).nonzero().squeeze(1)
    assert cells.numel() == 3 * 4 * 4
    feats = layer_nodes(g, "0")
    assert feats.numel() == n_feats
    src, dst = g.edge_index.long()
    attr = g.edge_attr.long()
    e = torch.arange(model[0].planes.numel())
    p, c = torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij")
    assert torch.equal(attr[e, EDGE_K0].view(3, 3, 16)[:, :, 0], p)  # plane index
    want = c if reduce == "sum" else p * 3 + c  # summed planes share channels; concat: plane-major
    assert torch.equal(dst[e].view(3, 3, 16)[:, :, 0], feats[want])
    # every cell feeds every channel of its plane once
    assert torch.equal(torch.bincount(src[e] - int(cells.min())), torch.full((48,), 3))


# ---- exactness ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(GRIDS))
def test_round_trip_is_bitwise_exact(kind):
    model, other = grid_mlp(GRIDS[kind]()), grid_mlp(GRIDS[kind]())
    g = to_graph(model)
    assert g.num_params == sum(p.numel() for p in model.parameters())
    values = g.params_to_edges(model)
    for (name, p), t in zip(model.named_parameters(), g.edges_to_params(values).values()):
        assert torch.equal(p.detach(), t), name
    with torch.no_grad():
        for p, t in zip(other.parameters(), g.edges_to_params(values).values()):
            p.copy_(t)
    q = queries(DIMS[kind])
    assert torch.equal(other(q), model(q))


@pytest.mark.parametrize("kind", list(GRIDS))
def test_graph_reproduces_the_model_on_random_queries(kind):
    model = grid_mlp(GRIDS[kind]())
    g = to_graph(model)
    q = queries(DIMS[kind], 200)
    with torch.no_grad():
        assert torch.allclose(simulate(g, g.params_to_edges(model), q), model(q), atol=1e-5)


@settings(max_examples=6, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 5), seed=st.integers(0, 1000))
def test_graph_reproduces_random_2d_grids(h, w, c, seed):
    torch.manual_seed(seed)
    model = grid_mlp(FeatureGrid2d(c, (h, w), init_std=1.0), hidden=(8,))
    g = to_graph(model)
    q = queries(2, 50)
    with torch.no_grad():
        assert torch.allclose(simulate(g, g.params_to_edges(model), q), model(q), atol=1e-5)


def test_simulate_uses_the_values_not_the_model():
    model = grid_mlp(TriPlaneGrid(3, 5, "sum"))
    g = to_graph(model)
    values = torch.randn(g.num_params)
    other = grid_mlp(TriPlaneGrid(3, 5, "sum"))
    with torch.no_grad():
        for p, t in zip(other.parameters(), g.edges_to_params(values).values()):
            p.copy_(t)
        q = queries(3)
        assert torch.allclose(simulate(g, values, q), other(q), atol=1e-5)
        assert not torch.allclose(simulate(g, values, q), model(q), atol=1e-3)


def test_cell_weights_form_a_partition_of_unity_inside_the_domain():
    g = to_graph(grid_mlp(FeatureGrid2d(2, (4, 6))))
    nodes, w = cell_weights(g, queries(2, 100, margin=0.0))
    assert nodes.numel() == 24 and w.shape == (24, 100)
    assert torch.allclose(w.sum(0), torch.ones(100), atol=1e-6)
    assert int((w > 0).sum(0).max()) <= 4  # bilinear: at most four cells per query
    corner = cell_weights(g, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))[1]
    assert corner[0, 0] == 1 and corner[23, 1] == 1  # corners sit on the boundary cells


# ---- symmetries -----------------------------------------------------------------------------------

def _permuted(kind, seed):
    """(model, permuted copy, seed relabelling): grid channels and both hidden decoder layers permuted."""
    torch.manual_seed(seed)
    model = grid_mlp(GRIDS[kind]())
    permuted = copy.deepcopy(model)
    grid = permuted[0]
    with torch.no_grad():
        if isinstance(grid, FeatureGrid2d):
            pc = torch.randperm(grid.channels)
            grid.grid.copy_(grid.grid[pc])
        elif grid.reduce == "sum":
            pc = torch.randperm(grid.channels)
            grid.planes.copy_(grid.planes[:, pc])
        else:  # concat: channels move within their plane
            per = [torch.randperm(grid.channels) for _ in range(3)]
            grid.planes.copy_(torch.stack([grid.planes[k][pk] for k, pk in enumerate(per)]))
            pc = torch.cat([pk + k * grid.channels for k, pk in enumerate(per)])
    permute_in(permuted[1], pc)
    p1, p2 = torch.randperm(16), torch.randperm(12)
    permute_out(permuted[1], p1), permute_in(permuted[3], p1)
    permute_out(permuted[3], p2), permute_in(permuted[5], p2)

    def seed_sigma(g):
        sigma = torch.arange(g.num_nodes)
        relabel(sigma, layer_nodes(g, "0"), pc)
        relabel(sigma, layer_nodes(g, "1"), p1)
        relabel(sigma, layer_nodes(g, "3"), p2)
        return sigma

    return model, permuted, seed_sigma


@pytest.mark.parametrize("kind", list(GRIDS))
def test_channel_and_decoder_permutations_are_graph_relabellings(kind):
    model, permuted, seed_sigma = _permuted(kind, 4)
    q = queries(DIMS[kind])
    with torch.no_grad():
        assert torch.allclose(model(q), permuted(q), atol=1e-5), "a symmetry of the function"
    g = to_graph(model)
    assert_isomorphic(g, g.params_to_edges(model), g.params_to_edges(permuted), seed_sigma(g))


def test_moving_grid_cells_is_not_a_symmetry():
    model = grid_mlp(FeatureGrid2d(3, (4, 4)))
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved[0].grid.copy_(moved[0].grid.flip(-1))
    q = queries(2)
    with torch.no_grad():
        assert not torch.allclose(model(q), moved(q), atol=1e-4)
    g = to_graph(model)
    cells = (g.x[:, NODE_TYPE] == NodeType.GRID).nonzero().squeeze(1)
    sigma = torch.arange(g.num_nodes)
    sigma[cells] = cells.view(4, 4).flip(-1).reshape(-1)
    with pytest.raises(AssertionError, match="node features"):
        assert_isomorphic(g, g.params_to_edges(model), g.params_to_edges(moved), sigma)


def test_gmn_is_invariant_to_decoder_and_channel_permutations():
    nn_mod = pytest.importorskip("metaopt.nn")
    if not hasattr(nn_mod, "GMN"):
        pytest.skip("metaopt.nn.GMN is not on this branch yet")
    model, permuted, _ = _permuted("triplane_sum", 5)
    g = to_graph(model)
    torch.manual_seed(0)
    net = nn_mod.GMN(hidden=16, layers=2, edge_in=1, node_in=0, graph_in=0, edge_out=0, node_out=0, graph_out=2)
    with torch.no_grad():
        a = net(g, edge_values=g.params_to_edges(model)[:, None]).graph
        b = net(g, edge_values=g.params_to_edges(permuted)[:, None]).graph
    assert torch.allclose(a, b, atol=1e-4)


# ---- errors -----------------------------------------------------------------------------------------

def test_wrong_query_dimension_is_explicit():
    with pytest.raises(ExampleInputError, match=r"query points \[\.\.\., 3\]"):  # the layer's own error, kept
        to_graph(grid_mlp(TriPlaneGrid(2, 3)), (torch.rand(4, 2),))
    with pytest.raises(ValueError, match="reduce"):
        TriPlaneGrid(2, 3, "mean")
