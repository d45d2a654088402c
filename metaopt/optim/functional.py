"""A pure, differentiable form of one `GMNOptimizer` step, for meta-training.

`step_fn(rule, graph, params, grads, state, lr, ...)` returns new flat parameters and a new state
without touching its inputs, so autograd can differentiate an unroll of inner steps with respect
to the rule's parameters (truncated BPTT) and `torch.func.functional_call` can run it with
perturbed rule parameters (PES). The arithmetic mirrors `GMNOptimizer.step`'s uniform fast path
op for op (Adam's moments, the rule's extra momenta, bias corrections, decoupled weight decay,
``lr * (adam_direction + residual)``), and the features are `features.compute_features` rewritten
without ``out=``/in-place writes (which autograd cannot record), reusing its per-tensor reduction.
A test checks one functional step against one `GMNOptimizer.step`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from .features import _TINY, FeatureConfig, Features, GraphIndex, per_tensor_rms, time_features
from .rules import UpdateRule


@dataclass
class FunctionalState:
    """Optimizer state of one inner task in flat edge order (``momenta`` is [K, E]); ``step`` counts
    the steps taken (drives bias correction and the ``tanh(step / T)`` features)."""

    exp_avg: Tensor
    exp_avg_sq: Tensor
    momenta: Tensor
    step: int = 0

    @classmethod
    def zeros(cls, num_edges: int, features: FeatureConfig, device: torch.device | str = "cpu") -> "FunctionalState":
        """The state before the first step (what GMNOptimizer allocates lazily)."""
        k = len(features.momentum_decays)
        return cls(
            torch.zeros(num_edges, device=device),
            torch.zeros(num_edges, device=device),
            torch.zeros(k, num_edges, device=device),
            0,
        )

    def detach(self) -> "FunctionalState":
        """The same values cut from the autograd graph (the boundary between truncations)."""
        return replace(self, **{f.name: getattr(self, f.name).detach() for f in fields(self) if f.name != "step"})

    def tensors(self) -> dict[str, Tensor]:
        """The tensor fields by name (for checkpoints)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "step"}


def features_fn(
    index: GraphIndex,
    grad: Tensor,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    momenta: Tensor,
    step: int,
    config: FeatureConfig,
) -> Features:
    """`compute_features` without in-place writes: same values, differentiable in every input.

    Row order is ``FeatureConfig.edge_names()``; each edge row is divided by its RMS within each
    parameter tensor, the clipped row is the normalised gradient clamped, non-finite values -> 0.
    """
    e, k = index.num_edges, len(config.momentum_decays)
    if grad.shape != (e,) or param.shape != (e,) or momenta.shape != (k, e):
        raise ValueError(
            f"features_fn: expected grad/param [{e}] and momenta [{k}, {e}], got {tuple(grad.shape)}, "
            f"{tuple(param.shape)} and {tuple(momenta.shape)}."
        )
    rms = exp_avg_sq.sqrt()
    denom = rms + config.eps
    # Every row except the clipped gradient, which is derived from the normalised gradient.
    raw = torch.cat(
        [grad[None], param[None], exp_avg[None], momenta, rms[None], (exp_avg / denom)[None], (grad / denom)[None]]
    )
    scale = torch.rsqrt(per_tensor_rms(raw, index).square() + _TINY)  # [F-1, P]
    normed = raw * torch.repeat_interleave(scale, index.numels, dim=1, output_size=e)
    clipped = normed[0].clamp(-config.clip, config.clip)
    rows = torch.cat([normed[:1], clipped[None], normed[1:]])
    rows = torch.nan_to_num(rows, nan=0.0, posinf=0.0, neginf=0.0)

    global_rms = exp_avg_sq.mean().sqrt() + _TINY
    zeros = exp_avg_sq.new_zeros(index.num_nodes)
    v_in = zeros.index_add(0, index.dst, exp_avg_sq)
    v_out = zeros.index_add(0, index.src, exp_avg_sq)
    node = torch.stack(
        [(v_in * index.inv_in_degree).sqrt() / global_rms, (v_out * index.inv_out_degree).sqrt() / global_rms],
        dim=1,
    )
    node = torch.nan_to_num(node, nan=0.0, posinf=0.0, neginf=0.0)
    return Features(edge=rows.t(), node=node, graph=time_features(step, config, grad.device))


