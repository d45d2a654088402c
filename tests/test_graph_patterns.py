"""Layer patterns of real architectures, read exactly: each parameter element lands on the edge
between the neurons it really connects (and edge k is element k of the flat parameters).

channels-last norms (ConvNeXt), channel shuffle (ShuffleNet), hand-written attention (fused qkv
Linear reshaped into heads, F.scaled_dot_product_attention), einops rearrange, tied weights.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import nn

from metaopt.graph import EdgeType, NodeType, to_graph
from metaopt.graph.schema import EDGE_TYPE, NODE_TYPE

from permutations import layer_nodes


def edges_of(g, name):
    i = g.param_names.index(name)
    lo, hi = g.param_offsets[i], g.param_offsets[i + 1]
    return g.edge_index[0, lo:hi].long(), g.edge_index[1, lo:hi].long(), g.edge_attr[lo:hi].long()


def aux(g, etype):
    sel = g.aux_edge_attr[:, EDGE_TYPE] == etype
    return g.aux_edge_index[0, sel].long(), g.aux_edge_index[1, sel].long()


def exact(g, model):
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(g.params_to_edges(model), flat)
    values = torch.randn(g.num_params, dtype=torch.float64)
    assert torch.equal(g.params_to_edges(g.edges_to_params(values)), values)
    assert not bool((g.edge_attr[:, EDGE_TYPE] == EdgeType.FREE).any())


# ---- channel shuffle ------------------------------------------------------------------------------

class Shuffle(nn.Module):
    def __init__(self, groups=2):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 4, 1)
        self.groups = groups

    def forward(self, x):
        x = self.a(x)
        B, C, H, W = x.shape  # torchvision's channel_shuffle
        x = x.view(B, self.groups, C // self.groups, H, W).transpose(1, 2).contiguous().view(B, C, H, W)
        return self.b(x)


def test_channel_shuffle_reads_channels_in_shuffled_order():
    m = Shuffle()
    g = to_graph(m, torch.randn(2, 3, 5, 5))
    exact(g, m)
    a_out = layer_nodes(g, "a")
    src, _, _ = edges_of(g, "b.weight")  # [4, 6, 1, 1]: b's input channel i is a's channel perm[i]
    perm = torch.arange(6).view(2, 3).t().reshape(-1)  # [0, 3, 1, 4, 2, 5]
    assert torch.equal(src.view(4, 6)[0], a_out[perm])
    # and the model agrees: b's input channel i is a's output channel perm[i]
    x = torch.randn(1, 3, 5, 5)
    h = m.a(x)
    shuffled = h.view(1, 2, 3, 5, 5).transpose(1, 2).reshape(1, 6, 5, 5)
    assert torch.equal(shuffled, h[:, perm])


# ---- channels-last norms --------------------------------------------------------------------------

class LayerNorm2d(nn.LayerNorm):
    """torchvision.models.convnext.LayerNorm2d: a LayerNorm over channels of an NCHW map."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ChannelsLast(nn.Module):
    def __init__(self, subclass: bool):
        super().__init__()
        self.a = nn.Conv2d(3, 5, 3, padding=1)
        self.norm = LayerNorm2d(5) if subclass else nn.LayerNorm(5)
        self.b = nn.Conv2d(5, 2, 1)
        self.subclass = subclass

    def forward(self, x):
        x = self.a(x)
        if self.subclass:
            x = self.norm(x)
        else:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.b(x)


def test_channels_last_layernorm_normalises_the_channels():
    x = torch.randn(2, 3, 4, 4)
    graphs = []
    for subclass in (False, True):
        m = ChannelsLast(subclass)
        g = to_graph(m, x, cache=False)
        exact(g, m)
        a_out = layer_nodes(g, "a")
        s, d = aux(g, EdgeType.NORM_IN)
        assert torch.equal(s, a_out), "one NORMED copy per conv channel, in channel order"
        _, gdst, _ = edges_of(g, "norm.weight")
        assert torch.equal(gdst, d) and bool((g.x[d, NODE_TYPE] == NodeType.NORMED).all())
        bsrc, _, _ = edges_of(g, "b.weight")
        assert torch.equal(bsrc.view(2, 5)[0], d), "the next conv reads the normalised channels"
        graphs.append(g)
    plain, sub = graphs
    assert torch.equal(plain.edge_index, sub.edge_index) and torch.equal(plain.aux_edge_index, sub.aux_edge_index)


# ---- hand-written attention -----------------------------------------------------------------------

class Attention(nn.Module):
    """timm/torchvision-style: fused qkv Linear, heads by reshape/permute, F.scaled_dot_product_attention."""

    def __init__(self, dim=12, heads=3, einops_heads=False):
        super().__init__()
        self.heads, self.einops_heads = heads, einops_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        if self.einops_heads:
            q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        else:
            qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


