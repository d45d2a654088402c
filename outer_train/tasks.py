"""Inner tasks during meta-training: a seeded, resumable sampler and persistent task groups.

A `TaskGroup` is one architecture from the meta-training distribution trained from
``group_size`` initialisations (each with its own batch order), all for the same log-uniformly
drawn horizon. Its members' flat parameters and optimizer states persist across truncations and
are replaced when the horizon is reached. Members of a buffer-free group are vmapped over.

Everything a group draws comes from ``random.Random("<seed>:<rank>:<counter>")``, so the sampler's
whole state is one counter: a resumed run draws exactly the tasks the interrupted one would have,
and each process (rank) draws different tasks.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from itertools import islice
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from inner_tasks import TaskSpec, build_task
from inner_tasks.tasks.collections import COLLECTIONS, SELECTION_SUITES, TaskDistribution
from metaopt.optim import GraphIndex, Hyper, OptState
from metaopt.optim.core import D0, ESTIMATE_WARMUP, DistanceEstimate, PlateauDecay, TensorDistances, sampled_sizes, tensor_strides

from .augment import permute_params
from .config import TaskSection


def _distribution(cfg: TaskSection) -> TaskDistribution:
    if cfg.distribution not in COLLECTIONS or cfg.distribution in ("held_out", *SELECTION_SUITES):
        raise ValueError(
            f"tasks.distribution must name a meta-training distribution, got {cfg.distribution!r} "
            "(the held-out suite is for evaluation only, the meta-validation and dev suites for choosing settings)."
        )
    return COLLECTIONS[cfg.distribution]()


class TaskSampler:
    """Draws task specs for one process; state = the number of groups drawn so far."""

    def __init__(self, cfg: TaskSection, seed: int, rank: int = 0) -> None:
        self.cfg, self.seed, self.rank = cfg, seed, rank
        self.counter = 0
        dist = _distribution(cfg)
        if cfg.families:
            keep = [(s, w) for s, w in zip(dist.samplers, dist.weights) if s.family in cfg.families]
            if not keep:
                raise ValueError(
                    f"tasks.families={cfg.families} matches no family of {cfg.distribution!r} "
                    f"({[s.family for s in dist.samplers]})."
                )
            dist = TaskDistribution(dist.name, tuple(s for s, _ in keep), tuple(w for _, w in keep))
        self.dist = dist

    def rng(self) -> random.Random:
        """The generator for the next group (advances the counter)."""
        r = random.Random(f"{self.seed}:{self.rank}:{self.counter}")
        self.counter += 1
        return r

    def sample_spec(self, r: random.Random) -> TaskSpec:
        """A spec within ``max_params`` (rejection sampling on the parameter count)."""
        spec = first_within((self.dist.sample(r.randrange(2**31)) for _ in range(100)), self.cfg.max_params)
        if spec is not None:
            return spec
        raise ValueError(
            f"no task of {self.cfg.distribution!r} (families {self.cfg.families or 'all'}) has <= "
            f"{self.cfg.max_params} parameters in 100 draws; raise tasks.max_params."
        )

    def state_dict(self) -> dict[str, int]:
        return {"counter": self.counter, "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.counter = int(state["counter"])


def log_uniform_int(r: random.Random, lo: int, hi: int) -> int:
    """An integer drawn log-uniformly from [lo, hi]."""
    return int(round(math.exp(r.uniform(math.log(lo), math.log(hi)))))


def flatten(params: dict[str, Tensor]) -> Tensor:
    """Parameters in edge order (``model.parameters()`` order) as one flat vector."""
    return torch.cat([p.reshape(-1) for p in params.values()])


def first_within(specs: Iterable[TaskSpec], max_params: int | None) -> TaskSpec | None:
    """The first of ``specs`` (drawn lazily) with at most ``max_params`` parameters; None if none is."""
    from inner_tasks.models import build_model, count_params

    for spec in specs:
        if max_params is None or count_params(build_model(spec.model, seed=0)) <= max_params:
            return spec
    return None


@dataclass
class TaskGroup:
    """One architecture, ``len(member_seeds)`` inits, persistent inner state (params, optimizer state)."""

    spec: TaskSpec
    member_seeds: list[int]
    horizon: int
    lr: float
    task: Any = None
    names: list[str] = field(default_factory=list)
    shapes: list[torch.Size] = field(default_factory=list)
    numels: list[int] = field(default_factory=list)
    index: GraphIndex | None = None
    step: int = 0  # inner steps taken by every member
    batches_used: int = 0
    params: list[Tensor] = field(default_factory=list)  # per member [E] (TBPTT), or per particle x member (PES)
    states: list[OptState] = field(default_factory=list)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    permuted: int = 0
    show_horizon: bool = True  # the rule is told the horizon (Hyper.total_steps); else it runs horizon-unknown
    lr_free: bool = False  # the inner optimizer is lr-free (lr multiplies Prodigy's estimate; core.DistanceEstimate)
    growth_rate: float = math.inf  # lr-free: the estimate's growth per step is capped at this factor
    settled_growth_rate: float = math.inf  # lr-free: ... from the estimate's first settling on
    estimate_stride: int = 1  # lr-free: the estimate reads every k-th edge
    estimate_every: int = 1  # lr-free: the estimate is taken every j-th step
    estimate_warmup: int = ESTIMATE_WARMUP  # lr-free: ... after the first this many steps
    per_tensor: float = 0.0  # lr-free: each tensor's own estimate's share of its step size (core.TensorDistances)
    d0: float = D0  # lr-free: the estimate before the first step (Prodigy's d0)
    shared_sums: bool = False  # lr-free per tensor: each tensor's estimate reads the network's sum (no sum of its own)
    plateau_block: int = 0  # lr-free: the step halves on plateaus of the gradient norm (core.PlateauDecay; 0 off)
    plateau_boost: bool = False  # with plateau_block: ... and doubles where it keeps falling fast (PlateauDecay.boost)
    plateau_anchor: bool = False  # with plateau_boost: ... to twice the step at the grant (PlateauDecay.anchored)
    pending: list[tuple[Tensor, Tensor]] | None = None  # batches drawn by peek, used by the next step
    _iters: list[Any] = field(default_factory=list)
    _val: Any = None

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def draw(cls, sampler: TaskSampler, num_particles: int = 1, stagger: bool = False) -> "TaskGroup":
        """A fresh group from the sampler's next draw: spec, inits, horizon, lr, permutation.

        ``num_particles`` copies of every member are kept (2 for PES's antithetic pair),
        particle-major. ``stagger`` (the first group of each slot) cuts the horizon to a uniform
        number of truncations, so that the slots' trajectories end, and restart, out of step:
        afterwards every outer step mixes early, middle and late phases of training.
        """
        cfg = sampler.cfg
        r = sampler.rng()
        spec = sampler.sample_spec(r)
        seeds = [r.randrange(2**31) for _ in range(cfg.group_size)]
        # Whole truncations only, so every group steps in lockstep inside an outer step.
        k = cfg.truncation
        horizon = max(k, -(-log_uniform_int(r, cfg.unroll_min, cfg.unroll_max) // k) * k)
        if stagger:
            horizon = k * r.randint(1, horizon // k)
        lr = (1.0 if cfg.lr_free else spec.reference_lr) * math.exp(r.uniform(math.log(cfg.lr_scale_min),
                                                                              math.log(cfg.lr_scale_max)))
        perm_seed = r.randrange(2**31)
        # No draw at probability 1, so configs without horizon features sample exactly as before.
        show = cfg.horizon_known_prob >= 1.0 or r.random() < cfg.horizon_known_prob
        group = cls(spec=spec, member_seeds=seeds, horizon=horizon, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                    weight_decay=cfg.weight_decay, show_horizon=show, lr_free=cfg.lr_free,
                    growth_rate=cfg.growth_rate, settled_growth_rate=cfg.settled_growth_rate, estimate_stride=cfg.estimate_stride, estimate_every=cfg.estimate_every,
                    estimate_warmup=cfg.estimate_warmup, per_tensor=cfg.per_tensor, d0=cfg.d0,
                    shared_sums=cfg.shared_sums, plateau_block=cfg.plateau_block, plateau_boost=cfg.plateau_boost,
                    plateau_anchor=cfg.plateau_anchor)
        group.build()
        inits = [flatten(group.task.init_params(s)) for s in seeds]
        if cfg.permute_augment:
            gen = torch.Generator().manual_seed(perm_seed)
            batch = next(iter(group.task.train_batches(seeds[0])))
            for i, flat in enumerate(inits):
                inits[i], ok = permute_params(group.task.graph, flat, gen, lambda f: group.loss(f, batch))
                group.permuted += int(ok)
        group.params = [p.clone() for _ in range(num_particles) for p in inits]
        group.states = group.fresh_states()
        return group

    @classmethod
    def from_task(
        cls, task: Any, member_seeds: list[int], horizon: int, lr: float, num_particles: int = 1, **hyper: Any
    ) -> "TaskGroup":
        """A group over an already built `Task` (any object with the Task protocol), unpermuted."""
        group = cls(spec=task.spec, member_seeds=list(member_seeds), horizon=horizon, lr=lr, **hyper)
        group.attach(task)
        inits = [flatten(task.init_params(s)) for s in member_seeds]
        group.params = [p.clone() for _ in range(num_particles) for p in inits]
        group.states = group.fresh_states()
        return group

    def fresh_states(self) -> list[OptState]:
        """The optimizer state before the first step, one per member (lr-free: starting at its params; with
        ``per_tensor``, also one estimate per tensor of the task's parameters)."""
        return [OptState.zeros(p.numel(), start=p if self.lr_free else None, stride=self.estimate_stride,
                               every=self.estimate_every, warmup=self.estimate_warmup, per_tensor=self.per_tensor,
                               sizes=tuple(self.numels), d0=self.d0, shared_sums=self.shared_sums,
                               plateau_block=self.plateau_block if self.lr_free else 0,
                               plateau_boost=self.plateau_boost if self.lr_free else 0,
                               plateau_anchor=self.plateau_anchor and self.lr_free) for p in self.params]

    def _sampled(self, start: Tensor) -> Tensor:
        """A checkpoint's x_0 (a copy), checked to hold the entries this group's estimate reads."""
        sizes = tuple(self.numels)
        want = sum(sampled_sizes(sizes, tensor_strides(sizes, self.estimate_stride, bool(self.per_tensor))))
        if start.numel() != want:
            raise ValueError(f"TaskGroup.from_state_dict: the lr-free start holds {start.numel()} entries, the estimate "
                             f"with estimate_stride {self.estimate_stride} reads {want}: a checkpoint of metaopt < 0.3.3, "
                             "whose strided estimate sampled other entries; start the run afresh.")
        return start.clone()

    def build(self) -> None:
        """Build the task, graph index and batch iterators (also after loading a checkpoint)."""
        self.attach(build_task(self.spec))

    def attach(self, task: Any) -> None:
        """Use ``task``: cache its parameter layout and graph index, open the members' batch streams."""
        self.task = task
        init = self.task.init_params(self.member_seeds[0])
        self.names = list(init)
        self.shapes = [v.shape for v in init.values()]
        self.numels = [v.numel() for v in init.values()]
        self.index = GraphIndex.from_graph(self.task.graph, "cpu")
        self._iters = [self.task.train_batches(s) for s in self.member_seeds]
        for it in self._iters:  # resume: skip what the interrupted run drew (the pending batch included)
            for _ in islice(it, self.batches_used):
                pass

    # ---- inner objective -------------------------------------------------------------------
    @property
    def vmappable(self) -> bool:
        """Members can be vmapped over: more than one, and no buffers (BatchNorm stats do not vmap)."""
        return len(self.member_seeds) > 1 and not self.task.init_buffers()

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Flat [E] -> the task's params dict (views)."""
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.numels), self.shapes)}

    def loss(self, flat: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Training loss of flat parameters on one batch (differentiable, vmappable)."""
        return self.task.functional_loss(self.unflatten(flat), batch)

    def next_batches(self) -> list[tuple[Tensor, Tensor]]:
        """One training batch per member (the peeked one first, if any)."""
        batches = self.peek_batches()
        self.pending = None
        return batches

    def peek_batches(self) -> list[tuple[Tensor, Tensor]]:
        """The batches the next step will use, drawn now (the meta-loss scores the last update on them)."""
        if self.pending is None:
            self.batches_used += 1
            self.pending = [next(it) for it in self._iters]
        return self.pending

    def val_batch(self) -> tuple[Tensor, Tensor]:
        """A fixed held-out batch (for meta_loss="val")."""
        if self._val is None:
            self._val = next(iter(self.task.eval_batches()))
        return self._val

    @property
    def hyper(self) -> Hyper:
        """The inner optimizer's hyperparameters for this group (what GMNOptimizer's param group holds)."""
        return Hyper(self.lr, self.betas[0], self.betas[1], self.eps, self.weight_decay,
                     self.horizon if self.show_horizon else 0, self.growth_rate, self.d0,
                     settled_growth_rate=self.settled_growth_rate)

    @property
    def key(self) -> str:
        """Identifies this trajectory (architecture, inits, horizon, lr): what estimator state is keyed by."""
        # A group over a spec-less task (tests' hand-built tasks) is never checkpointed: its object id will do.
        arch = self.spec.name if self.spec is not None else f"task@{id(self.task):x}"
        return f"{arch}|{self.member_seeds}|{self.horizon}|{self.lr!r}"

    @property
    def done(self) -> bool:
        return self.step >= self.horizon

    # ---- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_json(),
            "member_seeds": list(self.member_seeds),
            "horizon": self.horizon,
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "step": self.step,
            "batches_used": self.batches_used,
            "permuted": self.permuted,
            "show_horizon": self.show_horizon,
            "lr_free": self.lr_free,
            "growth_rate": self.growth_rate,
            "settled_growth_rate": self.settled_growth_rate,
            "estimate_stride": self.estimate_stride,
            "estimate_every": self.estimate_every,
            "estimate_warmup": self.estimate_warmup,
            "per_tensor": self.per_tensor,
            "d0": self.d0,
            "shared_sums": self.shared_sums,
            "plateau_block": self.plateau_block,
            "plateau_boost": self.plateau_boost,
            "plateau_anchor": self.plateau_anchor,
            "params": [p.detach().clone() for p in self.params],
            "states": [{"step": s.step, **{k: v.detach().clone() for k, v in s.tensors().items()},
                        **({"distance": asdict(s.distance)} if s.distance is not None else {}),
                        **({"tensor_distances": [asdict(e) for e in s.tensor_distances.estimates]}
                           if s.tensor_distances is not None else {}),
                        **({"plateau": asdict(s.plateau)} if s.plateau is not None else {})} for s in self.states],
            "pending": self.pending,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "TaskGroup":
        group = cls(
            spec=TaskSpec.from_json(state["spec"]),
            member_seeds=list(state["member_seeds"]),
            horizon=int(state["horizon"]),
            lr=float(state["lr"]),
            betas=tuple(state["betas"]),
            eps=float(state["eps"]),
            weight_decay=float(state["weight_decay"]),
            step=int(state["step"]),
            batches_used=int(state["batches_used"]),
            permuted=int(state["permuted"]),
            show_horizon=bool(state.get("show_horizon", True)),
            lr_free=bool(state.get("lr_free", False)),
            growth_rate=float(state.get("growth_rate", math.inf)),
            settled_growth_rate=float(state.get("settled_growth_rate", math.inf)),
            estimate_stride=int(state.get("estimate_stride", 1)),
            estimate_every=int(state.get("estimate_every", 1)),
            estimate_warmup=int(state.get("estimate_warmup", 0)),
            per_tensor=float(state.get("per_tensor", 0.0)),
            d0=float(state.get("d0", D0)),
            shared_sums=bool(state.get("shared_sums", False)),
            plateau_block=int(state.get("plateau_block", 0)),
            plateau_boost=state.get("plateau_boost", False),
            plateau_anchor=bool(state.get("plateau_anchor", False)),
        )
        group.build()
        group.params = [p.clone() for p in state["params"]]
        group.states = [
            OptState(s["exp_avg"].clone(), s["exp_avg_sq"].clone(), s["lr_scale"].clone(), int(s["step"]),
                     *((group._sampled(s["start"]), s["grad_sum"].clone(), DistanceEstimate(**s["distance"]),
                        group.estimate_stride, group.estimate_every)
                       if "distance" in s else ()), warmup=group.estimate_warmup, sizes=tuple(group.numels),
                     **({"tensor_distances": TensorDistances(group.per_tensor, tuple(group.numels),
                                                             tuple(DistanceEstimate(**e) for e in s["tensor_distances"])),
                         "tensor_grad_sum": None if group.shared_sums else s["tensor_grad_sum"].clone()}
                        if "tensor_distances" in s else {}),
                     **({"plateau": PlateauDecay(**{**s["plateau"], "boost": group.plateau_boost,
                                                    "anchored": group.plateau_anchor}),
                         "plateau_block": group.plateau_block}
                        if "plateau" in s else {}))
            for s in state["states"]
        ]
        group.pending = state.get("pending")
        return group

