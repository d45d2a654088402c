"""Spatial feature grids (metaopt.layers.feature_grid): grid cells become ordered GRID nodes.

A grid module maps query points [..., d] to features [..., C]. Its graph:

- one GRID node per cell (ordered: position = flat cell index, plane-major then row-major);
- C feature neurons (HIDDEN, interchangeable; 3C for a concatenating tri-plane, plane-major),
  which the decoder's first layer reads like any other neurons;
- one GRID_FEATURE edge per grid value planes[p, c, row, col]: cell node (p, row, col) -> feature
  neuron c (or p*C + c), with K0 = plane p, K1 = row, K2 = column: the cell's coordinates.

The value of a GRID node for a query is its bilinear interpolation weight (`cell_weights`), and a
GRID_FEATURE edge multiplies it like a dense weight, so feature c = sum over cells of weight * value:
the graph computes the model (see simulate). Permuting feature channels together with the
decoder's input columns, or hidden decoder neurons, is a node relabelling; cells are ordered,
since moving a cell moves where its features live.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...layers.feature_grid import GRID2D_AXES, PLANE_AXES, FeatureGrid2d, TriPlaneGrid
from ..builder import NeuronMap
from ..parameter_graph import ParameterGraph
from ..registry import ConversionContext, register_converter
from ..schema import EDGE_K0, EDGE_K1, EDGE_K2, EDGE_LAYER, EDGE_TYPE, NODE_TYPE, EdgeType, NodeType

GRID_KINDS = {"feature_grid2d": GRID2D_AXES, "triplane_sum": PLANE_AXES, "triplane_concat": PLANE_AXES}


def grid_features(ctx: ConversionContext, name: str, kind: str, coords_ndim: int, planes: Tensor,
                  concat: bool, grid_shape: tuple[int, ...]) -> NeuronMap:
    """GRID cell nodes, feature neurons and one edge per grid value for a [P, C, H, W] layout.

    `planes` is the parameter (any shape whose flatten order is [P, C, H, W] = `grid_shape`).
    """
    P, C, H, W = grid_shape
    if H > 32767 or W > 32767:
        ctx.fail(f"grid resolution {H}x{W} exceeds the int16 edge-feature range for cell coordinates.")
    layer = ctx.new_layer(name, kind)
    cells = ctx.add_nodes(P * H * W, NodeType.GRID, layer, torch.arange(P * H * W))
    feats = ctx.add_nodes(P * C if concat else C, NodeType.HIDDEN, layer)
    src = cells.view(P, 1, H, W)
    dst = feats.view(P, C, 1, 1) if concat else feats.view(1, C, 1, 1)
    coords = torch.stack(torch.meshgrid(torch.arange(P), torch.arange(H), torch.arange(W), indexing="ij"), -1)
    kpos = coords.view(P, 1, H, W, 3)
    if planes.dim() != 4:  # FeatureGrid2d keeps [C, H, W]: same flatten order as [1, C, H, W]
        src, dst, kpos = src[0], dst[0], kpos[0]
    ctx.add_param_edges(planes, src, dst, EdgeType.GRID_FEATURE, layer, kpos)
    return NeuronMap(feats, coords_ndim - 1, None, coords_ndim)


def _check_coords(ctx: ConversionContext, d: int) -> int:
    real = ctx.args[0]
    if real.shape[-1] != d:
        ctx.fail(f"expects query points [..., {d}], got shape {tuple(real.shape)}.")
    return real.ndim


@register_converter(FeatureGrid2d)
def _feature_grid2d(ctx: ConversionContext, m: FeatureGrid2d, inputs: list, name: str) -> NeuronMap:
    ndim = _check_coords(ctx, 2)
    return grid_features(ctx, name, "feature_grid2d", ndim, m.grid, False, (1, *m.grid.shape))


@register_converter(TriPlaneGrid)
def _triplane(ctx: ConversionContext, m: TriPlaneGrid, inputs: list, name: str) -> NeuronMap:
    ndim = _check_coords(ctx, 3)
    return grid_features(ctx, name, f"triplane_{m.reduce}", ndim, m.planes, m.reduce == "concat",
                         tuple(m.planes.shape))


def cell_weights(graph: ParameterGraph, coords: Tensor) -> tuple[Tensor, Tensor]:
    """(GRID node ids [G], their bilinear interpolation weights [G, B]) at query points coords [B, d].

    Read from the graph alone: a cell's plane and (row, col) are its edges' K columns, a plane's
    resolution is its largest row/col + 1, the plane's axes follow from the layer kind. Matches the
    layers' convention (domain [-1, 1], corners on the boundary, zero outside).
    """
    nx = graph.x
    ea = graph.edge_attr  # compact (int16): only the grid edges' rows are widened below
    is_grid = ea[:, EDGE_TYPE] == EdgeType.GRID_FEATURE
    nodes = (nx[:, NODE_TYPE] == NodeType.GRID).nonzero().squeeze(1)
    if not bool(is_grid.any()):
        return nodes, coords.new_zeros(nodes.numel(), coords.shape[0])
    e = is_grid.nonzero().squeeze(1)
    cell = torch.full((int(graph.num_nodes), 4), -1, dtype=torch.long)  # layer, plane, row, col
    cell[graph.edge_index[0][e].long()] = ea[e][:, [EDGE_LAYER, EDGE_K0, EDGE_K1, EDGE_K2]].long()
    c = cell[nodes]
    if bool((c[:, 0] < 0).any()):
        raise ValueError("cell_weights: a GRID node has no GRID_FEATURE edge; the graph is malformed.")
    # resolution of each (layer, plane): largest row/col index + 1
    key = c[:, 0] * 3 + c[:, 1]
    n_keys = int(key.max()) + 1
    rows = torch.zeros(n_keys, dtype=torch.long).scatter_reduce(0, key, c[:, 2], "amax") + 1
    cols = torch.zeros(n_keys, dtype=torch.long).scatter_reduce(0, key, c[:, 3], "amax") + 1
    kinds = {rec["layer"]: rec["kind"] for rec in graph.layers}
    axes = torch.zeros(int(c[:, 0].max()) + 1, 3, 2, dtype=torch.long)
    for lid in torch.unique(c[:, 0]).tolist():  # one entry per grid layer, not per cell
        if kinds.get(lid) not in GRID_KINDS:
            raise NotImplementedError(f"cell_weights: unknown grid layer kind {kinds.get(lid)!r}")
        ax = GRID_KINDS[kinds[lid]]
        axes[lid, : len(ax)] = torch.tensor(ax)
    ax = axes[c[:, 0], c[:, 1]]  # [G, 2] (column axis, row axis)
    d = coords.shape[1]
    if int(ax.max()) >= d:
        raise ValueError(f"cell_weights: the grid reads coordinate axis {int(ax.max())}, queries have {d}.")
    q = coords.t()  # [d, B]
    u, v = q[ax[:, 0]], q[ax[:, 1]]  # [G, B]
    fx = (u + 1) / 2 * (cols[key] - 1).to(q.dtype).view(-1, 1)
    fy = (v + 1) / 2 * (rows[key] - 1).to(q.dtype).view(-1, 1)
    wx = (1 - (fx - c[:, 3:4].to(q.dtype)).abs()).clamp_min(0)
    wy = (1 - (fy - c[:, 2:3].to(q.dtype)).abs()).clamp_min(0)
    return nodes, wx * wy
