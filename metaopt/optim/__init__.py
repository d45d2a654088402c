"""The learned optimizer: features, update rules and `GMNOptimizer` (a drop-in torch optimizer).

The rule shipped as ``rule="default"`` (``pretrained/default``) is, until a meta-trained rule
exists, the UNTRAINED Adam residual (alpha = 0): ``GMNOptimizer(model)`` then computes exactly
Adam (AdamW with weight decay). Meta-training replaces those files with a learned rule.
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