def test_hand_written_attention_has_heads_like_multihead_attention():
    for einops_heads in (False, True):
        m = Attention(einops_heads=einops_heads)
        g = to_graph(m, torch.randn(2, 5, 12), cache=False)
        exact(g, m)
        _, qkv_out, _ = edges_of(g, "qkv.weight")
        q, k, v = qkv_out.view(36, 12)[:, 0].view(3, 3, 4)  # [q|k|v] x heads x head_dim
        for nodes, t in ((q, NodeType.QUERY), (k, NodeType.KEY), (v, NodeType.VALUE)):
            assert bool((g.x[nodes.reshape(-1), NODE_TYPE] == t).all())
        s, d = aux(g, EdgeType.QK_PAIR)
        assert torch.equal(s, q.reshape(-1)) and torch.equal(d, k.reshape(-1))
        s, d = aux(g, EdgeType.HEAD_MEMBER)
        heads = (g.x[:, NODE_TYPE] == NodeType.HEAD).nonzero().squeeze(1)
        assert heads.numel() == 3
        for grid in (q, k, v):
            member = {int(a): int(b) for a, b in zip(s, d)}
            assert [[member[int(n)] for n in row] for row in grid] == [[int(h)] * 4 for h in heads]
        psrc, _, _ = edges_of(g, "proj.weight")  # proj column h*4+j reads value neuron (h, j)
        assert torch.equal(psrc.view(12, 12)[0], v.reshape(-1))


def test_attention_with_an_unknown_mixing_of_heads_is_an_error():
    class Bad(Attention):
        def forward(self, x):
            B, N, C = x.shape
            q = self.qkv(x).reshape(B, N, 3 * self.heads, C // self.heads)
            return self.proj((q.softmax(-2) * 2).reshape(B, N, 3 * C)[..., :C])

    import pytest

    from metaopt.graph import ConversionError

    with pytest.raises(ConversionError, match="features spread over several dims"):
        to_graph(Bad(), torch.randn(2, 5, 12))


class GroupedQueryAttention(nn.Module):
    """Llama-style grouped-query attention: 4 query heads share 2 key/value heads."""

    def __init__(self, dim=16, heads=4, kv_heads=2, mode="repeat"):
        super().__init__()
        self.h, self.kv, self.d, self.mode = heads, kv_heads, dim // heads, mode
        self.q = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * kv_heads * self.d)
        self.o = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.h, self.d).transpose(1, 2)
        k, v = self.kv_proj(x).view(B, T, 2, self.kv, self.d).permute(2, 0, 3, 1, 4).unbind(0)
        g = self.h // self.kv
        if self.mode == "enable_gqa":
            return self.o(F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                          .transpose(1, 2).reshape(B, T, C))
        if self.mode == "repeat":  # each key/value head repeated for its group of query heads
            k, v = (t.repeat_interleave(g, dim=1) for t in (k, v))
        else:  # the same by expand (HF transformers' repeat_kv)
            k, v = (t[:, :, None].expand(B, self.kv, g, T, self.d).reshape(B, self.h, T, self.d) for t in (k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, C))


def test_grouped_query_attention_is_refused_not_converted_wrong():
    """Repeated key/value heads would make two attention outputs one value neuron (a graph that
    simulates to 4% off): strict conversion names the problem; non-strict warns and gives the
    attention's output fresh neurons (the documented fallback for an op no rule reads)."""
    import warnings

    import pytest

    from metaopt.graph import ConversionError

    for mode in ("repeat", "expand", "enable_gqa"):
        torch.manual_seed(0)
        m = GroupedQueryAttention(mode=mode)
        with pytest.raises(ConversionError, match="grouped-query attention is not supported"):
            to_graph(m, torch.randn(1, 5, 16), cache=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            g = to_graph(m, torch.randn(1, 5, 16), strict=False, cache=False)
        assert any("grouped-query" in str(w.message) for w in caught)
        assert g.num_edges == sum(p.numel() for p in m.parameters())  # every parameter keeps its edge


# ---- einops ---------------------------------------------------------------------------------------

class Patches(nn.Module):
    """Patchify with einops (layer and function), as in lucidrains-style ViTs."""

    def __init__(self):
        super().__init__()
        self.to_patches = Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=2, p2=2)
        self.embed = nn.Linear(2 * 2 * 3, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, img):
        x = self.embed(self.to_patches(img))
        x = rearrange(x, "b n d -> b d n")
        return self.out(rearrange(x, "b d n -> b n d"))


