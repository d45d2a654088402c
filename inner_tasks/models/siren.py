"""SIREN (Sitzmann et al. 2020): an MLP with sin(w0 x) activations for implicit neural representations."""

from __future__ import annotations

from torch import Tensor, nn

from .layers import Sine, fan_in_uniform_, siren_bound


class SIREN(nn.Module):
    """coords [..., in_features] -> values [..., out_features]; Linear + Sine layers, Linear output.

    Init follows the paper: first layer U(-1/n, 1/n), later layers U(-sqrt(6/n)/w0, sqrt(6/n)/w0).
    """

    def __init__(
        self, in_features: int = 2, out_features: int = 1, hidden: tuple[int, ...] = (32, 32), w0: float = 30.0, w0_first: float = 30.0
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("SIREN needs at least one hidden layer")
        layers: list[nn.Module] = []
        prev = in_features
        for i, width in enumerate(hidden):
            lin = nn.Linear(prev, width)
            fan_in_uniform_(lin.weight, siren_bound(prev, w0, first=i == 0))
            layers += [lin, Sine(w0_first if i == 0 else w0)]
            prev = width
        out = nn.Linear(prev, out_features)
        fan_in_uniform_(out.weight, siren_bound(prev, w0, first=False))
        layers.append(out)
        self.net = nn.Sequential(*layers)

    def forward(self, coords: Tensor) -> Tensor:
        return self.net(coords)
