"""Task families: each turns a dict of knobs (width, depth, activation, norm, batch size, data
set, ...) into a `TaskSpec`, and a `FamilySampler` draws knobs from allowed choices.

Membership is decided on knobs (`FamilySampler.contains`), which is what lets the meta-training
distribution and the held-out suite be checked for overlap exactly rather than by sampling.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..models.specs import CNNSpec, DeepSetsSpec, MLPSpec, SIRENSpec, TransformerLMSpec
from .spec import TaskSpec

Knobs = Mapping[str, Any]

_IMAGE_CLASSES = {"digits": 10, "shapes": 5, "mnist": 10, "fashion_mnist": 10, "cifar10": 10}
_IMAGE_CHANNELS = {"digits": 1, "shapes": 1, "mnist": 1, "fashion_mnist": 1, "cifar10": 3}


def _image_data(k: Knobs, layout: str = "image") -> dict[str, Any]:
    return {"source": "image", "name": k["dataset"], "size": k["image_size"], "n_train": 2000, "n_test": 500, "layout": layout}


def mlp_classification(k: Knobs, seed: int, horizon: int) -> TaskSpec:
    """MLP on flattened images. Knobs: dataset, image_size, width, depth, activation, norm, batch_size."""
    c = _IMAGE_CHANNELS[k["dataset"]]
    model = MLPSpec(c * k["image_size"] ** 2, _IMAGE_CLASSES[k["dataset"]], (k["width"],) * k["depth"], k["activation"], k["norm"])
    return TaskSpec("mlp_classification", model, _image_data(k), k["batch_size"], horizon, seed, dict(k), 3e-3)


def cnn_classification(k: Knobs, seed: int, horizon: int) -> TaskSpec:
    """2-D or 1-D CNN. Knobs: dataset, image_size, width (first-stage channels, doubled per stage up
    to 4x), depth (stages), kernel_size, norm (none/batch/group), residual, activation, dim, batch_size."""
    channels = tuple(k["width"] * min(2**i, 4) for i in range(k["depth"]))
    model = CNNSpec(
        _IMAGE_CHANNELS[k["dataset"]], _IMAGE_CLASSES[k["dataset"]], channels, (k["kernel_size"],), k["dim"],
        k["norm"], k["activation"], k["residual"], "max" if k["dim"] == 2 else "avg",
    )
    layout = "image" if k["dim"] == 2 else "sequence"
    return TaskSpec("cnn_classification", model, _image_data(k, layout), k["batch_size"], horizon, seed, dict(k), 3e-3)


def transformer_lm(k: Knobs, seed: int, horizon: int) -> TaskSpec:
    """Byte-level Transformer LM on the stdlib corpus. Knobs: width (model dim), depth, heads,
    context, activation, batch_size."""
    model = TransformerLMSpec(256, k["context"], k["width"], k["depth"], k["heads"], 4, k["activation"])
    data = {"source": "text", "max_bytes": 1_000_000, "context": k["context"], "eval_batches": 4}
    return TaskSpec("transformer_lm", model, data, k["batch_size"], horizon, seed, dict(k), 3e-3)


def siren_inr(k: Knobs, seed: int, horizon: int) -> TaskSpec:
    """Fit one image (chosen by seed) with a SIREN. Knobs: dataset, image_size, width, depth, w0,
    batch_size (pixels per step; >= image_size**2 means full batch)."""
    model = SIRENSpec(2, _IMAGE_CHANNELS[k["dataset"]], (k["width"],) * k["depth"], k["w0"], k["w0"])
    data = {"source": "inr", "name": k["dataset"], "size": k["image_size"], "index": seed}
    return TaskSpec("siren_inr", model, data, k["batch_size"], horizon, seed, dict(k), 1e-3)


def deepsets(k: Knobs, seed: int, horizon: int) -> TaskSpec:
    """DeepSets on synthetic sets. Knobs: target (sum/max/variance/distribution), set_size, width,
    depth (phi layers; rho has one hidden layer), pool, activation, batch_size."""
    from ..data.sets import SET_DISTRIBUTIONS

    out = len(SET_DISTRIBUTIONS) if k["target"] == "distribution" else 1
    model = DeepSetsSpec(2, out, (k["width"],) * k["depth"], (k["width"],), k["pool"], k["activation"])
    data = {"source": "sets", "target": k["target"], "set_size": k["set_size"], "dim": 2, "n_train": 2000, "n_test": 500}
    return TaskSpec("deepsets", model, data, k["batch_size"], horizon, seed, dict(k), 3e-3)


def teacher_student(k: Knobs, seed: int, horizon: int) -> TaskSpec:
    """Regress a random teacher MLP (fixed by seed). Knobs: in_dim, width, depth, activation, norm, batch_size."""
    model = MLPSpec(k["in_dim"], 1, (k["width"],) * k["depth"], k["activation"], k["norm"])
    data = {"source": "teacher_student", "in_dim": k["in_dim"], "out_dim": 1, "teacher_hidden": 32, "teacher_depth": 2,
            "noise": 0.05, "n_train": 2000, "n_test": 500}
    return TaskSpec("teacher_student", model, data, k["batch_size"], horizon, seed, dict(k), 3e-3)


FAMILY_BUILDERS: dict[str, Callable[[Knobs, int, int], TaskSpec]] = {
    "mlp_classification": mlp_classification,
    "cnn_classification": cnn_classification,
    "transformer_lm": transformer_lm,
    "siren_inr": siren_inr,
    "deepsets": deepsets,
    "teacher_student": teacher_student,
}


def make_task_spec(family: str, knobs: Knobs, seed: int = 0, horizon: int = 200, name: str = "") -> TaskSpec:
    """The TaskSpec of `family` with explicit knobs (used for the fixed held-out suite)."""
    if family not in FAMILY_BUILDERS:
        raise ValueError(f"unknown task family {family!r}; choose one of {sorted(FAMILY_BUILDERS)}")
    spec = FAMILY_BUILDERS[family](knobs, seed, horizon)
    return TaskSpec.from_dict({**spec.to_dict(), "name": name}) if name else spec


@dataclass(frozen=True, eq=False)
class FamilySampler:
    """Uniform choices per knob for one family; `sample(seed)` is deterministic."""

    family: str
    choices: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    horizon: int = 200

    def __post_init__(self) -> None:
        if self.family not in FAMILY_BUILDERS:
            raise ValueError(f"unknown task family {self.family!r}; choose one of {sorted(FAMILY_BUILDERS)}")
        empty = [k for k, v in self.choices.items() if len(v) == 0]
        if empty:
            raise ValueError(f"{self.family}: knobs {empty} have no allowed values")

    def sample(self, seed: int) -> TaskSpec:
        """Draw knobs with random.Random(seed) (sorted knob order) and build the spec with that seed."""
        rng = random.Random(f"{self.family}:{seed}")
        knobs = {name: rng.choice(self.choices[name]) for name in sorted(self.choices)}
        return FAMILY_BUILDERS[self.family](knobs, seed, self.horizon)

    def contains(self, spec: TaskSpec) -> bool:
        """True if this sampler can produce `spec`'s family and knobs (seed and horizon aside)."""
        if spec.family != self.family or set(spec.knobs) != set(self.choices):
            return False
        return all(spec.knobs[k] in self.choices[k] for k in self.choices)
