"""`GMNOptimizer`: a drop-in ``torch.optim.Optimizer``: Adam with a learned per-parameter lr scale.

A step (docs/design.md, "How a step of GMNOptimizer flows"): gradients are gathered once into a
flat edge-ordered vector; Adam's moments and the rule's lr scale live in flat buffers (the
per-parameter entries of ``opt.state`` are views into them). Every ``refresh_every`` steps the
rule (a GMN over the parameter graph) reads features of the flat state and sets the scale; every
step applies ``lr * scale * adam_direction`` through views with ``torch._foreach`` ops. All of the
arithmetic is `metaopt.optim.core`, the same functions meta-training differentiates through.
Weight decay is decoupled (AdamW-style): ``p *= 1 - lr * weight_decay`` before the update.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import core, eigenbasis
from .core import Hyper, OptState
from .eigenbasis import SoapSwitch
from .features import GraphIndex
from .lazy_graph import FirstCallGraph, build_graph, check_graph, graph_now, not_built_error, unwrap
from .nowcast import Nowcaster, resolve_nowcaster, tensor_ids
from .rules import UpdateRule, resolve_rule

# Keys of opt.state that are not parameters: fault counters and the layout check.
SKIPPED_STEPS = "skipped_steps"  # steps skipped because a gradient was NaN/Inf
RULE_FALLBACKS = "rule_fallbacks"  # edges whose rule output was non-finite (Adam used instead)
STEPS_TAKEN = "steps_taken"  # real steps taken (drives the refresh schedule and time features)
RULE_REFRESHES = "rule_refreshes"  # steps on which the rule ran
NOWCAST_JUMPS = "nowcast_jumps"  # times the nowcaster set the parameters
NOWCAST_FALLBACKS = "nowcast_fallbacks"  # predictions with non-finite values (discarded: no jump)
NOWCAST_CONTEXT = "nowcast_context"  # [context, E] float32 stored states (rows filled so far: NOWCAST_FILLED)
NOWCAST_FILLED = "nowcast_filled"
NOWCAST_REVERTS = "nowcast_reverts"  # jumps undone by the guard
NOWCAST_GUARD = "nowcast_guard"  # squared gradient norm at the last jump (0: no check pending)
NOWCAST_HORIZON = "nowcast_horizon"  # the horizon of the next jump (0: the nowcaster's own)
SPIKE_TRIPS = "spike_trips"  # steps on which the spike guard damped the rule's lr boost
SPIKE_LEVEL = "spike_level"  # how many halvings of the log boost are in force (0: the rule's own scale)
SPIKE_NORM_EMA = "spike_norm_ema"  # running mean of the gradient norm (0: none yet)
SPIKE_TRIPPED = "spike_tripped"  # 1 if the guard tripped since the last refresh
SPIKE_STREAK = "spike_streak"  # consecutive steps with the gradient norm above the guard's threshold
DISTANCE = "distance"  # lr_free: Prodigy's distance estimate d, the step size (d0 before the first step)
DISTANCE_NUMERATOR = "distance_numerator"  # lr_free: the estimate's running numerator
DISTANCE_LAST = "distance_last"  # lr_free: the estimate the last step moved by (the moments' units)
DISTANCE_CAP = "distance_cap"  # lr_free + spike guard: the estimate may not exceed this (0: no cap)
DISTANCE_PEAK = "distance_peak"  # lr_free: the largest estimate so far, which d grows towards (Prodigy's d_max)
DISTANCE_SETTLED = "distance_settled"  # lr_free: 1 once the estimate has settled (core.DistanceEstimate.settled)
# lr_free + plateau_block: core.PlateauDecay's fields, in its row's order (its cuts and boosts multiply the step;
# states of 0.8 have no boosts and load with none)
PLATEAU_KEYS = ("plateau_log_sum", "plateau_samples", "plateau_blocks", "plateau_previous", "plateau_peak", "plateau_cuts",
                "plateau_boosts", "plateau_ramp", "plateau_spiked", "plateau_anchor")
AVERAGE_WEIGHT_SUM = "average_weight_sum"  # schedule_free: the sum of the average's weights (`core.Averaging`)
AVERAGE_PEAK = "average_peak"  # schedule_free: the largest step size so far, whose square weighs each new z
DISTANCE_MOVED_AT = "distance_moved_at"  # soap_switch: the last step on which the estimate d changed
PEAK_MOVED_AT = "distance_peak_moved_at"  # soap_switch: the last step on which the largest estimate so far changed
SOAP_SWITCHED_AT = "soap_switched_at"  # soap_switch: the step after which SOAP's step runs (0: not yet)
SOAP_LR = "soap_lr"  # soap_switch: scale x d (or its peak, SoapSwitch.settle_on) at the switch, SOAP's lr (x group lr)
SOAP_STEPS = "soap_steps"  # soap_switch: SOAP's steps since the switch (its bias correction)
SOAP_SECOND_WEIGHT = "soap_second_weight"  # soap_switch: 1 - the product of the second betas since the switch (the
# second moment's bias correction; read where the beta rises, `SoapSwitch.second_beta_rise`)
SOAP_SPIKE_SCALE = "soap_spike_scale"  # soap_switch with spike_cut: what its cuts multiply SOAP's step by (1 before any)
SOAP_SPIKE_CUTS = "soap_spike_cuts"  # soap_switch with spike_cut: the cuts so far
SOAP_NORM_SHORT = "soap_norm_short"  # soap_switch with spike_cut: the ~5-step average of the log squared gradient norm
SOAP_NORM_LONG = "soap_norm_long"  # soap_switch with spike_cut: its ~50-step average (both NaN before their first sample)
# soap_switch: 1 while SOAP's lr follows the estimate run on after the switch (SoapSwitch.follow, or follow_climb once
# the estimate has climbed); 2 while the estimate runs on and SOAP's lr waits for that climb (follow_climb); 0: frozen
# at the switch, as a state saved without either stays where it is loaded
SOAP_FOLLOWS = "soap_follows"
SOAP_CLIMBED_AT = "soap_climbed_at"  # soap_switch.follow_climb: the step SOAP's lr began to follow (0: not yet)
SOAP_DECLINED_AT = "soap_declined_at"  # soap_switch: the step at which it declined to switch, for good (0: it did not)
SOAP_GRAD_PEAK = "soap_grad_peak"  # soap_switch: the largest squared gradient norm sampled (every 10th step) so far
SOAP_GRAD_LAST = "soap_grad_last"  # soap_switch: the last one sampled
SOAP_BASES = "soap_bases"  # soap_switch: {parameter index: its statistics and bases} of every matrix stepped
TENSOR_DISTANCES = "tensor_distances"  # lr_free + per_tensor: [tensors, 5] float64, each tensor's own estimate
# (numerator, d, last, peak, settled) in the model's parameter order (states of 0.6 and before: 4 columns, unsettled)
_COUNTERS = (SKIPPED_STEPS, RULE_FALLBACKS, STEPS_TAKEN, RULE_REFRESHES, NOWCAST_JUMPS, NOWCAST_FALLBACKS, NOWCAST_FILLED,
             NOWCAST_REVERTS, NOWCAST_GUARD, NOWCAST_HORIZON, SPIKE_TRIPS, SPIKE_LEVEL, SPIKE_NORM_EMA, SPIKE_TRIPPED,
             SPIKE_STREAK, DISTANCE, DISTANCE_NUMERATOR, DISTANCE_LAST,
             DISTANCE_CAP, DISTANCE_PEAK, DISTANCE_SETTLED, AVERAGE_WEIGHT_SUM, AVERAGE_PEAK, *PLATEAU_KEYS,
             DISTANCE_MOVED_AT, PEAK_MOVED_AT, SOAP_SWITCHED_AT, SOAP_LR, SOAP_STEPS, SOAP_SECOND_WEIGHT, SOAP_SPIKE_CUTS,
             SOAP_DECLINED_AT, SOAP_GRAD_PEAK, SOAP_GRAD_LAST, SOAP_FOLLOWS, SOAP_CLIMBED_AT)
_DISTANCE_SCALARS = (DISTANCE, DISTANCE_LAST, DISTANCE_PEAK)  # start at d0 (core.D0 by default), not 0
# SoapSwitch.settle_on -> the estimate the switch waits on (its value, the step it last moved on)
_SETTLE_ON = {"d": (DISTANCE, DISTANCE_MOVED_AT), "peak": (DISTANCE_PEAK, PEAK_MOVED_AT)}
# The jump guard: a jump is undone when the first gradient after it is this many times larger (squared
# norm; 2x in norm) than the one before it. Then the next horizons are halved; each kept jump
# lengthens them by one interval again, up to the nowcaster's horizon (a trust region on the jump).
GUARD_RATIO = 4.0


# The spike guard (opt-in, ``spike_guard=ratio``): the gradient norm's running mean over ~10 steps; a
# spike is SPIKE_STEPS consecutive steps above ratio x that mean, which the mean chases until the
# spike is declared: a divergence grows for several steps faster than the mean follows, while one
# noisy minibatch does not (chosen on the meta-validation suite, docs/optim.md). At most
# SPIKE_MAX_LEVEL halvings of the log boost are in force (0.5 ** 10: a 20x boost becomes 1.003x).
SPIKE_EMA_DECAY = 0.9
SPIKE_STEPS = 3
SPIKE_MAX_LEVEL = 10


# GMNOptimizer(model) with nothing else: the shipped lr-free mode with no rule (rule="lrfree_soap_1e4", since 0.17):
# 0.11's "lrfree_anchor" (Prodigy's estimate every 10th step in 2.4-2.7x the parameters of large models, here from d0
# 1e-4, its growth capped once it has settled, the step halved on plateaus of the gradient norm over blocks of 500
# steps and doubled, once, where a classifier's gradient keeps falling deep in the fit, to twice the step at the
# grant) until the estimate has held still for 150 steps, then SOAP's step on each matrix's input side in blocks of 64 at half the
# settled step (the soap switch it records). 0.16's "lrfree_soap" started the estimate at 1e-6 and switched after 100
# steps held. With an lr (or lr_free=False), the shipped fixed-lr GMN rule. docs/optim.md, "What GMNOptimizer(model)
# runs (0.17)".
SHIPPED_LR_FREE = "lrfree_soap_1e4"
SHIPPED_FIXED_LR = "default"
# The lr-free estimate's options where neither the call nor the rule's mode sets them (plain Prodigy, d0 1e-6).
ESTIMATE_DEFAULTS = dict(growth_rate=float("inf"), settled_growth_rate=float("inf"), estimate_stride=1, estimate_every=1,
                         estimate_warmup=core.ESTIMATE_WARMUP, per_tensor=0.0, d0=core.D0, shared_sums=False,
                         plateau_block=0, plateau_boost=False, plateau_anchor=False, schedule_free=False)
# The options above that shape the estimate itself (schedule_free also runs at a fixed lr: SF-AdamW; meta-training
# runs no schedule-free inner optimizer, since a learned rule reads Adam's momentum).
ESTIMATE_OPTIONS = tuple(k for k in ESTIMATE_DEFAULTS if k != "schedule_free")
# Below this, an lr passed to a rule that runs lr-free by its own mode is most likely meant as a fixed lr: warn.
LR_FREE_MULTIPLIER_WARNING = 0.1
# At or above this, an lr passed with no rule and no lr_free (the shipped fixed-lr rule) is most likely meant as a
# multiplier of GMNOptimizer(model)'s estimated step: warn (the fixed-lr rule at lr 1 or 3 blows up in a few steps).
FIXED_LR_MULTIPLIER_WARNING = 0.5

# Parameter dtypes updated through a float32 copy (the state is always float32).
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def resolve_mode(rule: str | Path | UpdateRule | None, lr: float | None, lr_free: bool | None,
                 given: dict[str, Any]) -> tuple[UpdateRule, bool, dict[str, Any]]:
    """The rule, whether it runs lr-free, and the estimate's options, from `GMNOptimizer`'s arguments.

    No rule: the shipped lr-free default (`SHIPPED_LR_FREE`, "lrfree_soap_1e4") unless an ``lr`` (or
    ``lr_free=False``) asks for a fixed lr, then the shipped fixed-lr rule; an ``lr`` with ``lr_free=True``
    runs the lr-free default at that multiple of its step. ``lr_free=None``: the mode the rule records
    (`RuleConfig.lr_free`). The options (``given``, None = not passed): those passed, else the rule's recorded ones, else
    ESTIMATE_DEFAULTS; passed at a fixed lr (other than their defaults) they are an error. A small ``lr``
    given to a rule that runs lr-free by its own mode warns: it multiplies the estimated step; a large one with no
    rule and no ``lr_free`` warns too: it is the fixed-lr rule's step size, not a multiplier."""
    if lr_free is not None and not isinstance(lr_free, bool):
        raise TypeError(f"GMNOptimizer: lr_free is True, False or None (the rule's own mode), got {lr_free!r}.")
    if rule is None:  # lr-free unless an lr comes without lr_free=True (then lr multiplies the estimated step)
        rule = SHIPPED_LR_FREE if lr_free is True or (lr is None and lr_free is None) else SHIPPED_FIXED_LR
        if lr_free is None and lr is not None and lr >= FIXED_LR_MULTIPLIER_WARNING:
            warnings.warn(f"GMNOptimizer: lr={lr:g} without lr_free runs the shipped fixed-lr rule at a step size of "
                          f"{lr:g} (Adam-sized lrs, 1e-4..1e-2, suit it). To scale GMNOptimizer(model)'s estimated "
                          f"step by {lr:g}, pass lr_free=True.", stacklevel=3)
    rule = resolve_rule(rule)
    mode = rule.config.lr_free  # the lr-free options the rule was tuned with (None: a fixed-lr rule)
    free = (mode is not None) if lr_free is None else lr_free
    if not free and any(v is not None and v != ESTIMATE_DEFAULTS[k] for k, v in given.items() if k in ESTIMATE_OPTIONS):
        raise ValueError("GMNOptimizer: growth_rate, settled_growth_rate, estimate_stride, estimate_every, "
                         "estimate_warmup, per_tensor, d0, shared_sums, plateau_block, plateau_boost and plateau_anchor "
                         "shape the lr-free step; pass lr_free=True.")
    if free and lr_free is None and lr is not None and lr < LR_FREE_MULTIPLIER_WARNING:
        warnings.warn(f"GMNOptimizer: the rule runs lr-free (its RuleConfig.lr_free), where lr multiplies the "
                      f"estimated step (1 by default): lr={lr:g} makes every step {1 / lr:.3g}x smaller than the "
                      "estimate. Pass lr_free=False for a fixed lr, or leave lr out.", stacklevel=3)
    options = {**ESTIMATE_DEFAULTS, **((mode or {}) if free else {}), **{k: v for k, v in given.items() if v is not None}}
    for key in ("schedule_free", "shared_sums"):
        if not isinstance(options[key], bool):
            raise TypeError(f"GMNOptimizer: {key} is True, False or None (the rule's own mode), got {options[key]!r}.")
    return rule, free, options


