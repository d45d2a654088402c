"""The learned optimizer: features, update rules, the update core and `GMNOptimizer`.

``GMNOptimizer(model)`` runs the shipped lr-free mode with no learned rule (``rule="lrfree_soap_1e4"``, since 0.17:
Prodigy's distance estimate from 1e-4, every 10th step, 70% per tensor, in about half the state of 0.5's default,
its growth capped once it has settled, the step halved on plateaus of the gradient norm and doubled, once, where it
keeps falling fast, to twice the step at the doubling; once the estimate has settled, SOAP's step (`eigenbasis`) on
each matrix's input side at half the settled step once it has held for 150 steps, `SoapSwitch`): no lr to tune.
``rule="lrfree_soap"`` is 0.16's default (the estimate from 1e-6, the switch after 100 steps held);
``rule="lrfree_anchor"`` is 0.16's without the switch (the default of 0.11-0.15). ``rule="lrfree"``
(``pretrained/lrfree``) is the GMN rule meta-trained in 0.5's mode (the default of 0.4; behind it over nine held-out
seeds, docs/optim.md). ``rule="default"`` (``pretrained/default``) is the GMN rule meta-trained at a fixed lr, what
an ``lr=`` without a rule runs; docs/optim.md gives their budgets and held-out evaluations. ``rule="adam"`` is the
untrained rule (alpha = 0), with which ``GMNOptimizer``
computes exactly Adam (AdamW with weight decay), bit for bit. ``rule="lrfree_boost1"`` is 0.10's default and
``rule="lrfree_sf"`` the schedule-free mode; the defaults of 0.5-0.9 are no longer rule names (`RETIRED_RULES`
gives the options that run each). ``GMNOptimizer(model, soap_switch=False)`` keeps the lr-free step throughout.
"""

from . import core
from .core import Hyper, OptState
from .eigenbasis import SoapSwitch
from .features import FEATURE_VERSION, FeatureConfig, Features, GraphIndex, compute_features
from .optimizer import GMNOptimizer
from .rules import (RETIRED_RULES, RULE_KINDS, RULE_VERSION, RetiredRule, RuleCheckpointError, RuleConfig, UpdateRule,
                    register_rule_kind, shipped_rules)

__all__ = [
    "GMNOptimizer",
    "SoapSwitch",
    "UpdateRule",
    "RuleConfig",
    "RuleCheckpointError",
    "RULE_KINDS",
    "RETIRED_RULES",
    "RetiredRule",
    "shipped_rules",
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
