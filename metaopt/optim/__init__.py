"""The learned optimizer: features, update rules, the update core and `GMNOptimizer`.

The rule shipped as ``rule="default"`` (``pretrained/default``) is a GMN rule meta-trained on CPU
by ``outer_train`` (docs/optim.md gives its budget and held-out evaluation); ``rule="adam"`` is
the untrained rule (alpha = 0), with which ``GMNOptimizer`` computes exactly Adam (AdamW with
weight decay), bit for bit.
"""

from . import core
from .core import Hyper, OptState
from .features import FEATURE_VERSION, FeatureConfig, Features, GraphIndex, compute_features
from .optimizer import GMNOptimizer
from .rules import RULE_KINDS, RULE_VERSION, RuleCheckpointError, RuleConfig, UpdateRule, register_rule_kind

__all__ = [
    "GMNOptimizer",
    "UpdateRule",
    "RuleConfig",
    "RuleCheckpointError",
    "RULE_KINDS",
    "register_rule_kind",
    "FeatureConfig",
    "Features",
    "GraphIndex",
    "compute_features",
    "core",
    "Hyper",
    "OptState",
    "FEATURE_VERSION",
    "RULE_VERSION",
]
