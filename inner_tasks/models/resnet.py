"""ResNet-style image classifiers (He et al. 2016) built from BasicBlocks; resnet18 size available."""

from __future__ import annotations

from torch import Tensor, nn

from .layers import make_activation, make_conv_norm


class BasicBlock(nn.Module):
    """Two 3x3 convs with norms; identity shortcut, or 1x1 conv + norm when shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, activation: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=norm == "none")
        self.norm1 = make_conv_norm(norm, cout, 2)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=norm == "none")
        self.norm2 = make_conv_norm(norm, cout, 2)
        self.act2 = make_activation(activation)
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=norm == "none"), make_conv_norm(norm, cout, 2)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(self.shortcut(x) + h)


class ResNet(nn.Module):
    """3x3 stem, stages of BasicBlocks (stride 2 at each stage after the first), avg pool, Linear."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        stem_channels: int = 16,
        stage_channels: tuple[int, ...] = (16, 32),
        blocks_per_stage: tuple[int, ...] = (1, 1),
        norm: str = "batch",
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if len(stage_channels) != len(blocks_per_stage):
            raise ValueError(f"stage_channels {stage_channels} and blocks_per_stage {blocks_per_stage} differ in length")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=norm == "none"),
            make_conv_norm(norm, stem_channels, 2),
            make_activation(activation),
        )
        blocks: list[nn.Module] = []
        prev = stem_channels
        for s, (c, n) in enumerate(zip(stage_channels, blocks_per_stage)):
            for b in range(n):
                blocks.append(BasicBlock(prev, c, 2 if (s > 0 and b == 0) else 1, norm, activation))
                prev = c
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(prev, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))
