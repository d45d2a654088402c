"""DeepSets (Zaheer et al. 2017): rho(pool_i phi(x_i)), invariant to the order of set elements."""

from __future__ import annotations

from torch import Tensor, nn

from .layers import make_activation


def _mlp(dims: list[int], activation: str, last_act: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if last_act or i < len(dims) - 2:
            layers.append(make_activation(activation))
    return nn.Sequential(*layers)


class DeepSets(nn.Module):
    """phi: per-element MLP on [B, n, d]; pool over n (sum or mean); rho: MLP to outputs."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        phi_hidden: tuple[int, ...] = (32, 32),
        rho_hidden: tuple[int, ...] = (32,),
        pool: str = "mean",
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if pool not in ("sum", "mean"):
            raise ValueError(f"DeepSets pool must be 'sum' or 'mean', got {pool!r}")
        if not phi_hidden:
            raise ValueError("phi_hidden needs at least one width")
        self.pool = pool
        self.phi = _mlp([in_features, *phi_hidden], activation, last_act=True)
        self.rho = _mlp([phi_hidden[-1], *rho_hidden, out_features], activation, last_act=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.phi(x)
        pooled = h.sum(dim=1) if self.pool == "sum" else h.mean(dim=1)  # pool is fixed at build time
        return self.rho(pooled)
