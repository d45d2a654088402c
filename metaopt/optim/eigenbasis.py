"""SOAP's step: Adam run in the eigenbasis of Shampoo's preconditioner.

SOAP (Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", ICLR 2025) keeps, for every weight
matrix ``G`` (``rows x cols``), Shampoo's two statistics ``L = E[G G^T]`` and ``R = E[G^T G]`` (exponential
averages) and their eigenvectors ``Q_L``, ``Q_R``. Each step rotates the gradient into that basis,
``G' = Q_L^T G Q_R``, runs Adam there (both moments kept in the basis) and rotates Adam's direction back,
``Q_L (m' / (sqrt(v') + eps)) Q_R^T``. The bases are refreshed every ``precondition_every`` steps by one power
iteration and a QR decomposition from the previous basis, as the authors do (the first by ``eigh``, from the
first gradient, whose step is taken; the authors skip it); at a refresh the second moment's rows and columns
follow the eigenvalues' new order and the momentum is carried into the new basis (the authors keep the
momentum outside the basis and rotate it every step: the same direction at two matrix products less per step).

Vectors (biases, norms' gains) get Adam. Convolution filters count as matrices ``out x (in * kernel)``. A side
longer than ``max_dim`` is not rotated (its factor is the identity), as the authors' ``max_precond_dim``.
``sides`` picks the sides rotated: ``"both"`` (SOAP), or one, as the authors' one-sided variant: ``"shorter"``
(the columns on a square), ``"columns"`` (a linear layer's inputs, a filter's ``in * kernel``) or ``"rows"`` (its
outputs). One side is three matrix products a step instead of six on a square, one QR instead of two at a refresh,
one side's statistics and basis kept (a convolution's rows: ``out x out`` instead of also ``(in * kernel)^2``).
``block`` cuts a side longer than it into equal diagonal blocks of ``block / 2`` to ``block`` (block-diagonal
statistics and bases, as distributed Shampoo's ``max_preconditioner_dim`` blocks; a side of 256 with ``block=64``:
four 64 x 64 bases, a quarter of the products and of the state, a sixteenth of a refresh's QR): a basis is then a
stack ``n x b x b``; a side no such blocks divide stays whole (`blocks`).

Two optimizers run this step: ``GMNOptimizer(model, soap_switch=True)`` once its lr-free estimate has settled
(metaopt/optim/optimizer.py) and the tuned baseline ``outer_train.soap.SOAP``. The moments are the caller's
tensors (views into flat buffers, for ``GMNOptimizer``), updated in place; a matrix's statistics and bases are
plain tensors in a dict the caller keeps in its state.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from . import core

PRECONDITION_EVERY = 10  # the authors' precondition_frequency
MAX_DIM = 10_000  # the authors' max_precond_dim
BASIS_KEYS = ("left", "q_left", "right", "q_right")  # a matrix's statistics and bases (a long side keeps none)
SIDES = ("both", "shorter", "columns", "rows")  # SoapHyper.sides


@dataclasses.dataclass(frozen=True)
class SoapHyper:
    """One SOAP step's hyperparameters (the authors' defaults but ``lr``). ``shampoo_beta`` averages the
    statistics (None: the second beta, as the authors)."""

    lr: float
    betas: tuple[float, float] = (0.95, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    shampoo_beta: float | None = None
    precondition_every: int = PRECONDITION_EVERY
    max_dim: int = MAX_DIM
    statistics_every: int = 1  # the statistics take in every k-th gradient only (their average over as many steps)
    sides: str = "both"  # which sides are rotated: both, shorter, columns, rows
    block: int | None = None  # a side longer than this: equal diagonal blocks of block / 2 to block (else whole)

    def check(self, owner: str) -> "SoapHyper":
        """This, or a ValueError naming ``owner`` and the bad setting."""
        if not self.lr >= 0:
            raise ValueError(f"{owner}: lr must be >= 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"{owner}: betas are two numbers in [0, 1), got {self.betas}")
        if self.shampoo_beta is not None and not 0 <= self.shampoo_beta < 1:
            raise ValueError(f"{owner}: shampoo_beta must lie in [0, 1), got {self.shampoo_beta}")
        if not self.eps >= 0 or not self.weight_decay >= 0:
            raise ValueError(f"{owner}: eps and weight_decay must be >= 0, got {self.eps}, {self.weight_decay}")
        for name in ("precondition_every", "max_dim", "statistics_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{owner}: {name} is an int >= 1, got {value!r}")
        if self.sides not in SIDES:
            raise ValueError(f"{owner}: sides is one of {SIDES}, got {self.sides!r}")
        if self.block is not None and (isinstance(self.block, bool) or not isinstance(self.block, int)
                                       or self.block < 2):
            raise ValueError(f"{owner}: block is the largest diagonal block of a basis, an int >= 2, or None "
                             f"(whole sides), got {self.block!r}")
        return self


@contextlib.contextmanager
def flushing_denormals() -> Iterator[None]:
    """Flush denormal floats to zero on this thread for the step's matrix products, then turn it off again
    (PyTorch's default; there is no getter for a mode set before). Near the end of a fit some rows of a
    gradient sit 1e-10 to 1e-20 below the others, products of them fall below float32's normal range, and
    a CPU computes with denormals 10-70x slower (a 256 x 256 Newton-Schulz iteration of Muon took 50-300 ms
    instead of 4-8 ms). What is flushed is below 1e-38, nothing the update can show."""
    torch.set_flush_denormal(True)  # False (a no-op) on CPUs without the mode
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def as_matrix(x: Tensor) -> Tensor:
    """A tensor of >= 2 dimensions as SOAP's matrix ``out x rest`` (a view of a contiguous tensor)."""
    return x.reshape(x.shape[0], -1)


WHOLE_UP_TO = 4  # a side that no blocks divide stays whole up to this many blocks' length (not rotated beyond)


def blocks(dim: int, block: int | None) -> int:
    """How many equal diagonal blocks a side of ``dim`` is cut into: the fewest of at most ``block`` each, where
    those are at least half a ``block``; else 1, the whole side, up to `WHOLE_UP_TO` blocks' length (158 = 2 x 79
    with ``block=64``: blocks of two would be Adam's diagonal, so the 158 stay whole); 0 beyond that: the side is not
    rotated (1,009, a prime, would keep a whole 1,009 x 1,009 basis and its eigendecomposition, the cost that blocks
    are there to cap)."""
    if block is None or dim <= block:
        return 1
    n = next(n for n in range(-(-dim // block), dim + 1) if dim % n == 0)
    if 2 * (dim // n) >= block:
        return n
    return 1 if dim <= WHOLE_UP_TO * block else 0


def fits_side(stat: Tensor, side: int) -> bool:
    """Whether ``stat`` (a saved statistic or basis) can be a side of ``side``'s: ``side x side``, or diagonal blocks
    ``n x b x b`` with ``n b = side``."""
    shape = tuple(stat.shape)
    return shape == (side, side) or (len(shape) == 3 and shape[1] == shape[2] and shape[0] * shape[1] == side)


def start_basis(basis: dict, grad: Tensor, max_dim: int, sides: str = "both", block: int | None = None) -> None:
    """A matrix's Shampoo statistics from its first gradient and their eigenbases, into ``basis``
    (``left`` / ``q_left``, ``right`` / ``q_right``; ``n x b x b`` stacks where `blocks` cuts a side; a side longer
    than ``max_dim`` keeps none: not rotated, nor one that ``sides`` leaves out or that `blocks` leaves unrotated)."""
    rows, cols = grad.shape
    left = {"both": True, "shorter": rows < cols, "columns": False, "rows": True}[sides]
    right = {"both": True, "shorter": cols <= rows, "columns": True, "rows": False}[sides]
    n_rows, n_cols = blocks(rows, block), blocks(cols, block)
    if rows <= max_dim and left and n_rows:
        basis["left"] = _left_statistic(grad, n_rows)
        basis["q_left"] = _eigenvectors(basis["left"])
    if cols <= max_dim and right and n_cols:
        basis["right"] = _right_statistic(grad, n_cols)
        basis["q_right"] = _eigenvectors(basis["right"])


def rotate(basis: dict, x: Tensor) -> Tensor:
    """``Q_L^T x Q_R``: a matrix in the basis."""
    if "q_left" in basis:
        x = _on_left(basis["q_left"], x, transposed=True)
    return _on_right(x, basis["q_right"], transposed=False) if "q_right" in basis else x


def rotate_back(basis: dict, x: Tensor) -> Tensor:
    """``Q_L x Q_R^T``: a matrix from the basis back to the parameter's coordinates."""
    if "q_left" in basis:
        x = _on_left(basis["q_left"], x, transposed=False)
    return _on_right(x, basis["q_right"], transposed=True) if "q_right" in basis else x


def accumulate(basis: dict, grad: Tensor, beta: float) -> None:
    """The statistics' exponential averages take in this gradient."""
    if "left" in basis:
        basis["left"].lerp_(_left_statistic(grad, _count_blocks(basis["left"])), 1 - beta)
    if "right" in basis:
        basis["right"].lerp_(_right_statistic(grad, _count_blocks(basis["right"])), 1 - beta)


def refresh(basis: dict, exp_avg: Tensor, exp_avg_sq: Tensor) -> None:
    """One power iteration + QR per side (per block) from the current basis (its columns first ordered by the
    eigenvalues they now estimate, largest first); the momentum (in place) is carried into the new basis and the
    second moment's rows / columns (in place) follow the new order."""
    momentum, second = rotate_back(basis, exp_avg), exp_avg_sq
    for side, stat in (("q_left", "left"), ("q_right", "right")):
        if side in basis:
            order = _estimated_order(basis[stat], basis[side])
            second = _reorder(second, order, rows=side == "q_left")
            basis[side] = _orthonormal(basis[stat] @ _reorder_columns(basis[side], order))
    exp_avg.copy_(rotate(basis, momentum))
    exp_avg_sq.copy_(second)


def soap_step(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
              bases: list[dict | None], step: int, h: SoapHyper, second_weight: float | None = None) -> None:
    """SOAP's step ``step`` (1, 2, ...) on tensors that share it, in place: the parameters, the moments
    (parameter-shaped; in the basis for a matrix) and ``bases`` (per tensor a dict, empty before a matrix's first
    step; None: a vector, which takes Adam's step). Weight decay is decoupled (``param *= 1 - lr * weight_decay``).
    Each matrix is rotated by itself; Adam's elementwise arithmetic runs over all the tensors at once with
    ``torch._foreach`` ops, the moments by the update core's `core.update_moments`: one path for matrices and
    vectors (on a CPU a foreach op runs the per-tensor op on each tensor, so the result is the per-tensor step's
    bit for bit; its time measured the same). Adam's eps is added before the bias correction, as the authors'.
    ``second_weight``: the second moment's bias correction where its beta has varied, ``1 - prod(beta2_s)`` over the
    steps so far, this one's included (`weight_after`); None: a constant beta's ``1 - beta2^step``.
    Run it under `flushing_denormals`."""
    beta1, beta2 = h.betas
    g = [grad if b is None else as_matrix(grad) for grad, b in zip(grads, bases)]
    m = [x if b is None else as_matrix(x) for x, b in zip(exp_avgs, bases)]
    v = [x if b is None else as_matrix(x) for x, b in zip(exp_avg_sqs, bases)]
    for b, x in zip(bases, g):
        if b is not None and not b:
            start_basis(b, x, h.max_dim, h.sides, h.block)
    rotated = [x if b is None else rotate(b, x) for b, x in zip(bases, g)]
    core.update_moments(m, v, rotated, core.Hyper(h.lr, beta1, beta2, h.eps), inplace=True)
    denom = torch._foreach_sqrt(v)
    torch._foreach_add_(denom, h.eps)
    direction = torch._foreach_div(m, denom)
    direction = [d if b is None else rotate_back(b, d).reshape(p.shape) for d, b, p in zip(direction, bases, params)]
    size = h.lr * math.sqrt(1 - beta2**step if second_weight is None else second_weight) / (1 - beta1**step)
    if h.weight_decay:
        torch._foreach_mul_(params, 1 - h.lr * h.weight_decay)
    torch._foreach_add_(params, direction, alpha=-size)
    shampoo_beta = beta2 if h.shampoo_beta is None else h.shampoo_beta
    for b, x, mb, vb in zip(bases, g, m, v):
        if b is None:
            continue
        if step % h.statistics_every == 0:  # every k-th gradient stands for k: the average's memory in
            # steps stays; two of the six matrix products of a step are spent on 1 in k steps only
            accumulate(b, x, shampoo_beta**h.statistics_every)
        if step % h.precondition_every == 0:
            refresh(b, mb, vb)


def weight_after(previous: float, beta2: float) -> float:
    """The weight an exponential average gives its inputs in all after one more step at ``beta2``, from
    ``previous`` (0 before the first): ``1 - prod(beta2_s)``, the average of a constant 1, its bias correction."""
    return beta2 * previous + (1 - beta2)


def _count_blocks(stat: Tensor) -> int:
    """How many diagonal blocks a side's statistic (or basis) holds: a matrix is one, a stack ``n x b x b`` n."""
    return 1 if stat.ndim == 2 else stat.shape[0]


def _left_statistic(x: Tensor, n: int) -> Tensor:
    """``x x^T`` (``rows x rows``), or its ``n`` diagonal blocks (``n x b x b``)."""
    if n == 1:
        return x @ x.T
    xb = x.reshape(n, -1, x.shape[1])
    return xb @ xb.transpose(1, 2)


def _right_statistic(x: Tensor, n: int) -> Tensor:
    """``x^T x`` (``cols x cols``), or its ``n`` diagonal blocks (``n x b x b``)."""
    if n == 1:
        return x.T @ x
    xb = x.reshape(x.shape[0], n, -1).transpose(0, 1)
    return xb.transpose(1, 2) @ xb


def _on_left(q: Tensor, x: Tensor, transposed: bool) -> Tensor:
    """``q x`` or ``q^T x``, ``q`` a matrix or a stack of diagonal blocks."""
    if q.ndim == 2:
        return (q.T if transposed else q) @ x
    n, b, _ = q.shape
    return ((q.transpose(1, 2) if transposed else q) @ x.reshape(n, b, -1)).reshape(x.shape)


def _on_right(x: Tensor, q: Tensor, transposed: bool) -> Tensor:
    """``x q`` or ``x q^T``, ``q`` a matrix or a stack of diagonal blocks."""
    if q.ndim == 2:
        return x @ (q.T if transposed else q)
    n, b, _ = q.shape
    # the blocks' products written straight into the rows' layout: moving a batched product's own (block-major)
    # output back there is a strided copy of the whole matrix, twice a step
    y = x.new_empty(x.shape)
    torch.bmm(x.reshape(x.shape[0], n, b).transpose(0, 1), q.transpose(1, 2) if transposed else q,
              out=y.view(x.shape[0], n, b).transpose(0, 1))
    return y


def _reorder_columns(q: Tensor, order: Tensor) -> Tensor:
    """A basis' columns (each block's) in ``order``."""
    return q[:, order] if q.ndim == 2 else q.gather(2, order.unsqueeze(1).expand_as(q))


def _reorder(x: Tensor, order: Tensor, rows: bool) -> Tensor:
    """A matrix's rows (``rows``) or columns in ``order`` (one order per diagonal block: ``n x b``)."""
    if order.ndim == 1:
        return x[order] if rows else x[:, order]
    n, b = order.shape
    if rows:
        return x.reshape(n, b, -1).gather(1, order.unsqueeze(2).expand(n, b, x.shape[1])).reshape(x.shape)
    return x.reshape(x.shape[0], n, b).gather(2, order.unsqueeze(0).expand(x.shape[0], n, b)).reshape(x.shape)


def _eigenvectors(stat: Tensor) -> Tensor:
    """Eigenvectors of a symmetric PSD matrix (or of each in a stack), largest eigenvalue first."""
    return torch.linalg.eigh(stat)[1].flip(-1)


def _orthonormal(x: Tensor) -> Tensor:
    """``Q`` of ``x``'s QR decomposition (of each in a stack): ``torch.linalg.qr(x)[0]`` bit for bit (the same LAPACK
    geqrf + orgqr) without forming ``R`` (1.8 against 2.1 ms for a 256 x 256 matrix on one CPU thread)."""
    return torch.linalg.householder_product(*torch.geqrf(x))


def _estimated_order(stat: Tensor, basis: Tensor) -> Tensor:
    """The basis' columns (each block's) ordered by the Rayleigh quotients ``q^T S q``, largest first."""
    return ((stat @ basis) * basis).sum(-2).argsort(dim=-1, descending=True)


SWITCH_CHECK_EVERY = 10  # GMNOptimizer's soap_switch looks at the estimate's history every this many steps
# after the switch (GMNOptimizer's soap_follows): SOAP's lr follows the estimate run on; it runs on and the lr waits
FOLLOWS, WAITS_FOR_CLIMB = 1, 2
# SoapSwitch.spike_cut: the gradient's log squared norm is averaged over ~5 steps (SPIKE_SHORT_BETA) and ~50 steps
# (SPIKE_LONG_BETA) after the switch; a short average above the long one by log(spike_cut), from SPIKE_HOLD steps after
# the switch on (SOAP's first steps in fresh moments move the norm), halves SOAP's step (SPIKE_FACTOR) for good. A
# sustained rise, not one noisy batch: a BatchNorm ResCNN's single-step spikes of 100x move the short average 2.5x.
SPIKE_SHORT_BETA = 0.8
SPIKE_LONG_BETA = 0.98
SPIKE_HOLD = 50
SPIKE_FACTOR = 0.5


def spike_watch(short: float | None, long: float | None, log_sq: float, ratio: float, armed: bool
                ) -> tuple[float, float, bool]:
    """One step of `SoapSwitch.spike_cut`'s watch: the two averages of the log squared gradient norm after this
    step's ``log_sq`` (None: no sample yet) and whether to cut. Until ``armed`` the long average is the short one
    (what the norm does in the hold is taken in: the watch starts from where it has come to); after a cut it starts
    from the short one again, so the next cut needs another rise of ``ratio``."""
    short = log_sq if short is None else SPIKE_SHORT_BETA * short + (1 - SPIKE_SHORT_BETA) * log_sq
    if not armed or long is None:
        return short, short, False
    if short > long + math.log(ratio):
        return short, short, True
    return short, SPIKE_LONG_BETA * long + (1 - SPIKE_LONG_BETA) * log_sq, False


@dataclasses.dataclass(frozen=True)
class SoapSwitch:
    """``GMNOptimizer(model, soap_switch=True | SoapSwitch(...))``: the lr-free step (Adam's direction, Prodigy's
    estimate ``d``) until ``d`` has not moved for ``window`` steps (looked at every `SWITCH_CHECK_EVERY`th step),
    then SOAP's step (`soap_step`, fresh moments, bias-corrected from the switch on) at ``lr = scale * d``, ``d``
    frozen; the group's ``lr`` multiplies it as it multiplies ``d`` before. ``betas``: SOAP's after the switch
    (the authors' second beta 0.95 lost the held-out SIREN in 1,000 steps; 0.99 kept it, docs/optim.md).
    ``decline_below``: where, when ``d`` has settled, the gradient's squared norm (sampled every 10th step) is
    already below this fraction of its largest sample (a norm 200x down), the run is deep in a fit that Adam's step
    is making, as a SIREN's, whose float32 precision SOAP's step did not keep: no switch, for good. On the dev suite
    (docs/optim.md, "The soap switch") the SIREN sat at 1e-6 of its peak when ``d`` settled, every other task at
    1e-3 or above. ``sides`` and ``block``: which sides are rotated, and diagonal blocks of ``block / 2`` to
    ``block`` per side (`SoapHyper`; None: whole sides, as up to 0.14). Blocks of 64 are the default since 0.15:
    on fresh held-out seeds the same steps as whole sides and sooner by the clock at 1,000 and 5,000 steps
    (docs/optim.md, "Diagonal blocks"); the input side only (``sides="columns"``) since 0.16, when this became what
    ``GMNOptimizer(model)`` runs: the same steps as both sides at half the matrix products (docs/optim.md, "What
    GMNOptimizer(model) runs (0.16)"). ``second_beta_rise`` c: the second beta rises after the switch as Adafactor's,
    ``max(betas[1], 1 - t^-c)`` at the run's step t (`second_beta`), bias-corrected by the product of the betas
    taken (`weight_after`); None (0.16): constant. A second beta of 0.99 forgets a deep fit's small gradients fast:
    the held-out SIREN reaches 1.7e-12 and bounces back to 1e-8..2e-6 (docs/optim.md, "A lead for the SIREN's
    stall"); a rising beta stops that and slows every other fit (docs/optim.md, "The rising second beta").
    ``spike_cut`` R: after the switch, SOAP's step is halved for good each time the gradient's squared norm has risen
    R-fold and stayed up (its ~5-step average R times its ~50-step one; `spike_watch`), as a bounce out of a deep
    fit or the start of a blow-up does; ``opt.soap_spike_cuts`` counts them. None (0.16): no cut.
    ``settle_on``: the estimate that has to sit still for ``window`` steps, and that SOAP's lr is ``scale`` times:
    ``"d"`` (0.16), the step size, or ``"peak"``, the largest estimate so far (Prodigy's ``d_max``), which ``d``
    climbs towards at the settled growth rate. Where the estimate settled in a plateau at the start (the shapes
    networks), the peak holds 50-220 steps before ``d`` has climbed to it, and those steps take SOAP's step at the
    same lr; elsewhere the two coincide. Level with "d" on the dev suite at 1,000 steps, so not the default
    (docs/optim.md, "Settling on the peak").
    ``follow``: after the switch the estimate runs on (on its own steps, the network's ``d`` only, at the settled
    growth rate) and SOAP's lr is ``scale`` times it, not frozen at the switch. A network that starts in a plateau
    holds ``d`` still for ``window`` steps before its loss starts falling, and a frozen lr then stays at the
    plateau's step: with ``d0=1e-4`` the held-out shapes CNN switched after 130-160 steps at 7.5e-4-1.5e-3 and never
    left its plateau, where the estimate run on climbed to 0.04-0.1 and fit it; on the dev suite it also climbs under
    SOAP's step on the shapes MLP, whose fit ends 40x higher, so it is not the default (docs/optim.md, "The plateau
    switch"). It keeps the estimate's x_0 and gradient sum after the switch (freed otherwise). False (0.16, 0.17):
    frozen.
    ``follow_climb`` k: the estimate runs on after the switch as with ``follow``, SOAP's lr stays frozen until the
    estimate has reached k times its value at the switch, and follows it from then on (``opt.soap_climbed_at``). Under
    ``follow`` SOAP's lr climbed 12-64x where the switch came in a plateau and at most 3.2x elsewhere; with the lr
    frozen, though, the estimate climbs past 6x on the shapes MLPs too, and the jump ruins their fits (docs/optim.md,
    "The plateau switch"): not the default. None: as ``follow`` says."""

    scale: float = 0.5
    window: int = 100
    betas: tuple[float, float] = (0.95, 0.99)
    precondition_every: int = PRECONDITION_EVERY
    max_dim: int = MAX_DIM
    statistics_every: int = 1
    decline_below: float = 2.5e-5
    sides: str = "columns"
    block: int | None = 64
    second_beta_rise: float | None = None
    spike_cut: float | None = None
    settle_on: str = "d"
    follow: bool = False
    follow_climb: float | None = None

    @classmethod
    def from_dict(cls, fields: dict) -> "SoapSwitch":
        """The switch a rule's mode records (`to_dict`; JSON's lists back to tuples), checked; an unknown field is a
        TypeError naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(fields, dict) or set(fields) - known:
            raise TypeError(f"SoapSwitch: fields are {sorted(known)}, got {fields!r}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}).check()

    @classmethod
    def from_pairs(cls, pairs: Iterable[str]) -> "SoapSwitch":
        """A command line's ``KEY=VALUE`` pairs (``["sides=columns", "block=64"]``) -> the switch with those fields,
        checked: values are Python literals (``true`` / ``false`` booleans), else strings; a malformed pair, an
        unknown field or a bad value is a ValueError saying which."""
        fields = {}
        for pair in pairs:
            key, sep, text = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"{pair!r} is not KEY=VALUE")
            text = {"true": "True", "false": "False"}.get(text.lower(), text)
            try:
                fields[key] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                fields[key] = text
        try:
            return cls.from_dict(fields)
        except TypeError as err:
            raise ValueError(str(err)) from None

    def to_dict(self) -> dict:
        """Every field (what a rule's mode records: later changes to the defaults leave a recorded mode as it was)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def check(self) -> "SoapSwitch":
        """This, or a ValueError naming the bad setting."""
        if not self.scale > 0:
            raise ValueError(f"GMNOptimizer: soap_switch's scale multiplies the settled estimate d, > 0, got {self.scale!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < SWITCH_CHECK_EVERY:
            raise ValueError(f"GMNOptimizer: soap_switch's window is a number of steps >= {SWITCH_CHECK_EVERY}, "
                             f"got {self.window!r}")
        if not 0 <= self.decline_below < 1:
            raise ValueError(f"GMNOptimizer: soap_switch's decline_below is a fraction of the squared gradient norm's "
                             f"peak in [0, 1) (0: always switch), got {self.decline_below!r}")
        rise = self.second_beta_rise
        if rise is not None and (isinstance(rise, bool) or not isinstance(rise, (int, float)) or not rise > 0):
            raise ValueError(f"GMNOptimizer: soap_switch's second_beta_rise is the exponent c of a second beta "
                             f"max(betas[1], 1 - t^-c), a number > 0 (0.8: Adafactor's), or None (constant), "
                             f"got {rise!r}")
        cut = self.spike_cut
        if cut is not None and (isinstance(cut, bool) or not isinstance(cut, (int, float)) or not cut > 1):
            raise ValueError(f"GMNOptimizer: soap_switch's spike_cut is the rise of the squared gradient norm (its "
                             f"~5-step average over its ~50-step one) that halves SOAP's step, a number > 1, or None "
                             f"(no cut), got {cut!r}")
        if self.settle_on not in ("d", "peak"):
            raise ValueError(f"GMNOptimizer: soap_switch's settle_on is the estimate it waits on, 'd' (the step size) "
                             f"or 'peak' (the largest estimate so far, which d climbs towards), got {self.settle_on!r}")
        if not isinstance(self.follow, bool):
            raise ValueError(f"GMNOptimizer: soap_switch's follow is True (SOAP's lr follows the estimate, run on after "
                             f"the switch) or False (frozen at the switch), got {self.follow!r}")
        climb = self.follow_climb
        if climb is not None and (isinstance(climb, bool) or not isinstance(climb, (int, float)) or not climb > 1):
            raise ValueError(f"GMNOptimizer: soap_switch's follow_climb is how many times its value at the switch the "
                             f"estimate run on has to reach before SOAP's lr follows it, a number > 1, or None, "
                             f"got {climb!r}")
        if climb is not None and self.follow:
            raise ValueError("GMNOptimizer: soap_switch's follow=True follows the estimate from the switch on and "
                             "follow_climb from a climb: set one of them")
        self.hyper(1.0, 0.0, 0.0).check("GMNOptimizer: soap_switch")
        return self

    def follows_from_switch(self) -> int:
        """What the estimate does after the switch: `FOLLOWS` (``follow``), `WAITS_FOR_CLIMB` (``follow_climb``),
        0: frozen."""
        return FOLLOWS if self.follow else WAITS_FOR_CLIMB if self.follow_climb is not None else 0

    def second_beta(self, step: int) -> float:
        """The second beta of the run's step ``step`` (1, 2, ..., the lr-free steps before the switch counted):
        ``betas[1]``, or with ``second_beta_rise`` c, ``max(betas[1], 1 - step^-c)`` (Adafactor's schedule at
        c = 0.8: 0.99 up to step 316, 0.996 at 1,000, 0.9989 at 5,000; a longer average of the squared gradient, and
        of the statistics where ``shampoo_beta`` follows it, as a fit goes deep)."""
        if self.second_beta_rise is None:
            return self.betas[1]
        return max(self.betas[1], 1 - step ** -self.second_beta_rise)

    def hyper(self, lr: float, eps: float, weight_decay: float, step: int = 1) -> SoapHyper:
        """The SOAP step's hyperparameters at this lr (the group's lr x scale x d), the group's eps / decay, on the
        run's step ``step`` (`second_beta`)."""
        return SoapHyper(lr, (self.betas[0], self.second_beta(step)), eps, weight_decay,
                         precondition_every=self.precondition_every,
                         max_dim=self.max_dim, statistics_every=self.statistics_every, sides=self.sides,
                         block=self.block)

    def due(self, step: int, moved_at: int) -> bool:
        """Switch after ``step`` (steps taken), the estimate having last moved on step ``moved_at``?"""
        return step > self.window and step % SWITCH_CHECK_EVERY == 0 and moved_at <= step - self.window
