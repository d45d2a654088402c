"""Hidden-unit permutations: (a) the model's function is unchanged, (b) its graph is the same graph
up to the implied node relabelling (edges map to edges with equal features and values)."""

import copy

import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from metaopt.graph import NodeType, to_graph

from model_zoo import MLP, DeepSets, ResNet, TinyLM
from permutations import (
    assert_isomorphic,
    extend_relabelling,
    layer_nodes,
    permute_heads,
    permute_in,
    permute_out,
    permute_qk_within_head,
    relabel,
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


def test_residual_mlp_with_layernorm_stream_permutation():
    model = MLP((5, 8, 8, 8, 3), act=nn.ReLU, layernorm=True, residual=True)
    permuted = copy.deepcopy(model)
    p = torch.randperm(8)
    for i in range(3):  # the residual stream: all three hidden layers share one permutation
        permute_out(permuted.layers[i], p)
        permute_out(permuted.norms[i], p)
    for i in range(1, 4):
        permute_in(permuted.layers[i], p)

    def seed_sigma(g):
        sigma = torch.arange(g.num_nodes)
        for i in range(3):
            relabel(sigma, layer_nodes(g, f"layers.{i}"), p)
        return sigma

    check(model, permuted, torch.randn(4, 5), seed_sigma)


def test_cnn_with_batchnorm_and_residuals():
    torch.manual_seed(1)
    model = ResNet(widths=(6, 8), blocks=(2, 1)).eval()
    for m in model.modules():  # non-trivial BN statistics so the check is meaningful
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    permuted = copy.deepcopy(model)
    stream = torch.randperm(6)  # stem channels = residual stream of stage 1
    permute_out(permuted.stem, stream), permute_out(permuted.bn, stream)
    for blk in (permuted.layers[0], permuted.layers[1]):
        permute_in(blk.conv1, stream)
        permute_out(blk.conv2, stream), permute_out(blk.bn2, stream)
    permute_in(permuted.layers[2].conv1, stream), permute_in(permuted.layers[2].shortcut[0], stream)
    inner = [torch.randperm(6), torch.randperm(6), torch.randperm(8)]
    for blk, p in zip(permuted.layers, inner):
        permute_out(blk.conv1, p), permute_out(blk.bn1, p), permute_in(blk.conv2, p)

    def seed_sigma(g):
        sigma = torch.arange(g.num_nodes)
        relabel(sigma, layer_nodes(g, "stem"), stream)
        for i in range(2):
            relabel(sigma, layer_nodes(g, f"layers.{i}.conv2"), stream)
        for i, p in enumerate(inner):
            relabel(sigma, layer_nodes(g, f"layers.{i}.conv1"), p)
        return sigma

    check(model, permuted, torch.randn(2, 3, 8, 8), seed_sigma, atol=1e-4)


def test_transformer_heads_qk_dims_and_ffn_units():
    torch.manual_seed(2)
    model = TinyLM(vocab=11, dim=12, heads=3, depth=2).eval()
    ids = torch.randint(0, 11, (2, 7))
    head_perms = [torch.randperm(3) for _ in range(2)]
    ff_perms = [torch.randperm(24) for _ in range(2)]
    permuted = copy.deepcopy(model)
    units = []
    for blk, hp, fp in zip(permuted.blocks, head_perms, ff_perms):
        units.append(permute_heads(blk.self_attn, hp))
        permute_out(blk.linear1, fp), permute_in(blk.linear2, fp)

    def sigma_heads_ffn(g):
        sigma = torch.arange(g.num_nodes)
        for i, (hp, fp, unit) in enumerate(zip(head_perms, ff_perms, units)):
            name = f"blocks.{i}.self_attn"
            for t in (NodeType.QUERY, NodeType.KEY, NodeType.VALUE):
                relabel(sigma, layer_nodes(g, name, (t,)), unit)
            relabel(sigma, layer_nodes(g, name, (NodeType.HEAD,)), hp)
            relabel(sigma, layer_nodes(g, f"blocks.{i}.linear1"), fp)
        return sigma

    check(model, permuted, ids, sigma_heads_ffn)

    # query and key dims of one head permuted jointly: dot products, hence outputs, unchanged
    qk_model = copy.deepcopy(model)
    qk_units = permute_qk_within_head(qk_model.blocks[0].self_attn, 1, torch.randperm(4))

    def sigma_qk(g):
        sigma = torch.arange(g.num_nodes)
        for t in (NodeType.QUERY, NodeType.KEY):
            relabel(sigma, layer_nodes(g, "blocks.0.self_attn", (t,)), qk_units)
        return sigma

    check(model, qk_model, ids, sigma_qk)


def test_deepsets_hidden_permutation():
    torch.manual_seed(3)
    model = DeepSets(din=3, hidden=8, dout=2)
    permuted = copy.deepcopy(model)
    p1, p2 = torch.randperm(8), torch.randperm(8)
    permute_out(permuted.eq1.lam, p1), permute_out(permuted.eq1.gam, p1)
    permute_in(permuted.eq2.lam, p1), permute_in(permuted.eq2.gam, p1)
    permute_out(permuted.rho[0], p2), permute_in(permuted.rho[2], p2)

    def seed_sigma(g):
        sigma = torch.arange(g.num_nodes)
        relabel(sigma, layer_nodes(g, "eq1.lam"), p1)
        relabel(sigma, layer_nodes(g, "eq1.gam"), p1)
        relabel(sigma, layer_nodes(g, "rho.0"), p2)
        return sigma

    check(model, permuted, torch.randn(2, 5, 3), seed_sigma)


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
