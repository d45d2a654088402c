"""The edge rules simulate runs, one per edge family; a layer's value is the sum of their parts.

A rule is `rule(state, layer, nodes, edges, aux_edges) -> [(rows, values [k, B, *S]), ...]`: it
looks at the parameter / structural edges into `layer` that it owns and returns what they add to
the layer's neurons (local `rows`). Adding a family means one file and one entry here.
"""

from __future__ import annotations

from ..schema import EdgeType
from . import attention, conv, dense, embedding, norm, recurrent

RULES = [dense.weighted, dense.tied, dense.flat, dense.bias, dense.table, dense.copies, dense.product, conv.conv,
         norm.normalise, embedding.lookup]

# layers computed as a whole (attention, a recurrent layer's sequence), by kind:
# `rule(state, layer, nodes, edges, aux_edges) -> [n, B, *S]`
LAYER_RULES = {"multihead_attention": attention.multihead, **{k: recurrent.layer for k in recurrent.KINDS}}

SUPPORTED_EDGES = {EdgeType.LINEAR, EdgeType.LINEAR_FLAT, EdgeType.BIAS, EdgeType.GRID_FEATURE, EdgeType.CONV,
                   EdgeType.NORM_WEIGHT, EdgeType.NORM_BIAS, EdgeType.ATTN_Q, EdgeType.ATTN_K, EdgeType.ATTN_V,
                   EdgeType.ATTN_O, EdgeType.ATTN_BIAS_KV, EdgeType.PARAM_ADD, EdgeType.PARAM_CAT,
                   EdgeType.EMBEDDING}
SUPPORTED_AUX = {EdgeType.RESIDUAL, EdgeType.ACT_IN, EdgeType.PRODUCT_IN, EdgeType.NORM_IN, EdgeType.QK_PAIR,
                 EdgeType.HEAD_MEMBER}
