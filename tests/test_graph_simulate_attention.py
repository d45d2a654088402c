"""simulate on attention: nn.MultiheadAttention, transformer layers, hand-written attention
(fused or separate q/k/v projections, F.scaled_dot_product_attention, softmax(q k^T) v, einsums),
ViT's class token, positional table and `x[:, 0]`, token permutes/rolls; refusals by name; and the
graph tensors a GMN reads, unchanged by the records simulate needs (pinned hashes).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.graph_hashes import graph_hash, torchvision_hashes, zoo_hashes
from metaopt.graph import simulate, to_graph
from metaopt.graph.simulate import unsupported_reasons
from model_zoo import all_models
from test_graph_simulate_conv import randomize_norms
from torchvision_models import small_configs


def _err(model: nn.Module, x: torch.Tensor, convert_batch: int = 2) -> float:
    """Relative error of simulate against model.eval()(x); converted from the first samples."""
    model = randomize_norms(model, zeros=True)
    g = to_graph(model, x[:convert_batch], cache=False)
    assert unsupported_reasons(g) == []
    with torch.no_grad():
        ref = model(x)
        out = simulate(g, g.params_to_edges(model), x, buffers=model)
    assert out.shape == ref.shape
    return float((out - ref).norm() / ref.norm())


def refusal_reasons(model: nn.Module, x: torch.Tensor) -> str:
    """The reasons simulate gives for refusing ``model`` (asserting that it does refuse, by name)."""
    g = to_graph(model.eval(), x, cache=False)
    reasons = unsupported_reasons(g)
    assert reasons
    with pytest.raises(NotImplementedError, match="simulate cannot run this graph"):
        simulate(g, g.params_to_edges(model), x)
    return " | ".join(reasons)


# ---- nn.MultiheadAttention and transformer layers ---------------------------------------------

class MHA(nn.Module):
    def __init__(self, batch_first=True, mask=False, kv_dims=False, **kw):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        kd = dict(kdim=5, vdim=7) if kv_dims else {}
        self.k = nn.Linear(8, 5) if kv_dims else None
        self.v = nn.Linear(8, 7) if kv_dims else None
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first, **kd, **kw)
        self.out = nn.Linear(8, 3)
        self.mask = mask

    def forward(self, x):
        h = self.inp(x)
        k = self.k(h) if self.k is not None else h
        v = self.v(h) if self.v is not None else h
        n = x.shape[1] if self.attn.batch_first else x.shape[0]
        mask = torch.ones(n, n, dtype=torch.bool).triu(1) if self.mask else None
        a, _ = self.attn(h, k, v, need_weights=False, attn_mask=mask)
        return self.out(a + h)


@pytest.mark.parametrize("kw", [{}, {"batch_first": False}, {"add_bias_kv": True, "add_zero_attn": True},
                                {"kv_dims": True}, {"bias": False}])
def test_multihead_attention_is_reproduced(kw):
    assert _err(MHA(**kw), torch.randn(3, 5, 6)) < 1e-5


def test_unbatched_multihead_attention_is_reproduced():
    class Unbatched(nn.Module):  # [tokens, features]: the token dim is the per-neuron dim
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(6, 3)
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            return self.out(self.attn(x, x, x, need_weights=False)[0])

    model = randomize_norms(Unbatched())
    x = torch.randn(7, 6)
    g = to_graph(model, x, cache=False)
    with torch.no_grad():
        assert torch.allclose(simulate(g, g.params_to_edges(model), x), model(x), atol=1e-5)


def test_masked_attention_is_refused_naming_the_mask():
    assert "mask" in refusal_reasons(MHA(mask=True), torch.randn(2, 5, 6))


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_encoder_is_reproduced(norm_first, activation):
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=norm_first,
                                       activation=activation, layer_norm_eps=1e-6)
    model = nn.Sequential(nn.Linear(4, 8), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                          nn.Linear(8, 2))
    assert _err(model, torch.randn(3, 6, 4)) < 1e-5


def test_zoo_transformers_are_reproduced_or_refused():
    zoo = all_models()
    assert _err(zoo["vit"], torch.randn(3, 3, 8, 8)) < 1e-5  # class token, positional table, x[:, 0]
    assert _err(zoo["mha"], torch.randn(3, 7, 5)) < 1e-5
    assert _err(zoo["lm"], torch.randint(0, 17, (3, 8))) < 1e-5  # token embedding, pos[:T], tied-free head
    assert "several input tensors" in refusal_reasons(zoo["decoder"], (torch.randn(2, 5, 8), torch.randn(2, 6, 8)))


# ---- hand-written attention ----------------------------------------------------------------

class Fused(nn.Module):
    """One qkv Linear split into heads; attention by sdpa, matmuls or einsums."""

    def __init__(self, mode="sdpa", causal=False, mask=False, dropout=0.0):
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 3)
        self.mode, self.causal, self.mask, self.dropout = mode, causal, mask, dropout

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, 2, 4).permute(2, 0, 3, 1, 4)
        if self.mode == "sdpa":
            mask = torch.ones(N, N, dtype=torch.bool).tril() if self.mask else None
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal,
                                               dropout_p=self.dropout)
        elif self.mode == "matmul":
            o = ((q * 0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        else:
            a = torch.einsum("bhid,bhjd->bhij", q, k) / 2.0
            o = torch.einsum("bhij,bhjd->bhid", a.softmax(-1), v)
        return self.proj(o.transpose(1, 2).reshape(B, N, 8))


class Separate(nn.Module):
    """Separate q/k/v Linears, views into heads, softmax(q k^T * c) v, residual."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = (lin(x).view(B, N, 2, 4).transpose(1, 2) for lin in (self.q, self.k, self.v))
        a = self.drop(torch.softmax(q @ k.transpose(-2, -1) * 0.5, dim=-1))
        return self.o((a @ v).transpose(1, 2).reshape(B, N, 8)) + x


