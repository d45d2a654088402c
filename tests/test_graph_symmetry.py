"""Hidden-unit permutations: (a) the model's function is unchanged, (b) its graph is the same graph
up to the implied node relabelling (edges map to edges with equal features and values)."""

import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from metaopt.graph import NodeType, to_graph

from model_zoo import MLP
from permutations import (
    SYMMETRY_CASES,
    assert_isomorphic,
    extend_relabelling,
    layer_nodes,
    permute_in,
    permute_out,
    permute_qk_within_head,
    relabel,
    resnet_case,
    transformer_case,
)


def check(model, permuted, x, sigma_seed, atol=1e-5):
    g = to_graph(model, x if isinstance(x, tuple) else (x,))
    with torch.no_grad():
        a = model(*x) if isinstance(x, tuple) else model(x)
        b = permuted(*x) if isinstance(x, tuple) else permuted(x)
    assert torch.allclose(a, b, atol=atol), "the permutation must be a symmetry of the function"
    sigma = extend_relabelling(g, sigma_seed(g))
    assert_isomorphic(g, g.params_to_edges(model), g.params_to_edges(permuted), sigma)
    return g


@settings(max_examples=20, deadline=None)
@given(
    widths=st.lists(st.integers(2, 8), min_size=3, max_size=6),
    layernorm=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_mlp_hidden_permutations(widths, layernorm, seed):
    torch.manual_seed(seed)
    model = MLP(tuple(widths), act=nn.Tanh, layernorm=layernorm)
    permuted = copy.deepcopy(model)
    perms = [torch.randperm(w) for w in widths[1:-1]]
    for i, p in enumerate(perms):
        permute_out(permuted.layers[i], p)
        if layernorm:
            permute_out(permuted.norms[i], p)
        permute_in(permuted.layers[i + 1], p)

    def seed_sigma(g):
        sigma = torch.arange(g.num_nodes)
        for i, p in enumerate(perms):
            relabel(sigma, layer_nodes(g, f"layers.{i}"), p)
        return sigma

    check(model, permuted, torch.randn(4, widths[0]), seed_sigma)


@pytest.mark.parametrize("name", ["mlp_ln_res", "deepsets"])
def test_shared_symmetry_cases(name):
    """Residual MLP with LayerNorm (stream permutation) and DeepSets hidden units."""
    torch.manual_seed(3)
    model, permute, sigma, x = SYMMETRY_CASES[name]()
    check(model, permute(copy.deepcopy(model)), x, sigma)


def test_cnn_with_batchnorm_and_residuals():
    """Residual-stream and block-internal channels of a ResNet, with non-trivial BN statistics."""
    torch.manual_seed(1)
    model, permute, sigma, x = resnet_case()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    check(model, permute(copy.deepcopy(model)), x, sigma, atol=1e-4)


def test_transformer_heads_qk_dims_and_ffn_units():
    torch.manual_seed(2)
    model, permute, sigma, (ids,) = transformer_case()
    check(model, permute(copy.deepcopy(model)), ids, sigma)

    # query and key dims of one head permuted jointly: dot products, hence outputs, unchanged
    qk_model = copy.deepcopy(model)
    qk_units = permute_qk_within_head(qk_model.blocks[0].self_attn, 1, torch.randperm(4))

    def sigma_qk(g):
        s = torch.arange(g.num_nodes)
        for t in (NodeType.QUERY, NodeType.KEY):
            relabel(s, layer_nodes(g, "blocks.0.self_attn", (t,)), qk_units)
        return s

    check(model, qk_model, ids, sigma_qk)


def test_a_non_symmetry_is_detected():
    """Sanity of the checker: swapping two *input* features is not a hidden-unit symmetry."""
    model = MLP((4, 6, 2))
    permuted = copy.deepcopy(model)
    p = torch.tensor([1, 0, 2, 3])
    permute_in(permuted.layers[0], p)
    g = to_graph(model)
    sigma = torch.arange(g.num_nodes)
    relabel(sigma, layer_nodes(g, "<input>", (NodeType.INPUT,)), p)
    try:
        assert_isomorphic(g, g.params_to_edges(model), g.params_to_edges(permuted), sigma)
    except AssertionError:
        return
    raise AssertionError("ordered input nodes must not be interchangeable")