def test_einops_rearrange_is_followed_exactly():
    m = Patches()
    g = to_graph(m, torch.randn(2, 3, 4, 4))
    exact(g, m)
    src, dst, _ = edges_of(g, "embed.weight")  # [8, 12]: input feature (p1, p2, c) is pixel channel c
    assert bool((g.x[src, NODE_TYPE] == NodeType.INPUT).all())
    osrc, _, _ = edges_of(g, "out.weight")
    assert torch.equal(osrc.view(2, 8)[0], layer_nodes(g, "embed"))


# ---- tied weights ---------------------------------------------------------------------------------

def test_tied_weights_keep_the_edges_of_their_first_use():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(7, 4)
            self.mid = nn.Linear(4, 4)
            self.head = nn.Linear(4, 7, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, idx):
            return self.head(torch.tanh(self.mid(self.emb(idx))))

    m = Tied()
    g = to_graph(m, torch.randint(0, 7, (2, 3)))
    exact(g, m)
    assert g.param_names == ["emb.weight", "mid.weight", "mid.bias"]
    _, _, attr = edges_of(g, "emb.weight")
    assert bool((attr[:, EDGE_TYPE] == EdgeType.EMBEDDING).all())


class MatmulAttention(nn.Module):
    """nanoGPT-style attention: q @ k^T, scale, causal mask, softmax, dropout, @ v."""

    def __init__(self, dim=12, heads=3, T=5):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(0.1)
        self.register_buffer("mask", torch.tril(torch.ones(T, T)).view(1, 1, T, T))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / (k.size(-1) ** 0.5))
        att = att.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf"))
        att = self.drop(torch.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


def test_matmul_attention_reads_like_sdpa_attention():
    x = torch.randn(2, 5, 12)
    a = MatmulAttention()
    b = Attention()
    with torch.no_grad():  # same weights: the two spell the same attention
        b.qkv.weight.copy_(a.c_attn.weight), b.qkv.bias.copy_(a.c_attn.bias)
        b.proj.weight.copy_(a.c_proj.weight), b.proj.bias.copy_(a.c_proj.bias)
    ga, gb = to_graph(a, x), to_graph(b, x)
    exact(ga, a)
    for key in ("edge_index", "aux_edge_index", "x"):
        assert torch.equal(ga[key], gb[key]), key
    assert torch.equal(ga.edge_attr[:, EDGE_TYPE], gb.edge_attr[:, EDGE_TYPE])


def test_shape_dependent_python_is_traced_with_the_call_sizes():
    """Plain fx cannot slice a buffer by `x.size(1)` or branch on a shape; the real sizes can."""

    class ShapeCode(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.register_buffer("scale", torch.linspace(0.5, 1.5, 10).view(1, 10, 1))

        def forward(self, x):
            if x.shape[-1] != 4:
                raise ValueError("expected 4 features")
            return self.a(x) * self.scale[:, : x.size(1)]

    m = ShapeCode()
    g = to_graph(m, torch.randn(2, 7, 4))
    exact(g, m)
    assert "linear" in g.summary()


class EinsumAttention(Attention):
    """lucidrains / MaxViT style: scaled q, einsum scores, softmax, einsum with v."""

    def forward(self, x):
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        q = q * (q.shape[-1] ** -0.5)
        attn = torch.einsum("b h i d, b h j d -> b h i j", q, k).softmax(dim=-1)
        out = torch.einsum("b h i j, b h j d -> b h i d", attn, v)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


def test_einsum_attention_reads_like_sdpa_attention():
    x = torch.randn(2, 5, 12)
    a, b = EinsumAttention(), Attention()
    b.load_state_dict(a.state_dict())
    ga, gb = to_graph(a, x), to_graph(b, x)
    exact(ga, a)
    for key in ("edge_index", "aux_edge_index", "x"):
        assert torch.equal(ga[key], gb[key]), key


class RelPosAttention(nn.Module):
    """Swin/MaxViT-style window attention: a learned [(2w-1)^2, heads] table gathered by a
    relative-offset index and added to the scores of its head."""

    def __init__(self, dim=8, heads=2, w=3):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn((2 * w - 1) ** 2, heads))
        c = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
        rel = (c[:, :, None] - c[:, None, :]).permute(1, 2, 0) + (w - 1)
        self.register_buffer("index", rel[..., 0] * (2 * w - 1) + rel[..., 1])  # [w*w, w*w]

    def forward(self, x):  # [B, w*w, dim]
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.table[self.index.view(-1)].view(N, N, -1).permute(2, 0, 1)
        att = ((q * 0.5) @ k.transpose(-2, -1) + bias).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(B, N, C))


