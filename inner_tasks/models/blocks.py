"""Pre-norm Transformer block shared by the ViT and the language model."""

from __future__ import annotations

from torch import Tensor, nn

from .layers import make_activation


class PreNormBlock(nn.Module):
    """x + MHA(LN(x)), then x + MLP(LN(x)): residual adds are explicit for the graph converter."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, activation: str = "gelu") -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), make_activation(activation), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=attn_mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))
