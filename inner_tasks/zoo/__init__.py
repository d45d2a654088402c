"""Model zoos for weight-space learning: `python -m inner_tasks.zoo --preset ... --out DIR`."""

from .generate import DEFAULT_N, GenerationReport, ZooGenerator, generate
from .presets import DIVERSE_FAMILIES, PRESETS, ModelConfig, sample_config
from .train import layout_inputs, train_config, zoo_data

__all__ = [
    "DEFAULT_N", "DIVERSE_FAMILIES", "GenerationReport", "ModelConfig", "PRESETS", "ZooGenerator", "generate",
    "layout_inputs", "sample_config", "train_config", "zoo_data",
]
