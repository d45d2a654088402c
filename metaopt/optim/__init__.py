"""The learned optimizer: features, update rules and `GMNOptimizer` (a drop-in torch optimizer).

The rule shipped as ``rule="default"`` (``pretrained/default``) is a GMN rule meta-trained on CPU
by ``outer_train`` (see the README for its budget and held-out evaluation); ``rule="adam"`` is the
untrained residual (alpha = 0), with which ``GMNOptimizer`` computes exactly Adam (AdamW with
weight decay), bit for bit.
"""

from .features import FEATURE_VERSION, FeatureConfig, Features, GraphIndex, compute_features
from .optimizer import GMNOptimizer
from .rules import RULE_VERSION, RuleCheckpointError, RuleConfig, UpdateRule

__all__ = [
    "GMNOptimizer",
    "UpdateRule",
    "RuleConfig",
    "RuleCheckpointError",
    "FeatureConfig",
    "Features",
    "GraphIndex",
    "compute_features",
    "FEATURE_VERSION",
    "RULE_VERSION",
]
