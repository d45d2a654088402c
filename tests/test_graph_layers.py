"""Per-layer-family structure: each parameter lands on the edge between the right nodes."""

import torch
from torch import nn

from metaopt.graph import Activation, EdgeType, NodeType, to_graph
from metaopt.graph.schema import EDGE_K0, EDGE_K1, EDGE_K2, EDGE_TYPE, NODE_ACTIVATION, NODE_TYPE

from model_zoo import all_models
from permutations import layer_nodes

MODELS = all_models()


def edges_of(g, name):
    """(src, dst, attr) of parameter `name`'s edges."""
    i = g.param_names.index(name)
    lo, hi = g.param_offsets[i], g.param_offsets[i + 1]
    return g.edge_index[0, lo:hi].long(), g.edge_index[1, lo:hi].long(), g.edge_attr[lo:hi].long()


def test_linear_weight_and_bias_edges():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    g = to_graph(m)
    src, dst, attr = edges_of(g, "0.weight")
    ins, hid = layer_nodes(g, "<input>", (NodeType.INPUT,)), layer_nodes(g, "0")
    # element (o, i) of weight [4, 3] is edge input i -> hidden o
    assert torch.equal(src.view(4, 3), ins.view(1, 3).expand(4, 3))
    assert torch.equal(dst.view(4, 3), hid.view(4, 1).expand(4, 3))
    bsrc, bdst, battr = edges_of(g, "0.bias")
    assert bool((g.x[bsrc, NODE_TYPE] == NodeType.BIAS).all()) and bsrc.unique().numel() == 1
    assert torch.equal(bdst, hid) and bool((battr[:, EDGE_TYPE] == EdgeType.BIAS).all())
    assert bool((g.x[hid, NODE_ACTIVATION] == Activation.RELU).all())


def test_conv_taps_carry_kernel_offsets_and_groups():
    g = to_graph(MODELS["flatcnn"])
    src, dst, attr = edges_of(g, "conv.weight")  # [4, 2, 3, 3]
    assert bool((attr[:, EDGE_TYPE] == EdgeType.CONV).all())
    k = attr[:, [EDGE_K0, EDGE_K1]].view(4, 2, 3, 3, 2)
    assert torch.equal(k[0, 0, :, :, 0], torch.tensor([[-1] * 3, [0] * 3, [1] * 3]))
    assert torch.equal(k[0, 0, :, :, 1], torch.tensor([[-1, 0, 1]] * 3))
    # depthwise: every tap of output channel c reads input channel c
    s, d, _ = edges_of(g, "dw.weight")  # [4, 1, 3, 3]
    conv_out = layer_nodes(g, "conv")
    dw_out = layer_nodes(g, "dw")
    assert torch.equal(s.view(4, 9)[:, 0], conv_out) and torch.equal(d.view(4, 9)[:, 0], dw_out)
    # groups=2: output channels 0,1 read inputs 0,1; outputs 2,3 read inputs 2,3
    s, d, a = edges_of(g, "gc.weight")  # [4, 2, 3, 1]
    s = s.view(4, 2, 3)[:, :, 0]
    assert torch.equal(s, dw_out[torch.tensor([[0, 1], [0, 1], [2, 3], [2, 3]])])
    assert torch.equal(a[:, EDGE_K1].view(4, 2, 3)[0, 0], torch.tensor([0, 0, 0]))  # width-1 kernel


def test_flatten_to_linear_edges_from_channels_with_positions():
    g = to_graph(MODELS["flatcnn"])  # conv features [4, 6, 6] flattened into fc(144 -> 5)
    src, dst, attr = edges_of(g, "fc.weight")
    gc_out = layer_nodes(g, "gc")
    assert bool((attr[:, EDGE_TYPE] == EdgeType.LINEAR_FLAT).all())
    s = src.view(5, 4, 36)
    assert torch.equal(s[0, :, 0], gc_out) and bool((s == s[:, :, :1]).all())
    pos = attr[:, [EDGE_K1, EDGE_K2]].view(5, 4, 6, 6, 2)
    assert torch.equal(pos[0, 0, :, :, 0], torch.arange(6).view(6, 1).expand(6, 6))
    assert torch.equal(pos[0, 0, :, :, 1], torch.arange(6).view(1, 6).expand(6, 6))


