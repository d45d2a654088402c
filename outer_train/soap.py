"""SOAP as a tuned baseline: Adam run in the eigenbasis of Shampoo's preconditioner.

The step is `metaopt.optim.eigenbasis.soap_step` (the one ``GMNOptimizer(model, soap_switch=True)`` switches
to); this is its ``torch.optim.Optimizer`` with the authors' defaults (Vyas et al., "SOAP: Improving and
Stabilizing Shampoo using Adam", ICLR 2025): betas (0.95, 0.95), the statistics averaged with the second beta,
bases refreshed every 10 steps, sides over 10,000 not rotated (``sides``: both, or one, `SoapHyper`'s;
``block``: a side longer than that cut into diagonal blocks of ``block / 2`` to ``block``);
no weight decay, as the other tuned baselines.
Every parameter of >= 2 dimensions is preconditioned (convolution filters as ``out x (in * kernel)``, as Muon's,
``outer_train.muon``), vectors get Adam. The step's products run with denormals flushed to zero
(`metaopt.optim.eigenbasis.flushing_denormals`), as Muon's iteration does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaopt.optim.eigenbasis import BASIS_KEYS, MAX_DIM, PRECONDITION_EVERY, SoapHyper, as_matrix, flushing_denormals, soap_step

__all__ = ["SOAP", "MAX_DIM", "PRECONDITION_EVERY"]


class SOAP(torch.optim.Optimizer):
    """``SOAP(params, lr=3e-3)``: Adam in Shampoo's eigenbasis on parameters of >= 2 dimensions, Adam on the rest.
    State per parameter: ``step``, the moments (a matrix's as ``out x rest``, in its basis) and a matrix's
    statistics and bases (``left`` / ``q_left``, ``right`` / ``q_right``), plain tensors."""

    def __init__(self, params, lr: float = 3e-3, betas: tuple[float, float] = (0.95, 0.95),  # noqa: ANN001
                 eps: float = 1e-8, shampoo_beta: float | None = None,
                 precondition_every: int = PRECONDITION_EVERY, max_dim: int = MAX_DIM, sides: str = "both",
                 block: int | None = None) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps,
                    "shampoo_beta": betas[1] if shampoo_beta is None else shampoo_beta,
                    "precondition_every": precondition_every, "max_dim": max_dim, "sides": sides, "block": block}
        self._hyper({**defaults, "shampoo_beta": shampoo_beta}).check("SOAP")
        super().__init__(params, defaults)

    @staticmethod
    def _hyper(group: dict) -> SoapHyper:
        """A param group's SOAP step hyperparameters (no weight decay; groups saved before ``sides`` / ``block``
        existed run both sides whole)."""
        return SoapHyper(group["lr"], tuple(group["betas"]), group["eps"], 0.0, group["shampoo_beta"],
                         group["precondition_every"], group["max_dim"], sides=group.get("sides", "both"),
                         block=group.get("block"))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch.optim's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with flushing_denormals():
            for group in self.param_groups:
                h = self._hyper(group)
                by_step: dict[int, list[Tensor]] = {}  # tensors at the same step share one soap_step
                for p in group["params"]:
                    if p.grad is not None:
                        by_step.setdefault(self._count_step(p), []).append(p)
                for step, params in by_step.items():
                    states = [self.state[p] for p in params]
                    bases = [{k: st[k] for k in BASIS_KEYS if k in st} if p.ndim >= 2 else None
                             for p, st in zip(params, states)]
                    soap_step(params, [p.grad for p in params], [st["exp_avg"] for st in states],
                              [st["exp_avg_sq"] for st in states], bases, step, h)
                    for st, basis in zip(states, bases):
                        if basis is not None:
                            st.update(basis)  # the first step's statistics and bases, a refresh's new bases
        return loss

    def _count_step(self, p: Tensor) -> int:
        """This step's number for ``p`` (its state started on its first step)."""
        state = self.state[p]
        if not state:
            shape = as_matrix(p).shape if p.ndim >= 2 else p.shape
            state.update(step=0, exp_avg=p.new_zeros(shape), exp_avg_sq=p.new_zeros(shape))
        state["step"] += 1
        return state["step"]
