"""simulate on token models: nn.Embedding / F.embedding / nn.EmbeddingBag looked up from the EMBEDDING
edges, positional tables (`pos[:T]`, a positional nn.Embedding of `torch.arange(T)`), an output head
tied to the token embedding, small language models (nn.TransformerEncoderLayer blocks, a causal
hand-written-attention LM); and the embedding uses simulate refuses, by name.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaopt.graph import simulate, to_graph
from metaopt.graph.simulate import unsupported_reasons
from model_zoo import TinyLM
from test_graph_simulate_attention import refusal_reasons

V = 13


def _err(model: nn.Module, x: torch.Tensor, convert_batch: int = 2) -> float:
    """Relative error of simulate against model.eval()(x) on token ids x; converted from the first rows."""
    model.eval()
    g = to_graph(model, x[:convert_batch], cache=False)
    assert unsupported_reasons(g) == []
    with torch.no_grad():
        ref = model(x)
        out = simulate(g, g.params_to_edges(model), x)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    return float((out - ref).norm() / ref.norm())


def _ids(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


class Embed(nn.Module):
    """Token embedding, a positional table, LayerNorm, a GELU MLP and a Linear head."""

    def __init__(self, pos="table", functional=False, tied=False, max_len=9):
        super().__init__()
        self.tok = nn.Embedding(V, 8, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(max_len, 8)) if pos in ("table", "slice") else None
        self.pos_emb = nn.Embedding(max_len, 8) if pos in ("embedding", "embedding_row") else None
        self.mode, self.functional = pos, functional
        self.ln = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, V, bias=not tied)
        if tied:
            self.head.weight = self.tok.weight

    def forward(self, ids):
        T = ids.shape[1]
        h = F.embedding(ids, self.tok.weight) if self.functional else self.tok(ids)
        if self.mode == "table":
            h = h + self.pos
        elif self.mode == "slice":
            h = h + self.pos[:T]
        elif self.mode == "embedding":
            h = h + self.pos_emb(torch.arange(T))
        elif self.mode == "embedding_row":
            h = h + self.pos_emb(torch.arange(T).unsqueeze(0))
        h = h + self.mlp(self.ln(h))
        return self.head(h)


@pytest.mark.parametrize("kw", [{}, {"pos": "slice"}, {"pos": "embedding"}, {"pos": "embedding_row"},
                                {"pos": None, "functional": True}],
                         ids=["table", "slice", "pos_embedding", "pos_embedding_row", "functional"])
def test_embedding_models_are_reproduced(kw):
    torch.manual_seed(0)
    T = 9 if kw.get("pos", "table") == "table" else 6
    x = _ids(5, T)
    x[0, :3] = 0  # the padding row is an ordinary row in the forward pass
    assert _err(Embed(**kw), x) < 1e-5


def test_tied_head_reads_the_embedding_weight():
    """head.weight = tok.weight: one parameter, its edges are the EMBEDDING ones, and the head
    replays from those values (changing them changes both uses, as in the model)."""
    torch.manual_seed(1)
    model = Embed(pos="slice", tied=True).eval()
    x = _ids(4, 6, seed=1)
    g = to_graph(model, x[:2], cache=False)
    assert "head.weight" not in g.param_names and "tok.weight" in g.param_names
    head = next(r for r in g.layers if r["name"] == "head")
    assert [u["param"] for u in head["op"]["tied"]] == ["tok.weight"] and not head["op"]["tied"][0]["transposed"]
    assert _err(model, x) < 1e-5
    # other values: a model with a different tied weight gives simulate's answer for those values
    other = Embed(pos="slice", tied=True).eval()
    values = g.params_to_edges(other)
    with torch.no_grad():
        out, ref, mine = simulate(g, values, x), other(x), model(x)
    assert float((out - ref).norm() / ref.norm()) < 1e-5
    assert float((out - mine).norm() / mine.norm()) > 1e-2


class TransposedTie(nn.Module):
    """A head tied as `h @ tok.weight.t()` (the matmul form of a tied head)."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(V, 6)
        self.w = nn.Linear(6, 6)

    def forward(self, ids):
        return torch.tanh(self.w(self.tok(ids))) @ self.tok.weight.t()