def _build_graph(model: nn.Module, example_inputs: Any) -> Any:
    """Convert ``model`` once. Layers no converter knows are kept as free edges (strict=False):
    still optimized, with the converter's one warning naming them."""
    return build_graph(model, example_inputs)


class GMNOptimizer(torch.optim.Optimizer):
    """Adam with a per-parameter lr scale set every ``refresh_every`` steps by a graph-metanetwork rule.

    ``GMNOptimizer(model)`` optimizes all of ``model``'s parameters; ``params=`` takes the usual
    list of tensors or param-group dicts (each tensor must belong to ``model``) for per-group
    ``lr`` / ``betas`` / ``eps`` / ``weight_decay``. Model parameters in no group are untouched.

    Which rule, in which mode: with nothing passed (``rule=None``, ``lr=None``), ``rule="lrfree_soap_1e4"``
    runs: the shipped lr-free mode (the step size is Prodigy's distance estimate from 1e-4, taken every 10th step,
    70% per tensor, the tensors' estimates reading the network's gradient sum, x_0 and the sum holding
    every 3rd entry of large tensors, each estimate growing by at most 1.02x per step once it has
    settled, the step halved where the gradient norm stops falling over a block of 500 steps and doubled,
    once, where it keeps falling fast deep in the fit, to twice the step at the doubling's grant) with no
    learned rule, so there is no lr to tune; ``lr`` then multiplies the estimated step (1). Once the estimate
    has settled and held still for 150 steps it switches to SOAP's step (the soap switch its mode records:
    ``SoapSwitch(window=150)``, each matrix's input side rotated in blocks of 64; below). ``rule="lrfree_soap"`` (the
    default of 0.16) starts the estimate at 1e-6 and switches after 100 steps held. ``rule="lrfree_anchor"`` (the
    default of 0.11-0.15) is 0.16's mode without the switch; ``rule="lrfree_boost1"`` (the default of 0.10) doubles
    whatever the estimate grows to after the grant.
    The defaults of 0.5-0.9 were removed as rule names in 0.12 (`rules.RETIRED_RULES` holds the options that
    run each, bit for bit; naming one raises a ValueError that gives the call). The lr-free GMN rule
    ``rule="lrfree"`` (the default of 0.4) runs in 0.5's mode (``estimate_every=10, per_tensor=0.7``; state
    5x) when named (docs/optim.md). With an
    ``lr`` (or ``lr_free=False``) and no rule, the shipped fixed-lr GMN rule ``rule="default"`` runs at
    that lr; ``GMNOptimizer(model, lr=0.5, lr_free=True)`` runs the lr-free default at half its step (the lr
    multiplies the estimate). ``rule="adam"`` (the untrained rule, alpha = 0) is exactly Adam, AdamW with
    ``weight_decay > 0`` (decoupled decay). A rule runs in the mode it records unless ``lr_free`` says
    otherwise; an option of the estimate passed here overrides the rule's. ``lr=None`` at a fixed lr
    takes the rule's ``config.default_lr`` (chosen on the meta-validation suite when the rule was
    shipped; 1e-3 for ``rule="adam"``). ``total_steps`` (optional, like a scheduler's ``T_max``): the planned number
    of steps, read by rules with horizon features (the fraction of training done; kept in the param
    groups, so ``state_dict`` carries it); without it such a rule runs in its horizon-unknown mode.
    State: Adam's two moments plus the lr scale, 3x the parameters at a fixed lr (6x in the lr-free GMN
    rule's mode: the estimate's start point and two gradient sums on top). An identity rule
    (``rule="adam"``, ``"lrfree_boost1"``, ``"lrfree_anchor"``, ``"lrfree_soap"``, ``"lrfree_soap_1e4"``,
    ``"lrfree_sf"``) keeps no scale: 2x, as torch Adam, and 1x less in every mode; ``GMNOptimizer(model)`` keeps 2x
    + 2x the sampled entries (4x where every tensor is under 3,072 entries, 2.4-2.7x on large models) until its
    switch, then 2x + each matrix's input-side statistics and bases (``2 * 64 * in`` numbers a matrix of ``out x in``:
    2.1x on a 1581 x 1581 layer).

    The parameter graph is built once with ``metaopt.to_graph``: from ``example_inputs`` (or the
    model's ``example_inputs()``) when given, else from the model's first real forward call
    (``opt.graph`` is None until then; see ``metaopt/optim/lazy_graph.py``); ``graph=`` supplies
    a prebuilt one. ``model`` may be wrapped (``torch.compile``, ``DistributedDataParallel``,
    ``DataParallel``): the graph is the inner module's. Parameters may be moved to another device or
    to bf16/fp16 after construction: the state stays float32, low-precision parameters are updated
    in float32 and rounded once (docs/optim.md, Public API).

    ``nowcast`` (None, ``"default"``, a directory or a `Nowcaster`): every ``interval`` steps the
    parameters are stored and, once ``context`` are stored, set to where the nowcaster predicts
    they will be ``horizon`` intervals later (metaopt/optim/nowcast.py); ``opt.nowcast_jumps``
    counts the jumps. Its stored states add ``context`` x the parameters to the state.

    Fault handling: a step whose gradients hold NaN/Inf is skipped entirely (``opt.skipped_steps``);
    non-finite rule outputs fall back to Adam's step (scale 1) on those edges (``opt.rule_fallbacks``);
    a non-finite nowcast is discarded (no jump; ``opt.nowcast_fallbacks``); a jump after which the
    gradient norm more than doubles is undone (``opt.nowcast_reverts``; see GUARD_RATIO).

    ``spike_guard=ratio`` (off by default): when the gradient norm has stayed above ``ratio`` times its
    running mean (over ~10 steps) for 3 consecutive steps, the log of every lr scale above 1 is halved,
    pulling the rule's boosts towards Adam's step and never below it (``opt.spike_trips``); each
    further step of the spike halves it again. The halvings stay in force across refreshes (the rule's
    new scale is damped alike) and one is lifted at each refresh with no trip in the interval before it. Learned boosts of up to 20x Adam's step can push a run past the edge of
    stability into loss spikes that undo hundreds of steps; this is a Loss-Guarded-L2O-style fallback
    towards Adam that needs no loss, only the gradient the step already has.

    ``lr_free=True`` (what the shipped lr-free rules record): no lr to tune. The step size is Prodigy's estimate ``d`` of the distance from the
    start to a solution (`core.DistanceEstimate`; it starts at ``d0`` = 1e-6 and grows as the run shows how far
    it has to go), ``lr`` (default 1) multiplies it as Prodigy's does, and the rule's scale is
    divided by its geometric mean over the network, so the rule shares the step out between
    parameters and ``d`` sets its size. State: 5x the parameters (the start point and a gradient sum
    on top). ``opt.distance`` is the current ``d``. The options below default to the rule's recorded
    mode, else to plain Prodigy (the values named). Two of Prodigy's options: ``growth_rate`` (a
    param-group hyperparameter, default inf) lets ``d`` grow by at most that factor per step, a
    warm-up (1.02-1.1); and this package's ``settled_growth_rate`` (default inf) the same limit, only from the
    estimate's first settling on (its first estimate after leaving ``d0`` that does not raise ``d``): the
    search up from ``d0`` runs free, a later jump of ``d`` is spread out (`core.DistanceEstimate`);
    ``estimate_stride=k`` (Prodigy's ``slice_p``) computes the estimate from every
    k-th entry of each parameter only, so its passes cost about 1/k and the state is about 3x + 2/k x the
    parameters (3x + 3/k with ``per_tensor``). And
    one of this package: ``estimate_every=j`` takes the estimate on every j-th step only, each standing
    for the j steps since the last (`core.estimate_distance`'s ``span``), so between them a step costs
    what a fixed-lr step does; ``estimate_warmup=w`` (default 0) takes one on each of the first w steps too,
    where ``d`` grows fastest (then on steps w + j, w + 2j, ...). ``per_tensor=a`` (0 to 1, default 0):
    every parameter tensor also keeps its own estimate ``d_i`` and moves by ``d^(1 - a) * d_i^a``
    (`core.TensorDistances`); its gradient sum adds 1x the parameters to the state (6x; about 1/k with
    ``estimate_stride=k``, which then reads at least `core.MIN_TENSOR_SAMPLE` entries of every tensor,
    all of a smaller one), the estimate's cost is per tensor; with ``shared_sums=True`` each tensor's estimate
    reads the network's gradient sum instead (Prodigy's ratio over the tensor's entries; no sum of its own,
    one pass less per estimate). ``d0`` (Prodigy's, default 1e-6): the estimate before the first step; a larger one
    (1e-4) spends fewer of the first steps growing ``d``, at the risk of starting above the step a task takes.
    ``plateau_block=B`` (default 0, off): ReduceLROnPlateau on the gradient (`core.PlateauDecay`): every B steps
    the step is halved when the gradient's squared norm (sampled every 10th step, geometric mean over the
    block) has not fallen since the block before, once it is 10x below its largest sample: a decay at a
    noise floor, none while the loss still falls with the gradient, never faster than 1/t (no cut below
    ``core.PLATEAU_FLOOR * B / t``); ``opt.plateau_cuts`` counts the halvings. ``plateau_boost`` (with
    ``plateau_block``; True: at most ``core.PLATEAU_BOOST_MAX`` = 2 doublings, as 0.9's default; an int: at most
    that many; ``GMNOptimizer(model)`` runs 1) is its other half: a doubling of the step is granted at a block's end where
    the block's norm fell 4x since the block before and sits 10^4 below its largest sample (a network deep in
    fitting its data, where the estimate no longer grows), ramped in over the next 100 steps, and every doubling
    is taken back for good at a sample 100x above the last block's (`core.PLATEAU_BOOST`);
    ``opt.plateau_boosts`` is the doublings granted and in force (0 after a spike). ``plateau_anchor=True``
    (with ``plateau_boost``; ``GMNOptimizer(model)`` since 0.11) makes a doubling one of the step at its grant:
    where the estimate grows after the grant, its growth counts towards the doubling instead of compounding
    with it (the boost fades once ``d`` has doubled by itself; `core.plateau_scale`).
    ``schedule_free=True`` (``rule="lrfree_sf"`` records it with the default's estimate; opt-in, identity rules
    only): Schedule-Free (Defazio et al., 2024) in place of Adam's momentum: the steps move a point ``z``, the
    parameters hold ``y = (1 - beta1) z + beta1 x`` with ``x`` the average of the z's (`core.Averaging`), and
    lr-free the estimate reads ``x_0 - z``; ``with opt.averaged():`` the parameters hold ``x``. State as in the
    same mode with Adam (``z`` replaces ``m``); at a fixed lr it is SF-AdamW (docs/optim.md, "Schedule-free mode").
    ``scale_per_tensor=True`` (with ``per_tensor``; opt-in) normalises the rule's scale per tensor: the
    estimates set how far each tensor moves and the rule shares it out within the tensor only (by default
    it also shares between tensors, which on a GRU LM ran its gate biases away; docs/optim.md, "User-style
    loops").
    ``soap_switch`` (None: the switch the rule's mode records, as ``GMNOptimizer(model)``'s; True or a `SoapSwitch`;
    False: none; lr-free with no learned rule): the lr-free step until the
    estimate ``d`` has not moved for 100 steps (looked at every 10th step), then SOAP's step (Adam in the
    eigenbasis of Shampoo's gradient statistics on every matrix, Adam on vectors; `eigenbasis.soap_step`) at
    ``lr = 0.5 * d`` with ``d`` frozen, betas (0.95, 0.99), fresh moments; the plateau decay goes on scaling the
    step. Where the gradient norm is already 200x below its peak when ``d`` settles (a fit Adam's step is making, as a
    SIREN's) it declines, for good (``opt.soap_declined_at``; `SoapSwitch.decline_below`).
    ``opt.soap_switched_at`` is the step it switched after (0: not yet). Each matrix adds its statistics and
    bases to the state (``state_dict()["state"]["soap_bases"]``): its input side (``SoapSwitch.sides``, "columns"
    since 0.16: a linear layer's inputs, a filter's ``in * kernel``), if longer than 64 in diagonal blocks of 32 to
    64 (`SoapSwitch.block`, since 0.15), ``2 * side * block`` numbers, a shorter one whole, ``2 * side^2``; and
    three (batched) matrix products to each step (docs/optim.md, "The soap switch", "One side", "Diagonal
    blocks"); ``SoapSwitch(sides="both")`` rotates both sides (six). The estimate's buffers are freed at the switch.
    """

    def __init__(
        self,
        model: nn.Module,
        rule: str | Path | UpdateRule | None = None,
        lr: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None = None,
        graph: Any = None,
        example_inputs: Any = None,
        total_steps: int | None = None,
        nowcast: str | Path | Nowcaster | None = None,
        spike_guard: float | None = None,
        lr_free: bool | None = None,
        growth_rate: float | None = None,
        settled_growth_rate: float | None = None,
        estimate_stride: int | None = None,
        estimate_every: int | None = None,
        estimate_warmup: int | None = None,
        per_tensor: float | None = None,
        d0: float | None = None,
        shared_sums: bool | None = None,
        plateau_block: int | None = None,
        plateau_boost: bool | int | None = None,
        plateau_anchor: bool | None = None,
        scale_per_tensor: bool = False,
        schedule_free: bool | None = None,
        soap_switch: bool | SoapSwitch | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"GMNOptimizer: the first argument must be the nn.Module being trained (its graph is "
                f"built from it), got {type(model).__name__}; pass parameter groups as params=."
            )
        given = dict(growth_rate=growth_rate, settled_growth_rate=settled_growth_rate,
                     estimate_stride=estimate_stride, estimate_every=estimate_every,
                     estimate_warmup=estimate_warmup, per_tensor=per_tensor, d0=d0, shared_sums=shared_sums,
                     plateau_block=plateau_block, plateau_boost=plateau_boost, plateau_anchor=plateau_anchor,
                     schedule_free=schedule_free)
        rule, lr_free, options = resolve_mode(rule, lr, lr_free, given)
        growth_rate, estimate_stride, estimate_every = options["growth_rate"], options["estimate_stride"], options["estimate_every"]
        estimate_warmup, per_tensor, d0 = options["estimate_warmup"], options["per_tensor"], options["d0"]
        for key in ("growth_rate", "settled_growth_rate"):
            if isinstance(options[key], bool) or not isinstance(options[key], (int, float)) or not options[key] >= 1.0:
                raise ValueError(f"GMNOptimizer: {key} is a factor >= 1 (inf: no limit), got {options[key]!r}.")
        self.settled_growth_rate = float(options["settled_growth_rate"])
        try:
            self.estimate_stride = core.check_stride(estimate_stride)
            self.estimate_every = core.check_stride(estimate_every, "estimate_every", "1 = every step")
            self.estimate_warmup = core.check_warmup(estimate_warmup)
            self.d0 = core.check_d0(d0)
        except ValueError as err:
            raise ValueError(f"GMNOptimizer: {err}") from None
        try:
            self.per_tensor = core.check_share(per_tensor)
        except ValueError as err:
            raise ValueError(f"GMNOptimizer: {err}") from None
        # a rule's recorded shared_sums has nothing to share without per-tensor estimates (GMNOptimizer(model,
        # per_tensor=0)); passed here, it is a mistake
        self.shared_sums = options["shared_sums"] and bool(self.per_tensor)
        if given["shared_sums"] and not self.per_tensor:
            raise ValueError("GMNOptimizer: shared_sums=True makes each tensor's own estimate read the network's "
                             "gradient sum; it needs lr-free per_tensor > 0.")
        if scale_per_tensor and not self.per_tensor:
            raise ValueError("GMNOptimizer: scale_per_tensor=True normalises the rule's scale per tensor under "
                             "per-tensor estimates; it needs lr-free per_tensor > 0 (GMNOptimizer(model) has 0.7).")
        if scale_per_tensor and rule.is_identity:
            raise ValueError("GMNOptimizer: scale_per_tensor=True normalises a learned rule's scale, and this rule is "
                             "the identity (its scale is 1 everywhere; GMNOptimizer(model) runs no rule since 0.5): "
                             "pass a learned rule, e.g. rule=\"lrfree\".")
        self.scale_per_tensor = bool(scale_per_tensor)
        self.schedule_free = options["schedule_free"]
        self.plateau_block = core.check_plateau_block(options["plateau_block"])
        # a rule's recorded boost has nothing to boost without the decay (GMNOptimizer(model, plateau_block=0));
        # passed here, it is a mistake
        boost = options["plateau_boost"] if given["plateau_boost"] is not None or self.plateau_block else 0
        self.plateau_boost = core.check_plateau_boost(boost, self.plateau_block, "GMNOptimizer")  # the most doublings
        # likewise a rule's recorded anchor without doublings to anchor (GMNOptimizer(model, plateau_boost=0))
        anchor = options["plateau_anchor"] if given["plateau_anchor"] is not None or self.plateau_boost else False
        self.plateau_anchor = core.check_plateau_anchor(anchor, self.plateau_boost, "GMNOptimizer")
        if self.schedule_free and not rule.is_identity:
            raise ValueError("GMNOptimizer: schedule_free=True runs with no learned rule (rule=\"lrfree_sf\" "
                             "or \"adam\"): a rule reads Adam's momentum, which a schedule-free "
                             "state does not keep.")
        if self.schedule_free and (spike_guard is not None or nowcast is not None):
            raise ValueError("GMNOptimizer: schedule_free=True does not go with spike_guard or nowcast (both move "
                             "the parameters or the step size behind the average's back).")
        if self.per_tensor and spike_guard is not None:
            source = " (the rule's lr-free mode)" if given["per_tensor"] is None else ""
            raise ValueError(f"GMNOptimizer: per_tensor={self.per_tensor:g}{source} shares the lr-free step between "
                             "tensors and does not go with spike_guard; pass per_tensor=0 with it.")
        self.soap_switch = _resolve_soap_switch(soap_switch, lr_free, rule, self.schedule_free, nowcast, spike_guard)
        if lr is None:  # lr-free: a multiplier of the estimate; else the rule's own default (1e-3 for Adam)
            lr = 1.0 if lr_free else rule.config.default_lr
        if not lr >= 0.0 or not eps >= 0.0 or not weight_decay >= 0.0:
            raise ValueError(f"GMNOptimizer: lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}.")
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1):
            raise ValueError(f"GMNOptimizer: total_steps must be a positive int (the planned number of steps) or None, "
                             f"got {total_steps!r}.")
        if spike_guard is not None and (isinstance(spike_guard, bool) or not float(spike_guard) > 1.0):
            raise ValueError(f"GMNOptimizer: spike_guard is a gradient-norm ratio > 1 (e.g. 4.0) or None, got {spike_guard!r}.")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"GMNOptimizer: betas must lie in [0, 1), got {betas}.")
        self._params_all: list[Tensor] = list(model.parameters())
        if not self._params_all:
            raise ValueError("GMNOptimizer: the model has no parameters.")
        _refuse_sharded(model, self._params_all)
        inner = unwrap(model)  # torch.compile / DDP / DataParallel: the graph is the inner module's
        if inner is not model and [id(p) for p in inner.parameters()] != [id(p) for p in self._params_all]:
            raise ValueError(
                f"GMNOptimizer: {type(model).__name__}.parameters() are not those of the module it wraps "
                f"({type(inner).__name__}) in the same order; pass the unwrapped module."
            )
        self._index = {id(p): i for i, p in enumerate(self._params_all)}
        self.graph: Any = None  # the parameter graph; None until the first forward when built lazily
        self._first_call: FirstCallGraph | None = None
        if graph is None:
            graph = _build_graph(inner, example_inputs) if example_inputs is not None else graph_now(inner)
        if graph is None:
            self._first_call = FirstCallGraph(model, self._set_graph)  # built from the first batch (of inner)
        else:
            self._set_graph(graph)
        self.rule: UpdateRule = rule
        self.rule.eval()
        self.nowcaster: Nowcaster | None = resolve_nowcaster(nowcast)
        self.spike_guard: float | None = None if spike_guard is None else float(spike_guard)
        self.lr_free = lr_free
        # An identity rule (rule="adam": its scale is 1 everywhere) keeps no lr_scale buffer: Adam's state
        # is 2x the parameters, and the scale is allocated (as ones) if the rule stops being the identity.
        self._moment_keys = self.SCHEDULE_FREE_KEYS if self.schedule_free else self.MOMENT_KEYS
        self._state_keys = self._all_state_keys(with_scale=not self._rule_is_identity())
        self._numels = [p.numel() for p in self._params_all]
        self._num_edges = sum(self._numels)
        # lr_free: per parameter, how many flattened entries the estimate reads (every k-th from its first,
        # as `core.sample_entries`): the entries of its x_0 and gradient sums
        self._strides = core.tensor_strides(tuple(self._numels), self.estimate_stride, bool(self.per_tensor))
        self._sampled = list(core.sampled_sizes(tuple(self._numels), self._strides))
        self._buffers: dict[str, Tensor] | None = None  # flat state, allocated at the first step
        self._warned_low_precision = False  # lr-free on bf16/fp16 parameters: said once (`step`)
        self._graph_cache: dict[str, tuple[Any, GraphIndex]] = {}
        self._finite_check: dict[torch.device, tuple[Tensor, Tensor]] = {}  # `_all_finite`'s (flag, 1.0) per device
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, total_steps=total_steps,
                        growth_rate=float(growth_rate))
        super().__init__(self._params_all if params is None else params, defaults)
        self._reset_counters()

    # ---- construction helpers ------------------------------------------------------------
    def _reset_counters(self) -> None:
        for key in _COUNTERS:
            self.state[key] = self.d0 if key in _DISTANCE_SCALARS else 0
        if self.per_tensor:
            fresh = core.TensorDistances.fresh(self.per_tensor, tuple(self._numels), self.d0)
            self._store_tensor_estimates(fresh.estimates)

    def _tensor_estimates(self) -> list[core.DistanceEstimate]:
        """per_tensor: each tensor's estimate, from the state (`TENSOR_DISTANCES`)."""
        return [core.DistanceEstimate.from_row(row) for row in self.state[TENSOR_DISTANCES].tolist()]

    def _store_tensor_estimates(self, estimates: Iterable[core.DistanceEstimate]) -> None:
        estimates = tuple(estimates)
        self.state[TENSOR_DISTANCES] = torch.tensor([e.row() for e in estimates], dtype=torch.float64)
        self._tensor_cache = (self.state[TENSOR_DISTANCES],
                              core.TensorDistances(self.per_tensor, tuple(self._numels), estimates), None)

    def _tensor_distances(self) -> tuple[core.TensorDistances, list[float] | None]:
        """per_tensor: the estimates in the state, and their step factors when they are held (every
        ``last == d``: no estimate since the step before, so nothing changes; None otherwise). Cached
        against the state's tensor, which `load_state_dict` replaces."""
        rows = self.state[TENSOR_DISTANCES]
        if self._tensor_cache[0] is not rows:  # set by _reset_counters; a loaded state is a new tensor
            self._tensor_cache = (rows, core.TensorDistances(self.per_tensor, tuple(self._numels),
                                                             tuple(self._tensor_estimates())), None)
        return self._tensor_cache[1], self._tensor_cache[2]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its parameters must be parameters of the model the graph was built from."""
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        foreign = [tuple(p.shape) for p in params if id(p) not in self._index]
        if foreign:
            raise ValueError(
                f"GMNOptimizer: {len(foreign)} parameter(s) in a param group are not parameters of the "
                f"model this optimizer was built for (shapes {foreign[:3]}); pass only model parameters."
            )
        super().add_param_group(param_group)
        if self._buffers is not None:
            self._attach_views()

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because some gradient was NaN or Inf."""
        return int(self.state[SKIPPED_STEPS])

    @property
    def rule_fallbacks(self) -> int:
        """Edges (summed over refreshes) where the rule's output was non-finite and Adam was used."""
        return int(self.state[RULE_FALLBACKS])

    @property
    def rule_refreshes(self) -> int:
        """Steps on which the rule ran and set a new lr scale."""
        return int(self.state[RULE_REFRESHES])

    @property
    def nowcast_jumps(self) -> int:
        """Times the nowcaster moved the parameters."""
        return int(self.state[NOWCAST_JUMPS])

    @property
    def nowcast_reverts(self) -> int:
        """Jumps the guard undid (the gradient after them more than doubled)."""
        return int(self.state[NOWCAST_REVERTS])

    @property
    def spike_trips(self) -> int:
        """Steps on which the spike guard damped the rule's lr boosts (``spike_guard``)."""
        return int(self.state[SPIKE_TRIPS])

    @property
    def distance(self) -> float:
        """``lr_free``: the step size now, Prodigy's distance estimate ``d`` (before ``lr`` multiplies it)."""
        return float(self.state[DISTANCE])

    @property
    def plateau_cuts(self) -> int:
        """``lr_free`` with ``plateau_block``: times the plateau decay has halved the step (`core.PlateauDecay`)."""
        return int(self.state["plateau_cuts"])

    @property
    def plateau_boosts(self) -> int:
        """``plateau_boost``: doublings of the step granted so far, ramping in or in force (0 after a spike took
        them back)."""
        return int(self.state["plateau_boosts"])

    @property
    def nowcast_fallbacks(self) -> int:
        """Nowcasts discarded because they held NaN/Inf."""
        return int(self.state[NOWCAST_FALLBACKS])

    # ---- flat state ----------------------------------------------------------------------
    MOMENT_KEYS = ("exp_avg", "exp_avg_sq")  # every optimizer's; self._state_keys adds the rule's scale and lr_free's
    SCHEDULE_FREE_KEYS = ("z", "exp_avg_sq")  # schedule_free: the point the plain steps move, in place of m
    STATE_KEYS = (*MOMENT_KEYS, "z", "lr_scale")  # what the step's Adam part reads (those the optimizer keeps)
    DISTANCE_KEYS = ("start", "grad_sum")  # lr_free: x_0 and Prodigy's gradient sum s
    SAMPLED_KEYS = (*DISTANCE_KEYS, "tensor_grad_sum")  # the entries the estimate reads (estimate_stride)

    def _all_state_keys(self, with_scale: bool) -> tuple[str, ...]:
        """The flat buffers this optimizer keeps (before a soap switch frees the estimate's)."""
        return ((*self._moment_keys, *(("lr_scale",) if with_scale else ()))
                + (self.DISTANCE_KEYS if self.lr_free else ())
                + (("tensor_grad_sum",) if self.per_tensor and not self.shared_sums else ()))

    def _allocate(self, device: torch.device) -> None:
        """Fresh flat buffers (edge order) on ``device`` and per-parameter views into them."""
        # lr_free: x_0 is the parameters before the first step (load_state_dict overwrites it)
        # schedule_free: z starts there too (OptState.zeros copies both)
        flat = (torch.cat([p.detach().reshape(-1).float() for p in self._params_all]).to(device)
                if self.lr_free or self.schedule_free else None)
        start = flat if self.lr_free else None
        init = OptState.zeros(self._num_edges, device, start=start, stride=self.estimate_stride,
                              every=self.estimate_every, per_tensor=self.per_tensor, sizes=tuple(self._numels),
                              warmup=self.estimate_warmup, d0=self.d0, schedule_free=flat if self.schedule_free else None,
                              shared_sums=self.shared_sums)
        named = {("z" if k == "exp_avg" and self.schedule_free else k): v for k, v in init.tensors().items()}
        self._buffers = {**{k: v for k, v in named.items() if k in self._state_keys},
                         "step": torch.zeros(len(self._params_all))}  # steps on CPU, as Adam
        self._attach_views()

    def _ensure_lr_scale(self) -> None:
        """The rule stopped being the identity after construction (its alpha was changed): allocate its
        scale as the identity's, ones, and re-point the views."""
        if "lr_scale" in self._state_keys:
            return
        self._state_keys = (*self._moment_keys, "lr_scale", *self._state_keys[len(self._moment_keys):])
        if self._buffers is not None:
            self._buffers["lr_scale"] = torch.ones_like(self._buffers["exp_avg_sq"])
            self._attach_views()

    def _attach_views(self) -> None:
        """Point ``self.state[p]`` of every grouped parameter at its slice of the flat buffers."""
        b = self._buffers
        assert b is not None
        self._views = {k: list(b[k].split(self._numels if k not in self.SAMPLED_KEYS else self._sampled))
                       for k in self._state_keys}
        self._segment_views: dict[tuple[int, ...], dict[str, list[Tensor]]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                i = self._index[id(p)]
                self.state[p] = {"step": b["step"][i], **{k: self._views[k][i].view(self._state_shape(k, i))
                                                          for k in self._state_keys}}

    def _state_shape(self, key: str, i: int) -> tuple[int, ...]:
        """The shape of a parameter's state entry: the parameter's, or (sampled,) for strided x_0 and sums."""
        if key in self.SAMPLED_KEYS and self.estimate_stride > 1:
            return (self._sampled[i],)
        return tuple(self._params_all[i].shape)

    def _ensure_state(self, device: torch.device) -> dict[str, Tensor]:
        if self._buffers is None:
            self._allocate(device)
        elif self._buffers["exp_avg_sq"].device != device:  # the model moved (e.g. .to("cuda"))
            self._buffers = {k: (v if k == "step" else v.to(device)) for k, v in self._buffers.items()}
            self._attach_views()
            for basis in self.state.get(SOAP_BASES, {}).values():  # soap_switch's statistics and bases go with them
                basis.update({k: v.to(device) for k, v in basis.items()})
        assert self._buffers is not None
        return self._buffers

    def _set_graph(self, graph: Any) -> None:
        """Adopt ``graph`` (checked against the model's parameters) and drop prepared copies."""
        check_graph(graph, self._params_all)
        self.graph = graph
        self._graph_cache = {}

    def _graph_on(self, device: torch.device) -> tuple[Any, GraphIndex]:
        if self.graph is None:
            raise not_built_error(self._first_call)
        key = f"{device}/{id(self.rule)}"  # the prepared form depends on the rule's network
        if key not in self._graph_cache:
            self._graph_cache[key] = (self.rule.prepare(self.graph, device), GraphIndex.from_graph(self.graph, device))
        return self._graph_cache[key]

    # ---- the step ------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One optimizer step; returns the closure's loss if a closure is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # Which parameters take part: in a group, requiring grad, with a gradient (as torch.optim).
        # Hyperparameters are read once per group (a group's Hyper is shared by its tensors).
        entries: list[tuple[int, Tensor, Hyper]] = []
        for group in self.param_groups:
            h = Hyper(float(group["lr"]), float(group["betas"][0]), float(group["betas"][1]),
                      float(group["eps"]), float(group["weight_decay"]),
                      growth_rate=float(group.get("growth_rate", float("inf"))),
                      settled_growth_rate=self.settled_growth_rate, d0=self.d0)
            for p in group["params"]:
                if p.grad is None or not p.requires_grad:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("GMNOptimizer does not support sparse gradients; use dense embeddings.")
                entries.append((self._index[id(p)], p, h))
        if not entries:
            return loss
        entries.sort(key=lambda t: t[0])
        device = entries[0][1].device
        if any(p.device != device for _, p, _ in entries):
            raise RuntimeError("GMNOptimizer: all optimized parameters must be on one device.")

        grads = [p.grad for _, p, _ in entries]
        if not self._all_finite(grads):
            self.state[SKIPPED_STEPS] += 1  # state and parameters stay exactly as they were
            return loss

        if self.nowcaster is not None and self.state[NOWCAST_GUARD] > 0 and self._undo_bad_jump(entries, grads):
            return loss  # the gradient was taken at the undone point: nothing else of this step applies
        buf = self._ensure_state(device)
        if len(entries) == len(self._params_all):
            buf["step"].add_(1)  # the usual case: every parameter takes part (no index_put)
        else:
            buf["step"][[i for i, _, _ in entries]] += 1
        self.state[STEPS_TAKEN] += 1
        step_list = buf["step"].tolist()
        identity = self._rule_is_identity()
        if not identity and "lr_scale" not in buf:
            self._ensure_lr_scale()
        if self.spike_guard is not None and (self.lr_free or not identity):
            self._watch_spikes(grads, buf.get("lr_scale"))
            if identity and core.refresh_due(self.state[STEPS_TAKEN], self.rule.config.refresh_every):
                self._lift_guard()  # what a refresh does for a rule (lr-free Prodigy: the cap on d)
        if self.soap_switch is not None and self.state[SOAP_SWITCHED_AT]:
            if self.state[SOAP_FOLLOWS]:
                self._follow_estimate(entries, grads)
            self._soap_step(entries, grads)
            return loss
        watching = self.soap_switch is not None and not self.state[SOAP_DECLINED_AT]
        if watching and self.state[STEPS_TAKEN] % eigenbasis.SWITCH_CHECK_EVERY == 0:
            self.state[SOAP_GRAD_LAST] = sq = self._grad_sq_norm(grads)
            self.state[SOAP_GRAD_PEAK] = max(float(self.state[SOAP_GRAD_PEAK]), sq)
        if self.lr_free:
            entries = self._adapt_distance(entries, grads, buf)

        # Segments of tensors that share hyperparameters and step count (torch.optim's grouping):
        # one segment when every tensor takes part alike, the usual case.
        segments: dict[tuple[Hyper, int], list[tuple[int, Tensor]]] = {}
        for i, p, h in entries:
            segments.setdefault((h, int(step_list[i])), []).append((i, p))
        # Parameter-shaped views of the state buffers per segment, cached: the step's Python
        # overhead is what separates it from Adam's on small models.
        seg_views = []
        for (h, t), seg in segments.items():
            key = tuple(i for i, _ in seg)
            if key not in self._segment_views:
                self._segment_views[key] = {k: [self._views[k][i].view(p.shape) for i, p in seg]
                                            for k in self.STATE_KEYS if k in self._views}  # what the Adam part reads
            seg_views.append((h, t, seg, self._segment_views[key]))

        grads32 = []  # schedule_free: the float32 gradients, which its step reads again
        for h, t, seg, v in seg_views:
            g = [p.grad if p.grad.dtype == torch.float32 else p.grad.float() for _, p in seg]
            core.update_moments(v.get("exp_avg"), v["exp_avg_sq"], g, h, inplace=True)
            if self.schedule_free:
                grads32.append(g)
        if self.schedule_free:
            self._schedule_free_step(seg_views, grads32)
            return loss

        if not identity and core.refresh_due(self.state[STEPS_TAKEN], self.rule.config.refresh_every):
            self._refresh(entries, device)

        for h, t, seg, v in seg_views:
            scale = None if identity else v["lr_scale"]
            denom = core.adam_denominator(v["exp_avg_sq"], h, t, inplace=True, scaled=scale is not None)
            factors = [self._tensor_factors[i] for i, _ in seg] if self.per_tensor else None
            self._update_in_float32([p for _, p in seg], lambda work: core.apply_update(
                work, v["exp_avg"], denom, scale, h, t, inplace=True, factors=factors))
        if self.nowcaster is not None and self.state[STEPS_TAKEN] % self.nowcaster.config.interval == 0:
            self._nowcast(entries, device)
        if watching and self.soap_switch.due(int(self.state[STEPS_TAKEN]),
                                             int(self.state[_SETTLE_ON[self.soap_switch.settle_on][1]])):
            if self.state[SOAP_GRAD_LAST] < self.soap_switch.decline_below * self.state[SOAP_GRAD_PEAK]:
                self.state[SOAP_DECLINED_AT] = int(self.state[STEPS_TAKEN])  # deep in a fit Adam's step is making
            else:
                self._switch_to_soap(buf)
        return loss

    def _switch_to_soap(self, buf: dict[str, Tensor]) -> None:
        """soap_switch: the estimate has settled; SOAP's step from the next step on, at scale x d (frozen; with
        ``settle_on="peak"`` scale x the largest estimate so far, which d was climbing towards), with fresh moments
        (they will hold a matrix's in its basis) and no bases yet (each from its first gradient)."""
        self.state[SOAP_SWITCHED_AT] = int(self.state[STEPS_TAKEN])
        settled, _ = _SETTLE_ON[self.soap_switch.settle_on]
        self.state[SOAP_LR] = self.soap_switch.scale * float(self.state[settled])
        self.state[SOAP_STEPS] = 0
        self.state[SOAP_SECOND_WEIGHT] = 0.0
        self.state[SOAP_SPIKE_SCALE], self.state[SOAP_SPIKE_CUTS] = 1.0, 0
        self.state[SOAP_NORM_SHORT] = self.state[SOAP_NORM_LONG] = math.nan
        self.state[SOAP_BASES] = {}
        self.state[SOAP_FOLLOWS] = self.soap_switch.follows_from_switch()
        self.state[SOAP_CLIMBED_AT] = 0
        buf["exp_avg"].zero_()
        buf["exp_avg_sq"].zero_()
        if not self.state[SOAP_FOLLOWS]:
            self._drop_estimate_buffers()

    def _drop_estimate_buffers(self) -> None:
        """soap_switch, switched: the estimate is frozen, so its x_0 and gradient sums are freed (and not saved)."""
        self._state_keys = tuple(k for k in self._state_keys if k not in self.SAMPLED_KEYS)
        if self._buffers is not None:
            self._buffers = {k: v for k, v in self._buffers.items() if k not in self.SAMPLED_KEYS}
            self._attach_views()

    def _soap_step(self, entries: list[tuple[int, Tensor, Hyper]], grads: list[Tensor]) -> None:
        """soap_switch, after the switch: SOAP's step on every tensor (`eigenbasis.soap_step`; a matrix's moments
        in its basis, in the flat buffers' views), at the group's lr x SOAP_LR x the plateau decay's scale (it runs
        on: at a constant step SOAP stalls at its noise floor deep in a fit) x the spike cuts' scale (with
        ``SoapSwitch.spike_cut``), decoupled weight decay; the second beta of this run step (`SoapSwitch.second_beta`)
        and, where it varies, its bias correction from the product of those taken (SOAP_SECOND_WEIGHT)."""
        self.state[SOAP_STEPS] += 1
        step, lr, bases = int(self.state[SOAP_STEPS]), float(self.state[SOAP_LR]), self.state[SOAP_BASES]
        run_step = int(self.state[STEPS_TAKEN])
        self.state[SOAP_SECOND_WEIGHT] = eigenbasis.weight_after(float(self.state[SOAP_SECOND_WEIGHT]),
                                                                 self.soap_switch.second_beta(run_step))
        # a constant beta keeps its closed form 1 - beta2^step (bit for bit the step of 0.16)
        weight = None if self.soap_switch.second_beta_rise is None else float(self.state[SOAP_SECOND_WEIGHT])
        if self.plateau_block:
            lr *= self._decay_on_plateau(run_step, grads)
        if self.soap_switch.spike_cut is not None:
            lr *= self._watch_soap_spikes(step, grads)
        groups: dict[Hyper, list[tuple[int, Tensor, Tensor]]] = {}  # one soap_step per group
        for (i, p, h), g in zip(entries, grads):
            groups.setdefault(h, []).append((i, p, g if g.dtype == torch.float32 else g.float()))
        with eigenbasis.flushing_denormals():
            for h, members in groups.items():
                params = [p for _, p, _ in members]
                basis_of = [None if p.ndim < 2 else bases.setdefault(i, {}) for i, p, _ in members]  # None: Adam
                hyper = self.soap_switch.hyper(h.lr * lr, h.eps, h.weight_decay, run_step)
                self._update_in_float32(params, lambda work: eigenbasis.soap_step(
                    work, [g for _, _, g in members], [self.state[p]["exp_avg"] for p in params],
                    [self.state[p]["exp_avg_sq"] for p in params], basis_of, step, hyper, weight))

    def _watch_soap_spikes(self, soap_steps: int, grads: list[Tensor]) -> float:
        """soap_switch's spike_cut: this gradient's squared norm into the watch (`eigenbasis.spike_watch`; the
        averages are NaN in the state, or absent in one saved by 0.16, before their first sample), a cut where it has
        risen and stayed up; the scale the cuts so far put on SOAP's step."""
        sq = self._grad_sq_norm(grads)
        if sq > 0 and math.isfinite(sq):
            short, long = (float(self.state.get(k, math.nan)) for k in (SOAP_NORM_SHORT, SOAP_NORM_LONG))
            short, long, cut = eigenbasis.spike_watch(
                None if math.isnan(short) else short, None if math.isnan(long) else long, math.log(sq),
                self.soap_switch.spike_cut, armed=soap_steps > eigenbasis.SPIKE_HOLD)
            self.state[SOAP_NORM_SHORT], self.state[SOAP_NORM_LONG] = short, long
            if cut:
                self.state[SOAP_SPIKE_SCALE] = float(self.state.get(SOAP_SPIKE_SCALE, 1.0)) * eigenbasis.SPIKE_FACTOR
                self.state[SOAP_SPIKE_CUTS] += 1
        return float(self.state.get(SOAP_SPIKE_SCALE, 1.0))

    @property
    def soap_spike_cuts(self) -> int:
        """``SoapSwitch.spike_cut``: how many times SOAP's step has been halved (0 without the cut)."""
        return int(self.state[SOAP_SPIKE_CUTS])

    @property
    def soap_switched_at(self) -> int:
        """``soap_switch``: the step after which SOAP's step runs (0 while the lr-free step runs)."""
        return int(self.state[SOAP_SWITCHED_AT])

    @property
    def soap_climbed_at(self) -> int:
        """``SoapSwitch.follow_climb``: the step on which the estimate run on after the switch had climbed
        ``follow_climb``-fold and SOAP's lr began to follow it (0: it has not; a switch made in a plateau)."""
        return int(self.state[SOAP_CLIMBED_AT])

    @property
    def soap_declined_at(self) -> int:
        """``soap_switch``: the step at which the estimate had settled but the gradient norm had already fallen
        below ``SoapSwitch.decline_below`` of its peak, so no switch came, for good (0: it did not decline)."""
        return int(self.state[SOAP_DECLINED_AT])

    def _schedule_free_step(self, seg_views: list[tuple[Hyper, int, list[tuple[int, Tensor]], dict[str, list[Tensor]]]],
                            grads: list[list[Tensor]]) -> None:
        """schedule_free: the average takes in this step's size (the largest group lr, lr-free times the
        estimate), then every segment moves z and y (`core.schedule_free_update`)."""
        lr = max(h.lr for h, _, _, _ in seg_views)
        avg = core.Averaging(float(self.state[AVERAGE_WEIGHT_SUM]), float(self.state[AVERAGE_PEAK])).after(lr)
        self.state[AVERAGE_WEIGHT_SUM], self.state[AVERAGE_PEAK] = avg.weight_sum, avg.peak
        c = avg.weight()
        for (h, t, seg, v), g in zip(seg_views, grads):
            denom = core.adam_denominator(v["exp_avg_sq"], h, t, inplace=True, scaled=True)
            factors = [self._tensor_factors[i] for i, _ in seg] if self.per_tensor else None
            self._update_in_float32([p for _, p in seg], lambda work: core.schedule_free_update(
                work, v["z"], g, denom, h, t, c, inplace=True, factors=factors))

    def _update_in_float32(self, params: list[Tensor], update: Callable[[list[Tensor]], Any]) -> None:
        """``update(params)`` in place; bf16 / fp16 parameters (e.g. after model.to(torch.bfloat16)) are
        updated through float32 copies (from the float32 state), then rounded once into the parameter."""
        low = [k for k, p in enumerate(params) if p.dtype in _LOW_PRECISION]
        if not low:
            update(params)
            return
        if self.lr_free and not self._warned_low_precision:
            self._warned_low_precision = True
            warnings.warn(
                "GMNOptimizer: lr-free on bf16/fp16 parameters: steps of the size the estimate starts at "
                f"(d0={self.d0:g}) are below the parameters' precision and are lost in the rounding, so the "
                "estimate (which grows only as the parameters move) may stay small and training stall. Keep "
                "float32 parameters (bf16 autocast for the compute), or pass lr= for a fixed lr.", stacklevel=3)
        work = [p.float() if k in low else p for k, p in enumerate(params)]
        update(work)
        torch._foreach_copy_([params[k] for k in low], [work[k] for k in low])

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """schedule_free: within the block the parameters hold the average ``x`` (evaluate or save the
        model there; schedulefree's ``optimizer.eval()``), afterwards ``y`` again. The training loss is
        taken at ``y``; the loss at ``x`` is often lower (100x on the held-out SIREN), and higher where the
        average lags a loss still falling fast. BatchNorm statistics are those gathered at ``y``."""
        if not self.schedule_free:
            raise RuntimeError("GMNOptimizer.averaged(): only a schedule-free optimizer (schedule_free=True, e.g. "
                               "rule=\"lrfree_sf\") keeps an average.")
        if self._buffers is None:  # no step yet: x = y = the parameters
            yield
            return
        # each stepped parameter with its group's beta1 (frozen ones, and ones in no group, are left as they are)
        stepped = [(p, self._views["z"][self._index[id(p)]].view_as(p), float(g["betas"][0]))
                   for g in self.param_groups for p in g["params"] if self._buffers["step"][self._index[id(p)]] > 0]
        saved = [p.detach().clone() for p, _, _ in stepped]
        with torch.no_grad():
            for p, z, beta1 in stepped:
                p.copy_(core.averaged_point(p.float(), z, beta1))
        try:
            yield
        finally:
            with torch.no_grad():
                for (p, _, _), y in zip(stepped, saved):
                    p.copy_(y)

    def _nowcast(self, entries: list[tuple[int, Tensor, Hyper]], device: torch.device) -> None:
        """Store the parameters; with ``context`` stored, jump to the nowcast and start a new context."""
        nc = self.nowcaster
        assert nc is not None
        cfg = nc.config
        ctx = self.state.get(NOWCAST_CONTEXT)
        if not isinstance(ctx, Tensor) or ctx.shape != (cfg.context, self._num_edges) or ctx.device != device:
            ctx = self.state[NOWCAST_CONTEXT] = torch.zeros(cfg.context, self._num_edges, device=device)
            self.state[NOWCAST_FILLED] = 0
        filled = int(self.state[NOWCAST_FILLED])
        torch.cat([p.detach().reshape(-1).float() for p in self._params_all], out=ctx[filled])
        self.state[NOWCAST_FILLED] = filled = filled + 1
        if filled < cfg.context:
            return
        self.state[NOWCAST_FILLED] = 0
        key = f"{device}/nowcast/{id(nc)}"
        if key not in self._graph_cache:
            if self.graph is None:
                raise not_built_error(self._first_call)
            self._graph_cache[key] = (nc.to(device).prepare(self.graph, device),
                                      tensor_ids(self._numels, device))
        graph, tensor_id = self._graph_cache[key]
        horizon = int(self.state[NOWCAST_HORIZON]) or cfg.horizon
        new = nc(graph, ctx, tensor_id, len(self._numels), horizon=horizon)
        if not bool(torch.isfinite(new).all()):
            self.state[NOWCAST_FALLBACKS] += 1
            return
        if torch.equal(new, ctx[-1]):
            return  # nothing moves (an untrained nowcaster): no jump to check
        parts = new.split(self._numels)
        for i, p, _ in entries:
            p.copy_(parts[i].view_as(p))
        self.state[NOWCAST_JUMPS] += 1
        self.state[NOWCAST_GUARD] = self._grad_sq_norm([p.grad for _, p, _ in entries])
        self.state[NOWCAST_HORIZON] = horizon

    @staticmethod
    def _grad_sq_norm(grads: list[Tensor]) -> float:
        return float(torch.stack(torch._foreach_norm(grads)).float().pow(2).sum())

    def _undo_bad_jump(self, entries: list[tuple[int, Tensor, Hyper]], grads: list[Tensor]) -> bool:
        """The guard, on the first step after a jump: undo it if the gradient norm more than doubled."""
        cfg = self.nowcaster.config  # type: ignore[union-attr]
        before, self.state[NOWCAST_GUARD] = float(self.state[NOWCAST_GUARD]), 0.0
        horizon = int(self.state[NOWCAST_HORIZON]) or cfg.horizon
        if self._grad_sq_norm(grads) <= GUARD_RATIO * before:
            self.state[NOWCAST_HORIZON] = min(cfg.horizon, horizon + 1)
            return False
        parts = self.state[NOWCAST_CONTEXT][-1].split(self._numels)  # the parameters before the jump
        for i, p, _ in entries:
            p.copy_(parts[i].view_as(p))
        self.state[NOWCAST_REVERTS] += 1
        self.state[NOWCAST_HORIZON] = max(1, horizon // 2)
        return True

    def _all_finite(self, grads: list[Tensor]) -> bool:
        """True if no gradient holds a NaN/Inf: GradScaler's fused check, one op for all tensors.

        It multiplies the gradients by 1.0 in place (values unchanged); per-tensor norms + stack +
        isfinite would be four ops, the largest overhead of a step on a small model.
        """
        device = grads[0].device
        if device not in self._finite_check:
            self._finite_check[device] = (torch.zeros((), device=device), torch.ones((), device=device))
        found, one = self._finite_check[device]
        found.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, one)
        return not bool(found)

    def _adapt_distance(self, entries: list[tuple[int, Tensor, Hyper]], grads: list[Tensor], buf: dict[str, Tensor]
                        ) -> list[tuple[int, Tensor, Hyper]]:
        """lr_free (`core.advance`'s order): the moments to units of the current estimate, the estimate
        from this gradient; returns ``entries`` with every group's lr multiplied by the estimate this step
        moves by (the one before this gradient, as Prodigy), and by the plateau decay's scale."""
        step = int(self.state[STEPS_TAKEN])
        if self.plateau_block:  # before the estimate, whose weights read the step's lr as Prodigy's do
            scale = self._decay_on_plateau(step, grads)
            if scale != 1.0:
                entries = self._scale_lrs(entries, scale)
        est = self._network_estimate()
        tens, held = self._tensor_distances() if self.per_tensor else (None, None)
        first = None if self.schedule_free else self._views["exp_avg"]  # schedule-free: z is a point, not a moment
        if tens is not None and held is None:  # each tensor's moments to units of its own step size
            core.shrink_tensor_moments(first, self._views["exp_avg_sq"], tens.shrinks(est), inplace=True)
        elif tens is None and est.shrink() < 1.0:
            core.shrink_moments(None if first is None else [buf["exp_avg"]], [buf["exp_avg_sq"]], est.shrink(), inplace=True)
        span = core.estimate_span(step, self.estimate_every, self.estimate_warmup)
        if not span:  # d stays: this step moves by it
            self.state[DISTANCE_LAST] = est.d
            if tens is not None and held is None:  # the first step after an estimate: they are held from here
                tens = tens.held()
                self._store_tensor_estimates(tens.estimates)
                held = tens.factors(replace(est, last=est.d))
                self._tensor_cache = (*self._tensor_cache[:2], held)
            self._tensor_factors = held
            return self._scale_lrs(entries, est.d)
        params, grads = self._estimate_inputs(entries, grads)
        # Parameters without a gradient this step take no part (their x_0 - x and s stay as they are).
        # The network's estimate and (per tensor) each tensor's own from its own sum, in one pass over x_0 - x.
        ests = None if tens is None else list(tens.held().estimates)  # the tensors without a gradient: theirs stays
        new, _, mine, _ = core.estimate_distances(
            # x_0 and the sum: the parameter-shaped views (_attach_views)
            params, grads, [self.state[p]["start"] for _, p, _ in entries],
            [self.state[p]["grad_sum"] for _, p, _ in entries], est, core.estimate_hyper(entries[0][2], self.schedule_free),
            step, inplace=True, span=span, strides=[self._strides[i] for i, _, _ in entries],
            tensor_sums=None if tens is None or self.shared_sums else [self.state[p]["tensor_grad_sum"] for _, p, _ in entries],
            estimates=None if ests is None else [ests[i] for i, _, _ in entries])
        if tens is not None:
            assert ests is not None and mine is not None
            for (i, _, _), e in zip(entries, mine):
                ests[i] = e
            tens = replace(tens, estimates=tuple(ests))
            self._store_tensor_estimates(tens.estimates)
        self._store_network_estimate(est, new)
        if tens is not None:
            self._tensor_factors = tens.factors(new)
        return self._scale_lrs(entries, new.last)

    def _network_estimate(self) -> core.DistanceEstimate:
        """The network's estimate as the state's counters hold it."""
        return core.DistanceEstimate(float(self.state[DISTANCE_NUMERATOR]), float(self.state[DISTANCE]),
                                     float(self.state[DISTANCE_LAST]), float(self.state[DISTANCE_PEAK]),
                                     bool(self.state[DISTANCE_SETTLED]))

    def _estimate_inputs(self, entries: list[tuple[int, Tensor, Hyper]], grads: list[Tensor]
                         ) -> tuple[list[Tensor], list[Tensor]]:
        """The points (schedule-free: z, which has come from x_0 as `core.advance` moves it) and gradients the
        estimate reads, in float32: every ``estimate_stride``-th entry (strided views; copies only of non-contiguous
        tensors)."""
        params, grads = [p for _, p, _ in entries], list(grads)
        if self.schedule_free:
            params = [self.state[p]["z"] for _, p, _ in entries]
        if self.estimate_stride > 1:
            strides = self._strides
            params = [p.detach().reshape(-1)[::strides[i]] for (i, _, _), p in zip(entries, params)]
            grads = [g.reshape(-1)[::strides[i]] for (i, _, _), g in zip(entries, grads)]
        return [p.float() for p in params], [g.float() for g in grads]

    def _store_network_estimate(self, before: core.DistanceEstimate, new: core.DistanceEstimate) -> None:
        """The network's new estimate into the counters (held at the spike guard's cap while it is set), and the
        steps ``d`` and its peak last moved on (what the soap switch waits on)."""
        cap = float(self.state[DISTANCE_CAP])
        if cap > 0 and new.d > cap:  # the spike guard halved d: the estimate may not take it back yet
            new = replace(new, d=max(cap, before.d))
        if new.d != float(self.state[DISTANCE]):
            self.state[DISTANCE_MOVED_AT] = self.state[STEPS_TAKEN]
        if new.peak != float(self.state[DISTANCE_PEAK]):
            self.state[PEAK_MOVED_AT] = self.state[STEPS_TAKEN]
        self.state[DISTANCE_NUMERATOR], self.state[DISTANCE], self.state[DISTANCE_LAST] = new.numerator, new.d, new.last
        self.state[DISTANCE_PEAK], self.state[DISTANCE_SETTLED] = new.peak, int(new.settled)

    def _follow_estimate(self, entries: list[tuple[int, Tensor, Hyper]], grads: list[Tensor]) -> None:
        """``SoapSwitch.follow`` / ``follow_climb``, after the switch: on the estimate's steps the network's ``d`` as
        before the switch (the per-tensor estimates stay as they were: SOAP's step has one lr), and SOAP's lr ``scale``
        x it; with ``follow_climb`` only from the step it first reaches ``follow_climb`` x the lr it was frozen at."""
        step = int(self.state[STEPS_TAKEN])
        span = core.estimate_span(step, self.estimate_every, self.estimate_warmup)
        if not span:
            return
        est = self._network_estimate()
        params, grads = self._estimate_inputs(entries, grads)
        new, _, _, _ = core.estimate_distances(
            params, grads, [self.state[p]["start"] for _, p, _ in entries],
            [self.state[p]["grad_sum"] for _, p, _ in entries], est,
            core.estimate_hyper(entries[0][2], self.schedule_free), step, inplace=True, span=span,
            strides=[self._strides[i] for i, _, _ in entries])
        self._store_network_estimate(est, new)
        lr = self.soap_switch.scale * float(self.state[_SETTLE_ON[self.soap_switch.settle_on][0]])
        if self.state[SOAP_FOLLOWS] == eigenbasis.WAITS_FOR_CLIMB:
            if lr < self.soap_switch.follow_climb * float(self.state[SOAP_LR]):
                return  # not yet k-fold: SOAP's lr stays where the switch froze it
            self.state[SOAP_FOLLOWS], self.state[SOAP_CLIMBED_AT] = eigenbasis.FOLLOWS, step
        self.state[SOAP_LR] = lr

    def _decay_on_plateau(self, step: int, grads: list[Tensor]) -> float:
        """``plateau_block``: the plateau decay after this step's gradient (a sample of its squared norm on
        `core.plateau_sample_due` steps, a block closed every ``plateau_block`` steps); returns its scale.
        On the other steps (9 in 10) nothing is read or written: on sub-millisecond steps the bookkeeping shows."""
        # anchored only: the estimate this step moves by (before this gradient's); unanchored, nothing more is read
        d = float(self.state[DISTANCE]) if self.plateau_anchor else 0.0
        if core.plateau_due(step, self.plateau_block):
            plateau = core.PlateauDecay.from_row([self.state[k] for k in PLATEAU_KEYS], boost=self.plateau_boost,
                                                 anchored=self.plateau_anchor)
            for key, value in zip(PLATEAU_KEYS, plateau.after(step, self.plateau_block, grads, d).row()):
                self.state[key] = value
        anchor = float(self.state["plateau_anchor"]) if self.plateau_anchor else 0.0  # 0: the doubling as is
        return core.plateau_scale(int(self.state["plateau_cuts"]), int(self.state["plateau_ramp"]), anchor, d)

    @staticmethod
    def _scale_lrs(entries: list[tuple[int, Tensor, Hyper]], d: float) -> list[tuple[int, Tensor, Hyper]]:
        """``entries`` with every group's lr multiplied by the estimate ``d`` (one Hyper per group)."""
        scaled = {h: replace(h, lr=h.lr * d) for h in {h for _, _, h in entries}}
        return [(i, p, scaled[h]) for i, p, h in entries]

    def _watch_spikes(self, grads: list[Tensor], lr_scale: Tensor | None) -> None:
        """The spike guard: after SPIKE_STEPS consecutive gradient norms above ``spike_guard`` x their
        running mean, halve the log of every lr scale above 1 (in place, this step on) and, lr-free,
        the distance estimate ``d`` (capped there), and count one more halving in force; again on every
        further step of the spike."""
        norm = self._grad_sq_norm(grads) ** 0.5
        mean = float(self.state[SPIKE_NORM_EMA])
        high = mean > 0 and norm > self.spike_guard * mean
        self.state[SPIKE_STREAK] = int(self.state[SPIKE_STREAK]) + 1 if high else 0
        if self.state[SPIKE_STREAK] >= SPIKE_STEPS:
            if int(self.state[SPIKE_LEVEL]) < SPIKE_MAX_LEVEL:
                if lr_scale is not None:  # log s -> log s / 2 where s > 1 (an identity rule's s is 1)
                    torch.where(lr_scale > 1, lr_scale.sqrt(), lr_scale, out=lr_scale)
                if self.lr_free:  # d and the moments' units alike: the step halves (a pending shrink is kept)
                    self.state[DISTANCE] = self.state[DISTANCE_CAP] = float(self.state[DISTANCE]) / 2
                    self.state[DISTANCE_LAST] = float(self.state[DISTANCE_LAST]) / 2
                    # an anchored boost would top the halved d back up to its multiple of the anchor
                    self.state["plateau_anchor"] = float(self.state["plateau_anchor"]) / 2
                self.state[SPIKE_LEVEL] += 1
                self.state[SPIKE_TRIPS] += 1
                self.state[SPIKE_TRIPPED] = 1
            else:  # fully damped and still high: a new level of the gradient norm, not a spike
                self.state[SPIKE_NORM_EMA], self.state[SPIKE_STREAK] = norm, 0
        else:  # the mean chases the norm (a slow rise never trips), but not once a spike is declared
            self.state[SPIKE_NORM_EMA] = norm if mean == 0 else SPIKE_EMA_DECAY * mean + (1 - SPIKE_EMA_DECAY) * norm

    def _lift_guard(self) -> None:
        """At a refresh: lift one of the spike guard's halvings if the interval before it was clean (the
        cap on an lr-free ``d`` doubles, and goes when none is left)."""
        if not self.state[SPIKE_TRIPPED] and self.state[SPIKE_LEVEL] > 0:
            self.state[SPIKE_LEVEL] -= 1
            if self.state[DISTANCE_CAP]:
                self.state[DISTANCE_CAP] = 0.0 if self.state[SPIKE_LEVEL] == 0 else 2 * float(self.state[DISTANCE_CAP])
        self.state[SPIKE_TRIPPED] = 0

    def _damp(self, scale: Tensor) -> Tensor:
        """The rule's new scale under the spike guard's halvings; one is lifted after a clean interval."""
        if self.spike_guard is None:
            return scale
        self._lift_guard()
        level = int(self.state[SPIKE_LEVEL])
        return scale if level == 0 else torch.where(scale > 1, scale.pow(0.5 ** level), scale)

    def _rule_is_identity(self) -> bool:
        """``rule.is_identity``, re-read only when alpha changed (reading it syncs a GPU)."""
        key = (id(self.rule), self.rule.alpha._version, self.rule.alpha.data_ptr())
        if getattr(self, "_identity_key", None) != key:
            self._identity_key, self._identity = key, self.rule.is_identity
        return self._identity

    def _refresh(self, entries: list[tuple[int, Tensor, Hyper]], device: torch.device) -> None:
        """Run the rule on the flat state; store its lr scale (non-finite outputs -> 1, counted)."""
        graph, index = self._graph_on(device)
        buf = self._buffers
        assert buf is not None
        self.rule.to(device)
        parts: list[Tensor | None] = [None] * len(self._params_all)
        for i, p, _ in entries:
            parts[i] = p.grad.reshape(-1)
        grad = torch.cat([t if t is not None else torch.zeros(n, device=device) for t, n in zip(parts, self._numels)]).float()
        param = torch.cat([p.detach().reshape(-1) for p in self._params_all]).float()
        state = OptState(buf["exp_avg"], buf["exp_avg_sq"], buf["lr_scale"], int(self.state[STEPS_TAKEN]))
        lr = None
        if self.rule.features.relative_lr and self.lr_free:  # group lrs are multipliers: the rule reads its own lr
            lr = core.rule_lr(self.rule, True, 0.0)
        elif self.rule.features.relative_lr:  # each tensor's group lr (as it is now: schedulers change it)
            group_lr = {id(p): float(g["lr"]) for g in self.param_groups for p in g["params"]}
            lr = torch.tensor([group_lr.get(id(p), self.defaults["lr"]) for p in self._params_all], device=device)
        total = self.total_steps if self.rule.features.horizon else 0
        # The snr features' bias correction: one (beta1, beta2) for the whole network, the first group's.
        betas = tuple(float(b) for b in self.param_groups[0]["betas"])
        scale, n_bad = core.refresh_lr_scale(self.rule, graph, index, grad, param, state, lr=lr, total_steps=total,
                                             betas=betas)
        if self.lr_free:
            scale = core.normalise_scale(scale, self.rule, sizes=tuple(self._numels) if self.scale_per_tensor else None)
        buf["lr_scale"].copy_(self._damp(scale))
        self.state[RULE_FALLBACKS] += n_bad
        self.state[RULE_REFRESHES] += 1

    @property
    def total_steps(self) -> int:
        """The planned number of steps the rule's horizon features read: the largest ``total_steps`` of
        the param groups (set by the constructor; a group may override it), 0 when none is given."""
        return max(int(g.get("total_steps") or 0) for g in self.param_groups)

    # ---- checkpointing -------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by `state_dict`, copying it into the flat buffers (views stay views)."""
        packed = state_dict.get("state", {})
        per_param = [k for k in packed if isinstance(k, int)]
        if per_param and STEPS_TAKEN not in packed:  # checked before anything is replaced: a refused state loses nothing
            raise ValueError(
                f"GMNOptimizer.load_state_dict: the state (parameter {per_param[0]}: {sorted(packed[per_param[0]])}) "
                f"holds none of GMNOptimizer's counters ({STEPS_TAKEN!r}): it was not saved by a GMNOptimizer (e.g. "
                "by torch.optim.Adam).")
        super().load_state_dict(state_dict)
        if packed.get(SOAP_SWITCHED_AT) and SOAP_SECOND_WEIGHT not in packed and self.soap_switch is not None:
            # saved by 0.16, whose second beta was constant after the switch: its closed form
            self.state[SOAP_SECOND_WEIGHT] = 1 - self.soap_switch.betas[1] ** int(packed.get(SOAP_STEPS, 0))
        if PEAK_MOVED_AT not in packed:  # saved by 0.16 or before: the peak moved no later than d, which climbs to it
            self.state[PEAK_MOVED_AT] = int(packed.get(DISTANCE_MOVED_AT, 0))
        for key in _COUNTERS:
            self.state.setdefault(key, self.d0 if key in _DISTANCE_SCALARS else 0)
        self._state_keys = self._all_state_keys(with_scale="lr_scale" in self._state_keys)  # a switch freed some
        if self.state[SOAP_SWITCHED_AT]:
            self._load_soap_bases()
            saved = all("start" in packed[k] for k in per_param)  # a frozen switch of 0.15 on saves no estimate
            follows = self.soap_switch.follows_from_switch()
            if not (self.state[SOAP_FOLLOWS] and follows and saved):
                self.state[SOAP_FOLLOWS] = 0  # SOAP's lr stays where the state left it (SoapSwitch.follow)
                self._drop_estimate_buffers()  # a state saved before 0.15 holds them: not read
            elif follows == eigenbasis.FOLLOWS:
                self.state[SOAP_FOLLOWS] = follows  # follow=True: from now on, climbed or not
        if self.per_tensor:
            rows = self.state.get(TENSOR_DISTANCES)
            if isinstance(rows, Tensor) and tuple(rows.shape) == (len(self._params_all), 4):  # saved by 0.6 or before
                rows = torch.tensor([core.DistanceEstimate.from_row(r).row() for r in rows.tolist()], dtype=torch.float64)
            if not isinstance(rows, Tensor) or tuple(rows.shape) != (len(self._params_all), 5):
                raise ValueError(
                    "GMNOptimizer.load_state_dict: the state holds no per-tensor estimates for this model's "
                    f"{len(self._params_all)} tensors: it was saved without per_tensor (or for another model); "
                    "load it into GMNOptimizer(..., per_tensor=0).")
            self.state[TENSOR_DISTANCES] = rows.detach().to("cpu", torch.float64).clone()
        loaded = {p: self.state[p] for group in self.param_groups for p in group["params"] if p in self.state}
        if not loaded:
            self._buffers = None
            return
        device = next(iter(loaded)).device
        self._allocate(device)
        buf = self._buffers
        assert buf is not None
        for p, st in loaded.items():
            i = self._index[id(p)]
            if "lr_scale" in self._state_keys and "lr_scale" not in st:  # saved with an identity rule: its scale is 1
                st["lr_scale"] = torch.ones_like(p, dtype=torch.float32)
            missing = [key for key in ("step", *self._state_keys) if key not in st]
            if "z" in missing and "exp_avg" in st:
                raise ValueError(
                    f"GMNOptimizer.load_state_dict: the state of parameter {i} holds Adam's momentum, not a "
                    "schedule-free z: it was saved without schedule_free; load it into GMNOptimizer(..., "
                    "schedule_free=False).")
            if "exp_avg" in missing and "z" in st:
                raise ValueError(
                    f"GMNOptimizer.load_state_dict: the state of parameter {i} is schedule-free (it holds z, not "
                    "Adam's momentum); load it into GMNOptimizer(..., schedule_free=True).")
            if self.shared_sums and "tensor_grad_sum" in st:
                raise ValueError(
                    f"GMNOptimizer.load_state_dict: the state of parameter {i} holds a per-tensor gradient sum: it "
                    "was saved with shared_sums=False; load it into GMNOptimizer(..., shared_sums=False).")
            if missing == ["tensor_grad_sum"]:
                raise ValueError(
                    f"GMNOptimizer.load_state_dict: the state of parameter {i} holds no per-tensor gradient sum: it "
                    "was saved with shared_sums=True (or without per_tensor); load it into GMNOptimizer(..., "
                    "shared_sums=True).")
            if missing and set(missing) <= set(self.DISTANCE_KEYS):
                raise ValueError(
                    f"GMNOptimizer.load_state_dict: the state of parameter {i} lacks {missing}: it was saved by an "
                    "optimizer without lr_free=True; load it into GMNOptimizer(..., lr_free=False)."
                )
            if missing:
                raise ValueError(
                    f"GMNOptimizer.load_state_dict: the state of parameter {i} (shape {tuple(p.shape)}) lacks "
                    f"{missing}; it was not saved by this version of GMNOptimizer."
                )
            wrong = [key for key in self._state_keys if tuple(st[key].shape) != self._state_shape(key, i)]
            if wrong:
                raise ValueError(
                    f"GMNOptimizer.load_state_dict: the state of parameter {i} has {wrong} of shapes "
                    f"{[tuple(st[k].shape) for k in wrong]}, expected {[self._state_shape(k, i) for k in wrong]}"
                    + (" (an lr-free state saved with another estimate_stride, or with a stride > 1 by metaopt "
                       "< 0.3.3, which sampled other entries?)." if set(wrong) <= set(self.SAMPLED_KEYS)
                       else ".")
                )
            buf["step"][i] = st["step"]
            for key in self._state_keys:
                self._views[key][i].copy_(st[key].reshape(-1))
        self._attach_views()

    def _load_soap_bases(self) -> None:
        """A state saved after the soap switch: its bases, copied (the step updates them in place)."""
        if self.soap_switch is None:
            raise ValueError("GMNOptimizer.load_state_dict: the state was saved after the switch to SOAP's step "
                             f"(at step {int(self.state[SOAP_SWITCHED_AT])}); load it into an optimizer that switches: "
                             "GMNOptimizer(model) (its default mode), soap_switch=True or the SoapSwitch it ran "
                             "with, not soap_switch=False nor a mode without the switch.")
        bases = self.state.get(SOAP_BASES)
        if not isinstance(bases, dict) or any(not isinstance(k, int) or not 0 <= k < len(self._params_all)
                                              or self._params_all[k].ndim < 2 for k in bases):
            raise ValueError("GMNOptimizer.load_state_dict: the state was saved after the switch to SOAP's step but "
                             f"holds no valid {SOAP_BASES!r} for this model's matrices (saved for another model?).")
        for k, basis in bases.items():
            rows, cols = eigenbasis.as_matrix(self._params_all[k]).shape
            sides = {"left": rows, "q_left": rows, "right": cols, "q_right": cols}
            if set(basis) - set(sides) or any(not eigenbasis.fits_side(v, sides[n]) for n, v in basis.items()):
                raise ValueError(f"GMNOptimizer.load_state_dict: the SOAP bases of parameter {k} do not fit its "
                                 f"{rows} x {cols} matrix (saved for another model?).")
        device = self._params_all[0].device
        self.state[SOAP_BASES] = {k: {n: v.detach().to(device, torch.float32).clone() for n, v in basis.items()}
                                  for k, basis in bases.items()}

    @classmethod
    def from_pretrained(cls, directory: str | Path, model: nn.Module, **kwargs: Any) -> "GMNOptimizer":
        """An optimizer for ``model`` driven by the rule saved in ``directory``."""
        return cls(model, rule=UpdateRule.from_pretrained(directory), **kwargs)


def _resolve_soap_switch(soap_switch: bool | SoapSwitch | None, lr_free: bool, rule: UpdateRule, schedule_free: bool,
                         nowcast: Any, spike_guard: float | None) -> SoapSwitch | None:
    """``soap_switch``'s settings (True: `SoapSwitch`'s defaults; None: the switch the rule's lr-free mode records,
    `RuleConfig.soap_switch`, where it can run: not at a fixed lr, nor with schedule_free, nowcast or spike_guard,
    which ask for the lr-free step it ends), or an error where a switch asked for cannot run."""
    if soap_switch is None:
        recorded = rule.config.soap_switch
        if recorded is None or not lr_free or schedule_free or nowcast is not None or spike_guard is not None:
            return None
        soap_switch = SoapSwitch.from_dict(recorded)  # checked below as one passed (a learned rule is refused)
    if soap_switch is False:
        return None
    switch = SoapSwitch() if soap_switch is True else soap_switch
    if not isinstance(switch, SoapSwitch):
        raise TypeError(f"GMNOptimizer: soap_switch is True, a metaopt.optim.SoapSwitch or None, got {soap_switch!r}.")
    if not lr_free:
        raise ValueError("GMNOptimizer: soap_switch switches when the lr-free estimate has settled and runs SOAP at "
                         "a multiple of it; it needs lr_free (GMNOptimizer(model, soap_switch=True) has it).")
    if not rule.is_identity or schedule_free:
        raise ValueError("GMNOptimizer: soap_switch replaces Adam's step by SOAP's; a learned rule reads Adam's "
                         "moments and a schedule-free state keeps none: use it with the lr-free default "
                         "(no rule=, schedule_free=False).")
    if nowcast is not None or spike_guard is not None:
        raise ValueError("GMNOptimizer: soap_switch does not go with nowcast or spike_guard (both act on the lr-free "
                         "step, which the switch ends).")
    return switch.check()


def _refuse_sharded(model: nn.Module, params: list[Tensor]) -> None:
    """FSDP flattens (FSDP1) or shards (FSDP2, DTensor) parameters: the rule would see neither the
    model's tensors nor its whole network. Say so instead of failing inside a foreach op."""
    sharded = [type(p).__name__ for p in params if type(p).__name__ in ("DTensor", "FlatParameter")]
    if sharded or type(model).__name__ == "FullyShardedDataParallel":
        raise TypeError(
            f"GMNOptimizer: {type(model).__name__} holds sharded or flattened parameters "
            f"({sharded[0] if sharded else 'FlatParameter'}), which FSDP makes; the rule reads the model's own "
            "tensors and graph. Wrap the model with DistributedDataParallel (supported) instead of FSDP."
        )
