"""The one update core: Adam with a learned per-parameter lr scale, refreshed every k steps.

Both `GMNOptimizer.step` and meta-training (``outer_train``) call these functions, as
``torch.optim.Adam.step`` calls one functional ``adam()``: what is meta-trained is what ships.

One step, for every parameter (edge) e::

    m, v   <- Adam's moments after this gradient
    s      <- exp(rule's bounded log-scale)       only on refresh steps (1, k+1, 2k+1, ...)
    p      <- p * (1 - lr * wd) - lr * s * m_hat / (sqrt(v_hat) + eps)

Schedule-free (``OptState.averaging`` set; identity rules only): ``m`` is replaced by the point ``z`` the
plain steps move and the parameters hold ``y``, between ``z`` and the running average ``x`` of the z's
(`Averaging`, `schedule_free_update`).

The rule (a GMN over the parameter graph) runs once per ``k`` steps; in between a step makes as
many passes over the parameters as Adam's (the scale divides the denominator in place of Adam's
division by the bias correction, which moves into the step size). With the untrained rule (alpha = 0) ``s`` is 1 and the
step is exactly Adam (AdamW with weight decay): the scale is then never even multiplied in.

Every function takes ``inplace``: True updates the given tensors (the optimizer, on views into
its flat buffers, with ``torch._foreach`` ops); False returns new tensors and leaves the inputs
alone, so autograd can differentiate an unroll with respect to the rule (meta-training). The
arithmetic is op for op the same in both modes and mirrors ``torch.optim.Adam(foreach=True)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from .features import Features, GraphIndex, compute_features, safe_sqrt
from .rules import UpdateRule


# With estimate_every = j > 1, the first ESTIMATE_WARMUP steps may still take an estimate each (d grows from
# D0 to its working size in the first 30-100 steps). Off by default: 100 such steps made the meta-validation
# suite faster but left 4 of 9 held-out tasks short of tuned Adam's loss at the multiplier 1, where the fast
# early growth overshoots (docs/optim_history.md, "The estimate's warm-up").
ESTIMATE_WARMUP = 0
D0 = 1e-6  # the distance estimate before the first step (Prodigy's d0): it only grows from here


@dataclass
class OptState:
    """Optimizer state of one network in flat edge order; ``step`` counts the steps taken."""

    exp_avg: Tensor  # [E] Adam's first moment
    exp_avg_sq: Tensor  # [E] Adam's second moment
    lr_scale: Tensor  # [E] the rule's per-parameter lr multiplier (1 = Adam)
    step: int = 0
    # lr-free (Prodigy's distance estimate; None otherwise): x_0, the gradient sum s, the scalars. With
    # ``stride`` k > 1 the estimate reads every k-th entry of each tensor from its first (Prodigy's
    # ``slice_p``; `sample_entries`, tensors of ``sizes``), and ``start`` / ``grad_sum`` (and
    # ``tensor_grad_sum``) hold only those, sum of ceil(n_i / k) entries; with
    # ``every`` j > 1 it is taken on each of the first ``warmup`` steps and then on every j-th step only
    # (`estimate_span`).
    start: Tensor | None = None
    grad_sum: Tensor | None = None
    distance: "DistanceEstimate | None" = None
    stride: int = 1
    every: int = 1
    # lr-free with ``per_tensor`` > 0 (`TensorDistances`): each tensor's own estimate and its gradient sum
    # (as ``grad_sum``: [E], or the sampled entries with ``stride`` > 1); None with shared sums (each tensor's
    # estimate reads the network's ``grad_sum``)
    tensor_distances: "TensorDistances | None" = None
    tensor_grad_sum: Tensor | None = None
    warmup: int = ESTIMATE_WARMUP  # with ``every`` > 1: the first steps that still take an estimate each (0 and 1: only the first)
    sizes: tuple[int, ...] = ()  # the tensors' entries in flat order, which ``stride`` samples (() = one tensor)
    scale_per_tensor: bool = False  # lr-free per tensor: the rule's scale normalised per tensor (`normalise_scale`)
    # schedule-free (`Averaging`; None: Adam's momentum): ``exp_avg`` holds the point z (it starts at the
    # parameters), the parameters hold y, and the lr-free estimate reads x_0 - z
    averaging: "Averaging | None" = None
    # lr-free with a plateau decay (`PlateauDecay`, its blocks ``plateau_block`` steps long; None: none)
    plateau: "PlateauDecay | None" = None
    plateau_block: int = 0

    def strides(self) -> tuple[int, ...]:
        """Each tensor's stride of the estimate's sample (`tensor_strides`; one tensor when ``sizes`` is ())."""
        return tensor_strides(self.sizes or (self.exp_avg.numel(),), self.stride, self.tensor_distances is not None)

    def sample(self, flat: Tensor) -> Tensor:
        """The entries of a flat [E] vector the estimate reads (`sample_entries`)."""
        return sample_entries(flat, self.sizes or (flat.numel(),), self.strides())

    @classmethod
    def zeros(cls, num_edges: int, device: torch.device | str = "cpu", start: Tensor | None = None,
              stride: int = 1, every: int = 1, per_tensor: float = 0.0, sizes: tuple[int, ...] = (),
              warmup: int = ESTIMATE_WARMUP, d0: float = D0, scale_per_tensor: bool = False,
              schedule_free: Tensor | None = None, shared_sums: bool = False, plateau_block: int = 0,
              plateau_boost: bool | int = False, plateau_anchor: bool = False) -> "OptState":
        """The state before the first step; with ``start`` (the flat parameters before it), lr-free, the
        estimate reading every ``stride``-th entry of each tensor (``sizes``: the tensors' entries in flat
        order, summing to ``num_edges``; () = one tensor) on every ``every``-th step after the first
        ``warmup`` (default `ESTIMATE_WARMUP`), starting at ``d0`` (default `D0`); with ``per_tensor`` > 0
        also one estimate per tensor (``sizes`` required), and with ``scale_per_tensor`` the rule's scale
        normalised per tensor. ``schedule_free`` (the flat parameters before the first step): a
        schedule-free state, z starting there (`Averaging`). ``shared_sums`` (with ``per_tensor``): each tensor's
        estimate reads the network's gradient sum, and no sum of its own is kept (`estimate_distances`).
        ``plateau_block`` (lr-free; 0: none): the step decays on plateaus of the gradient (`PlateauDecay`), and
        with ``plateau_boost`` also doubles where it keeps falling fast (`check_plateau_boost`), with
        ``plateau_anchor`` to twice the step at the doubling's grant (`PlateauDecay.anchored`)."""
        check_stride(stride)
        check_plateau_block(plateau_block)
        if plateau_block and start is None:
            raise ValueError("OptState.zeros: plateau_block decays the lr-free step: it needs the lr-free start.")
        boost = check_plateau_boost(plateau_boost, plateau_block, "OptState.zeros")
        anchored = check_plateau_anchor(plateau_anchor, boost, "OptState.zeros")
        check_stride(every, "estimate_every", "1 = every step")
        check_warmup(warmup)
        check_d0(d0)
        sizes = tuple(int(n) for n in sizes)
        if sizes and sum(sizes) != num_edges:
            raise ValueError(f"OptState.zeros: the tensor sizes (which per_tensor and estimate_stride read) sum to "
                             f"{sum(sizes)}, not to the {num_edges} edges.")
        if scale_per_tensor and not per_tensor:
            raise ValueError("OptState.zeros: scale_per_tensor normalises the rule's scale per tensor under "
                             "per-tensor estimates: it needs per_tensor > 0.")
        if shared_sums and not per_tensor:
            raise ValueError("OptState.zeros: shared_sums makes each tensor's own estimate read the network's "
                             "gradient sum: it needs per_tensor > 0.")
        tensors = None
        if per_tensor:
            if start is None or not sizes:
                raise ValueError("OptState.zeros: per_tensor needs the lr-free start and the tensor sizes "
                                 f"(summing to {num_edges} edges).")
            tensors = TensorDistances.fresh(per_tensor, sizes, d0)
        if start is not None:
            whole = sizes or (num_edges,)
            start = sample_entries(start.detach(), whole, tensor_strides(whole, stride, bool(per_tensor))).clone()
        return cls(
            torch.zeros(num_edges, device=device) if schedule_free is None
            else schedule_free.detach().to(device, torch.float32).reshape(-1).clone(),
            torch.zeros(num_edges, device=device),
            torch.ones(num_edges, device=device),
            0,
            start,
            None if start is None else torch.zeros_like(start, device=device),
            None if start is None else DistanceEstimate.begin(d0),
            stride,
            every,
            tensors,
            None if tensors is None or shared_sums else torch.zeros_like(start, device=device),
            warmup,
            sizes,
            scale_per_tensor,
            None if schedule_free is None else Averaging(),
            PlateauDecay(boost=boost, anchored=anchored) if plateau_block else None,
            plateau_block,
        )

    def detach(self) -> "OptState":
        """The same values cut from the autograd graph (the boundary between truncations)."""
        return replace(self, **{k: v.detach() for k, v in self.tensors().items()})

    def tensors(self) -> dict[str, Tensor]:
        """The tensor fields by name (for checkpoints; the lr-free ones only when set)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("step", "distance", "stride", "every", "tensor_distances", "warmup", "sizes",
                                  "scale_per_tensor", "averaging", "plateau", "plateau_block")
                and getattr(self, f.name) is not None}


# With per-tensor estimates and a strided estimate, each tensor's own estimate reads at least this many of
# its entries (all of a smaller one). d is a running maximum of the estimate, so a small sample's noise
# biases it upwards: a 32-entry LayerNorm gain read every 10th entry ran its d_i to 4,700x the network's d
# within 1,000 steps and the held-out Transformer diverged (docs/optim_history.md, "Per-tensor estimates from a
# sample": 128 with plain strides lost four held-out tasks; 1,024 with prime strides, the measured setting, two).
MIN_TENSOR_SAMPLE = 1024


def tensor_strides(sizes: tuple[int, ...], stride: int, per_tensor: bool) -> tuple[int, ...]:
    """The stride of each tensor's sample: ``stride`` (Prodigy's ``slice_p``), or with per-tensor
    estimates a prime that divides none of the tensor's dimensions (`_spread_stride`), at most
    ``n // MIN_TENSOR_SAMPLE`` (1: the whole tensor)."""
    if not per_tensor or stride == 1:
        return (stride,) * len(sizes)
    return _spread_strides(sizes, stride, MIN_TENSOR_SAMPLE)