class SoftEmbed(nn.Module):
    """The tied weight read transposed: `f(h) @ tok.weight` mixes the embedding rows ([.., V] @ [V, D])."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(V, 6)
        self.w = nn.Linear(6, V)
        self.out = nn.Linear(6, 3)

    def forward(self, ids):
        return self.out(torch.tanh(self.w(self.tok(ids))) @ self.tok.weight)


@pytest.mark.parametrize("model,transposed", [(TransposedTie(), False), (SoftEmbed(), True)],
                         ids=["head_matmul", "soft_embedding"])
def test_tied_weight_read_by_a_matmul_is_reproduced(model, transposed):
    torch.manual_seed(2)
    x = _ids(3, 5, seed=2)
    g = to_graph(model, x[:2], cache=False)
    assert [u["transposed"] for r in g.layers for u in (r.get("op") or {}).get("tied", [])] == [transposed]
    assert _err(model, x) < 1e-5


@pytest.mark.parametrize("mode,pad", [("sum", None), ("mean", None), ("mean", 0), ("max", 0), ("sum", 2)])
def test_embedding_bag_is_reproduced(mode, pad):
    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = nn.EmbeddingBag(V, 8, mode=mode, padding_idx=pad)
            self.out = nn.Sequential(nn.ReLU(), nn.Linear(8, 3))

        def forward(self, ids):
            return self.out(self.bag(ids))

    torch.manual_seed(3)
    x = _ids(6, 5, seed=3)
    x[0, :2], x[1, 1:] = 0, 2
    if pad is not None:
        x[2, :] = pad  # an empty bag
    assert _err(Bag(), x) < 1e-5


@pytest.mark.parametrize("tie", [False, True])
def test_zoo_tiny_lm_is_reproduced(tie):
    """Token embedding + `pos[:T]` + pre-norm nn.TransformerEncoderLayer blocks + LayerNorm + head."""
    torch.manual_seed(4)
    model = TinyLM(tie=tie)
    assert _err(model, torch.randint(0, 17, (4, 8), generator=torch.Generator().manual_seed(4))) < 1e-5


class CausalLM(nn.Module):
    """A GPT-style LM: token + positional embedding, pre-norm blocks of causal sdpa (fused qkv split
    into heads) and a GELU MLP, final LayerNorm, head tied to the token embedding."""

    def __init__(self, dim=16, heads=2, depth=2, max_len=10, sdpa=True):
        super().__init__()
        self.tok = nn.Embedding(V, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.5)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "ln1": nn.LayerNorm(dim), "qkv": nn.Linear(dim, 3 * dim), "proj": nn.Linear(dim, dim),
            "ln2": nn.LayerNorm(dim), "fc": nn.Linear(dim, 4 * dim), "out": nn.Linear(4 * dim, dim)})
            for _ in range(depth))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, V, bias=False)
        self.head.weight = self.tok.weight
        self.heads, self.sdpa = heads, sdpa

    def forward(self, ids):
        B, T = ids.shape
        x = self.tok(ids) + self.pos[:T]
        H = self.heads
        for b in self.blocks:
            q, k, v = b["qkv"](b["ln1"](x)).reshape(B, T, 3, H, -1).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + b["proj"](o.transpose(1, 2).reshape(B, T, -1))
            x = x + b["out"](F.gelu(b["fc"](b["ln2"](x))))
        return self.head(self.ln(x))


def test_causal_lm_is_reproduced_and_causal():
    torch.manual_seed(5)
    model = CausalLM().eval()
    x = _ids(4, 7, seed=5)
    assert _err(model, x) < 1e-5
    g = to_graph(model, x[:2], cache=False)
    values = g.params_to_edges(model)
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % V  # a different last token: earlier positions' logits are unchanged
    with torch.no_grad():
        a, b = simulate(g, values, x), simulate(g, values, y)
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)
    assert not torch.allclose(a[:, -1], b[:, -1], atol=1e-3)


def test_simulate_of_token_ids_needs_integers():
    model = Embed(pos="slice").eval()
    g = to_graph(model, _ids(2, 6), cache=False)
    with pytest.raises(TypeError, match="token ids"):
        simulate(g, g.params_to_edges(model), _ids(2, 6).float())


# ---- refusals --------------------------------------------------------------------------------------

class Shifted(nn.Module):
    """Ids computed in the model (`ids + 1`): not the input simulate is given."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(V + 1, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, ids):
        return self.out(self.tok(ids + 1))


class TiedSlice(nn.Module):
    """The tied weight read again through a slice: a layout the tied-use record does not describe."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(V, 4)

    def forward(self, ids):
        return F.linear(self.tok(ids), self.tok.weight[:5])


class CausalEncoder(nn.Module):
    """nn.TransformerEncoderLayer made causal by a mask: masks are not recorded."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(V, 8)
        self.block = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, V)

    def forward(self, ids):
        T = ids.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(T)
        return self.head(self.block(self.tok(ids), src_mask=mask, is_causal=True))


class Bagged(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(V, 4, mode="sum")

    def forward(self, ids):
        return self.bag(ids.reshape(-1), torch.arange(0, ids.numel(), 3))


@pytest.mark.parametrize("model,why", [
    (Shifted(), "embedding of ids computed in the model"),
    (TiedSlice(), "reuses the tied parameter 'tok.weight'"),
    (CausalEncoder(), "mask"),
    (nn.Embedding(V, 4, max_norm=1.0), "max_norm"),
    (Bagged(), "offsets"),
], ids=["computed_ids", "tied_slice", "masked_encoder", "max_norm", "bag_offsets"])
def test_unsupported_embedding_uses_are_refused_by_name(model, why):
    assert why in refusal_reasons(model, _ids(2, 6, seed=6))
