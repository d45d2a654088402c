"""Inputs of an update rule: per-edge, per-node and per-graph features in flat edge order.

Everything here is vectorised over the flat parameter vector (edge ``k`` is element ``k`` of
``torch.cat([p.flatten() for p in model.parameters()])``): per-tensor reductions are segment
reductions over the tensors' lengths and per-node reductions are ``index_add_`` over the graph's
``edge_index``. Nothing loops over tensors, edges or neurons in Python.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

# Bump when the meaning or order of any feature changes: checkpoints record it, and a rule
# trained on another feature version is refused instead of silently reading the wrong inputs.
# Version 2 (metaopt 0.2): features of the amortised rule (no extra momenta; the current lr scale).
FEATURE_VERSION = 2

# Per-tensor normalisation divides by sqrt(mean square + _TINY): tiny so the rule is
# scale-robust over the whole float32 range, nonzero so an all-zero tensor stays zero.
_TINY = 1e-30
# The relative-lr feature measures weights no smaller than this (zero-initialised biases).
RELATIVE_LR_FLOOR = 1e-3


@dataclass(frozen=True)
class FeatureConfig:
    """Which features an update rule reads; stored in rule checkpoints.

    time_scales: T in the per-graph features ``tanh(step / T)``.
    max_step: if > 0, those features read ``min(step, max_step)``: a rule meta-trained on
        trajectories of at most ``max_step`` steps then never sees time features outside its range.
    relative_lr: add the edge feature ``log10_lr_over_param_rms``: per tensor, how far one Adam
        step at the set lr moves the weights relative to their size,
        ``(log10(lr / max(rms(p), RELATIVE_LR_FLOOR)) + 2) / 2`` clamped to +-3. Every other feature
        is scale-free, so without it a rule cannot tell a lr 100x too large from a right one.
    horizon: add the graph features ``training_fraction`` (``min(step / total_steps, 1)``) and
        ``horizon_known`` (1, or 0 with both at 0 when the total is not given): VeLO's input, so a
        rule can set its step by how much of the training budget is left (decay towards the end).
    snr: add the edge features ``adam_ratio`` (Adam's bias-corrected ``m / sqrt(v)``, clamped to
        +-clip) and ``adam_ratio_tensor_rms`` (its rms over the parameter tensor), left unnormalised:
        the signal-to-noise ratio of the gradient, near 1 while gradients agree from step to step
        (the step could be larger), near sqrt((1 - beta1) / (1 + beta1)) (0.23) for gradients that are
        noise around a minimum and below it when the step overshoots and they flip sign. Every other
        edge feature is divided by its per-tensor rms, which removes exactly this level.
    clip: the clipped-gradient feature is the per-tensor-normalised gradient clamped to +-clip.
    eps: added to the rms in the ``momentum / rms`` and ``grad / rms`` features.
    """

    time_scales: tuple[float, ...] = (10.0, 100.0, 1000.0, 10000.0)
    clip: float = 3.0
    eps: float = 1e-8
    max_step: int = 0
    relative_lr: bool = False
    horizon: bool = False
    snr: bool = False
    version: int = FEATURE_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "time_scales", tuple(float(t) for t in self.time_scales))
        if any(t <= 0 for t in self.time_scales):
            raise ValueError(f"FeatureConfig: time scales must be > 0, got {self.time_scales}.")
        if self.clip <= 0 or self.eps <= 0:
            raise ValueError(f"FeatureConfig: clip and eps must be > 0, got {self.clip}, {self.eps}.")

    # ---- names and sizes (the checkpoint records the names, so order is part of the format) --
    def edge_names(self) -> list[str]:
        return [
            "grad",
            "grad_clipped",
            "param",
            "adam_momentum",
            "second_moment_rms",
            "adam_direction",
            "grad_over_rms",
            "log_lr_scale",
        ] + (["log10_lr_over_param_rms"] if self.relative_lr else []) + (
            ["adam_ratio", "adam_ratio_tensor_rms"] if self.snr else []
        )

    def node_names(self) -> list[str]:
        return ["second_moment_rms_in", "second_moment_rms_out"]

    def graph_names(self) -> list[str]:
        return [f"tanh_step_over_{t:g}" for t in self.time_scales] + (
            ["training_fraction", "horizon_known"] if self.horizon else []
        )

    @property
    def edge_dim(self) -> int:
        return len(self.edge_names())

    @property
    def node_dim(self) -> int:
        return len(self.node_names())

    @property
    def graph_dim(self) -> int:
        return len(self.graph_names())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["time_scales"] = list(self.time_scales)
        out["names"] = {"edge": self.edge_names(), "node": self.node_names(), "graph": self.graph_names()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureConfig":
        keys = {"time_scales", "clip", "eps", "max_step", "relative_lr", "horizon", "snr", "version"}
        unknown = set(data) - keys - {"names"}
        if unknown:
            raise ValueError(f"FeatureConfig: unknown keys {sorted(unknown)} (known: {sorted(keys)}).")
        return cls(**{k: data[k] for k in keys if k in data})


@dataclass
class GraphIndex:
    """Structure-derived tensors the features need, built once per graph and device."""

    src: Tensor  # int32 [E] source node of each parameter edge
    dst: Tensor  # int32 [E] destination node of each parameter edge
    numels: Tensor  # int64 [P] number of edges of each parameter tensor (segment lengths)
    offsets: list[int]  # start edge of each tensor, plus E at the end
    inv_in_degree: Tensor  # float32 [N], 1 / incoming parameter edges (0 where none)
    inv_out_degree: Tensor  # float32 [N], 1 / outgoing parameter edges (0 where none)
    num_nodes: int
    num_edges: int

    @classmethod
    def from_graph(cls, graph: Any, device: torch.device | str) -> "GraphIndex":
        """Cache the edge endpoints, tensor lengths and inverse degrees of ``graph`` on ``device``."""
        ei = graph.edge_index.to(device)
        n = int(graph.num_nodes)
        e = int(ei.shape[1])
        ones = torch.ones(e, device=device)
        indeg = torch.zeros(n, device=device).index_add_(0, ei[1], ones)
        outdeg = torch.zeros(n, device=device).index_add_(0, ei[0], ones)
        sizes = [math.prod(s) for s in graph.param_shapes]
        if sum(sizes) != e:
            raise ValueError(
                f"GraphIndex: the graph's parameter shapes hold {sum(sizes)} scalars but it has "
                f"{e} parameter edges; the graph breaks the one-edge-per-parameter contract."
            )
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        return cls(
            src=ei[0],
            dst=ei[1],
            numels=torch.tensor(sizes, dtype=torch.long, device=device),
            offsets=offsets,
            inv_in_degree=torch.where(indeg > 0, 1.0 / indeg.clamp_min(1.0), torch.zeros_like(indeg)),
            inv_out_degree=torch.where(outdeg > 0, 1.0 / outdeg.clamp_min(1.0), torch.zeros_like(outdeg)),
            num_nodes=n,
            num_edges=e,
        )


@dataclass
class Features:
    """Rule inputs: ``edge`` [E, F_e], ``node`` [N, F_n], ``graph`` [1, F_g] (one graph).

    ``edge`` is a transposed view of a contiguous [F_e, E] buffer (each feature a contiguous
    row, which makes building and normalising it single streaming passes).
    """

    edge: Tensor
    node: Tensor
    graph: Tensor


def per_tensor_rms(rows: Tensor, index: GraphIndex, method: str = "auto") -> Tensor:
    """RMS of every row of ``rows`` [F, E] over each parameter tensor's edges: -> [F, P].

    method "loop" reduces each tensor's contiguous [F, n] block (P kernels, no temporaries);
    "segment" is one segment reduction. On CPU the loop is 6-10x faster (measured at 2M-10M
    edges); "auto" takes the loop on CPU and the segment reduction on GPU (one launch).
    """
    if method == "auto":
        method = "segment" if rows.is_cuda else "loop"
    numels = index.numels.to(rows.dtype)
    if method == "loop":
        o = index.offsets
        norms = torch.stack(
            [torch.linalg.vector_norm(rows[:, a:b], dim=1) for a, b in zip(o[:-1], o[1:])], dim=1
        )
        return norms / numels.clamp_min(1).sqrt()
    if method != "segment":
        raise ValueError(f"per_tensor_rms: method must be 'auto', 'loop' or 'segment', got {method!r}.")
    lengths = index.numels.expand(rows.shape[0], -1).contiguous()
    sq = torch.segment_reduce(rows * rows, "sum", lengths=lengths, axis=1)
    return safe_sqrt(sq / numels.clamp_min(1))


def compute_features(
    index: GraphIndex,
    grad: Tensor,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    log_lr_scale: Tensor,
    step: int,
    config: FeatureConfig,
    lr: float | Tensor | None = None,
    total_steps: int = 0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> Features:
    """The rule's inputs from flat edge-ordered values (all ``[E]``), differentiable in every input.

    The rule runs once every ``refresh_every`` steps, so this is off the hot path and written once,
    out of place, for the optimizer and meta-training alike. Every edge row except the lr scale
    (already bounded) is divided by its RMS within each parameter tensor, so the rule sees the same
    inputs whatever the gradient or weight scale of a layer (bias correction cancels too); the
    clipped row is the normalised gradient clamped; non-finite values become 0 (they would spread
    through message passing). Node features are the factored (Adafactor-style) second moments: the
    rms of ``v`` over each node's incoming and outgoing parameter edges, relative to the network's.
    ``lr`` (a float, or one value per parameter tensor [P]) is read by the ``relative_lr`` feature,
    ``total_steps`` (0 = not known) by the ``horizon`` features, Adam's ``betas`` (for the bias
    corrections at ``step``) by the ``snr`` features.
    """
    e = index.num_edges
    # m / sqrt(v) of the stored (uncorrected) moments times this is Adam's bias-corrected ratio.
    correction = snr_correction(step, betas) if config.snr else 1.0
    if config.relative_lr and lr is None:
        raise ValueError("compute_features: FeatureConfig(relative_lr=True) needs the learning rate (lr=).")
    if any(t.shape != (e,) for t in (grad, param, exp_avg, exp_avg_sq, log_lr_scale)):
        raise ValueError(
            f"compute_features: expected flat [{e}] values, got grad {tuple(grad.shape)}, param "
            f"{tuple(param.shape)}, exp_avg {tuple(exp_avg.shape)}, exp_avg_sq {tuple(exp_avg_sq.shape)}, "
            f"log_lr_scale {tuple(log_lr_scale.shape)}."
        )
    if torch.is_grad_enabled():  # meta-training: out of place, differentiable
        rms = safe_sqrt(exp_avg_sq)
        denom = rms + config.eps
        raw = torch.stack([grad, param, exp_avg, rms, exp_avg / denom, grad / denom])
        sq = per_tensor_rms(raw, index).square()  # [F, P]
        # A row that is 0 over a whole tensor (a parameter that never gets a gradient): rsqrt's gradient
        # at _TINY overflows float32 (inf * 0 = NaN in second-order meta-gradients), so none flows there.
        zero = sq == 0
        scale = torch.where(zero, torch.rsqrt(sq.detach() + _TINY),
                            torch.rsqrt(torch.where(zero, torch.ones_like(sq), sq) + _TINY))
        normed = raw * torch.repeat_interleave(scale, index.numels, dim=1, output_size=e)
        clipped = normed[0].clamp(-config.clip, config.clip)
        extra = [log_lr_scale[None]]
        if config.relative_lr:
            rel = relative_lr(lr, sq[1].detach().sqrt(), index)
            extra.append(torch.repeat_interleave(rel, index.numels, output_size=e)[None])
        if config.snr:
            extra.append((raw[4] * correction).clamp(-config.clip, config.clip)[None])
            tensor_rms = safe_sqrt(sq[4]) * correction
            extra.append(torch.repeat_interleave(tensor_rms, index.numels, output_size=e)[None])
        rows = torch.cat([normed[:1], clipped[None], normed[1:], *extra])
        rows = torch.nan_to_num(rows, nan=0.0, posinf=0.0, neginf=0.0)
    else:  # the optimizer's refresh: the same values written into one buffer, no temporaries
        rows = torch.empty(config.edge_dim, e, dtype=grad.dtype, device=grad.device)
        rows[0].copy_(grad)
        rows[1].zero_()
        rows[2].copy_(param)
        rows[3].copy_(exp_avg)
        torch.sqrt(exp_avg_sq, out=rows[4])
        denom = rows[4] + config.eps
        torch.div(exp_avg, denom, out=rows[5])
        torch.div(grad, denom, out=rows[6])
        del denom
        rms = per_tensor_rms(rows[:7], index)  # [7, P]; row 1 is 0 here
        scale = torch.rsqrt(rms.square() + _TINY)
        rel = relative_lr(lr, rms[2], index) if config.relative_lr else None
        snr_row = 9 if config.relative_lr else 8
        if config.snr:  # from the unnormalised m / (sqrt(v) + eps), before row 5 is scaled
            torch.mul(rows[5], correction, out=rows[snr_row])
            rows[snr_row].clamp_(-config.clip, config.clip)
            tensor_rms = rms[5] * correction
        o = index.offsets
        for t, (a, b) in enumerate(zip(o[:-1], o[1:])):
            rows[:7, a:b].mul_(scale[:, t : t + 1])
            if rel is not None:
                rows[8, a:b].fill_(rel[t])
            if config.snr:
                rows[snr_row + 1, a:b].fill_(tensor_rms[t])
        torch.clamp(rows[0], -config.clip, config.clip, out=rows[1])
        rows[7].copy_(log_lr_scale)
        torch.nan_to_num_(rows, nan=0.0, posinf=0.0, neginf=0.0)
    global_rms = safe_sqrt(exp_avg_sq.mean()) + _TINY
    zeros = exp_avg_sq.new_zeros(index.num_nodes)
    v_in = zeros.index_add(0, index.dst, exp_avg_sq) * index.inv_in_degree
    v_out = zeros.index_add(0, index.src, exp_avg_sq) * index.inv_out_degree
    node = torch.stack([safe_sqrt(v_in) / global_rms, safe_sqrt(v_out) / global_rms], dim=1)
    node = torch.nan_to_num(node, nan=0.0, posinf=0.0, neginf=0.0)
    return Features(edge=rows.t(), node=node, graph=time_features(step, config, grad.device, total_steps))


def snr_correction(step: int, betas: tuple[float, float]) -> float:
    """``sqrt(1 - beta2^step) / (1 - beta1^step)``: turns ``m / sqrt(v)`` of Adam's stored moments
    into the bias-corrected ``m_hat / sqrt(v_hat)`` (1 before the first step)."""
    beta1, beta2 = (float(b) for b in betas)
    if step < 1:
        return 1.0
    return math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)


def relative_lr(lr: float | Tensor, param_rms: Tensor, index: GraphIndex) -> Tensor:
    """The ``relative_lr`` feature per parameter tensor [P] from the lr and the weights' rms [P]."""
    lr_t = torch.as_tensor(lr, dtype=param_rms.dtype, device=param_rms.device).expand(param_rms.shape[0])
    if not bool(torch.all(lr_t > 0)):
        raise ValueError(f"compute_features: the relative_lr feature needs lr > 0, got {lr}.")
    ratio = lr_t / param_rms.clamp_min(RELATIVE_LR_FLOOR)
    return ((torch.log10(ratio) + 2.0) / 2.0).clamp(-3.0, 3.0)


def safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x >= 0`` whose gradient is 0 (not inf * 0 = NaN) where ``x == 0``.

    Second-order meta-gradients differentiate through Adam's second moment, which is exactly 0 for
    parameters whose gradient has always been 0 (dead units, padding): plain sqrt gives NaN there.
    Values are bit-identical to ``torch.sqrt``.
    """
    if not x.requires_grad:
        return x.sqrt()
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def time_features(step: int, config: FeatureConfig, device: torch.device | str, total_steps: int = 0) -> Tensor:
    """Per-graph features ``[1, graph_dim]``: ``tanh(step / T)`` (step capped at ``max_step``), then
    with ``config.horizon`` the fraction of ``total_steps`` done (capped at 1) and whether it is known."""
    if total_steps < 0:
        raise ValueError(f"time_features: total_steps must be >= 0 (0 = not known), got {total_steps}.")
    fraction = min(step / total_steps, 1.0) if total_steps > 0 else 0.0
    if config.max_step > 0:
        step = min(step, config.max_step)
    scales = torch.tensor(config.time_scales, dtype=torch.float32, device=device)
    values = torch.tanh(float(step) / scales)
    if config.horizon:
        values = torch.cat([values, torch.tensor([fraction, float(total_steps > 0)], device=device)])
    return values.unsqueeze(0)