def test_relative_position_bias_rows_feed_their_heads():
    m = RelPosAttention()
    g = to_graph(m, torch.randn(2, 9, 8))
    exact(g, m)
    src, dst, attr = edges_of(g, "table")  # [25, 2]: row r, head h -> PARAM_SOURCE r -> HEAD h
    assert bool((attr[:, EDGE_TYPE] == EdgeType.PARAM_ADD).all())
    heads = (g.x[:, NODE_TYPE] == NodeType.HEAD).nonzero().squeeze(1)
    assert torch.equal(dst.view(25, 2), heads.view(1, 2).expand(25, 2))
    assert bool((g.x[src, NODE_TYPE] == NodeType.PARAM_SOURCE).all())
    assert torch.equal(g.x[src.view(25, 2)[:, 0], 2], torch.arange(25))  # ordered by relative offset
    assert torch.equal(src.view(25, 2)[:, 0], src.view(25, 2)[:, 1])


def _wrapped_attention(x, qkv_weight, proj_weight, heads: int):
    """A library-style attention function taking its weights as arguments (fx.wrap'ped below)."""
    B, N, C = x.shape
    if N % 1:  # shape-dependent Python: why libraries wrap such functions
        raise ValueError
    q, k, v = F.linear(x, qkv_weight).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    return F.linear(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C), proj_weight)


torch.fx.wrap("_wrapped_attention")


class CosineAttention(nn.Module):
    """Swin V2 style: wrapped function, cosine scores, per-head logit scale, MLP-made head bias."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(heads, 1, 1)))
        self.bias_mlp = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, heads))
        self.register_buffer("coords", torch.randn(5, 2))

    def forward(self, x):  # [B, 5, dim]
        B, N, C = x.shape
        y = _wrapped_attention(x, self.qkv.weight, self.proj.weight, self.heads)
        q, k, v = self.qkv(y).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        att = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        att = att * torch.clamp(self.logit_scale, max=4.6).exp()
        bias = self.bias_mlp(self.coords).t().unsqueeze(-1)  # [heads, N, 1]: per head and query
        att = (att + bias).softmax(-1)
        return (att @ v).transpose(1, 2).reshape(B, N, C)


def test_wrapped_function_is_walked_and_per_head_scales_and_biases_are_read():
    m = CosineAttention()
    g = to_graph(m, torch.randn(2, 5, 8))
    exact(g, m)
    _, qkv_out, _ = edges_of(g, "qkv.weight")  # inside the wrapped function: the same weights
    assert bool((g.x[qkv_out, NODE_TYPE] == NodeType.QUERY).any())
    heads = (g.x[:, NODE_TYPE] == NodeType.HEAD).nonzero().squeeze(1)
    assert heads.numel() == 4  # two attentions of two heads
    src, dst, attr = edges_of(g, "logit_scale")  # logit_scale[h] -> the second attention's head h
    assert bool((attr[:, EDGE_TYPE] == EdgeType.NORM_WEIGHT).all()) and torch.equal(dst, heads[2:])
    s, d = aux(g, EdgeType.RESIDUAL)
    bias_out = layer_nodes(g, "bias_mlp.2")
    assert torch.equal(s[-2:], bias_out) and torch.equal(d[-2:], heads[2:])


@torch.no_grad()
def test_permuting_heads_of_hand_written_attention_is_a_graph_relabelling():
    from permutations import assert_isomorphic

    torch.manual_seed(0)
    m = Attention()  # dim 12, 3 heads of 4
    hp = torch.tensor([2, 0, 1])
    unit = (hp.view(-1, 1) * 4 + torch.arange(4)).reshape(-1)  # new unit i = old unit unit[i]
    rows = torch.cat([unit, unit + 12, unit + 24])
    q = Attention()
    q.load_state_dict(m.state_dict())
    q.qkv.weight.copy_(m.qkv.weight[rows])
    q.qkv.bias.copy_(m.qkv.bias[rows])
    q.proj.weight.copy_(m.proj.weight[:, unit])
    x = torch.randn(2, 5, 12)
    assert torch.allclose(m(x), q(x), atol=1e-6)
    g = to_graph(m, x)
    _, qkv_out, _ = edges_of(g, "qkv.weight")
    nodes = qkv_out.view(36, 12)[:, 0]
    heads = (g.x[:, NODE_TYPE] == NodeType.HEAD).nonzero().squeeze(1)
    sigma = torch.arange(g.num_nodes)
    inv = torch.argsort(rows)
    sigma[nodes] = nodes[inv]
    sigma[heads] = heads[torch.argsort(hp)]
    assert_isomorphic(g, g.params_to_edges(m), g.params_to_edges(q), sigma)
