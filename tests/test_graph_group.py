"""Group-equivariant linear layers: the layers are equivariant, their graphs keep one edge per free
parameter with the basis index (relative group element) and kernel offset that fix every dense
entry it is used in, the round trip is exact, and hidden-channel permutations are graph relabellings."""

import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from metaopt.graph import EdgeType, NodeType, simulate, to_graph
from metaopt.graph.schema import EDGE_K0, EDGE_K1, EDGE_K2, EDGE_TYPE, NODE_POSITION, NODE_TYPE
from metaopt.layers import C4GroupConv2d, C4LiftingConv2d, CyclicLinear, SetLinear

from permutations import assert_isomorphic, layer_nodes, permute_in, permute_out, relabel


def rot(t):
    """Rotate the spatial plane (last two dims) by 90 degrees."""
    return torch.rot90(t, 1, dims=(-2, -1))


def act_on_c4_maps(t):
    """The rotation acting on C4 feature maps [..., 4, H, W]: rotate space, shift the group axis by one."""
    return rot(torch.roll(t, 1, dims=-3))


class C4Net(nn.Module):
    """Rotation-invariant classifier: lift, group conv, pool over rotations and space, linear head."""

    def __init__(self, cin=2, widths=(4, 5), classes=3):
        super().__init__()
        self.lift = C4LiftingConv2d(cin, widths[0])
        self.gconv = C4GroupConv2d(widths[0], widths[1])
        self.fc = nn.Linear(widths[1], classes)

    def forward(self, x):
        h = torch.relu(self.lift(x))
        h = torch.relu(self.gconv(h))
        return self.fc(h.amax(dim=2).mean(dim=(-2, -1)))


class SetNet(nn.Module):
    def __init__(self, din=3, hidden=6, dout=2):
        super().__init__()
        self.eq1, self.eq2 = SetLinear(din, hidden), SetLinear(hidden, hidden)
        self.rho = nn.Linear(hidden, dout)

    def forward(self, x):
        h = torch.relu(self.eq2(torch.relu(self.eq1(x))))
        return self.rho(h.sum(dim=1))


class CyclicNet(nn.Module):
    def __init__(self, cin=2, hidden=5, cout=3, order=6):
        super().__init__()
        self.c1, self.c2 = CyclicLinear(cin, hidden, order), CyclicLinear(hidden, cout, order)

    def forward(self, x):
        return self.c2(torch.tanh(self.c1(x)))


# ---- the layers are equivariant ---------------------------------------------------------------------

def test_c4_lifting_and_group_conv_are_rotation_equivariant():
    torch.manual_seed(0)
    lift, gconv = C4LiftingConv2d(2, 3, 3), C4GroupConv2d(3, 4, 5)
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    lift, gconv = lift.double(), gconv.double()
    y = lift(x)
    assert torch.allclose(lift(rot(x)), act_on_c4_maps(y), atol=1e-12)
    assert torch.allclose(gconv(act_on_c4_maps(y)), act_on_c4_maps(gconv(y)), atol=1e-12)
    # and not trivially: rotating without the group shift is not a symmetry
    assert not torch.allclose(lift(rot(x)), rot(y), atol=1e-3)


