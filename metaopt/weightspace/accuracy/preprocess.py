"""Weight and target preprocessing fitted on the training models only.

Per-tensor normalisation: a parameter tensor (architecture, name) gets the mean and std of its
elements over the training models of that architecture, but only where that architecture has at
least `min_models` training models. Every other tensor (rare architectures, and those with no
training model at all in the OOD split) uses statistics pooled per edge type (conv tap, dense
weight, bias, norm gain, ...) over all training tensors.

Why the threshold: statistics of an architecture with one or two training models standardise each
of those models' tensors by *its own* mean and std, which erases the weight scale (the most
predictive feature of accuracy) for the training models while the unseen test architectures keep
it under the pooled statistics, so train and test inputs differ in distribution. In zoos where
nearly every model has its own architecture (the 450-model varying-CNN zoo of v0.0, 2026-11: 437
architectures for 450 models) that made StatNN/GMN features near-constant on the training set. The statistics are
shared by all models of an architecture, so differences between models survive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ...graph.schema import EDGE_TYPE
from ..zoo_io import Zoo

EPS = 1e-6


def _tensor_edge_types(zoo: Zoo, arch: str) -> Tensor:
    """Edge type of each parameter tensor of `arch` (that of its first edge), int64 [T]."""
    g = zoo.graphs[arch]
    starts = torch.tensor(g.param_offsets[:-1], dtype=torch.long)
    return g.edge_attr[starts, EDGE_TYPE].long()


@dataclass
class WeightNormalizer:
    """Per-edge shift/scale vectors per architecture, from per-tensor train statistics."""

    shift: dict[str, Tensor] = field(default_factory=dict)
    scale: dict[str, Tensor] = field(default_factory=dict)
    type_stats: dict[int, tuple[float, float]] = field(default_factory=dict)
    min_models: int = 8

    @classmethod
    def fit(cls, zoo: Zoo, train_idx: list[int] | Tensor, min_models: int = 8) -> "WeightNormalizer":
        """Statistics from the models `train_idx` of `zoo` only (per architecture where it has >= `min_models`)."""
        if min_models < 1:
            raise ValueError(f"WeightNormalizer: min_models must be >= 1, got {min_models}")
        norm = cls(min_models=min_models)
        by_arch: dict[str, list[int]] = {}
        for i in map(int, train_idx):
            by_arch.setdefault(zoo.records[i]["arch_id"], []).append(i)
        sums: dict[int, list[float]] = {}  # edge type -> [count, sum, sum of squares]
        for arch, idx in by_arch.items():
            g = zoo.graphs[arch]
            w = torch.stack([zoo.weights[i] for i in idx]).double()  # [n, P]
            numels = torch.tensor(g.param_numels)
            seg = torch.repeat_interleave(torch.arange(len(numels)), numels)
            cnt = (numels * len(idx)).double()
            s1 = torch.zeros(len(numels), dtype=torch.float64).index_add_(0, seg, w.sum(0))
            s2 = torch.zeros(len(numels), dtype=torch.float64).index_add_(0, seg, (w * w).sum(0))
            mean = s1 / cnt
            std = (s2 / cnt - mean**2).clamp(min=0).sqrt()
            if len(idx) >= min_models:
                norm.shift[arch] = mean[seg].float()
                norm.scale[arch] = std.clamp(min=EPS)[seg].float()
            for t, c, a, b in zip(_tensor_edge_types(zoo, arch).tolist(), cnt.tolist(), s1.tolist(), s2.tolist()):
                acc = sums.setdefault(t, [0.0, 0.0, 0.0])
                acc[0] += c
                acc[1] += a
                acc[2] += b
        for t, (c, a, b) in sums.items():
            m = a / c
            norm.type_stats[t] = (m, max((b / c - m * m), 0.0) ** 0.5)
        return norm

    def _vectors(self, zoo: Zoo, arch: str) -> tuple[Tensor, Tensor]:
        if arch not in self.shift:  # rare or unseen architecture: per edge-type statistics
            g = zoo.graphs[arch]
            types = _tensor_edge_types(zoo, arch).tolist()
            fallback = [self.type_stats.get(t, (0.0, 1.0)) for t in types]
            numels = torch.tensor(g.param_numels)
            self.shift[arch] = torch.repeat_interleave(torch.tensor([m for m, _ in fallback]), numels).float()
            self.scale[arch] = torch.repeat_interleave(torch.tensor([max(s, EPS) for _, s in fallback]), numels).float()
        return self.shift[arch], self.scale[arch]

    def transform(self, zoo: Zoo, i: int) -> Tensor:
        """Normalised weights of model i, float32 [P] in edge order."""
        shift, scale = self._vectors(zoo, zoo.records[i]["arch_id"])
        return (zoo.weights[i].float() - shift) / scale


@dataclass
class TargetScaler:
    """Standardise targets with the training mean and std."""

    mean: float
    std: float

    @classmethod
    def fit(cls, y: Tensor) -> "TargetScaler":
        return cls(float(y.mean()), float(y.std()) if len(y) > 1 and float(y.std()) > EPS else 1.0)

    def transform(self, y: Tensor) -> Tensor:
        return (y - self.mean) / self.std

    def inverse(self, z: Tensor) -> Tensor:
        return z * self.std + self.mean