def test_global_pool_flatten_keeps_channel_nodes():
    g = to_graph(MODELS["resnet"])
    src, _, attr = edges_of(g, "fc.weight")
    assert bool((attr[:, EDGE_TYPE] == EdgeType.LINEAR).all())
    assert src.unique().numel() == 16  # one node per channel of the last stage


def test_norm_layers_and_groupnorm_groups():
    g = to_graph(MODELS["resnet_gn"])
    src, dst, attr = edges_of(g, "bn.weight")  # GroupNorm(2, 8)
    assert bool((g.x[src, NODE_TYPE] == NodeType.NORM).all())
    assert src.unique().numel() == 2 and torch.equal(src[:4], src[:1].expand(4))
    assert bool((g.x[dst, NODE_TYPE] == NodeType.NORMED).all())
    bsrc, bdst, battr = edges_of(g, "bn.bias")
    assert torch.equal(bdst, dst) and bool((battr[:, EDGE_TYPE] == EdgeType.NORM_BIAS).all())
    g2 = to_graph(MODELS["resnet"])
    s2, _, _ = edges_of(g2, "bn.weight")  # BatchNorm: one norm node
    assert s2.unique().numel() == 1


def test_instance_norm_rmsnorm_and_multidim_layernorm():
    m = nn.Sequential(nn.Conv2d(2, 3, 1), nn.InstanceNorm2d(3, affine=True), nn.LayerNorm([3, 4, 4]),
                      nn.Flatten(), nn.Linear(48, 5), nn.RMSNorm(5))
    g = to_graph(m, torch.randn(2, 2, 4, 4))
    assert g.num_params == sum(p.numel() for p in m.parameters())
    src, dst, attr = edges_of(g, "2.weight")  # [3, 4, 4]: per-channel destination, (h, w) positions
    assert dst.unique().numel() == 3 and int(attr[:, EDGE_K2].max()) == 3
    assert "rmsnorm" in g.summary()


def test_residual_adds_create_sum_nodes():
    g = to_graph(MODELS["resnet"])
    aux_types = g.aux_edge_attr[:, EDGE_TYPE]
    assert int((aux_types == EdgeType.RESIDUAL).sum()) > 0
    sums = (g.x[:, NODE_TYPE] == NodeType.SUM).nonzero().squeeze(1)
    res = g.aux_edge_index[:, aux_types == EdgeType.RESIDUAL].long()
    # every sum neuron has exactly two operands
    assert torch.equal(torch.bincount(res[1], minlength=g.num_nodes)[sums], torch.full((sums.numel(),), 2))


def test_multihead_attention_is_head_aware():
    g = to_graph(MODELS["mha"])  # dim 12, 3 heads
    src, dst, attr = edges_of(g, "attn.in_proj_weight")
    types = attr[:, EDGE_TYPE].view(3, 12, 12)
    assert bool((types[0] == EdgeType.ATTN_Q).all() and (types[1] == EdgeType.ATTN_K).all()
                and (types[2] == EdgeType.ATTN_V).all())
    q = layer_nodes(g, "attn", (NodeType.QUERY,))
    k = layer_nodes(g, "attn", (NodeType.KEY,))
    heads = layer_nodes(g, "attn", (NodeType.HEAD,))
    assert q.numel() == 12 and heads.numel() == 3
    aux, at = g.aux_edge_index.long(), g.aux_edge_attr[:, EDGE_TYPE]
    pairs = aux[:, at == EdgeType.QK_PAIR]
    assert torch.equal(pairs[0], q) and torch.equal(pairs[1], k)
    member = aux[:, at == EdgeType.HEAD_MEMBER]
    q_member = member[1][torch.isin(member[0], q)]
    assert torch.equal(q_member, heads.repeat_interleave(4))
    s, d, a = edges_of(g, "attn.out_proj.weight")
    v = layer_nodes(g, "attn", (NodeType.VALUE,))
    assert bool((a[:, EDGE_TYPE] == EdgeType.ATTN_O).all()) and torch.equal(s.view(12, 12)[0], v)


