"""metaopt: parameter graphs, graph metanetworks and a learned optimizer built on them."""

from .graph import ParameterGraph, register_converter, to_graph

__all__ = ["ParameterGraph", "to_graph", "register_converter"]
__version__ = "0.1.0"
