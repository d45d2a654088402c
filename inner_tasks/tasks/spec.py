"""`TaskSpec`: everything that defines a task (model, data, batch size, horizon, seed) as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..models.specs import ModelSpec, spec_from_dict, spec_to_dict


@dataclass(frozen=True, eq=False)
class TaskSpec:
    """A fully determined training task.

    family: the sampler that made it (e.g. "mlp_classification"); model: architecture spec;
    data: JSON-able data description (source, name, sizes; see tasks/sources.py); batch_size;
    horizon: inner steps the task is trained for; seed: fixes data draws, init and batch order;
    knobs: the sampled choices (width, depth, ...) that family membership is checked on;
    reference_lr: an Adam learning rate known to train it (a sane default, not a tuned value).
    """

    family: str
    model: ModelSpec
    data: dict[str, Any]
    batch_size: int
    horizon: int
    seed: int = 0
    knobs: dict[str, Any] = field(default_factory=dict)
    reference_lr: float = 1e-3
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (model spec nested via spec_to_dict)."""
        return {
            "family": self.family, "model": spec_to_dict(self.model), "data": dict(self.data),
            "batch_size": self.batch_size, "horizon": self.horizon, "seed": self.seed,
            "knobs": dict(self.knobs), "reference_lr": self.reference_lr, "name": self.name,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskSpec:
        """Inverse of `to_dict`."""
        d = dict(d)
        d["model"] = spec_from_dict(d["model"])
        return cls(**d)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal specs give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TaskSpec:
        """Rebuild from `to_json` output."""
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskSpec) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def architecture_key(self) -> str:
        """JSON of the model spec alone: tasks with equal keys can share a graph and be vmapped."""
        return json.dumps(spec_to_dict(self.model), sort_keys=True)