@pytest.mark.parametrize("model", [Fused(), Fused("matmul"), Fused("einsum"), Fused(causal=True), Separate()],
                         ids=["sdpa", "matmul", "einsum", "causal", "separate"])
def test_handwritten_attention_is_reproduced(model):
    assert _err(model, torch.randn(3, 5, 8)) < 1e-5


@pytest.mark.parametrize("model,why", [(Fused(mask=True), "attention mask"), (Fused(dropout=0.1), "dropout")])
def test_handwritten_attention_refusals_name_the_op(model, why):
    assert why in refusal_reasons(model, torch.randn(2, 5, 8))


class Cosine(Fused):
    """Cosine attention: each head's query and key vectors L2-normalized (Swin V2)."""

    def __init__(self, p=2.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, 2, 4).permute(2, 0, 3, 1, 4)
        a = F.normalize(q, p=self.p, dim=-1) @ F.normalize(k, p=self.p, dim=-1).transpose(-2, -1)
        return self.proj(((a * 5.0).softmax(-1) @ v).transpose(1, 2).reshape(B, N, 8))


def test_cosine_attention_is_reproduced():
    assert _err(Cosine(), torch.randn(3, 5, 8)) < 1e-5


class LogitScaled(Cosine):
    """Swin V2's scores: cosine attention times exp(clamp(per-head logit scale, max=log 100))."""

    def __init__(self, div=False):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor([[[1.0]], [[5.0]]]))  # head 1 is clamped
        self.div = div

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, 2, 4).permute(2, 0, 3, 1, 4)
        a = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        s = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
        a = a / s if self.div else a * s
        return self.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(B, N, 8))


def test_per_head_logit_scale_is_reproduced():
    assert _err(LogitScaled(), torch.randn(3, 5, 8)) < 1e-5


def test_scores_divided_by_a_per_head_parameter_are_refused():
    assert "per-head scales" in refusal_reasons(LogitScaled(div=True), torch.randn(2, 5, 8))


def test_cosine_attention_with_another_norm_is_refused():
    assert "normalize" in refusal_reasons(Cosine(p=1.0), torch.randn(2, 5, 8))


