"""Parameter graphs: networks as graphs with one edge per scalar parameter."""

from .builder import NeuronMap, dense_edges, grouped_kernel_edges
from .parameter_graph import ParameterGraph
from .example_call import ExampleCall
from .registry import (
    ConversionContext, ConversionError, ExampleInputError, ParamRef, register_converter, unregister_converter,
)
from .schema import AUX_START, Activation, EdgeType, NodeType
from .convert import clear_structure_cache, to_graph

__all__ = [
    "ParameterGraph", "to_graph", "register_converter", "unregister_converter", "clear_structure_cache",
    "ConversionContext", "ConversionError", "ExampleInputError", "ExampleCall", "NeuronMap", "ParamRef", "dense_edges",
    "grouped_kernel_edges", "NodeType", "EdgeType", "Activation", "AUX_START",
]

from .simulate import simulate  # noqa: E402

__all__.append("simulate")