def adam_moments(
    grads: Tensor,
    state: FunctionalState,
    betas: tuple[float, float],
    decays: Sequence[float],
) -> FunctionalState:
    """Adam's moments and the rule's extra momenta after one gradient (step counter + 1)."""
    b1, b2 = betas
    m = torch.lerp(state.exp_avg, grads, 1.0 - b1)
    v = torch.addcmul(state.exp_avg_sq * b2, grads, grads, value=1.0 - b2)
    mom = torch.stack([torch.lerp(state.momenta[k], grads, 1.0 - d) for k, d in enumerate(decays)]) if decays else state.momenta
    return FunctionalState(m, v, mom, state.step + 1)


def apply_update(
    params: Tensor,
    state: FunctionalState,
    residual: Tensor | None,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    residual_scale: str = "none",
) -> Tensor:
    """``p * (1 - lr * wd) - lr * (m_hat / (sqrt(v_hat) + eps) + residual * s)`` with the state after
    the step; s = 1, or ``|m_hat| / (sqrt(v_hat) + eps)`` for ``residual_scale="adam"``."""
    b1, b2 = betas
    bc1 = 1.0 - b1**state.step
    bc2 = 1.0 - b2**state.step
    denom = state.exp_avg_sq.sqrt() / (bc2**0.5) + eps
    if weight_decay != 0.0:
        params = params * (1.0 - lr * weight_decay)
    new = torch.addcdiv(params, state.exp_avg, denom, value=-lr / bc1)
    if residual is not None:
        if residual_scale == "adam":
            residual = residual * (state.exp_avg.abs() / bc1 / denom)
        new = new + residual * -lr
    return new


def rule_inputs(
    rule: UpdateRule, index: GraphIndex, params: Tensor, grads: Tensor, state: FunctionalState
) -> Features:
    """The rule's features for a state that already includes this step's gradient."""
    return features_fn(index, grads, params, state.exp_avg, state.exp_avg_sq, state.momenta, state.step, rule.features)


def step_fn(
    rule: UpdateRule,
    graph: Any,
    params: Tensor,
    grads: Tensor,
    state: FunctionalState,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    index: GraphIndex | None = None,
    rule_params: dict[str, Tensor] | None = None,
) -> tuple[Tensor, FunctionalState]:
    """One learned-optimizer step on flat edge-ordered ``params`` / ``grads`` -> (new params, new state).

    ``graph`` is the task's `ParameterGraph` or its prepared `metaopt.nn.GraphInputs` (prepare once
    per structure for speed); ``index`` the cached `GraphIndex` (built from ``graph`` if None).
    ``rule_params`` evaluates the rule with other parameter values (functional_call), as PES does.
    Non-finite residuals become 0 (the Adam direction), as in `GMNOptimizer`.
    """
    if index is None:
        index = GraphIndex.from_graph(graph, params.device)
    new_state = adam_moments(grads, state, betas, rule.features.momentum_decays)
    residual = None
    if rule.net is not None:
        feats = rule_inputs(rule, index, params, grads, new_state)
        residual = rule_residual(rule, graph, feats, rule_params)
        residual = torch.where(torch.isfinite(residual), residual, torch.zeros_like(residual))
    update = apply_update(params, new_state, residual, lr, betas, eps, weight_decay, rule.config.residual_scale)
    return update, new_state


def rule_residual(rule: UpdateRule, graph: Any, feats: Features, rule_params: dict[str, Tensor] | None = None) -> Tensor:
    """``rule.residual(graph, feats)``, optionally with substituted parameters (torch.func.functional_call)."""
    if rule_params is None:
        return rule.residual(graph, feats).float()
    return _residual_call(rule, graph, feats, rule_params)


def _residual_call(rule: UpdateRule, graph: Any, feats: Features, rule_params: dict[str, Tensor]) -> Tensor:
    """``alpha * d * exp(beta * m)`` with ``rule_params`` substituted for the rule's own parameters."""
    d, m = torch.func.functional_call(rule, rule_params, (graph, feats))
    return (rule_params["alpha"] * d * torch.exp(rule.config.beta * m)).float()
