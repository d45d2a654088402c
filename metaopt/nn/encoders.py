"""Input encoders of the GMN: structure embeddings of nodes/edges and scale-robust value encodings.

Structure (types, layer index, ordered positions, kernel offsets) is integer-coded in the graph
(see `metaopt.graph.schema`); values (weights, gradients, optimizer state) come separately. Both
are turned into ``hidden``-dimensional vectors here. Hidden units share one learned "no identity"
position vector, so the encoding never breaks the permutation symmetry of interchangeable units.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from metaopt.graph.schema import (
    EDGE_K0,
    EDGE_K2,
    EDGE_LAYER,
    EDGE_TYPE,
    NODE_ACTIVATION,
    NODE_LAYER,
    NODE_POSITION,
    NODE_TYPE,
)

# Vocabulary sizes. The schema enums are append-only and well below these; out-of-range codes are
# clamped to the last bucket rather than crashing (a data-dependent check would break compile).
NUM_NODE_TYPES = 64
NUM_EDGE_TYPES = 128  # parameter types < 32, structural types from 32
NUM_ACTIVATIONS = 32
NUM_LAYER_BUCKETS = 64  # layer index clamped to [0, 63]; relative depth carries the rest
KPOS_RANGE = 64  # kernel / spatial position columns clamped to [-64, 64]
# Structure embeddings start small next to the value encodings: with N(0, 1) tables the (constant
# per edge type) structure terms swamp the values after LayerNorm and weight changes barely register.
EMBEDDING_INIT_STD = 0.1

# Scales of the log features: a value v gives sign(v) * log1p(|v| / s) / log1p(1 / s) for each s,
# so v = +-1 maps to +-1 at every scale and magnitudes from 1e-8 to 1e2 all stay in a usable range.
VALUE_LOG_SCALES = (1e-8, 1e-6, 1e-4, 1e-2, 1.0)
VALUE_CLIP = 10.0
FEATURES_PER_VALUE = 1 + len(VALUE_LOG_SCALES)


def value_features(values: Tensor) -> Tensor:
    """Scale-robust features of raw values: ``[..., F] -> [..., F * FEATURES_PER_VALUE]`` (float32).

    The clipped raw value keeps fine resolution near 0..1; the multi-scale signed logs make
    gradients of 1e-8 and weights of 1e2 equally visible. NaN becomes 0 and infinities a large
    finite number, so a diverging inner run cannot poison the metanetwork with NaNs.
    """
    v = torch.nan_to_num(values.float(), nan=0.0, posinf=1e20, neginf=-1e20)[..., None]
    scales = torch.tensor(VALUE_LOG_SCALES, dtype=torch.float32, device=v.device)
    # One broadcast op per step over all scales: writing [..., F, 6] directly is several times
    # faster than stacking six strided [..., F] tensors (this runs on every edge, every optimizer step).
    logs = torch.sign(v) * torch.log1p(v.abs() / scales) / torch.log1p(1.0 / scales)
    return torch.cat([v.clamp(-VALUE_CLIP, VALUE_CLIP), logs], dim=-1).flatten(-2)


def sinusoidal_encoding(positions: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style sin/cos encoding of integer positions: ``[N] -> [N, dim]`` (float32).

    Works for any vocabulary size (pixels, tokens), unlike a fixed embedding table. Rows have unit
    norm, the same scale as the other structure embeddings.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=positions.device, dtype=torch.float32) / half
    )
    angles = positions.float()[:, None] * freqs[None, :]
    enc = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1) / math.sqrt(max(half, 1))
    if dim % 2:
        enc = torch.cat([enc, torch.zeros_like(enc[:, :1])], dim=-1)
    return enc


def _init_embeddings(module: nn.Module, *linears: nn.Linear) -> None:
    """Small init for the structure terms (embedding tables and the given linear maps)."""
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=EMBEDDING_INIT_STD)
    for lin in linears:
        nn.init.normal_(lin.weight, std=EMBEDDING_INIT_STD / math.sqrt(lin.in_features))
        nn.init.zeros_(lin.bias)


class ValueEncoder(nn.Module):
    """MLP over `value_features` of ``channels`` raw value channels: ``[M, channels] -> [M, hidden]``."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.channels = channels
        self.net = nn.Sequential(
            nn.Linear(channels * FEATURES_PER_VALUE, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )

    def forward(self, values: Tensor) -> Tensor:
        if values.dim() == 1:
            values = values[:, None]
        if values.shape[-1] != self.channels:
            raise ValueError(
                f"ValueEncoder: got {values.shape[-1]} value channels, the model was built with "
                f"{self.channels}; pass Tensor[M, {self.channels}] (edge_in/node_in/graph_in)."
            )
        return self.net(value_features(values))


class NodeEncoder(nn.Module):
    """Embeds node structure (type, layer, activation, ordered position, degrees, relative depth)
    plus optional per-node value channels: ``-> [N, hidden]``."""

    def __init__(self, hidden: int, node_in: int = 0) -> None:
        super().__init__()
        self.hidden = hidden
        self.type_emb = nn.Embedding(NUM_NODE_TYPES, hidden)
        self.layer_emb = nn.Embedding(NUM_LAYER_BUCKETS, hidden)
        self.act_emb = nn.Embedding(NUM_ACTIVATIONS, hidden)
        self.pos_proj = nn.Linear(hidden, hidden)
        # Interchangeable (hidden) units all get this one vector: no identity, so no broken symmetry.
        self.no_identity = nn.Parameter(torch.randn(hidden) * 0.02)
        # log1p(in-degree), log1p(out-degree), relative depth: invariant numeric structure features.
        self.num_proj = nn.Linear(3, hidden)
        self.values = ValueEncoder(node_in, hidden) if node_in > 0 else None
        # No LayerNorm here: the inputs are already O(1), and a normalised MLP would add a large
        # per-node-type constant that drowns the message-passing updates of the residual stream.
        self.mix = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        _init_embeddings(self, self.num_proj)

    def forward(self, x: Tensor, numeric: Tensor, node_values: Tensor | None = None) -> Tensor:
        """x: int [N, 4] node features; numeric: float [N, 3]; node_values: [N, node_in] or None."""
        ntype = x[:, NODE_TYPE].clamp(0, NUM_NODE_TYPES - 1)
        layer = x[:, NODE_LAYER].clamp(0, NUM_LAYER_BUCKETS - 1)
        act = x[:, NODE_ACTIVATION].clamp(0, NUM_ACTIVATIONS - 1)
        pos = x[:, NODE_POSITION]
        pos_enc = self.pos_proj(sinusoidal_encoding(pos.clamp(min=0), self.hidden))
        pos_enc = torch.where((pos < 0)[:, None], self.no_identity.to(pos_enc.dtype), pos_enc)
        h = self.type_emb(ntype) + self.layer_emb(layer) + self.act_emb(act) + pos_enc
        h = h + self.num_proj(numeric)
        if self.values is None and node_values is not None:
            raise ValueError(
                "NodeEncoder: node_values were passed but the model was built with node_in=0; "
                "build it with node_in=<number of value channels>."
            )
        if self.values is not None:
            if node_values is None:
                raise ValueError("NodeEncoder: the model was built with node_in > 0 but node_values is None.")
            h = h + self.values(node_values)
        return h + self.mix(h)


class EdgeEncoder(nn.Module):
    """Embeds edge structure (type, layer, 3 kernel/spatial position columns) plus per-edge value
    channels for the parameter edges; structural edges get zero value channels."""

    def __init__(self, hidden: int, edge_in: int = 0) -> None:
        super().__init__()
        self.type_emb = nn.Embedding(NUM_EDGE_TYPES, hidden)
        self.layer_emb = nn.Embedding(NUM_LAYER_BUCKETS, hidden)
        self.kpos_emb = nn.ModuleList(
            nn.Embedding(2 * KPOS_RANGE + 1, hidden) for _ in range(EDGE_K2 - EDGE_K0 + 1)
        )
        self.edge_in = edge_in
        self.values = ValueEncoder(edge_in, hidden) if edge_in > 0 else None
        _init_embeddings(self)

    def forward(
        self, edge_attr: Tensor, num_param_edges: int, edge_values: Tensor | None = None
    ) -> Tensor:
        """edge_attr: int [E + A, 5] (parameter edges first); edge_values: [E, edge_in] or None."""
        attr = edge_attr.long()
        h = self.type_emb(attr[:, EDGE_TYPE].clamp(0, NUM_EDGE_TYPES - 1))
        h = h + self.layer_emb(attr[:, EDGE_LAYER].clamp(0, NUM_LAYER_BUCKETS - 1))
        for i, emb in enumerate(self.kpos_emb):
            h = h + emb(attr[:, EDGE_K0 + i].clamp(-KPOS_RANGE, KPOS_RANGE) + KPOS_RANGE)
        if self.values is None:
            if edge_values is not None:
                raise ValueError(
                    "EdgeEncoder: edge_values were passed but the model was built with edge_in=0; "
                    "build it with edge_in=<number of value channels>."
                )
            return h
        if edge_values is None:
            raise ValueError(
                f"EdgeEncoder: the model was built with edge_in={self.edge_in} but edge_values is None; "
                f"pass Tensor[E, {self.edge_in}] in edge order (graph.params_to_edges)."
            )
        if edge_values.shape[0] != num_param_edges:
            raise ValueError(
                f"EdgeEncoder: edge_values has {edge_values.shape[0]} rows, the graph has "
                f"{num_param_edges} parameter edges; values must be in edge (parameter) order."
            )
        v = self.values(edge_values)
        num_aux = attr.shape[0] - num_param_edges
        if num_aux == 0:
            return h + v
        # Structural edges carry zero value channels: their encoding is one shared vector.
        v_aux = self.values(edge_values.new_zeros(1, self.edge_in)).expand(num_aux, -1)
        return h + torch.cat([v, v_aux.to(v.dtype)], dim=0)
