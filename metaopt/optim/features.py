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
FEATURE_VERSION = 1

# Per-tensor normalisation divides by sqrt(mean square + _TINY): tiny so the rule is
# scale-robust over the whole float32 range, nonzero so an all-zero tensor stays zero.
_TINY = 1e-30


@dataclass(frozen=True)
class FeatureConfig:
    """Which features an update rule reads; stored in rule checkpoints.

    momentum_decays: decay rates of the extra gradient momenta kept for the rule, on top of Adam's
        own first moment at ``betas[0]``. Each costs one float per parameter of optimizer state.
    time_scales: T in the per-graph features ``tanh(step / T)``.
    clip: the clipped-gradient feature is the per-tensor-normalised gradient clamped to +-clip.
    eps: added to the rms in the ``momentum / rms`` and ``grad / rms`` features.
    """

    momentum_decays: tuple[float, ...] = (0.5, 0.99)
    time_scales: tuple[float, ...] = (10.0, 100.0, 1000.0, 10000.0)
    clip: float = 3.0
    eps: float = 1e-8
    version: int = FEATURE_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "momentum_decays", tuple(float(d) for d in self.momentum_decays))
        object.__setattr__(self, "time_scales", tuple(float(t) for t in self.time_scales))
        bad = [d for d in self.momentum_decays if not 0.0 <= d < 1.0]
        if bad:
            raise ValueError(f"FeatureConfig: momentum decays must lie in [0, 1), got {bad}.")
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
            "momentum_beta1",
            *[f"momentum_{d:g}" for d in self.momentum_decays],
            "second_moment_rms",
            "adam_momentum",
            "grad_over_rms",
        ]

    def node_names(self) -> list[str]:
        return ["second_moment_rms_in", "second_moment_rms_out"]

    def graph_names(self) -> list[str]:
        return [f"tanh_step_over_{t:g}" for t in self.time_scales]

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
        out["momentum_decays"] = list(self.momentum_decays)
        out["time_scales"] = list(self.time_scales)
        out["names"] = {"edge": self.edge_names(), "node": self.node_names(), "graph": self.graph_names()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureConfig":
        keys = {"momentum_decays", "time_scales", "clip", "eps", "version"}
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
        numels = torch.tensor([math.prod(s) for s in graph.param_shapes], dtype=torch.long, device=device)
        if int(numels.sum()) != e:
            raise ValueError(
                f"GraphIndex: the graph's parameter shapes hold {int(numels.sum())} scalars but it has "
                f"{e} parameter edges; the graph breaks the one-edge-per-parameter contract."
            )
        return cls(
            src=ei[0],
            dst=ei[1],
            numels=numels,
            inv_in_degree=torch.where(indeg > 0, 1.0 / indeg.clamp_min(1.0), torch.zeros_like(indeg)),
            inv_out_degree=torch.where(outdeg > 0, 1.0 / outdeg.clamp_min(1.0), torch.zeros_like(outdeg)),
            num_nodes=n,
            num_edges=e,
        )


@dataclass
class Features:
    """Rule inputs: ``edge`` [E, F_e], ``node`` [N, F_n], ``graph`` [1, F_g] (one graph)."""

    edge: Tensor
    node: Tensor
    graph: Tensor


def per_tensor_rms(values: Tensor, numels: Tensor) -> Tensor:
    """Root mean square of each column over each parameter tensor's edges: [E, F] -> [P, F]."""
    sq = torch.segment_reduce(values * values, "sum", lengths=numels, axis=0)
    return (sq / numels.clamp_min(1).unsqueeze(1).to(sq.dtype)).sqrt()


def normalise_per_tensor(values: Tensor, numels: Tensor) -> Tensor:
    """Divide every column by its RMS within each parameter tensor (in place; returns ``values``)."""
    sq = torch.segment_reduce(values * values, "sum", lengths=numels, axis=0)
    scale = torch.rsqrt(sq / numels.clamp_min(1).unsqueeze(1).to(sq.dtype) + _TINY)
    values.mul_(torch.repeat_interleave(scale, numels, dim=0, output_size=values.shape[0]))
    return values


def compute_features(
    index: GraphIndex,
    grad: Tensor,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    momenta: Tensor,
    step: int,
    config: FeatureConfig,
) -> Features:
    """Build the rule's inputs from flat edge-ordered values (all ``[E]``; ``momenta`` is ``[K, E]``).

    Every edge column is RMS-normalised per parameter tensor, so the rule sees the same inputs
    whatever the gradient or weight scale of a layer (bias correction is a per-tensor factor and
    cancels too). Node features are the factored (Adafactor-style) second moments: the rms of
    ``v`` over each node's incoming and outgoing parameter edges, relative to the network's rms.
    """
    e = index.num_edges
    if grad.shape != (e,) or momenta.shape != (len(config.momentum_decays), e):
        raise ValueError(
            f"compute_features: expected grad [{e}] and momenta [{len(config.momentum_decays)}, {e}], "
            f"got {tuple(grad.shape)} and {tuple(momenta.shape)}."
        )
    rms = exp_avg_sq.sqrt()
    denom = rms + config.eps
    cols = [
        grad,
        grad,  # clipped after normalisation, below
        param,
        exp_avg,
        *momenta.unbind(0),
        rms,
        exp_avg / denom,
        grad / denom,
    ]
    edge = normalise_per_tensor(torch.stack(cols, dim=1), index.numels)
    edge[:, 1].clamp_(-config.clip, config.clip)
    # A non-finite feature would spread through message passing to every neighbour: zero it.
    torch.nan_to_num_(edge, nan=0.0, posinf=0.0, neginf=0.0)

    global_rms = exp_avg_sq.mean().sqrt() + _TINY
    v_in = torch.zeros(index.num_nodes, device=grad.device).index_add_(0, index.dst, exp_avg_sq)
    v_out = torch.zeros(index.num_nodes, device=grad.device).index_add_(0, index.src, exp_avg_sq)
    node = torch.stack(
        [(v_in * index.inv_in_degree).sqrt() / global_rms, (v_out * index.inv_out_degree).sqrt() / global_rms],
        dim=1,
    )
    torch.nan_to_num_(node, nan=0.0, posinf=0.0, neginf=0.0)

    scales = torch.tensor(config.time_scales, dtype=torch.float32, device=grad.device)
    graph = torch.tanh(float(step) / scales).unsqueeze(0)
    return Features(edge=edge, node=node, graph=graph)
