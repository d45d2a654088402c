"""Bad input gets a clear error (what, where, what to do); non-strict mode drops nothing."""

import warnings

import pytest
import torch
from torch import nn

import metaopt
from metaopt.graph import ConversionError, EdgeType, NodeType, dense_edges, to_graph
from metaopt.graph.schema import EDGE_TYPE, NODE_TYPE


class WithUnknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.act = nn.PReLU(4)  # a learned activation: no converter for PReLU
        self.out = nn.Linear(4, 2)

    def example_inputs(self):
        return (torch.randn(2, 3),)

    def forward(self, x):
        return self.out(self.act(self.inp(x)))


def test_strict_unknown_layer_names_module_type_and_fix():
    with pytest.raises(ConversionError) as info:
        to_graph(WithUnknown())
    msg = str(info.value)
    assert "'act'" in msg and "PReLU" in msg and "register_converter" in msg and "strict=False" in msg


def test_non_strict_keeps_unknown_parameters_as_free_edges_with_one_warning():
    m = WithUnknown()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = to_graph(m, strict=False)
    ours = [w for w in caught if "to_graph" in str(w.message)]
    assert len(ours) == 1 and "act.weight" in str(ours[0].message)
    assert g.num_params == sum(p.numel() for p in m.parameters())
    assert torch.equal(g.params_to_edges(m), torch.cat([p.detach().flatten() for p in m.parameters()]))
    free = g.edge_attr[:, EDGE_TYPE] == EdgeType.FREE
    assert int(free.sum()) == m.act.weight.numel()
    # the layer after the unknown one is still connected (from fresh hidden neurons)
    i = g.param_names.index("out.weight")
    src = g.edge_index[0, g.param_offsets[i]:g.param_offsets[i + 1]].long()
    assert bool((g.x[src, NODE_TYPE] == NodeType.HIDDEN).all())


def test_unused_parameters_are_kept_and_reported():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.spare = nn.Linear(3, 7)

        def forward(self, x):
            return self.a(x)

    m = Unused()
    with pytest.warns(UserWarning, match="spare.weight"):
        g = to_graph(m)
    assert g.num_params == sum(p.numel() for p in m.parameters())


def test_untraceable_model_error_and_non_strict_fallback():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.a(x)
            return x

    with pytest.raises(ConversionError, match="torch.fx could not trace Branchy.forward"):
        to_graph(Branchy())
    with pytest.warns(UserWarning, match="free edge"):
        g = to_graph(Branchy(), strict=False)
    assert bool((g.edge_attr[:, EDGE_TYPE] == EdgeType.FREE).all()) and g.num_params == 12


def test_no_parameters_and_meta_device_errors():
    with pytest.raises(ConversionError, match="no parameters"):
        to_graph(nn.ReLU())
    with torch.device("meta"):
        m = nn.Linear(3, 4)
    with pytest.raises(ConversionError, match="meta device"):
        to_graph(m)
    with pytest.raises(TypeError):
        to_graph("not a model")


def test_missing_example_input_is_explained():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.p

    with pytest.raises(ConversionError, match="example_inputs"):
        to_graph(Odd())


def test_unknown_reshape_of_neurons_is_an_error():
    class HeadSplit(nn.Module):  # hand-written attention head split: not followable
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(8, 8)

        def forward(self, x):
            return self.q(x).view(x.shape[0], x.shape[1], 2, 4).sum(-1)

    with pytest.raises(ConversionError, match="register_converter"):
        to_graph(HeadSplit(), torch.randn(2, 5, 8))


def test_params_to_edges_rejects_other_architectures():
    g = to_graph(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="shape"):
        g.params_to_edges(nn.Linear(3, 5))
    with pytest.raises(ValueError):
        g.edges_to_params(torch.zeros(5))
    with pytest.raises(KeyError):
        g.params_to_edges({"weight": torch.zeros(4, 3)})


class ScaledDense(nn.Module):
    """A user layer: y = gain * (x @ W^T) with a per-output gain vector."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.W = nn.Parameter(torch.randn(n_out, n_in))
        self.gain = nn.Parameter(torch.ones(n_out))

    def forward(self, x):
        out = torch.einsum("bi,oi->bo", x, self.W)  # einsum: no built-in rule follows it
        return out * self.gain


def convert_scaled_dense(ctx, module, inputs, name):
    x = ctx.input_map(inputs[0], dim=-1, size=module.W.shape[1])
    layer = ctx.new_layer(name, "scaled_dense")
    out = ctx.add_nodes(module.W.shape[0], NodeType.HIDDEN, layer)
    src, dst, _ = dense_edges(x, out)
    ctx.add_param_edges(module.W, src, dst, EdgeType.LINEAR, layer)
    gain_node = ctx.add_nodes(1, NodeType.NORM, layer)
    ctx.add_param_edges(module.gain, gain_node.expand(out.numel()), out, EdgeType.NORM_WEIGHT, layer)
    return ctx.map(out, dim=-1, ndim=x.ndim)


def test_user_registered_converter():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), ScaledDense(5, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(ConversionError):
        to_graph(model)  # before registration, einsum over the weight is not understood
    metaopt.register_converter(ScaledDense, convert_scaled_dense)
    g = to_graph(model)
    i = g.param_names.index("2.W")
    src = g.edge_index[0, g.param_offsets[i]:g.param_offsets[i + 1]].long()
    assert torch.equal(src.view(4, 5)[0], g.edge_index[1, :15].long().view(5, 3)[:, 0])  # reads layer 0's neurons
    assert "scaled_dense" in g.summary()
    assert torch.equal(g.params_to_edges(model), torch.cat([p.detach().flatten() for p in model.parameters()]))


def test_register_converter_rejects_non_modules():
    with pytest.raises(TypeError):
        metaopt.register_converter(int, convert_scaled_dense)
