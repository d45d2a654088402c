"""strict=False never fails on a model's structure; strict=True says where and how to fix it.

Whatever no rule can read (an unknown layer, an op that scatters neurons, a converter that breaks)
becomes FREE edges for the parameters involved, fresh neurons for its output, and ONE warning
naming the modules/ops; the layers around it keep their connectivity. Only a call the model
itself rejects is an error in both modes (a graph of a call that cannot happen is meaningless).
"""

import warnings

import pytest
import torch
from torch import nn

import metaopt
from metaopt.graph import ConversionError, EdgeType, ExampleInputError, NodeType, to_graph
from metaopt.graph.schema import EDGE_TYPE, NODE_TYPE


def _one_warning(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    ours = [w for w in caught if "to_graph" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    return out, str(ours[0].message)


def _free_names(g):
    free = g.edge_attr[:, EDGE_TYPE] == EdgeType.FREE
    return [n for i, n in enumerate(g.param_names) if bool(free[g.param_offsets[i]:g.param_offsets[i + 1]].all())]


def _exact(g, model):
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert g.num_params == flat.numel() and torch.equal(g.params_to_edges(model), flat)


class HeadScatter(nn.Module):
    """Splits 8 features into 2x4 and mixes them back in an order no rule follows."""

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        h = self.q(x).view(x.shape[0], 2, 4).sum(1)
        return self.out(h)


def test_unreadable_op_gives_fresh_neurons_and_names_the_op():
    m = HeadScatter()
    g, msg = _one_warning(lambda: to_graph(m, torch.randn(3, 8), strict=False))
    _exact(g, m)
    assert not _free_names(g)  # both layers read; only the op between them was not
    assert "op 'sum'" in msg and "module '<root>' (HeadScatter)" in msg
    i = g.param_names.index("out.weight")
    src = g.edge_index[0, g.param_offsets[i]:g.param_offsets[i + 1]].long()
    assert bool((g.x[src, NODE_TYPE] == NodeType.HIDDEN).all())  # out reads fresh hidden neurons


def test_strict_names_module_op_and_fix():
    with pytest.raises(ConversionError) as info:
        to_graph(HeadScatter(), torch.randn(3, 8))
    msg = str(info.value)
    assert "op 'sum'" in msg and "HeadScatter" in msg and "register_converter" in msg and "strict=False" in msg


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 5))

    def forward(self, x):
        return x @ self.w


def test_a_failing_converter_never_crashes_non_strict():
    def bad(ctx, module, inputs, name):
        raise IndexError("converter bug")

    metaopt.register_converter(Broken, bad)
    try:
        m = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), Broken(), nn.Linear(5, 2))
        g, msg = _one_warning(lambda: to_graph(m, torch.randn(2, 4), strict=False))
        _exact(g, m)
        assert _free_names(g) == ["2.w"]
        assert "module '2' (Broken)" in msg and "IndexError: converter bug" in msg
        with pytest.raises(ConversionError, match=r"module '2' \(Broken\).*converter bug"):
            to_graph(m, torch.randn(2, 4))
    finally:
        from metaopt.graph.registry import _CONVERTERS

        _CONVERTERS.pop(Broken)


def test_several_unknown_layers_one_warning_listing_all():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(3, 6)
            self.prelu = nn.PReLU(6)
            self.cell = nn.Bilinear(6, 6, 6)  # no converter for Bilinear
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            h = self.prelu(self.inp(x))
            h = self.cell(h, h)
            return self.out(torch.cumsum(h, 1))

    m = Net()
    g, msg = _one_warning(lambda: to_graph(m, torch.randn(2, 3), strict=False))
    _exact(g, m)
    assert set(_free_names(g)) == {n for n, _ in m.named_parameters() if n.startswith(("prelu", "cell"))}
    assert "'prelu' (PReLU)" in msg and "'cell' (Bilinear)" in msg


def test_untraceable_model_is_all_free_with_one_warning():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x):
            return self.a(x) if x.sum() > 0 else x

    g, msg = _one_warning(lambda: to_graph(Branchy(), torch.randn(2, 3), strict=False))
    assert _free_names(g) == ["a.weight", "a.bias"] and "free edge" in msg


def test_rejected_input_is_an_error_in_both_modes():
    m = nn.Sequential(nn.Linear(4, 3))
    for strict in (True, False):
        with pytest.raises(ExampleInputError, match=r"raised on the example call \(Tensor\(2, 5\)\)"):
            to_graph(m, torch.randn(2, 5), strict=strict, cache=False)


def test_ops_mixing_a_parameters_elements_are_not_read_as_elementwise():
    """cumsum/softmax of a parameter mix its elements: no edge may claim element k acts alone;
    clamp is elementwise and keeps its elements (a per-feature bias here)."""

    class Mixed(nn.Module):
        def __init__(self, op):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.p = nn.Parameter(torch.randn(4))
            self.op = op

        def forward(self, x):
            return self.a(x) + self.op(self.p)

    for op in (lambda p: torch.cumsum(p, 0), lambda p: torch.softmax(p, 0)):
        with pytest.raises(ConversionError, match="parameter 'p'"):
            to_graph(Mixed(op), torch.randn(2, 3), cache=False)
    m = Mixed(lambda p: torch.clamp(p, max=1.0))
    g = to_graph(m, torch.randn(2, 3), cache=False)
    _exact(g, m)
    i = g.param_names.index("p")
    assert bool((g.edge_attr[g.param_offsets[i]:g.param_offsets[i + 1], EDGE_TYPE] == EdgeType.BIAS).all())
