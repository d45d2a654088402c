"""The vocabulary of parameter graphs: node types, edge types, activations and feature columns.

Everything that reads a `ParameterGraph` (GMNs, optimizer features, simulate) relies on these
integer codes, so they are append-only: never renumber an existing member.
"""

from __future__ import annotations

from enum import IntEnum

import torch


class NodeType(IntEnum):
    """What a node stands for. Hidden kinds are interchangeable; INPUT/OUTPUT/TOKEN/POSITION are ordered."""

    INPUT = 0  # an input feature (pixel, channel of the input image, input coordinate)
    HIDDEN = 1  # output neuron/channel of a linear or conv layer
    OUTPUT = 2  # a neuron of the network's final output (ordered)
    BIAS = 3  # one per layer: source of that layer's bias edges
    NORM = 4  # one per norm layer: source of its scale (gamma) edges
    HEAD = 5  # one per attention head: groups the head's query/key/value neurons
    TOKEN = 6  # one per embedding row (vocabulary entry, ordered)
    PARAM_SOURCE = 7  # a row of a free-standing parameter (positional table row, class token)
    FREE = 8  # holder of parameters no converter understood (non-strict mode)
    QUERY = 9  # attention query neuron
    KEY = 10  # attention key neuron
    VALUE = 11  # attention value neuron
    SUM = 12  # neuron of a residual sum a + b
    PRODUCT = 13  # neuron of an elementwise product a * b (gating)
    NORMED = 14  # output neuron of a normalisation layer
    GROUP = 15  # group element node of a group-equivariant layer
    GRID = 16  # cell of a spatial feature grid (ordered by its coordinates)


class EdgeType(IntEnum):
    """What an edge stands for. Members below AUX_START carry a parameter; the rest are structural."""

    LINEAR = 0  # weight of a dense layer: in neuron -> out neuron
    CONV = 1  # one kernel tap of a convolution: in channel -> out channel, kernel position in features
    BIAS = 2  # bias node -> neuron
    NORM_WEIGHT = 3  # norm node -> normalised neuron (gamma)
    NORM_BIAS = 4  # bias node -> normalised neuron (beta)
    EMBEDDING = 5  # token node -> embedding neuron
    ATTN_Q = 6  # input neuron -> query neuron
    ATTN_K = 7  # input neuron -> key neuron
    ATTN_V = 8  # input neuron -> value neuron
    ATTN_O = 9  # value neuron -> attention output neuron
    ATTN_BIAS_KV = 10  # bias node -> key/value neuron (nn.MultiheadAttention add_bias_kv)
    PARAM_ADD = 11  # free-standing parameter row -> neuron it is added to (positional table)
    PARAM_CAT = 12  # free-standing parameter row -> neuron it is concatenated into (class token)
    FREE = 13  # parameter no converter understood: self-loop on a FREE node
    LINEAR_FLAT = 14  # dense weight reading a flattened feature map: channel -> neuron, position in features
    GROUP_SHARED = 15  # shared parameter of a group-equivariant layer
    GRID_FEATURE = 16  # grid cell -> decoder neuron (spatial feature grid value)
    # structural edges (no parameter), stored in aux_edge_index / aux_edge_attr
    RESIDUAL = 32  # operand neuron -> sum neuron of a + b
    NORM_IN = 33  # neuron -> its normalised counterpart
    QK_PAIR = 34  # query neuron -> the key neuron it is dotted with
    HEAD_MEMBER = 35  # query/key/value neuron -> its head node
    PRODUCT_IN = 36  # operand neuron -> product neuron
    ACT_IN = 37  # neuron -> activated copy (when the un-activated value is used elsewhere too)


AUX_START = 32

# Edge types that carry a parameter and whose value multiplies the source neuron's value.
MULTIPLICATIVE_EDGES = (EdgeType.LINEAR, EdgeType.CONV, EdgeType.LINEAR_FLAT)


class Activation(IntEnum):
    """Elementwise nonlinearity applied to a neuron after its aggregation (node feature column)."""

    NONE = 0
    RELU = 1
    GELU = 2
    TANH = 3
    SIGMOID = 4
    SILU = 5
    SIN = 6
    LEAKY_RELU = 7
    ELU = 8
    SOFTPLUS = 9
    SOFTMAX = 10
    MISH = 11
    HARDSWISH = 12
    OTHER = 13


# Node feature columns (graph.x, int64 [N, NODE_FEATURES]).
NODE_TYPE, NODE_LAYER, NODE_POSITION, NODE_ACTIVATION = range(4)
NODE_FEATURES = 4

# Edge feature columns (graph.edge_attr and graph.aux_edge_attr, int16 [E, EDGE_FEATURES]).
# K0..K2 hold a spatial position: for CONV taps the offset from the kernel centre (so 3x3 and 5x5
# taps share meaning, floor division for even kernels), for LINEAR_FLAT the (d, h, w) coordinate of
# the flattened feature, for GROUP_SHARED the group element. Unused dims and other edges hold 0.
EDGE_TYPE, EDGE_LAYER, EDGE_K0, EDGE_K1, EDGE_K2 = range(5)
EDGE_FEATURES = 5
EDGE_KPOS = slice(EDGE_K0, EDGE_K2 + 1)
NO_POSITION = -1  # node position of interchangeable (hidden) units

# Storage dtypes: chosen so the index costs ~2x the float32 parameter bytes (docs/benchmarks.md §3).
INDEX_DTYPE = torch.int32
EDGE_ATTR_DTYPE = torch.int16
NODE_ATTR_DTYPE = torch.int64
