"""Converters registered from outside the package, for a module or a function, through one interface.

Every converted model must round-trip exactly: edge k of the graph is element k of the flattened
parameters, bit for bit, and its endpoints are the neurons that element connects.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metaopt
from metaopt.graph import (
    ConversionContext, ConversionError, EdgeType, NodeType, ParamRef, dense_edges, simulate, to_graph,
    unregister_converter,
)
from metaopt.graph.registry import find_converter, find_function_converter, registry_generation
from metaopt.graph.schema import EDGE_TYPE


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _exact(g, model: nn.Module) -> None:
    flat = _flat(model)
    assert g.num_params == flat.numel() == g.edge_attr.shape[0]
    assert torch.equal(g.params_to_edges(model), flat)  # bitwise, in parameter order
    assert not bool((g.edge_attr[:, EDGE_TYPE] == EdgeType.FREE).any())


def _dense_edges_are_elements(g, name: str, n_out: int, n_in: int) -> None:
    """Edge offset + k of a [n_out, n_in] weight joins input k % n_in to output k // n_in."""
    i = g.param_names.index(name)
    lo, hi = g.param_offsets[i], g.param_offsets[i + 1]
    src, dst = g.edge_index[0, lo:hi].long(), g.edge_index[1, lo:hi].long()
    assert hi - lo == n_out * n_in
    assert torch.equal(src.view(n_out, n_in), src.view(n_out, n_in)[:1].expand(n_out, n_in))  # column k: one input
    assert torch.equal(dst.view(n_out, n_in), dst.view(n_out, n_in)[:, :1].expand(n_out, n_in))  # row o: one output
    assert src.view(n_out, n_in)[0].unique().numel() == n_in and dst.view(n_out, n_in)[:, 0].unique().numel() == n_out


# ---- a module of the user's ------------------------------------------------------------------