class WindowAttention(nn.Module):
    """Swin-style: a relative position bias table gathered per head, an optional window mask
    (a constant repeating over the windows of each sample), scores viewed per window and back."""

    def __init__(self, window=3, heads=2, dim=8, windows=2, masked=False):
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads))
        c = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (c[:, :, None] - c[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("index", (rel[..., 0] * (2 * window - 1) + rel[..., 1]).flatten())
        n = window * window
        self.register_buffer("mask", torch.where(torch.rand(windows, n, n) < 0.3, -100.0, 0.0))
        self.heads, self.windows, self.masked = heads, windows, masked

    def forward(self, x):  # [samples * windows, tokens, dim]
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q = q * (C // self.heads) ** -0.5
        attn = q @ k.transpose(-2, -1)
        attn = attn + self.table[self.index].view(N, N, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
        if self.masked:
            attn = attn.view(B // self.windows, self.windows, self.heads, N, N) + self.mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, N, N)
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("masked", [False, True])
def test_relative_position_bias_and_window_mask_are_reproduced(masked):
    assert _err(WindowAttention(masked=masked), torch.randn(6, 9, 8)) < 1e-5


# ---- token shape ops recorded per neuron -------------------------------------------------------

class TokenOps(nn.Module):
    """Channels-last map, rolled (a shifted window), sliced; features end on the last dim."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.lin = nn.Linear(4, 5)

    def forward(self, x):
        h = torch.roll(self.conv(x).permute(0, 2, 3, 1), shifts=(1, -2), dims=(1, 2))
        return self.lin(h)[:, 1:, ::2].flip(1)


def test_token_permute_roll_slice_flip_are_replayed():
    assert _err(TokenOps(), torch.randn(3, 3, 6, 6)) < 1e-5


# ---- torchvision ----------------------------------------------------------------------------

def test_torchvision_vit_config_is_reproduced(tv_models):
    model, s = small_configs(tv_models)["vit_tiny"]
    assert _err(model, torch.randn(3, 3, s, s)) < 1e-5


def test_torchvision_swin_config_is_reproduced(tv_models):
    """Window partition (permutes), shifted windows (roll, window mask), relative position bias,
    patch merging (each channel read at four offsets: copies on a last dim of its value)."""
    model, s = small_configs(tv_models)["swin_tiny_cfg"]
    assert _err(model, torch.randn(3, 3, s, s)) < 1e-5


def test_torchvision_swin_with_padded_windows_is_reproduced(tv_models):
    """A window that does not divide the map: F.pad of a channels-last map (its (0, 0) feature pair)."""
    model = tv_models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                      window_size=[3, 3], num_classes=10)
    assert _err(model, torch.randn(3, 3, 32, 32)) < 1e-5


def test_torchvision_swin_v2_config_is_reproduced(tv_models):
    """Swin V2: cosine attention, per-head logit scales (clamp, exp), the continuous position bias
    (an MLP on a constant coordinate table, gathered, 16 * sigmoid) and the key bias zeroed in
    place; the key bias is made nonzero so that its zeroing is checked."""
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

    torch.manual_seed(0)
    model = tv_models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                      window_size=[4, 4], num_classes=10, block=SwinTransformerBlockV2,
                                      downsample_layer=PatchMergingV2)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "logit_scale"):
                m.qkv.bias.normal_()
                m.logit_scale.uniform_(1.0, 6.0)  # some heads clamped at log(100)
    assert _err(model, torch.randn(3, 3, 32, 32)) < 1e-5


@pytest.mark.slow
def test_torchvision_swin_v2_t_is_reproduced(tv_models):
    from torchvision_models import build

    torch.manual_seed(0)
    assert _err(build(tv_models, "swin_v2_t"), torch.randn(2, 3, 256, 256), convert_batch=1) < 1e-4


@pytest.mark.slow
def test_torchvision_vit_b_32_is_reproduced(tv_models):
    from torchvision_models import build

    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    assert _err(build(tv_models, "vit_b_32"), x, convert_batch=1) < 1e-4


# ---- the graph a GMN reads is unchanged ---------------------------------------------------------

# sha256 (16 hex digits) of x, edge_index, edge_attr, aux_edge_index, aux_edge_attr, computed by
# benchmarks/graph_hashes.py on the converter before simulate records for attention existed
BEFORE = {
    "mlp": "a1677eaf2f8b2cf7", "mlp_ln_res": "97b6cf6a9fd3025e", "resnet": "e32551129a79b234",
    "resnet_gn": "3f2db25795b040f8", "bottleneck": "ddfa6ca8bd53dd10", "flatcnn": "edfbd1900467ae59",
    "vit": "d733ba0824ab5243", "lm": "34a059402bd1b87e", "lm_tied": "0eb4b8a6ad831eb5",
    "mha": "e2573dff4789b80f", "deepsets": "739b4894a381b326", "functional": "f672230b998e5c4e",
    "splitcat": "882d8fd43d1927a7", "conv1d": "0324c14216cee508", "conv3d": "26b598502356ff34",
    "decoder": "c057712b38b7f663",
}
BEFORE_TV = {"vit_tiny": "aa92dfd5b5df26f1", "swin_tiny_cfg": "51de740bb8d2ad3b",
             "convnext_tiny_cfg": "a94b91b1c080864d", "resnet18": "b841069a607c23ef",
             "mobilenet_v3_small": "d99d47d12d5b4ed3"}


def test_graph_tensors_are_unchanged_by_simulate_records():
    assert zoo_hashes() == BEFORE


def test_torchvision_graph_tensors_are_unchanged_by_simulate_records(tv_models):
    assert torchvision_hashes(list(BEFORE_TV)) == BEFORE_TV


def test_graph_hash_sees_a_changed_edge():
    model = all_models()["mlp"]
    g = to_graph(model, cache=False)
    h = graph_hash(g)
    g.edge_attr[0, 0] += 1
    assert graph_hash(g) != h


# ---- transposed convolutions and multi-dim LayerNorm (ViT-era decoders and norms) ------------------

@pytest.mark.parametrize("kw", [{"stride": 2, "padding": 1, "output_padding": 1},
                                {"stride": 2, "groups": 2, "dilation": 2}, {"bias": False}])
def test_transposed_conv_is_reproduced(kw):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(4, 6, 3, **kw), nn.Tanh())
    assert _err(model, torch.randn(3, 3, 5, 5)) < 1e-5


def test_zoo_conv3d_with_transposed_conv_is_reproduced():
    assert _err(all_models()["conv3d"], torch.randn(3, 1, 4, 4, 4)) < 1e-5


def test_multi_dim_layernorm_is_reproduced():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LayerNorm([4, 5, 5]), nn.GELU(),
                          nn.Conv2d(4, 2, 1))
    assert _err(model, torch.randn(3, 3, 5, 5)) < 1e-5
