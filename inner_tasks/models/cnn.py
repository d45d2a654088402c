"""Plain and residual CNNs, 2-D (images) and 1-D (sequences), with a global-average-pool head."""

from __future__ import annotations

from torch import Tensor, nn

from .layers import make_activation, make_conv_norm


def _conv(dim: int, cin: int, cout: int, k: int, stride: int = 1, bias: bool = True) -> nn.Module:
    cls = nn.Conv2d if dim == 2 else nn.Conv1d
    return cls(cin, cout, k, stride=stride, padding=k // 2, bias=bias)


class ResidualConvBlock(nn.Module):
    """x -> act(x + norm(conv(act(norm(conv(x)))))): channel count and resolution preserved."""

    def __init__(self, dim: int, channels: int, k: int, norm: str, activation: str, groups: int) -> None:
        super().__init__()
        self.conv1 = _conv(dim, channels, channels, k, bias=norm == "none")
        self.norm1 = make_conv_norm(norm, channels, dim, groups)
        self.act1 = make_activation(activation)
        self.conv2 = _conv(dim, channels, channels, k, bias=norm == "none")
        self.norm2 = make_conv_norm(norm, channels, dim, groups)
        self.act2 = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(x + h)


class ConvNet(nn.Module):
    """Stages of conv -> norm -> act (each optionally followed by a residual block), 2x pooling
    between stages, then global average pooling and a Linear classifier."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: tuple[int, ...] = (16, 32),
        kernel_sizes: tuple[int, ...] = (3,),
        dim: int = 2,
        norm: str = "none",
        activation: str = "relu",
        residual: bool = False,
        pool: str = "max",
        groups: int = 4,
    ) -> None:
        super().__init__()
        if dim not in (1, 2):
            raise ValueError(f"ConvNet dim must be 1 or 2, got {dim}")
        if len(kernel_sizes) not in (1, len(channels)):
            raise ValueError(f"kernel_sizes has {len(kernel_sizes)} entries; give 1 or one per stage ({len(channels)})")
        if pool not in ("max", "avg", "none"):
            raise ValueError(f"pool must be 'max', 'avg' or 'none', got {pool!r}")
        ks = kernel_sizes * len(channels) if len(kernel_sizes) == 1 else kernel_sizes
        pool_cls = {"max": (nn.MaxPool1d, nn.MaxPool2d), "avg": (nn.AvgPool1d, nn.AvgPool2d)}.get(pool)
        layers: list[nn.Module] = []
        prev = in_channels
        for i, (c, k) in enumerate(zip(channels, ks)):
            layers += [_conv(dim, prev, c, k, bias=norm == "none"), make_conv_norm(norm, c, dim, groups), make_activation(activation)]
            if residual:
                layers.append(ResidualConvBlock(dim, c, k, norm, activation, groups))
            if pool_cls is not None and i < len(channels) - 1:
                layers.append(pool_cls[dim - 1](2))
            prev = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if dim == 2 else nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(prev, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))
