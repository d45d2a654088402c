"""metaopt: parameter graphs, graph metanetworks and a learned optimizer built on them."""

from .graph import ParameterGraph

__all__ = ["ParameterGraph"]
__version__ = "0.1.0"