@functools.lru_cache(maxsize=256)  # asked at every estimate of meta-training's unroll, for the same few networks
def _spread_strides(sizes: tuple[int, ...], stride: int, min_sample: int) -> tuple[int, ...]:
    return tuple(_spread_stride(n, stride, min_sample) for n in sizes)


def _spread_stride(n: int, stride: int, min_sample: int) -> int:
    """The smallest prime >= ``stride`` that does not divide ``n``; if that leaves fewer than
    ``min_sample`` entries, the largest prime not dividing ``n`` that leaves enough (1 if none). A prime that does not
    divide ``n`` divides no product of the tensor's trailing dimensions (they all divide ``n``), so the
    sample visits every row, column and kernel offset evenly: every 10th entry of a 64 x 64 weight reads
    even input columns only, and on the deep digits MLP that tensor's own estimate ran to 77x the
    network's and the run diverged, while strides 9 and 11 trained as every entry does (docs/optim_history.md)."""
    def spread(k: int) -> bool:
        return k > 1 and n % k != 0 and all(k % q for q in range(2, int(k**0.5) + 1))
    k = stride
    while not spread(k):
        k += 1
    if n // k >= min_sample:
        return k
    k = min(stride, n // min_sample)
    while k > 1 and not spread(k):
        k -= 1
    return max(k, 1)


def sample_entries(flat: Tensor, sizes: tuple[int, ...], strides: tuple[int, ...]) -> Tensor:
    """Every ``strides[i]``-th entry of tensor i of ``flat`` (``sizes``, in flat order), from its first,
    concatenated: Prodigy's ``slice_p``, which reads ``p.flatten()[::slice_p]`` of every parameter, so
    no tensor goes unsampled. ``flat`` itself where every stride is 1."""
    if all(k == 1 for k in strides):
        return flat
    if len(sizes) == 1:
        return flat[::strides[0]]
    return torch.cat([t[::k] for t, k in zip(flat.split(sizes), strides)])


def sampled_sizes(sizes: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, ...]:
    """How many entries of each tensor `sample_entries` reads: ceil(n / stride)."""
    return tuple(-(-n // k) for n, k in zip(sizes, strides))


def check_warmup(value: Any) -> int:
    """``value`` if it is an int >= 0 (``estimate_warmup``: the first steps that take an estimate each)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"the lr-free estimate's estimate_warmup is an int >= 0 (the first steps that take an "
                         f"estimate each), got {value!r}.")
    return value


def check_stride(value: Any, name: str = "estimate_stride", one: str = "1 = every parameter") -> int:
    """``value`` if it is a positive int (how sparsely the lr-free estimate reads), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"the lr-free estimate's {name} is a positive int ({one}), got {value!r}.")
    return value


@dataclass(frozen=True)
class Hyper:
    """Hyperparameters of one group of tensors at one step (Python floats, as torch.optim uses)."""

    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    total_steps: int = 0  # the training budget in steps, read by rules with horizon features (0 = not known)
    growth_rate: float = math.inf  # lr-free: d grows by at most this factor per step (Prodigy's; inf = no limit)
    d0: float = D0  # lr-free: the estimate before the first step (Prodigy's d0)
    # lr-free: growth_rate's limit from the estimate's first settling on (`DistanceEstimate.settled`; inf = no limit)
    settled_growth_rate: float = math.inf

    def bias_corrections(self, step: int) -> tuple[float, float]:
        return 1.0 - self.beta1**step, 1.0 - self.beta2**step


def refresh_due(step: int, every: int) -> bool:
    """True on the steps where the rule runs: 1, every + 1, 2 * every + 1, ... (``step`` is 1-based)."""
    return (step - 1) % every == 0


# ---- Adam's part -------------------------------------------------------------------------------
def update_moments(
    exp_avg: list[Tensor] | None, exp_avg_sq: list[Tensor], grad: list[Tensor], h: Hyper, inplace: bool
) -> tuple[list[Tensor] | None, list[Tensor]]:
    """``m = lerp(m, g, 1 - beta1)``, ``v = beta2 * v + (1 - beta2) * g * g`` for each tensor of the lists.
    ``exp_avg`` None (schedule-free, which keeps no m): ``v`` only, and None for ``m``."""
    if inplace:
        if exp_avg is not None:
            torch._foreach_lerp_(exp_avg, grad, 1.0 - h.beta1)
        torch._foreach_mul_(exp_avg_sq, h.beta2)
        torch._foreach_addcmul_(exp_avg_sq, grad, grad, 1.0 - h.beta2)
        return exp_avg, exp_avg_sq
    m = None if exp_avg is None else [torch.lerp(a, g, 1.0 - h.beta1) for a, g in zip(exp_avg, grad)]
    v = [torch.addcmul(b * h.beta2, g, g, value=1.0 - h.beta2) for b, g in zip(exp_avg_sq, grad)]
    return m, v


def adam_denominator(exp_avg_sq: list[Tensor], h: Hyper, step: int, inplace: bool, scaled: bool = False) -> list[Tensor]:
    """``sqrt(v) / sqrt(1 - beta2^t) + eps`` (new tensors in both modes; the state is untouched).

    ``scaled`` (for `apply_update` with an lr scale) returns ``sqrt(v) + eps * sqrt(1 - beta2^t)``,
    the same denominator times the bias correction, which `apply_update` folds into its step size:
    one pass over the parameters fewer, so a step with the scale costs what Adam's does.
    """
    bc2_sqrt = h.bias_corrections(step)[1] ** 0.5
    if inplace:
        denom = torch._foreach_sqrt(exp_avg_sq)
        if scaled:
            torch._foreach_add_(denom, h.eps * bc2_sqrt)
            return denom
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, h.eps)
        return denom
    if scaled:
        return [safe_sqrt(v) + h.eps * bc2_sqrt for v in exp_avg_sq]
    return [safe_sqrt(v) / bc2_sqrt + h.eps for v in exp_avg_sq]


def apply_update(
    params: list[Tensor],
    exp_avg: list[Tensor],
    denom: list[Tensor],
    lr_scale: list[Tensor] | None,
    h: Hyper,
    step: int,
    inplace: bool,
    factors: list[float] | None = None,
) -> list[Tensor]:
    """``p * (1 - lr * wd) - (lr / bc1) * m / (denom / s)`` per tensor; ``lr_scale=None`` is s = 1;
    ``factors`` (one per tensor; lr-free ``per_tensor``) multiply each tensor's lr.

    With a scale, ``denom`` must come from ``adam_denominator(..., scaled=True)`` (the bias
    correction ``sqrt(1 - beta2^t)`` moves from the denominator into the step size). The scale
    divides the denominator (a temporary in both modes) rather than multiplying ``m``: one pass
    instead of an allocation and a pass. In place, ``denom`` is overwritten.
    """
    bc1, bc2 = h.bias_corrections(step)
    step_size = -h.lr / bc1 if lr_scale is None else -h.lr * bc2**0.5 / bc1
    if factors is not None:
        sizes = [step_size * f for f in factors]
        decays = [1.0 - h.lr * f * h.weight_decay for f in factors]
    if inplace:
        if lr_scale is not None:
            torch._foreach_div_(denom, lr_scale)
        if h.weight_decay != 0.0:
            torch._foreach_mul_(params, 1.0 - h.lr * h.weight_decay if factors is None else decays)
        torch._foreach_addcdiv_(params, exp_avg, denom, step_size if factors is None else sizes)
        return params
    if lr_scale is not None:
        denom = [d / s for d, s in zip(denom, lr_scale)]
    if factors is None:
        sizes, decays = [step_size] * len(params), [1.0 - h.lr * h.weight_decay] * len(params)
    if h.weight_decay != 0.0:
        params = [p * c for p, c in zip(params, decays)]
    return [torch.addcdiv(p, m, d, value=z) for p, m, d, z in zip(params, exp_avg, denom, sizes)]


# ---- schedule-free (GMNOptimizer(schedule_free=True)) ---------------------------------------------
@dataclass(frozen=True)
class Averaging:
    """Schedule-free's average (Defazio et al., "The Road Less Scheduled", NeurIPS 2024): the plain steps
    move a point ``z`` (no momentum), ``x`` is the running average of the z's, and the gradient is taken
    at ``y = (1 - beta1) z + beta1 x``, which the parameters hold. Each z enters the average with weight
    ``peak^2`` (``peak``: the largest step size so far; SF-AdamW's ``weight_lr_power`` 2, ``r`` 0), so the
    steps taken while an lr-free estimate is still growing from ``d0`` weigh next to nothing. It replaces
    a schedule: the average decays the noise as a decaying lr would, with no horizon to know."""

    weight_sum: float = 0.0
    peak: float = 0.0

    def after(self, lr: float) -> "Averaging":
        """The average's scalars once a step of size ``lr`` has entered it."""
        peak = max(self.peak, lr)
        return Averaging(self.weight_sum + peak * peak, peak)

    def weight(self) -> float:
        """``c``, the newest z's share of the average after `after` (1 on the first step: x = z)."""
        return self.peak * self.peak / self.weight_sum if self.weight_sum > 0 else 0.0


def schedule_free_update(
    params: list[Tensor], z: list[Tensor], grad: list[Tensor], denom: list[Tensor], h: Hyper, step: int, c: float,
    inplace: bool, factors: list[float] | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """One schedule-free step per tensor with ``u = g / denom`` (+ ``wd * y``, decay at y as SF-AdamW):
    ``z <- z - lr * u``; ``x <- (1 - c) x + c z``; ``y <- (1 - beta1) z + beta1 x``, computed on y alone
    (x is not stored) as SF-AdamW: ``y <- lerp(y, z, c) + lr * (beta1 * (1 - c) - 1) * u`` with the old z.
    ``denom`` from ``adam_denominator(..., scaled=True)``: ``sqrt(v) + eps * sqrt(1 - beta2^t)``, the bias
    correction folded into the step sizes (one pass fewer, as `apply_update` with a scale); ``factors``
    multiply each tensor's lr (``per_tensor``). Returns (y, z); in place, ``params`` and ``z`` are updated."""
    lrs = [h.lr] * len(params) if factors is None else [h.lr * f for f in factors]
    bc2_sqrt = h.bias_corrections(step)[1] ** 0.5
    y_sizes = [lr * bc2_sqrt * (h.beta1 * (1.0 - c) - 1.0) for lr in lrs]
    z_sizes = [-lr * bc2_sqrt for lr in lrs]
    decay = None
    if h.weight_decay != 0.0:
        decay = [p.detach() * h.weight_decay for p in params]  # wd * y at the point the gradient was taken
    if inplace:
        torch._foreach_lerp_(params, z, c)
        torch._foreach_addcdiv_(params, grad, denom, y_sizes)
        torch._foreach_addcdiv_(z, grad, denom, z_sizes)
        if decay is not None:  # wd * y enters u, whose bias correction is not folded: the plain lr
            for p, zi, wd, lr in zip(params, z, decay, lrs):
                p.add_(wd, alpha=lr * (h.beta1 * (1.0 - c) - 1.0))
                zi.add_(wd, alpha=-lr)
        return params, z
    ys = [torch.addcdiv(torch.lerp(p, zi, c), g, d, value=a) for p, zi, g, d, a in zip(params, z, grad, denom, y_sizes)]
    zs = [torch.addcdiv(zi, g, d, value=b) for zi, g, d, b in zip(z, grad, denom, z_sizes)]
    if decay is not None:
        ys = [y + lr * (h.beta1 * (1.0 - c) - 1.0) * wd for y, lr, wd in zip(ys, lrs, decay)]
        zs = [zi - lr * wd for zi, lr, wd in zip(zs, lrs, decay)]
    return ys, zs


def estimate_hyper(h: Hyper, schedule_free: bool) -> Hyper:
    """The hyperparameters the lr-free estimate weighs a step with: schedule-free keeps no momentum, so
    its steps carry no first-moment bias correction (beta1 = 0 there; Defazio's SF-Prodigy)."""
    return replace(h, beta1=0.0) if schedule_free else h


def averaged_point(params: Tensor, z: Tensor, beta1: float) -> Tensor:
    """``x = (y - (1 - beta1) z) / beta1``, the average the schedule-free parameters ``y`` lean towards."""
    return torch.lerp(params, z, 1.0 - 1.0 / beta1)


# ---- the lr-free part (Prodigy's distance estimate; GMNOptimizer(lr_free=True)) -------------------
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_d0(value: Any) -> float:
    """``value`` as a float if it is a finite number > 0 (``d0``: the lr-free estimate before the first step)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < math.inf:
        raise ValueError(f"the lr-free estimate's d0 is a finite number > 0 (its value before the first step, "
                         f"Prodigy's d0; default {D0:g}), got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class DistanceEstimate:
    """Prodigy's running estimate ``d`` of the distance from the start to a solution (Mishchenko &
    Defazio, ICML 2024), which sets the step size in place of a tuned lr.

    ``d_hat = numerator / ||s||_1`` with ``numerator = sum_k w_k <g_k, x_0 - x_k>`` and
    ``s = sum_k w_k g_k`` (both decayed by ``beta3 = sqrt(beta2)`` per step, ``w_k = d_k^2 / d0``) is a
    lower bound of ``||x_0 - x*||_inf`` on convex problems; ``d = max(d, d_hat)``, or with a growth rate
    r < inf, Prodigy's ``d = min(peak, r * d)`` (``peak``: the largest ``d_hat`` so far; the first
    estimate is taken whole), a warm-up that caps how fast the step grows. A settled growth rate
    (``Hyper.settled_growth_rate``, this package's) caps it only once the estimate has settled: the
    search up from ``d0`` runs free, and a later jump of ``d`` (which killed a ReLU CNN's units before
    it had learned anything, docs/optim_history.md) becomes a warm-up. Adam's moments
    are kept in units of ``d`` (Prodigy's ``m``, ``v`` divided by ``d``, ``d^2``), so the step is
    Adam's at ``lr = d``, and when ``d`` grows the moments shrink by the growth (at the next step,
    before its gradient enters them): gradients taken under a smaller step weigh less, as in Prodigy. The tensors (``x_0`` and ``s``, [E] each) are the
    caller's; this holds the two scalars.
    """

    numerator: float = 0.0
    d: float = D0
    last: float = D0  # the estimate the last step moved by; the moments are still in its units until
    # the next step shrinks them by last / d (so a state between steps is consistent, and resumable)
    peak: float = D0  # the largest estimate d_hat so far (Prodigy's d_max), which d grows towards
    # True from the first estimate after d left d0 that did not raise d: the search up from d0 is over, and
    # from then on d grows by at most ``settled_growth_rate`` per step (`_next_estimate`)
    settled: bool = False

    @classmethod
    def begin(cls, d0: float = D0) -> "DistanceEstimate":
        """The estimate before the first step: ``d0`` (Prodigy's; `check_d0`)."""
        return cls(0.0, d0, d0, d0)

    def row(self) -> list[float]:
        """The fields as numbers, in order (a row of `GMNOptimizer`'s per-tensor state)."""
        return [self.numerator, self.d, self.last, self.peak, float(self.settled)]

    @classmethod
    def from_row(cls, row: list[float]) -> "DistanceEstimate":
        """`row`'s inverse; a row of 4 (saved by 0.6 or before, without ``settled``) is unsettled."""
        return cls(*row[:4], settled=bool(row[4]) if len(row) > 4 else False)

    def shrink(self) -> float:
        """The factor (<= 1) the moments take on to units of the current estimate."""
        return self.last / self.d


def estimate_distance(
    params: list[Tensor], grads: list[Tensor], start: list[Tensor], grad_sum: list[Tensor], est: DistanceEstimate,
    h: Hyper, step: int, inplace: bool, span: int = 1, strides: list[int] | None = None,
) -> tuple[DistanceEstimate, list[Tensor]]:
    """The estimate after this step's gradient at ``params`` (before they move; ``start`` is x_0), and
    ``s``, per tensor of the lists. ``strides`` (one per tensor; per-tensor estimates' `tensor_strides`):
    each tensor's sampled sums count ``stride`` times, so that a sample denser in small tensors still
    weighs every tensor by its size (one stride for all cancels in ``d``, as Prodigy's ``slice_p``). ``h.lr`` multiplies the estimated step (Prodigy's ``lr``, 1 by
    default; a constant one cancels in ``d``, a schedule reweighs the steps). As Prodigy
    (``use_bias_correction=True``), this step still moves by the old ``d``, the new one from the next
    step. In place, ``grad_sum`` is updated (`_decayed_sums`); ``d`` takes no gradients (a float).

    ``span`` j > 1 (``GMNOptimizer(estimate_every=j)``): this estimate stands for the j steps since the
    last one, as if each had this step's gradient and gap: the sums decay by ``beta3^j`` and this
    term enters with weight ``w * (1 + beta3 + ... + beta3^(j-1))``, and ``d`` may grow by
    ``growth_rate^j``. Between estimates ``d`` is fixed and nothing is read, so the estimate's passes
    and the moments' rescaling cost 1/j; j = 1 is Prodigy."""
    est, sums, _, _ = estimate_distances(params, grads, start, grad_sum, est, h, step, inplace, span, strides)
    return est, sums


def estimate_distances(
    params: list[Tensor], grads: list[Tensor], start: list[Tensor], grad_sum: list[Tensor], est: DistanceEstimate,
    h: Hyper, step: int, inplace: bool, span: int = 1, strides: list[int] | None = None,
    tensor_sums: list[Tensor] | None = None, estimates: list[DistanceEstimate] | None = None,
) -> tuple[DistanceEstimate, list[Tensor], list[DistanceEstimate] | None, list[Tensor] | None]:
    """`estimate_distance`, and with ``estimates`` (one per tensor of the lists, their sums
    ``tensor_sums``) also each tensor's own estimate (`TensorDistances`: its own sum ``s_i``, weighted by
    its own ``d_i``) from the same step: x_0 - x and ``<g, x_0 - x>`` are computed once for both, and all
    of it is read in one host sync. Returns the network's estimate and sums, the tensors' estimates and
    sums (None without ``estimates``).

    ``estimates`` with ``tensor_sums`` None (``shared_sums``): each tensor's estimate is Prodigy's ratio over
    its entries of the network's terms (the network's weights and sum ``s``, restricted to the tensor), so
    the tensors' numerators add up to the network's and no sum of their own is kept: 1x the parameters
    less state, one pass less per estimate (tensor sums None in the result)."""
    decay = (h.beta2**0.5) ** span
    # d in the 1e15s (a loss without a minimum, e.g. linear) puts w past float32: then the sums go to inf,
    # the estimate stops being finite and d stays where it is, rather than a foreach op raising
    w = _estimate_weight(est, h, step, span)
    gaps, dots = _gaps_and_dots(params, grads, start)
    norms, sums = _decayed_sums(grads, grad_sum, w, decay, inplace, gaps)
    dots_t, norms_t = torch.stack(dots), torch.stack(norms)
    if strides is not None and len(set(strides)) > 1:
        counts = torch.tensor(strides, dtype=dots_t.dtype, device=dots_t.device)
        dots_t, norms_t = dots_t * counts, norms_t * counts
    network = [dots_t.sum(), norms_t.sum()]
    if estimates is None:
        dot_f, norm_f = torch.stack(network).tolist()  # one host sync
        return _next_estimate(est, dot_f, norm_f, w, decay, h, span), sums, None, None
    if tensor_sums is None:  # shared sums: the network's terms, restricted to each tensor
        ws: list[float] = [w] * len(estimates)
        tensor_norms = norms
    else:
        ws = [_estimate_weight(e, h, step, span) for e in estimates]
        tensor_norms, tensor_sums = _decayed_sums(grads, tensor_sums, ws, decay, inplace, gaps)
    values = torch.stack([*network, *dots, *tensor_norms]).tolist()  # one host sync
    n = len(estimates)
    new = [_next_estimate(e, values[2 + i], values[2 + n + i], ws[i], decay, h, span) for i, e in enumerate(estimates)]
    return _next_estimate(est, values[0], values[1], w, decay, h, span), sums, new, tensor_sums


def _gaps_and_dots(params: list[Tensor], grads: list[Tensor], start: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Per tensor of the lists: ``x_0 - x`` (new tensors) and ``<g, x_0 - x>`` (0-d tensors, not yet read)."""
    gaps = torch._foreach_sub(start, [p.detach() for p in params])  # x_0 - x exactly (<g,x_0> - <g,x> would cancel)
    return gaps, [torch.dot(g.detach().reshape(-1), gap.reshape(-1)) for g, gap in zip(grads, gaps)]


def _decayed_sums(grads: list[Tensor], sums: list[Tensor], w: float | list[float], decay: float, inplace: bool,
                  scratch: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Per tensor of the lists: ``||s||_1`` (0-d tensors, not yet read) of the sums ``s <- decay * s + w * g``
    (``w``: one weight for all tensors, or one each), and the sums. In place, ``sums`` is updated and
    |s| goes into ``scratch`` (the spent x_0 - x: no allocation)."""
    grads = [g.detach() for g in grads]
    if inplace:
        torch._foreach_mul_(sums, decay)
        if isinstance(w, list):
            for t, g, wi in zip(sums, grads, w):
                t.add_(g, alpha=wi)
        else:
            torch._foreach_add_(sums, grads, alpha=w)
        return [torch.abs(t, out=buf).sum() for t, buf in zip(sums, scratch)], sums
    ws = w if isinstance(w, list) else [w] * len(grads)
    sums = [decay * a + wi * g for a, g, wi in zip(sums, grads, ws)]
    return [t.abs().sum() for t in sums], sums


def _estimate_weight(est: DistanceEstimate, h: Hyper, step: int, span: int) -> float:
    """Prodigy's weight of this step's term, ``d^2 / d0 * lr * sqrt(bc2) / bc1``, for the ``span`` steps it
    stands for; capped at the float32 maximum (d in the 1e15s: the estimate then stops being finite)."""
    bc1, bc2 = h.bias_corrections(step)
    beta3 = h.beta2**0.5
    return min(est.d / h.d0 * est.d * h.lr * bc2**0.5 / bc1 * sum(beta3**i for i in range(span)), FLOAT32_MAX)


def _next_estimate(est: DistanceEstimate, dot: float, norm: float, w: float, decay: float, h: Hyper, span: int
                   ) -> DistanceEstimate:
    """The estimate after a term ``w * <g, x_0 - x>`` with ``norm = ||s||_1`` of the updated sum."""
    numerator = decay * est.numerator + w * dot
    d, peak = est.d, max(est.peak, est.d)  # d <= peak always (the max also reads states saved without a peak)
    rate = min(h.growth_rate, h.settled_growth_rate) if est.settled else h.growth_rate
    if norm > 0 and math.isfinite(numerator / norm):
        d_hat = numerator / norm
        if d == h.d0:  # Prodigy's first estimate is not held back by the growth rate
            d = max(d, d_hat)
        peak = max(peak, d_hat)
        d = min(peak, d * rate**span)  # = peak (Prodigy's max(d, d_hat)) at growth_rate = inf
    # settled: d has left d0 and this estimate did not raise it (the first plateau of the search from d0)
    settled = est.settled or (est.d > h.d0 and d <= est.d)
    return DistanceEstimate(numerator, d, last=est.d, peak=peak, settled=settled)


# The plateau decay of the lr-free step (``GMNOptimizer(lr_free=True, plateau_block=B)``, `PlateauDecay`).
PLATEAU_FACTOR = 0.5  # what one cut multiplies the step by
PLATEAU_DROP = 10.0  # cuts only once the block's gradient sits this many times below its largest sample
PLATEAU_SAMPLE_EVERY = 10  # the squared norm is read on steps 1, 11, 21, ... (one pass over the gradient each)
# No cut takes the step below PLATEAU_FLOOR * block / step: the decay is never faster than 1 / t, so the steps'
# sum still diverges (Robbins-Monro) and a run at a lasting noise floor keeps moving instead of freezing after a
# few thousand steps of cuts (a Transformer LM's norm keeps rising; halved every block it would be at 2^-16 by
# step 10,000). At 1/16 no cut of the 5,000-step held-out runs measured is held back (docs/optim_history.md).
PLATEAU_FLOOR = 1.0 / 16.0
# The boost (``plateau_boost=True``, `PlateauDecay.boost`): the decay's other half, as a bold driver's. Prodigy's
# estimate stops growing once the gradient has fallen (its numerator sums the gradient's projections), so where a
# network goes on fitting its data it keeps the step it settled on in the first few hundred steps, which is too
# small there (3x to 27x the estimate reaches a lower 5,000-step loss on five of the nine held-out tasks, seed 0).
# At a block's end a doubling is granted when the block's mean squared norm fell PLATEAU_BOOST_FALL times since
# the block before and sits PLATEAU_BOOST_DROP times below its largest sample (deep in the fit, not the first
# descent), at most PLATEAU_BOOST_MAX times (``plateau_boost=True``; an int sets another cap), each ramped in over
# PLATEAU_RAMP samples. Where the larger step is
# past what the network takes (a SIREN, some ReLU CNNs) the gradient spikes; a sample PLATEAU_SPIKE times above
# the last block's mean while boosted takes every doubling back, for good. Anchored (``plateau_anchor``, 0.11's
# default), a doubling raises the step to twice the step at its grant rather than multiplying whatever the
# estimate grows to after it: where d keeps growing after the grant (a ReLU CNN deep in its fit, d 0.09 -> 0.15
# in 500 steps) its growth counts towards the doubling, and the boost fades once d has doubled by itself. Not
# anchored, that growth and the doubling compound (2.5x the step at the grant 250 steps after it), and a shapes
# CNN died at step 2,881 where the unboosted run ends at 2.9e-5 (docs/optim.md, "What `GMNOptimizer(model)` runs
# (0.11)").
PLATEAU_BOOST = 2.0
PLATEAU_BOOST_FALL = 4.0
PLATEAU_BOOST_DROP = 1e4
PLATEAU_BOOST_MAX = 2
PLATEAU_SPIKE = 1e2
# A doubling is ramped in over this many samples (2^(1/n) each, on the sampled steps: 100 steps at 10 per sample):
# a doubling at once is a jump of the step, which kills a ReLU network's units before the guard can see it.
PLATEAU_RAMP = 10


def plateau_sample_due(step: int) -> bool:
    """Whether ``step`` (1-based) is one `PlateauDecay` reads the gradient's squared norm on."""
    return (step - 1) % PLATEAU_SAMPLE_EVERY == 0


def plateau_scale(cuts: int, ramp: int, anchor: float = 0.0, d: float = 0.0) -> float:
    """What `PlateauDecay` multiplies the step by after ``cuts`` halvings and ``ramp`` steps of the boost's ramp
    (the optimizer reads it off its state on the steps the decay skips); with an ``anchor`` (anchored: the
    estimate at the grant) and ``d`` (the estimate this step moves by), the boost tops ``d`` up to its
    ramped multiple of the anchor and no further (1 once ``d`` has grown past it)."""
    boost = PLATEAU_BOOST ** (ramp / PLATEAU_RAMP)
    if anchor > 0.0 and d > 0.0:
        boost = max(1.0, boost * anchor / d)
    return PLATEAU_FACTOR**cuts * boost


def plateau_due(step: int, block: int) -> bool:
    """Whether `PlateauDecay.after` changes anything on ``step``: a sampled step or a block's end (on the
    others, 9 in 10, callers skip it and its gradient split, and keep the scale as it is)."""
    return plateau_sample_due(step) or step % block == 0


@dataclass(frozen=True)
class PlateauDecay:
    """ReduceLROnPlateau read off the gradient instead of the loss, which an optimizer does not see: at the
    end of every block of steps, the step is cut by `PLATEAU_FACTOR` when the gradient's squared norm
    (the mean of its log over the block's samples) has not fallen since the block before, once it sits
    `PLATEAU_DROP` times below its largest sample. Where a network can fit its data (the digits and shapes
    networks) the gradient falls with the loss by orders of magnitude and nothing is cut; at a noise floor
    (a language model) the minibatch noise keeps it level or rising while a constant step keeps the loss
    at the floor that step size allows, and each cut lowers that floor. The drop condition keeps the cut
    out of the first plateau at chance, where the gradient is flat from the start, and `PLATEAU_FLOOR` keeps
    the decay from being faster than 1 / t (docs/optim_history.md, "What `GMNOptimizer(model)` ran in 0.8").
    With ``boost`` (a setting, not state: the most doublings) the step is also doubled where the gradient keeps
    falling fast, and the doublings are taken back at a spike (`PLATEAU_BOOST`; docs/optim.md, "What
    `GMNOptimizer(model)` runs (0.11)"); ``anchored`` (a setting), a doubling raises the step to twice the
    step at its grant, the estimate's own growth since counting towards it (`plateau_scale`).
    Host-side scalars; the squared norms come from the caller."""

    log_sum: float = 0.0  # sum of log |g|^2 over this block's samples
    samples: int = 0
    blocks: int = 0  # blocks closed so far (the first has no block before it to compare with)
    previous: float = 0.0  # the last closed block's mean log |g|^2
    peak: float = 0.0  # the largest sample so far
    cuts: int = 0
    boosts: int = 0  # doublings granted (``boost``)
    ramp: int = 0  # ... of which ramped in so far, in steps of 2^(1 / PLATEAU_RAMP) (one per sample)
    spiked: bool = False  # a spike took the boosts back: no more
    anchor: float = 0.0  # anchored: the estimate d when the first doubling in force was granted (0: none in force)
    boost: int = 0  # the setting: the most doublings where the gradient keeps falling fast (0: none)
    anchored: bool = False  # the setting: the doublings are of the step at the grant (`plateau_scale`)

    def __post_init__(self) -> None:  # ``boost`` as a count: True is PLATEAU_BOOST_MAX (states saved by 0.9 say True)
        object.__setattr__(self, "boost", plateau_boost_count(self.boost, "PlateauDecay"))

    @property
    def scale(self) -> float:
        """What the step is multiplied by now, not anchored (anchored: the multiple of the anchor's step)."""
        return plateau_scale(self.cuts, self.ramp)

    def scale_at(self, d: float) -> float:
        """What the step is multiplied by now, where it moves by the estimate ``d`` (`plateau_scale`)."""
        return plateau_scale(self.cuts, self.ramp, self.anchor if self.anchored else 0.0, d)

    def row(self) -> list[float]:
        """The state's fields as numbers, in order (`GMNOptimizer`'s state; ``boost`` and ``anchored`` are
        settings)."""
        return [self.log_sum, float(self.samples), float(self.blocks), self.previous, self.peak, float(self.cuts),
                float(self.boosts), float(self.ramp), float(self.spiked), self.anchor]

    @classmethod
    def from_row(cls, row: list[float], boost: int = 0, anchored: bool = False) -> "PlateauDecay":
        """`row`'s inverse; a row of 6 (saved by 0.8, before the boost) has no boosts, one of 9 (0.9, 0.10) no
        anchor."""
        extra = (int(row[6]), int(row[7]), bool(row[8])) if len(row) > 6 else (0, 0, False)
        anchor = float(row[9]) if len(row) > 9 else 0.0
        return cls(float(row[0]), int(row[1]), int(row[2]), float(row[3]), float(row[4]), int(row[5]), *extra,
                   anchor=anchor, boost=boost, anchored=anchored)

    def sampled(self, sq_norm: float) -> "PlateauDecay":
        """With one more sample of the gradient's squared norm (0 or not finite: not counted); while boosted,
        a sample `PLATEAU_SPIKE` times above the last block's mean (or not finite) takes the boosts back, and
        otherwise a granted doubling not yet in force ramps in by one step."""
        spike = not sq_norm < math.inf or (sq_norm > 0.0 and math.log(sq_norm) >= self.previous + math.log(PLATEAU_SPIKE))
        if self.boosts and spike:
            return replace(self, boosts=0, ramp=0, spiked=True, anchor=0.0).sampled(sq_norm)
        out = self if self.ramp >= self.boosts * PLATEAU_RAMP else replace(self, ramp=self.ramp + 1)
        if not (sq_norm > 0.0 and math.isfinite(sq_norm)):
            return out
        return replace(out, log_sum=out.log_sum + math.log(sq_norm), samples=out.samples + 1,
                       peak=max(out.peak, sq_norm))

    def after(self, step: int, block: int, grads: list[Tensor], d: float = 0.0) -> "PlateauDecay":
        """After step ``step`` (1-based)'s gradient (as tensors), which moves by the estimate ``d``: a sample of
        its squared norm on `plateau_sample_due` steps (one host sync; float32 norms summed in order), a block
        closed every ``block`` steps."""
        out = self
        if plateau_sample_due(step):
            out = out.sampled(float(sum(n**2 for n in torch._foreach_norm(grads, dtype=torch.float32))))
        return out.closed(PLATEAU_FLOOR * block / step, d) if step % block == 0 else out

    def closed(self, floor: float = 0.0, d: float = 0.0) -> "PlateauDecay":
        """At a block's end: cut when this block's mean log is not below the last block's and sits
        `PLATEAU_DROP` times below the peak, unless the cut would take the scale below ``floor`` (the cuts'
        own scale: a boost does not count); below ``boost`` doublings, double when it fell `PLATEAU_BOOST_FALL`
        times and sits `PLATEAU_BOOST_DROP` times below the peak (`PLATEAU_BOOST`; the first doubling in force
        anchors at ``d``, the estimate the step moves by). A block without samples changes nothing."""
        if not self.samples:
            return self
        mean = self.log_sum / self.samples
        cut = (self.blocks > 0 and mean >= self.previous and mean + math.log(PLATEAU_DROP) <= math.log(self.peak)
               and PLATEAU_FACTOR ** (self.cuts + 1) >= floor)
        boosted = (not self.spiked and self.blocks > 0 and self.boosts < self.boost
                   and mean + math.log(PLATEAU_BOOST_FALL) <= self.previous
                   and mean + math.log(PLATEAU_BOOST_DROP) <= math.log(self.peak))
        anchor = d if self.anchored and boosted and not self.boosts else self.anchor
        return replace(self, log_sum=0.0, samples=0, blocks=self.blocks + 1, previous=mean,
                       cuts=self.cuts + int(cut), boosts=self.boosts + int(boosted), anchor=anchor)


def plateau_boost_count(value: Any, who: str) -> int:
    """The most doublings ``plateau_boost`` grants: True `PLATEAU_BOOST_MAX` (0.9's), False 0, or an int >= 0."""
    if isinstance(value, bool):
        return PLATEAU_BOOST_MAX if value else 0
    if not isinstance(value, int):
        raise TypeError(f"{who}: plateau_boost is True, False or the most doublings (an int >= 0), got {value!r}.")
    if value < 0:
        raise ValueError(f"{who}: plateau_boost as a count is the most doublings, an int >= 0, got {value}.")
    return value


def check_plateau_boost(value: Any, block: int, who: str) -> int:
    """`plateau_boost_count` of ``value``, which needs a plateau decay (``block`` > 0) to boost."""
    count = plateau_boost_count(value, who)
    if count and not block:
        raise ValueError(f"{who}: plateau_boost doubles the lr-free step between the plateau decay's blocks; "
                         "it needs plateau_block > 0 (500 tried).")
    return count


def check_plateau_anchor(value: Any, boost: int, who: str) -> bool:
    """``plateau_anchor`` as a bool; anchoring needs doublings to anchor (``boost`` > 0)."""
    if not isinstance(value, bool):
        raise TypeError(f"{who}: plateau_anchor is True or False, got {value!r}.")
    if value and not boost:
        raise ValueError(f"{who}: plateau_anchor makes the plateau boost's doublings twice the step at their grant; "
                         "it needs plateau_boost (1 doubling tried).")
    return value


def check_plateau_block(value: Any) -> int:
    """``value`` if it is an int >= 0 (`PlateauDecay`'s block in steps; 0: off)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"plateau_block is the length in steps of the blocks whose gradient norms the plateau "
                         f"decay compares, an int >= 0 (0: off; 500 tried), got {value!r}.")
    return value


@dataclass(frozen=True)
class TensorDistances:
    """``GMNOptimizer(lr_free=True, per_tensor=a)``: every parameter tensor also keeps its own Prodigy
    estimate ``d_i`` (its own sums, weights ``d_i^2``), and moves by ``d^(1 - a) * d_i^a`` (``d``: the
    network's estimate). One ``d`` for all tensors under-steps those that sit far from zero (norm
    gains at 1, a classifier head) and over-steps others; a = 1 is each tensor on its own, which
    over-steps small tensors such as biases (docs/optim_history.md, "Per-tensor estimates"). Moments of
    tensor i are in units of its step size. ``sizes``: each tensor's entries in flat order."""

    share: float
    sizes: tuple[int, ...]
    estimates: tuple[DistanceEstimate, ...]

    @classmethod
    def fresh(cls, share: float, sizes: tuple[int, ...], d0: float = D0) -> "TensorDistances":
        check_share(share)
        return cls(float(share), tuple(int(n) for n in sizes), tuple(DistanceEstimate.begin(d0) for _ in sizes))

    def _step(self, d: float, d_i: float) -> float:
        return d ** (1.0 - self.share) * d_i**self.share

    def shrinks(self, est: DistanceEstimate) -> list[float]:
        """Per tensor, the factor (<= 1 while the estimates grow) its moments take on to units of its
        current step size (from the one the last step moved by)."""
        return [self._step(est.last, e.last) / self._step(est.d, e.d) for e in self.estimates]

    def factors(self, est: DistanceEstimate) -> list[float]:
        """Per tensor, its step size this step over the network's (``est.last``, which ``lr`` multiplies)."""
        return [self._step(est.last, e.last) / est.last for e in self.estimates]

    def held(self) -> "TensorDistances":
        """No estimate on this step: every tensor moves by its current estimate."""
        return replace(self, estimates=tuple(replace(e, last=e.d) for e in self.estimates))


def check_share(value: Any) -> float:
    """``value`` if it is a number in [0, 1] (the per-tensor estimates' share of the step size)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"per_tensor is the share of each tensor's own estimate in its step size, a number in "
                         f"[0, 1] (0: one estimate for the network), got {value!r}.")
    return float(value)


def estimate_span(step: int, every: int, warmup: int = ESTIMATE_WARMUP) -> int:
    """How many steps an estimate on ``step`` stands for: 1 on each of the first ``warmup`` steps (at
    least the first), then ``every`` on steps warmup + every, warmup + 2 * every, ... and 0 (no estimate)
    on the others. ``warmup`` 0 or 1: steps 1, every + 1, 2 * every + 1, ..."""
    dense = max(warmup, 1)
    if step <= dense:
        return 1
    return every if (step - dense) % every == 0 else 0


def shrink_moments(exp_avg: list[Tensor] | None, exp_avg_sq: list[Tensor], ratio: float, inplace: bool
                   ) -> tuple[list[Tensor] | None, list[Tensor]]:
    """Moments in units of the old ``d`` to units of the new one (``ratio = d_old / d_new <= 1``);
    ``exp_avg`` None: ``v`` only (schedule-free: z is a point, not a moment)."""
    return shrink_tensor_moments(exp_avg, exp_avg_sq, [ratio] * len(exp_avg_sq), inplace)


def shrink_tensor_moments(exp_avg: list[Tensor] | None, exp_avg_sq: list[Tensor], ratios: list[float], inplace: bool
                          ) -> tuple[list[Tensor] | None, list[Tensor]]:
    """`shrink_moments` with one ratio per tensor (``per_tensor``: each tensor's moments in its own units)."""
    if all(r == 1.0 for r in ratios):
        return exp_avg, exp_avg_sq
    if inplace:
        if exp_avg is not None:
            torch._foreach_mul_(exp_avg, ratios)
        torch._foreach_mul_(exp_avg_sq, [r * r for r in ratios])
        return exp_avg, exp_avg_sq
    m = None if exp_avg is None else [m * r for m, r in zip(exp_avg, ratios)]
    return m, [v * (r * r) for v, r in zip(exp_avg_sq, ratios)]


def normalise_scale(scale: Tensor, rule: UpdateRule | None = None,
                    rule_params: dict[str, Tensor] | None = None, sizes: tuple[int, ...] | None = None) -> Tensor:
    """Lr-free, the lr scale divided by its geometric mean ``g`` over the network (``d`` sets the step
    size; the rule only shares it out between parameters), times the ``rule``'s correction of ``d``,
    ``exp(rule.global_log_scale(log g))`` (exactly 1 without ``RuleConfig.global_bound``).

    With ``sizes`` (the tensors' entries in flat order; ``GMNOptimizer(scale_per_tensor=True)`` with
    per-tensor estimates), each tensor's scale is divided by its own geometric mean instead: the
    estimates set how far each tensor moves and the rule shares that out within the tensor only (the
    correction still reads the network's ``g``)."""
    log_s = torch.log(scale)
    log_g = log_s.mean()
    correction = rule.global_log_scale(log_g, rule_params) if rule is not None else torch.zeros_like(log_g)
    if sizes is None or len(sizes) < 2:
        return scale / torch.exp(log_g - correction)
    means = torch.stack([t.mean() for t in log_s.split(list(sizes))])
    counts = torch.tensor(sizes, device=scale.device)
    return torch.exp(log_s - means.repeat_interleave(counts, output_size=scale.numel()) + correction)


def scale_sizes(state: OptState) -> tuple[int, ...] | None:
    """The tensor sizes `normalise_scale` shares the rule's scale out within (None: the whole network)."""
    tens = state.tensor_distances
    return tens.sizes if state.scale_per_tensor and tens is not None else None


# ---- the rule's part ---------------------------------------------------------------------------
def rule_features(
    index: GraphIndex, grad: Tensor, param: Tensor, state: OptState, rule: UpdateRule, lr: float | Tensor | None = None,
    total_steps: int = 0, betas: tuple[float, float] = (0.9, 0.999),
) -> Features:
    """The rule's inputs for a state that already holds this step's moments (flat [E] values);
    ``lr`` (a float, or one per parameter tensor) is read by rules with the ``relative_lr`` feature,
    ``total_steps`` (0 = not known) by rules with the ``horizon`` features, ``betas`` by the ``snr`` ones."""
    return compute_features(
        index, grad, param, state.exp_avg, state.exp_avg_sq, torch.log(state.lr_scale), state.step, rule.features, lr,
        total_steps, betas,
    )


def rule_lr(rule: UpdateRule, lr_free: bool, lr: float) -> float:
    """The lr a rule's relative-lr input reads: the group's ``lr``, or lr-free (where the group's lr
    multiplies the estimate) the rule's own ``default_lr``, the lr it was meta-trained around."""
    return float(rule.config.default_lr) if lr_free else lr


def scale_from_log(log_scale: Tensor) -> tuple[Tensor, int]:
    """``exp(log_scale)`` with non-finite entries replaced by 1 (Adam there); also their count."""
    if not log_scale.requires_grad and bool(torch.isfinite(log_scale.sum())):
        return torch.exp(log_scale), 0  # bounded values: a finite sum means all are finite (one pass)
    bad = ~torch.isfinite(log_scale)
    n_bad = int(bad.sum())
    if n_bad:
        log_scale = torch.where(bad, torch.zeros_like(log_scale), log_scale)
    return torch.exp(log_scale), n_bad


def refresh_lr_scale(
    rule: UpdateRule,
    graph: Any,
    index: GraphIndex,
    grad: Tensor,
    param: Tensor,
    state: OptState,
    rule_params: dict[str, Tensor] | None = None,
    lr: float | Tensor | None = None,
    total_steps: int = 0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> tuple[Tensor, int]:
    """A new lr scale [E] for one network from the rule (and the count of non-finite outputs)."""
    feats = rule_features(index, grad, param, state, rule, lr, total_steps, betas)
    return scale_from_log(rule.log_scale(graph, feats, rule_params))


# ---- one whole step (meta-training's form; the optimizer composes the same pieces in place) ------
def advance(state: OptState, grad: Tensor, h: Hyper, params: Tensor | None = None) -> OptState:
    """The state after this gradient: new moments, step + 1, the lr scale carried over; lr-free
    (``state.distance`` set), first the moments to units of the current estimate, then the estimate
    from this gradient at ``params`` (which lr-free needs). Schedule-free: ``v`` only (z moves in
    `finish`), the estimate reads z in place of the parameters, and the average takes in this step's size."""
    m, v, est, grad_sum = state.exp_avg, state.exp_avg_sq, state.distance, state.grad_sum
    tens, tensor_sum = state.tensor_distances, state.tensor_grad_sum
    free = state.averaging is not None
    plateau = state.plateau
    if plateau is not None:  # first, as the optimizer: the estimate's weights read the decayed lr
        d = est.d if est is not None else 0.0  # the estimate this step moves by (before this gradient)
        if plateau_due(state.step + 1, state.plateau_block):
            grads = list(grad.detach().split(state.sizes or (grad.numel(),)))
            plateau = plateau.after(state.step + 1, state.plateau_block, grads, d)
        h = replace(h, lr=h.lr * plateau.scale_at(d))
    if est is not None:
        if params is None:
            raise ValueError("advance: an lr-free state needs the parameters the gradient was taken at")
        point = m if free else params  # schedule-free: the distance z has come from x_0 (Defazio's SF-Prodigy)
        if tens is None:
            ms, (v,) = shrink_moments(None if free else [m], [v], est.shrink(), inplace=False)
            m = m if ms is None else ms[0]
        else:  # each tensor's moments by its own factor (as the optimizer's per-tensor views)
            ms, vs = shrink_tensor_moments(None if free else list(m.split(tens.sizes)), list(v.split(tens.sizes)),
                                           tens.shrinks(est), inplace=False)
            m, v = (m if ms is None else torch.cat(ms)), torch.cat(vs)
        step = state.step + 1
        span = estimate_span(step, state.every, state.warmup)
        he = estimate_hyper(h, free)
        if span:
            xs, gs = state.sample(point), state.sample(grad)
            if tens is None:
                est, (grad_sum,) = estimate_distance([xs], [gs], [state.start], [state.grad_sum], est, he,
                                                     step, inplace=False, span=span)
            else:  # per tensor, as the optimizer's views: each tensor's own estimate from its own sample, and
                # the network's from the same samples, each tensor's sums counted by its stride
                strides = state.strides()
                split = lambda t: list(t.split(sampled_sizes(tens.sizes, strides)))  # noqa: E731
                est, sums, new, tensor_sums = estimate_distances(
                    split(xs), split(gs), split(state.start), split(state.grad_sum), est, he, step, inplace=False,
                    span=span, strides=list(strides), tensor_sums=None if tensor_sum is None else split(tensor_sum),
                    estimates=list(tens.estimates))
                tens, grad_sum = replace(tens, estimates=tuple(new)), torch.cat(sums)
                tensor_sum = None if tensor_sums is None else torch.cat(tensor_sums)
        else:  # d stays; the moments are in its units after this step's shrink
            est = replace(est, last=est.d)
            tens = None if tens is None else tens.held()
    ms, (v,) = update_moments(None if free else [m], [v], [grad], h, inplace=False)
    m = m if ms is None else ms[0]
    averaging = state.averaging
    if free:  # the network's step size this step (lr-free: lr times the estimate it moves by)
        averaging = averaging.after(h.lr * (1.0 if est is None else est.last))
    return replace(state, exp_avg=m, exp_avg_sq=v, step=state.step + 1, grad_sum=grad_sum, distance=est,
                   tensor_distances=tens, tensor_grad_sum=tensor_sum, averaging=averaging, plateau=plateau)


def step_hyper(state: OptState, h: Hyper) -> Hyper:
    """The hyperparameters this step moves by: lr-free, ``lr`` times the estimate before this gradient (and
    the plateau decay's scale)."""
    if state.distance is None:
        return h
    scale = 1.0 if state.plateau is None else state.plateau.scale_at(state.distance.last)
    return replace(h, lr=h.lr * scale * state.distance.last)


def finish(params: Tensor, state: OptState, h: Hyper, scaled: bool, grad: Tensor | None = None
           ) -> tuple[Tensor, OptState]:
    """New flat parameters from a state that already holds this step's moments (and scale), and the
    state (schedule-free: with the new z, which needs this step's ``grad``; otherwise ``state`` itself)."""
    h = step_hyper(state, h)
    tens = state.tensor_distances
    free = state.averaging is not None
    if free:
        if grad is None or scaled:
            raise ValueError("finish: a schedule-free step needs the gradient, and runs with no lr scale")
        sizes = tens.sizes if tens is not None else (params.numel(),)
        split = lambda t: list(t.split(sizes))  # noqa: E731
        denom = adam_denominator(split(state.exp_avg_sq), h, state.step, inplace=False, scaled=True)
        ys, zs = schedule_free_update(split(params), split(state.exp_avg), split(grad), denom, h, state.step,
                                      state.averaging.weight(), inplace=False,
                                      factors=None if tens is None else tens.factors(state.distance))
        return torch.cat(ys), replace(state, exp_avg=torch.cat(zs))
    if tens is not None:  # per tensor, as the optimizer's per-tensor views, with each tensor's lr factor
        split = lambda t: list(t.split(tens.sizes))  # noqa: E731
        denom = adam_denominator(split(state.exp_avg_sq), h, state.step, inplace=False, scaled=scaled)
        out = apply_update(split(params), split(state.exp_avg), denom, split(state.lr_scale) if scaled else None, h,
                           state.step, inplace=False, factors=tens.factors(state.distance))
        return torch.cat(out), state
    denom = adam_denominator([state.exp_avg_sq], h, state.step, inplace=False, scaled=scaled)
    (out,) = apply_update([params], [state.exp_avg], denom, [state.lr_scale] if scaled else None, h, state.step,
                          inplace=False)
    return out, state


def step(
    rule: UpdateRule,
    graph: Any,
    index: GraphIndex,
    params: Tensor,
    grad: Tensor,
    state: OptState,
    h: Hyper,
    *,
    rule_params: dict[str, Tensor] | None = None,
) -> tuple[Tensor, OptState]:
    """One step on flat ``params`` / ``grad`` -> (new params, new state); the inputs are untouched.

    ``graph`` is the network's graph or its ``rule.prepare``-d form; ``rule_params`` evaluates the
    rule with other parameter values (PES). Meta-training does the same with `advance`, one rule
    forward over a batch of networks, and `finish`.
    """
    new = advance(state, grad, h, params)
    # The network runs even at alpha = 0 (scale exactly 1), so meta-gradients reach alpha.
    if rule.net is not None and refresh_due(new.step, rule.config.refresh_every):
        new.lr_scale, _ = refresh_lr_scale(rule, graph, index, grad, params, new, rule_params,
                                           rule_lr(rule, new.distance is not None, h.lr),
                                           h.total_steps, (h.beta1, h.beta2))
        if new.distance is not None:
            new.lr_scale = normalise_scale(new.lr_scale, rule, rule_params, scale_sizes(new))
    return finish(params, new, h, scaled=rule.net is not None, grad=grad)
