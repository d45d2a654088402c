"""Muon as a tuned baseline: orthogonalised momentum on a network's hidden matrices, Adam on the rest.

Muon (Jordan et al., 2024; ``torch.optim.Muon`` since PyTorch 2.9) replaces a weight matrix's update by
the orthogonal factor of its Nesterov momentum, approximated by five Newton-Schulz iterations. It is
meant for hidden layers only: the first layer (which reads the data), the last (which writes the
logits), embeddings and every vector (biases, norms' gains) keep Adam, as its authors use it.
Convolution filters count as matrices of shape ``out x (in * kernel)``, as in the authors' code
(``torch.optim.Muon`` takes 2-D parameters only, so this module runs the same step itself).

The step is ``torch.optim.Muon``'s with ``adjust_lr_fn="match_rms_adamw"`` (the update scaled to
0.2 sqrt(max(rows, cols)), the RMS of a typical Adam update) and no weight decay, so one lr serves both
groups and the baseline is tuned over the same grid as Adam. The Newton-Schulz iterations run in float32
(``torch.optim.Muon`` runs them in bfloat16, a choice for GPUs; the two agree to bfloat16's precision, tested),
with denormals flushed to zero (`metaopt.optim.eigenbasis.flushing_denormals`). Stacked weights (``nn.MultiheadAttention``'s
``in_proj_weight``, a GRU's gates) are orthogonalised as one matrix, as ``torch.optim.Muon`` would.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from metaopt.optim.eigenbasis import flushing_denormals

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's (and the authors') quintic iteration
NS_STEPS = 5
NS_EPS = 1e-7
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def orthogonalise(update: Tensor, steps: int = NS_STEPS, eps: float = NS_EPS) -> Tensor:
    """Newton-Schulz approximation of the orthogonal factor ``U V^T`` of a 2-D ``update = U S V^T``
    (singular values land near 1, within about 0.5-1.5: the iteration trades exactness for speed)."""
    if update.ndim != 2:
        raise ValueError(f"orthogonalise takes a matrix, got shape {tuple(update.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = update / (update.norm() + eps)  # spectral norm <= Frobenius norm <= 1
    wide = x.size(0) <= x.size(1)
    if not wide:
        x = x.T
    with flushing_denormals():
        for _ in range(steps):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weights Muon moves: every weight of >= 2 dimensions except the first and last layer's (in
    module order among Linear and Conv layers) and embeddings'."""
    layers = [m for m in model.modules() if isinstance(m, LAYERS)]
    kept = {id(layers[0].weight), id(layers[-1].weight)} if layers else set()
    kept |= {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [p for p in model.parameters() if p.ndim >= 2 and id(p) not in kept]


class HybridMuon(torch.optim.Optimizer):
    """Muon on ``hidden_matrices(model)``, Adam (``torch.optim.Adam``, the same lr) on every other parameter.

    ``HybridMuon(model, lr=0.01)``; ``momentum`` and ``nesterov`` as ``torch.optim.Muon``'s. A model with no
    hidden matrix is trained by Adam alone.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, momentum: float = 0.95, nesterov: bool = True,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"HybridMuon takes the model (it reads which layers come first and last), got "
                            f"{type(model).__name__}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        muon = hidden_matrices(model)
        ids = {id(p) for p in muon}
        rest = [p for p in model.parameters() if id(p) not in ids]
        super().__init__([{"params": muon}], {"lr": lr, "momentum": momentum, "nesterov": nesterov})
        self.adam = torch.optim.Adam(rest, lr=lr, betas=betas, eps=eps) if rest else None

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch.optim's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                rows = update.reshape(update.shape[0], -1)
                direction = orthogonalise(rows)
                p.add_(direction.reshape(p.shape), alpha=-group["lr"] * 0.2 * math.sqrt(max(rows.shape)))
        if self.adam is not None:
            self.adam.param_groups[0]["lr"] = self.param_groups[0]["lr"]  # schedulers set it on this optimizer
            self.adam.step()
        return loss

    def state_dict(self) -> dict:
        out = super().state_dict()
        out["adam"] = None if self.adam is None else self.adam.state_dict()
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        adam = state_dict.pop("adam", None)
        if (adam is None) != (self.adam is None):
            raise ValueError("state_dict is of a HybridMuon over other parameters (its Adam group differs)")
        super().load_state_dict(state_dict)
        if self.adam is not None:
            self.adam.load_state_dict(adam)

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        if self.adam is not None:
            self.adam.zero_grad(set_to_none)
