"""Graph metanetworks over parameter graphs, and the weight-space baselines they are compared with."""

from .baselines import DMC, DeepSets, PerParameterMLP, StatNN, segment_stats
from .encoders import EdgeEncoder, NodeEncoder, ValueEncoder, sinusoidal_encoding, value_features
from .gmn import GMN, GMNOutput, GraphInputs, prepare_graph
from .message_passing import EdgeAwareLayer, LocalLayer, scatter_mean

__all__ = [
    "GMN",
    "GMNOutput",
    "GraphInputs",
    "prepare_graph",
    "PerParameterMLP",
    "DeepSets",
    "DMC",
    "StatNN",
    "segment_stats",
    "EdgeAwareLayer",
    "LocalLayer",
    "scatter_mean",
    "NodeEncoder",
    "EdgeEncoder",
    "ValueEncoder",
    "value_features",
    "sinusoidal_encoding",
]
