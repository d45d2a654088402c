"""Parameter graphs: networks as graphs with one edge per scalar parameter."""

from .parameter_graph import ParameterGraph
from .schema import AUX_START, Activation, EdgeType, NodeType

__all__ = ["ParameterGraph", "NodeType", "EdgeType", "Activation", "AUX_START"]
