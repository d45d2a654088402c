"""A small decoder-only Transformer language model (GPT-style, pre-norm, learned positions)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import PreNormBlock


class TransformerLM(nn.Module):
    """Token embedding + learned positional table, causal pre-norm blocks, final LayerNorm, Linear head.

    Inputs are int64 token ids [B, T] with T <= context; outputs are logits [B, T, vocab_size].
    """

    def __init__(
        self,
        vocab_size: int = 256,
        context: int = 64,
        dim: int = 32,
        depth: int = 2,
        heads: int = 2,
        mlp_ratio: int = 4,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        self.tok_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(context, dim))
        self.blocks = nn.ModuleList(PreNormBlock(dim, heads, mlp_ratio, activation) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.size(1)
        h = self.tok_embed(idx) + self.pos_embed[:t]
        # True above the diagonal = "may not attend" (future positions). Built per call rather than
        # stored as a buffer, so fx tracing stays symbolic in t and the model has no buffers.
        mask = idx.new_ones((t, t), dtype=torch.bool).triu(1)
        for block in self.blocks:
            h = block(h, mask)
        return self.head(self.norm(h))
