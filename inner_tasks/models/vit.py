"""A small Vision Transformer: conv patch embedding, class token, learned positions, pre-norm blocks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import PreNormBlock


class ViT(nn.Module):
    """ViT classifier (Dosovitskiy et al. 2021) reading the class token after the last block."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        in_channels: int,
        num_classes: int,
        dim: int = 32,
        depth: int = 2,
        heads: int = 2,
        mlp_ratio: int = 2,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if image_size % patch_size != 0:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
        num_patches = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, num_patches + 1, dim))
        self.blocks = nn.ModuleList(PreNormBlock(dim, heads, mlp_ratio, activation) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # [B, P, dim]
        cls = self.cls_token.expand(x.size(0), -1, -1)
        h = torch.cat([cls, tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h)[:, 0])
