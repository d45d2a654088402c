"""Graph-relevant layer types users build models from: parameter-sharing layers with graph converters.

Plain nn.Modules (no dependency on metaopt.graph); their converters live in
metaopt/graph/converters/{group,grid}.py. See docs/layers.md for how each becomes a graph.
"""

from .feature_grid import PLANE_AXES, FeatureGrid2d, TriPlaneGrid
from .group_linear import C4GroupConv2d, C4LiftingConv2d, CyclicLinear, SetLinear

__all__ = [
    "SetLinear", "CyclicLinear", "C4LiftingConv2d", "C4GroupConv2d",
    "FeatureGrid2d", "TriPlaneGrid", "PLANE_AXES",
]
