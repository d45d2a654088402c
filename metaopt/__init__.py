"""metaopt: parameter graphs, graph metanetworks and a learned optimizer built on them."""

from .graph import ParameterGraph, register_converter, to_graph
from .nn import GMN, GMNOutput, PerParameterMLP
from .optim import GMNOptimizer, UpdateRule

__all__ = [
    "ParameterGraph", "to_graph", "register_converter",
    "GMN", "GMNOutput", "PerParameterMLP",
    "GMNOptimizer", "UpdateRule",
]
__version__ = "0.17.1"