def test_c4_network_is_rotation_invariant():
    model = C4Net().double()
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    out = model(x)
    for k in range(1, 4):
        assert torch.allclose(model(torch.rot90(x, k, dims=(-2, -1))), out, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(order=st.integers(1, 7), cin=st.integers(1, 4), cout=st.integers(1, 4), shift=st.integers(0, 6),
       seed=st.integers(0, 1000))
def test_cyclic_linear_is_shift_equivariant(order, cin, cout, shift, seed):
    torch.manual_seed(seed)
    m = CyclicLinear(cin, cout, order).double()
    x = torch.randn(3, cin, order, dtype=torch.float64)
    assert torch.allclose(m(torch.roll(x, shift, -1)), torch.roll(m(x), shift, -1), atol=1e-12)


def test_set_linear_is_permutation_equivariant_for_any_set_size():
    m = SetLinear(3, 4).double()
    for n in (1, 4, 9):
        x = torch.randn(2, n, 3, dtype=torch.float64)
        p = torch.randperm(n)
        assert torch.allclose(m(x[:, p]), m(x)[:, p], atol=1e-12)


def test_few_free_parameters_each_used_many_times():
    for m, uses in ((C4LiftingConv2d(2, 3), 4), (C4GroupConv2d(2, 3), 4), (CyclicLinear(2, 3, 5), 5)):
        dense = m.expanded_weight()
        assert dense.numel() == uses * m.weight.numel()
        counts = torch.bincount(_index_params(m).expanded_weight().detach().long().reshape(-1))[1:]
        assert bool((counts == uses).all()), f"{type(m).__name__}: every free weight is used {uses} times"


# ---- the graph encodes the sharing exactly ------------------------------------------------------------

@torch.no_grad()
def _index_params(m: nn.Module) -> nn.Module:
    """Every parameter element set to its 1-based edge index (exact in float32 for small models)."""
    offset = 0
    for p in m.parameters():
        p.copy_(torch.arange(offset + 1, offset + p.numel() + 1, dtype=p.dtype).view_as(p))
        offset += p.numel()
    return m


def _ordered(g, node_type):
    nodes = (g.x[:, NODE_TYPE] == node_type).nonzero().squeeze(1)
    return nodes[g.x[nodes, NODE_POSITION].argsort()]


def _check_dense_uses(g, dense, o, r, i, s, uv, group_order):
    """Each dense entry [o, r, i, s, ...] uses free parameter `dense - 1`, whose edge must go from
    input channel i to output channel o with K0 = (s - r) mod n (for r = 0 slices also the offset)."""
    edge = dense.long() - 1
    ins, outs = _ordered(g, NodeType.INPUT), _ordered(g, NodeType.OUTPUT)
    src, dst = g.edge_index.long()
    attr = g.edge_attr.long()
    assert bool((attr[edge.reshape(-1), EDGE_TYPE] == EdgeType.GROUP_SHARED).all())
    e, shape = edge.reshape(-1), edge.shape
    assert torch.equal(src[e], ins[i.expand(shape).reshape(-1)])
    assert torch.equal(dst[e], outs[o.expand(shape).reshape(-1)])
    assert torch.equal(attr[e, EDGE_K0], ((s - r) % group_order).expand(shape).reshape(-1))
    if uv is not None:  # the un-rotated slice r = 0 shows each tap at its own offset
        e0 = edge[:, 0].reshape(-1)
        want = uv.expand(*edge[:, 0].shape, 2).reshape(-1, 2)
        assert torch.equal(attr[e0][:, [EDGE_K1, EDGE_K2]], want)


def _offset_grid(k):
    c = torch.arange(k) - k // 2
    return torch.stack(torch.meshgrid(c, c, indexing="ij"), -1)


def test_c4_group_conv_graph_fixes_every_dense_entry():
    k = 3
    m = _index_params(C4GroupConv2d(3, 2, k, bias=False))
    g = to_graph(m)
    assert g.num_params == m.weight.numel()  # one edge per free parameter, not per dense entry
    ar = lambda n, at: torch.arange(n).view([-1 if d == at else 1 for d in range(6)])  # noqa: E731
    dense = m.expanded_weight().detach()  # [o, r, i, s, u, v]
    _check_dense_uses(g, dense, ar(2, 0), ar(4, 1), ar(3, 2), ar(4, 3),
                      _offset_grid(k).view(1, 1, 1, k, k, 2), 4)


def test_c4_lifting_graph_fixes_every_dense_entry():
    k = 5
    m = _index_params(C4LiftingConv2d(2, 3, k, bias=False))
    g = to_graph(m)
    ar = lambda n, at: torch.arange(n).view([-1 if d == at else 1 for d in range(5)])  # noqa: E731
    dense = m.expanded_weight().detach()  # [o, r, i, u, v]; no input group axis: K0 = 0
    zero = torch.zeros(1, 1, 1, 1, 1, dtype=torch.long)
    _check_dense_uses(g, dense, ar(3, 0), zero, ar(2, 2), zero, _offset_grid(k).view(1, 1, k, k, 2), 4)


@settings(max_examples=6, deadline=None)
@given(order=st.integers(1, 6), cin=st.integers(1, 3), cout=st.integers(1, 3))
def test_cyclic_linear_graph_fixes_every_dense_entry(order, cin, cout):
    m = _index_params(CyclicLinear(cin, cout, order, bias=False))
    g = to_graph(m)
    ar = lambda n, at: torch.arange(n).view([-1 if d == at else 1 for d in range(4)])  # noqa: E731
    _check_dense_uses(g, m.expanded_weight().detach(), ar(cout, 0), ar(order, 1), ar(cin, 2),
                      ar(order, 3), None, order)


def test_set_linear_graph_marks_self_and_mean_maps():
    m = SetLinear(3, 4)
    g = to_graph(m)
    attr = g.edge_attr.long()
    lam, gam, bias = torch.split(torch.arange(g.num_params), [12, 12, 4])
    assert bool((attr[lam, EDGE_TYPE] == EdgeType.GROUP_SHARED).all()) and bool((attr[lam, EDGE_K0] == 0).all())
    assert bool((attr[gam, EDGE_TYPE] == EdgeType.GROUP_SHARED).all()) and bool((attr[gam, EDGE_K0] == 1).all())
    assert bool((attr[bias, EDGE_TYPE] == EdgeType.BIAS).all())
    src, dst = g.edge_index.long()
    # the two maps share endpoints entry by entry: (o, i) of lam and gam connect the same nodes
    assert torch.equal(src[lam], src[gam]) and torch.equal(dst[lam], dst[gam])
    ins, outs = _ordered(g, NodeType.INPUT), _ordered(g, NodeType.OUTPUT)
    assert torch.equal(src[lam].view(4, 3), ins.view(1, 3).expand(4, 3))
    assert torch.equal(dst[lam].view(4, 3), outs.view(4, 1).expand(4, 3))


@pytest.mark.parametrize("make,x", [
    (C4Net, torch.randn(2, 2, 8, 8)),
    (SetNet, torch.randn(2, 5, 3)),
    (CyclicNet, torch.randn(2, 2, 6)),
])
def test_round_trip_is_bitwise_exact(make, x):
    model, other = make(), make()
    g = to_graph(model, (x,))
    assert g.num_params == sum(p.numel() for p in model.parameters())
    values = g.params_to_edges(model)
    for (name, p), t in zip(model.named_parameters(), g.edges_to_params(values).values()):
        assert torch.equal(p.detach(), t), name
    with torch.no_grad():
        for p, t in zip(other.parameters(), g.edges_to_params(values).values()):
            p.copy_(t)
    assert torch.equal(other(x), model(x))
    assert to_graph(other, (x,)).edge_index.data_ptr() == g.edge_index.data_ptr()  # cached structure


def test_graph_of_c4_net_structure():
    g = to_graph(C4Net(cin=2, widths=(4, 5), classes=3), (torch.randn(2, 2, 8, 8),))
    kinds = [r["kind"] for r in g.layers]
    assert kinds[1:] == ["c4_lifting_conv2d", "c4_group_conv2d", "linear"]
    gs = g.edge_attr[:, EDGE_TYPE] == EdgeType.GROUP_SHARED
    assert int(gs.sum()) == 4 * 2 * 9 + 5 * 4 * 4 * 9
    assert int((g.x[:, NODE_TYPE] == NodeType.HIDDEN).sum()) == 4 + 5
    with pytest.raises(NotImplementedError, match="GROUP_SHARED"):
        simulate(g, g.params_to_edges(C4Net()), torch.zeros(1, 2))


# ---- hidden-channel permutations are graph relabellings ---------------------------------------------

def _check_symmetry(model, permuted, x, seed_sigma):
    g = to_graph(model, (x,))
    with torch.no_grad():
        assert torch.allclose(model(x), permuted(x), atol=1e-5), "the permutation must keep the function"
    assert_isomorphic(g, g.params_to_edges(model), g.params_to_edges(permuted), seed_sigma(g))


def test_c4_net_hidden_channel_permutation():
    torch.manual_seed(1)
    model = C4Net(widths=(4, 5))
    permuted = copy.deepcopy(model)
    p1, p2 = torch.randperm(4), torch.randperm(5)
    permute_out(permuted.lift, p1), permute_in(permuted.gconv, p1)
    permute_out(permuted.gconv, p2), permute_in(permuted.fc, p2)

    def seed_sigma(g):
        sigma = torch.arange(g.num_nodes)
        relabel(sigma, layer_nodes(g, "lift"), p1)
        relabel(sigma, layer_nodes(g, "gconv"), p2)
        return sigma

    _check_symmetry(model, permuted, torch.randn(2, 2, 7, 7), seed_sigma)


def test_set_and_cyclic_hidden_permutations():
    torch.manual_seed(2)
    model, p1, p2 = SetNet(hidden=6), torch.randperm(6), torch.randperm(6)
    permuted = copy.deepcopy(model)
    with torch.no_grad():
        for layer, po, pi in ((permuted.eq1, p1, None), (permuted.eq2, p2, p1)):
            for t in (layer.lam, layer.gam):
                t.copy_(t[po] if pi is None else t[po][:, pi])
            layer.bias.copy_(layer.bias[po])
    permute_in(permuted.rho, p2)

    def sigma_set(g):
        sigma = torch.arange(g.num_nodes)
        relabel(sigma, layer_nodes(g, "eq1"), p1)
        relabel(sigma, layer_nodes(g, "eq2"), p2)
        return sigma

    _check_symmetry(model, permuted, torch.randn(3, 4, 3), sigma_set)

    cyc, p = CyclicNet(hidden=5), torch.randperm(5)
    cyc_p = copy.deepcopy(cyc)
    permute_out(cyc_p.c1, p), permute_in(cyc_p.c2, p)

    def sigma_cyc(g):
        sigma = torch.arange(g.num_nodes)
        relabel(sigma, layer_nodes(g, "c1"), p)
        return sigma

    _check_symmetry(cyc, cyc_p, torch.randn(3, 2, 6), sigma_cyc)


def test_group_element_is_not_a_channel_symmetry():
    """Sanity of the encoding: exchanging two relative rotations of a filter changes the function,
    and the graph (same nodes, K0 values on the edges) tells the two weight sets apart."""
    torch.manual_seed(3)
    model = C4Net()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.gconv.weight.copy_(other.gconv.weight[:, :, [1, 0, 2, 3]])
    x = torch.randn(2, 2, 7, 7)
    assert not torch.allclose(model(x), other(x), atol=1e-4)
    g = to_graph(model, (x,))
    with pytest.raises(AssertionError):
        assert_isomorphic(g, g.params_to_edges(model), g.params_to_edges(other), torch.arange(g.num_nodes))


# ---- errors -------------------------------------------------------------------------------------------

def test_layer_errors_are_explicit():
    with pytest.raises(ValueError, match="odd"):
        C4GroupConv2d(2, 2, 4)
    with pytest.raises(ValueError, match="lift images first"):
        C4GroupConv2d(2, 2)(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, 4\]"):
        CyclicLinear(3, 2, 4)(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="SetLinear expects"):
        SetLinear(3, 2)(torch.randn(2, 4, 2))


# ---- the docs' worked example stays true ----------------------------------------------------------

def test_docs_worked_example_runs():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "layers.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {"__name__": "docs_layers_example"}
    exec(compile(code, "docs/layers.md", "exec"), scope)  # asserts simulate == model inside
    assert scope["graph"].num_params == sum(p.numel() for p in scope["model"].parameters())
