"""Multi-layer perceptrons: Linear [-> LayerNorm] -> activation, repeated, then a Linear head."""

from __future__ import annotations

from torch import Tensor, nn

from .layers import make_activation


class MLP(nn.Module):
    """An MLP over flattened inputs; `hidden` lists the hidden widths (empty = linear model)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: tuple[int, ...] = (64,),
        activation: str = "relu",
        norm: str = "none",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if norm not in ("none", "layernorm"):
            raise ValueError(f"MLP norm must be 'none' or 'layernorm', got {norm!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for width in hidden:
            layers.append(nn.Linear(prev, width, bias=bias))
            if norm == "layernorm":
                layers.append(nn.LayerNorm(width))
            layers.append(make_activation(activation))
            prev = width
        layers.append(nn.Linear(prev, out_features, bias=bias))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