def test_embedding_positional_table_and_class_token():
    g = to_graph(MODELS["lm"])  # vocab 17, dim 16, positional table [12, 16] sliced to T=8
    src, dst, attr = edges_of(g, "tok.weight")
    assert bool((g.x[src, NODE_TYPE] == NodeType.TOKEN).all())
    assert torch.equal(g.x[src.view(17, 16)[:, 0], 2], torch.arange(17))  # ordered token positions
    src, dst, attr = edges_of(g, "pos")
    assert bool((attr[:, EDGE_TYPE] == EdgeType.PARAM_ADD).all())
    rows = g.x[src.view(12, 16)[:, 0], 2]
    assert torch.equal(rows, torch.arange(12)), "rows beyond the traced length keep their edges too"
    tok_out = layer_nodes(g, "tok")
    assert torch.equal(dst.view(12, 16)[0], tok_out), "positions are added into the embedding neurons"
    g = to_graph(MODELS["vit"])
    src, dst, attr = edges_of(g, "cls")
    assert bool((attr[:, EDGE_TYPE] == EdgeType.PARAM_CAT).all()) and src.unique().numel() == 1
    assert torch.equal(dst, layer_nodes(g, "patch"))


def test_deepsets_equivariant_layer_structure():
    g = to_graph(MODELS["deepsets"])
    lam, gam = layer_nodes(g, "eq1.lam"), layer_nodes(g, "eq1.gam")
    aux, at = g.aux_edge_index.long(), g.aux_edge_attr[:, EDGE_TYPE]
    res = aux[:, at == EdgeType.RESIDUAL]
    # lam_j and gam_j both feed sum neuron j: the pooled and per-element paths meet per unit
    first_sum = res[1][torch.isin(res[0], lam)]
    assert torch.equal(first_sum, res[1][torch.isin(res[0], gam)])


def test_activations_recorded_per_layer():
    g = to_graph(MODELS["flatcnn"])
    acts = {r["name"]: Activation(r["activation"]).name for r in g.layers}
    assert acts["conv"] == "GELU" and acts["dw"] == "RELU" and acts["gc"] == "NONE"
    g = to_graph(MODELS["lm"])
    assert any(r["activation"] == Activation.GELU for r in g.layers if r["name"].endswith("linear1"))


def test_functional_parameters_and_gating():
    g = to_graph(MODELS["functional"])
    types = {n: EdgeType(int(edges_of(g, n)[2][0, EDGE_TYPE])).name for n in g.param_names}
    assert types == {"w1": "LINEAR", "b1": "BIAS", "w2": "LINEAR", "scale": "NORM_WEIGHT"}
    src, dst, _ = edges_of(g, "w2")  # used as h @ w2 with w2 [8, 3]: element (i, o) is i -> o
    assert src.view(8, 3)[:, 0].unique().numel() == 8 and dst.view(8, 3)[0].unique().numel() == 3
    g = to_graph(MODELS["splitcat"])
    assert int((g.x[:, NODE_TYPE] == NodeType.PRODUCT).sum()) == 4


def test_transposed_and_3d_convolutions():
    m = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.ConvTranspose3d(3, 2, 2, stride=2, groups=1))
    g = to_graph(m, torch.randn(1, 1, 4, 4, 4))
    src, dst, attr = edges_of(g, "1.weight")  # [3, 2, 2, 2, 2] = [in, out, k, k, k]
    assert torch.equal(src.view(3, 2, 8)[:, 0, 0], layer_nodes(g, "0"))
    assert torch.equal(dst.view(3, 2, 8)[0, :, 0], layer_nodes(g, "1"))
    assert int(attr[:, EDGE_K0].max()) == 1
