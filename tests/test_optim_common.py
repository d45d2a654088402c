"""Shared helpers for the optimizer tests: small models, data and a stand-in rule network.

No tests live here; pytest imports it as a module (tests/ is on sys.path in prepend mode).
"""

from __future__ import annotations

import torch
from torch import nn

from metaopt.graph import to_graph  # noqa: F401  (re-exported for the tests)


# ---- small models -----------------------------------------------------------------------
def mlp(din: int = 64, hidden: int = 32, dout: int = 10) -> nn.Module:
    return nn.Sequential(nn.Linear(din, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dout))


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))


class ResCNN(nn.Module):
    """A small residual CNN with BatchNorm for 8x8 single-channel images."""

    def __init__(self, c: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.block = ResBlock(c)
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))
        h = self.block(h)
        return self.head(h.mean(dim=(2, 3)))


class TinyLM(nn.Module):
    """Token + positional embedding, one pre-norm Transformer encoder layer (causal), LM head."""

    def __init__(self, vocab: int = 16, d: int = 32, heads: int = 4, seq: int = 12) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.02)
        self.layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # idx: [batch, seq] (fixed length: fx-traceable)
        h = self.tok(idx) + self.pos
        h = self.layer(h, src_mask=self.mask, is_causal=True)
        return self.head(self.norm(h))

    def example_inputs(self) -> torch.Tensor:
        return torch.zeros(2, self.pos.shape[0], dtype=torch.long)


# ---- data -------------------------------------------------------------------------------
def digits(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's bundled 8x8 digits (no download), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:n], dtype=torch.float32) / 16.0
    y = torch.tensor(d.target[:n], dtype=torch.long)
    return x, y


def lm_batch(batch: int = 16, seq: int = 12, vocab: int = 16, seed: int = 0) -> torch.Tensor:
    """Sequences of a learnable pattern: each starts at a random token and counts up mod vocab."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (batch, 1), generator=g)
    return (start + torch.arange(seq + 1)) % vocab


def lm_loss(model: nn.Module, seqs: torch.Tensor) -> torch.Tensor:
    logits = model(seqs[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), seqs[:, 1:].reshape(-1))


class LinearRuleNet(nn.Module):
    """A stand-in rule network with the rule-network call signature: a linear map of edge,
    source-node and graph features to one output per edge ([E, 1]). Lets the lr-scale plumbing be
    tested exactly without metaopt.nn."""

    def __init__(self, edge_in: int, node_in: int, graph_in: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.we = nn.Parameter(torch.randn(edge_in, 1, generator=g) * 0.5)
        self.wn = nn.Parameter(torch.randn(node_in, 1, generator=g) * 0.5)
        self.wg = nn.Parameter(torch.randn(graph_in, 1, generator=g) * 0.5)
        self.poison: torch.Tensor | None = None  # edges whose output is made non-finite
        self.calls = 0

    def forward(self, graph, edge_values=None, node_values=None, graph_values=None):
        from types import SimpleNamespace

        self.calls += 1
        src = graph.edge_index[0].long()
        out = edge_values @ self.we + node_values[src] @ self.wn + graph_values @ self.wg
        if self.poison is not None:
            out = out.clone()
            out[self.poison, 0] = float("nan")
            out[self.poison[:1], 0] = float("inf")
        return SimpleNamespace(edge=out, node=None, graph=None)


def linear_rule(alpha: float = 0.5, seed: int = 0, refresh_every: int = 1, bound: float = 2.0):
    """An UpdateRule driven by LinearRuleNet (kind 'none' config, network swapped in)."""
    from metaopt.optim import RuleConfig, UpdateRule

    rule = UpdateRule(RuleConfig(kind="none", alpha=alpha, refresh_every=refresh_every, bound=bound))
    f = rule.features
    rule.net = LinearRuleNet(f.edge_dim, f.node_dim, f.graph_dim, seed=seed)
    return rule


def flat_params(model: nn.Module) -> torch.Tensor:
    """The model's parameters in edge order as one flat vector (detached)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