class Bilinear(nn.Module):
    """y_o = sum_i x_i W[o, i] computed by an einsum on a transposed copy: no built-in rule reads it."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.Wt = nn.Parameter(torch.randn(n_in, n_out))
        self.scale = nn.Parameter(torch.randn(n_out))

    def forward(self, x):
        return torch.einsum("bi,io->bo", x, self.Wt) * self.scale


def convert_bilinear(ctx: ConversionContext, m: Bilinear, inputs: list, name: str):
    x = ctx.input_map(inputs[0], dim=-1, size=m.Wt.shape[0])
    layer = ctx.new_layer(name, "bilinear")
    out = ctx.add_nodes(m.Wt.shape[1], NodeType.HIDDEN, layer)
    src, dst, _ = dense_edges(x, out)  # per element of Wt.t() [out, in]
    ctx.add_param_edges(ParamRef(m.Wt, torch.arange(m.Wt.numel()).view(m.Wt.shape).t()), src, dst,
                        EdgeType.LINEAR, layer)
    scaled = ctx.new_layer(f"{name}.scale", "bilinear_scale")
    new = ctx.add_nodes(out.numel(), NodeType.NORMED, scaled)
    ctx.add_aux_edges(out, new, EdgeType.NORM_IN, scaled)
    ctx.add_param_edges(m.scale, ctx.add_nodes(1, NodeType.NORM, scaled).expand(out.numel()), new,
                        EdgeType.NORM_WEIGHT, scaled)
    assert tuple(ctx.result.shape) == (ctx.args[0].shape[0], m.Wt.shape[1])  # the real call is visible
    return ctx.map(new, dim=-1, ndim=ctx.result.ndim)


def test_user_module_converter_round_trips_exactly():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), Bilinear(5, 4), nn.Linear(4, 2))
    with pytest.raises(ConversionError):
        to_graph(model, torch.randn(2, 3))
    metaopt.register_converter(Bilinear, convert_bilinear)
    try:
        assert find_converter(model[2]) is convert_bilinear
        g = to_graph(model, torch.randn(2, 3))
        _exact(g, model)
        i = g.param_names.index("2.Wt")
        lo = g.param_offsets[i]
        src, dst = g.edge_index[0, lo:lo + 20].long().view(5, 4), g.edge_index[1, lo:lo + 20].long().view(5, 4)
        first = g.edge_index[1, :15].long().view(5, 3)[:, 0]  # layer 0's output neurons, in order
        assert torch.equal(src[:, 0], first)  # Wt[i, o] (element 4 i + o) reads neuron i of layer 0
        assert torch.equal(dst, dst[:1].expand(5, 4)) and dst[0].unique().numel() == 4
        assert "bilinear" in g.summary()
    finally:
        unregister_converter(Bilinear)
    assert find_converter(model[2]) is None


# ---- a function of the user's ----------------------------------------------------------------

def dense_einsum(x, weight, bias=None):
    """y = x W^T (+ b) as an einsum: a general einsum has no built-in rule."""
    y = torch.einsum("...i,oi->...o", x, weight)
    return y if bias is None else y + bias


def convert_dense_einsum(ctx: ConversionContext, fn, inputs: list, name: str):
    assert fn is dense_einsum and inputs is not None
    weight, bias = ctx.param_arg(1, "weight"), ctx.param_arg(2, "bias")
    if weight is None:
        return NotImplemented
    x = ctx.input_map(ctx.arg(0, "x"), dim=-1, size=weight.shape[1])
    layer = ctx.new_layer(name, "dense_einsum")
    out = ctx.add_nodes(weight.shape[0], NodeType.HIDDEN, layer)
    src, dst, _ = dense_edges(x, out)
    ctx.add_param_edges(weight, src, dst, EdgeType.LINEAR, layer)
    ctx.add_bias(bias, out, layer)
    return ctx.map(out, dim=-1, ndim=ctx.real_arg(0, "x").ndim)


class EinsumNet(nn.Module):
    def __init__(self, transposed: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.transposed = transposed
        self.W = nn.Parameter(torch.randn(8, 5) if transposed else torch.randn(5, 8))
        self.b = nn.Parameter(torch.randn(5))
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        w = self.W.t() if self.transposed else self.W
        h = dense_einsum(torch.tanh(self.inp(x)), weight=w, bias=self.b)  # keyword arguments
        return self.out(torch.relu(h))


@pytest.fixture
def registered_function():
    before = registry_generation()
    metaopt.register_converter(dense_einsum)(convert_dense_einsum)  # the decorator form
    assert registry_generation() > before  # cached structures are keyed on the registry
    yield
    unregister_converter(dense_einsum)
    assert find_function_converter(dense_einsum) is None


def test_user_function_fails_without_a_converter():
    with pytest.raises(ConversionError):
        to_graph(EinsumNet(), torch.randn(4, 6))


def test_user_function_converter_round_trips_exactly(registered_function):
    model = EinsumNet()
    x = torch.randn(4, 6)
    g = to_graph(model, x)
    _exact(g, model)
    _dense_edges_are_elements(g, "W", 5, 8)
    i = g.param_names.index("W")
    src = g.edge_index[0, g.param_offsets[i]:g.param_offsets[i + 1]].long().view(5, 8)
    j = g.param_names.index("inp.weight")
    inp_out = g.edge_index[1, g.param_offsets[j]:g.param_offsets[j + 1]].long().view(8, 6)[:, 0]
    assert torch.equal(src[0], inp_out)  # W[o, i] reads output neuron i of `inp`
    assert "dense_einsum" in g.summary()
    assert torch.allclose(simulate(g, g.params_to_edges(model), x), model(x), atol=1e-5)


def test_user_function_converter_reads_a_view_of_a_parameter(registered_function):
    model = EinsumNet(transposed=True)  # called on W.t(): element k of W is still edge k
    x = torch.randn(4, 6)
    g = to_graph(model, x)
    _exact(g, model)
    i = g.param_names.index("W")
    lo = g.param_offsets[i]
    src, dst = g.edge_index[0, lo:lo + 40].long().view(8, 5), g.edge_index[1, lo:lo + 40].long().view(8, 5)
    assert torch.equal(src, src[:, :1].expand(8, 5)) and torch.equal(dst, dst[:1].expand(8, 5))
    assert torch.allclose(simulate(g, g.params_to_edges(model), x), model(x), atol=1e-5)


def _linear_inside(x, weight, bias):
    return F.linear(x, weight, bias)


def linear_inside(x, weight, bias):
    """A function whose body the built-in rules read: its converter declines every call."""
    return F.linear(x, weight, bias)


class LinearInsideNet(nn.Module):
    def __init__(self, public: bool) -> None:
        super().__init__()
        self.public = public
        self.inp = nn.Linear(6, 8)
        self.W = nn.Parameter(torch.randn(5, 8))
        self.b = nn.Parameter(torch.randn(5))

    def forward(self, x):
        fn = linear_inside if self.public else _linear_inside
        return fn(torch.tanh(self.inp(x)), self.W, self.b)


def test_a_declining_function_converter_walks_the_body():
    calls = []

    def decline(ctx, fn, inputs, name):
        calls.append(name)
        return NotImplemented

    reference = to_graph(LinearInsideNet(public=False), torch.randn(4, 6))
    metaopt.register_converter(linear_inside, decline)
    try:
        model = LinearInsideNet(public=True)
        g = to_graph(model, torch.randn(4, 6))
    finally:
        unregister_converter(linear_inside)
    assert calls  # the registered function was a leaf of the trace and its converter was asked
    _exact(g, model)
    assert torch.equal(g.edge_index, reference.edge_index) and torch.equal(g.edge_attr, reference.edge_attr)
    assert torch.equal(g.x, reference.x)


def test_register_converter_targets():
    with pytest.raises(TypeError):
        metaopt.register_converter(int, convert_dense_einsum)
    with pytest.raises(TypeError, match="class"):
        metaopt.register_converter(nn.Linear(2, 2), convert_dense_einsum)
    with pytest.raises(TypeError):
        metaopt.register_converter(3, convert_dense_einsum)
    # built-in functional rules are registered through the same registry
    assert find_function_converter(F.linear) is not None and find_function_converter("matmul") is not None
    assert find_function_converter(F.scaled_dot_product_attention) is not None
    assert find_function_converter([1]) is None  # unhashable targets have none


def test_docs_function_example_runs():
    text = (Path(__file__).resolve().parent.parent / "docs" / "layers.md").read_text()
    section = text.split("### Registering a converter for a function", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {"__name__": "docs_layers_function_example"}
    try:
        exec(compile(code, "docs/layers.md", "exec"), scope)  # asserts simulate == model inside
    finally:
        if "dense_einsum" in scope:
            unregister_converter(scope["dense_einsum"])
    g, model = scope["graph"], scope["model"]
    _exact(g, model)
    _dense_edges_are_elements(g, "W", 5, 8)
