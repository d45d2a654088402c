"""simulate(): the network's forward pass by message passing over its graph equals model(x)."""

import pytest
import torch
from hypothesis import example, given, settings, strategies as st
from torch import nn

from metaopt.graph import simulate, to_graph

from model_zoo import MLP, all_models

ACTS = [nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.SiLU, nn.Identity, nn.Softplus]


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 9), min_size=2, max_size=6),
    act=st.sampled_from(ACTS),
    layernorm=st.booleans(),
    residual=st.booleans(),
    seed=st.integers(0, 10_000),
)
@example(widths=[7, 7, 4, 2, 7, 3], act=nn.Identity, layernorm=True, residual=False, seed=192)
def test_simulate_matches_random_mlps(widths, act, layernorm, residual, seed):
    # float64: a LayerNorm over 2 nearly equal units amplifies float32 rounding of a different summation
    # order by up to 1/sqrt(eps) ~ 300x (seed 192, widths [7, 7, 4, 2, 7, 3] missed 1e-5 by that in float32)
    torch.manual_seed(seed)
    model = MLP(tuple(widths), act=act, layernorm=layernorm and min(widths[1:-1] or [2]) > 1, residual=residual).double()
    g = to_graph(model, torch.randn(2, widths[0], dtype=torch.float64))
    x = torch.randn(7, widths[0], dtype=torch.float64)
    out = simulate(g, g.params_to_edges(model), x)
    assert out.dtype == torch.float64 and torch.allclose(out, model(x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", ["mlp", "mlp_ln_res", "splitcat", "functional"])
def test_simulate_matches_zoo_models(name):
    model = all_models()[name]
    g = to_graph(model)
    n_in = model.example_inputs()[0].shape[1] if hasattr(model, "example_inputs") else 6
    x = torch.randn(5, n_in)
    assert torch.allclose(simulate(g, g.params_to_edges(model), x), model(x), atol=1e-5)


def test_simulate_uses_the_values_not_the_model():
    model = MLP((4, 8, 3))
    g = to_graph(model)
    values = torch.randn(g.num_params)
    other = MLP((4, 8, 3))
    with torch.no_grad():
        for p, t in zip(other.parameters(), g.edges_to_params(values).values()):
            p.copy_(t)
    x = torch.randn(3, 4)
    assert torch.allclose(simulate(g, values, x), other(x), atol=1e-5)
    assert not torch.allclose(simulate(g, values, x), model(x), atol=1e-3)


def test_simulate_refuses_what_it_cannot_run_naming_it():
    """Several model inputs, a constant tensor op with no record: clear errors, not wrong answers."""
    g = to_graph(nn.MultiheadAttention(8, 2, batch_first=True), (torch.randn(1, 3, 8),) * 3)
    with pytest.raises(NotImplementedError, match="several input tensors"):
        simulate(g, g.params_to_edges(g.edges_to_params(torch.zeros(g.num_params))), torch.zeros(1, 3, 8))

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.register_buffer("mask", torch.ones(1, 1, 6, 6))

        def forward(self, x):
            return self.conv(x) * self.mask

    model = Masked()
    g = to_graph(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(NotImplementedError, match="constant tensor"):
        simulate(g, g.params_to_edges(model), torch.randn(1, 3, 8, 8))
