"""Meta-gradient estimators behind one small interface (learned_optimization's ``GradientEstimator``).

An estimator says how many particles (copies of each inner trajectory) it needs and turns one
truncation of every task group into a meta-gradient. `MetaTrainer` looks the configured kind up
in `ESTIMATORS`; adding an estimator is one class and one `register_estimator` line.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from torch import Tensor

from metaopt.optim import UpdateRule

from .config import TrainConfig
from .pes import NUM_PARTICLES, PESState, pes_gradient
from .tasks import TaskGroup
from .tbptt import TruncationResult, tbptt_gradient


class GradientEstimator(Protocol):
    """Turns one truncation of every group into (one gradient per rule parameter, the truncation's result).

    Whatever an estimator keeps across truncations (PES's accumulated perturbations) is its own
    state: such an estimator also defines ``state_dict() -> dict`` and ``load_state_dict(dict)``,
    and the run's checkpoints save and restore it. A stateless estimator defines neither.
    """

    num_particles: int

    def gradient(
        self, rule: UpdateRule, groups: list[TaskGroup], graph_inputs, record_ratio: bool, mask: Tensor | None = None
    ) -> tuple[list[Tensor], TruncationResult]: ...
    # ``mask`` (flat over the rule's parameters, 1 = trained; None = all): the trainer zeroes the rest of
    # the gradient; an estimator may also use it to spend its effort on those parameters (PES perturbs only them).


def estimator_state(estimator: GradientEstimator) -> dict[str, Any]:
    """The estimator's checkpointable state ({} for a stateless one)."""
    save = getattr(estimator, "state_dict", None)
    return save() if save is not None else {}


ESTIMATORS: dict[str, Callable[[TrainConfig], GradientEstimator]] = {}


def register_estimator(name: str) -> Callable[[Callable[[TrainConfig], GradientEstimator]], Callable[[TrainConfig], GradientEstimator]]:
    """Register ``factory(cfg) -> estimator`` as ``estimator.kind = name``."""

    def add(factory):
        if name in ESTIMATORS:
            raise ValueError(f"register_estimator: an estimator named {name!r} is already registered.")
        ESTIMATORS[name] = factory
        return factory

    return add


@register_estimator("tbptt")
class TBPTT:
    """Truncated backpropagation through time (optionally second order: through the inner gradients)."""

    num_particles = 1

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def gradient(self, rule, groups, graph_inputs, record_ratio, mask=None):
        c = self.cfg
        return tbptt_gradient(rule, groups, graph_inputs, c.tasks.truncation, second_order=c.estimator.second_order,
                              meta_loss=c.estimator.meta_loss, vmap=c.tasks.vmap, record_ratio=record_ratio,
                              late_power=c.estimator.late_power)


@register_estimator("pes")
class PES:
    """Persistent evolution strategies with antithetic pairs: unbiased over the whole trajectory."""

    num_particles = NUM_PARTICLES

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.state = PESState()

    def gradient(self, rule, groups, graph_inputs, record_ratio, mask=None):
        c = self.cfg
        return pes_gradient(rule, self.state, groups, graph_inputs, c.tasks.truncation, c.estimator.pes_sigma,
                            meta_loss=c.estimator.meta_loss, vmap=c.tasks.vmap, record_ratio=record_ratio, mask=mask,
                            late_power=c.estimator.late_power)

    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load_state_dict(state)
