"""Weight-space baselines sharing the ``(graph_or_batch, edge_values) -> [B, k]`` interface.

- `DeepSets`: the parameters as a set (per-edge MLP, mean pool per graph, MLP); blind to structure.
- `DMC`: a 1-D conv net over each graph's flattened parameter vector (Eilertsen et al. 2020).
- `StatNN`: per-tensor statistics of the parameters -> MLP (Unterthiner et al. 2020).
- `PerParameterMLP`: the GMN's encoder, per-element blocks and heads with no message passing.

All work on a PyG `Batch` of graphs of different architectures and are vectorised over edges.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from .encoders import FEATURES_PER_VALUE, ValueEncoder, value_features
from .gmn import GMN, graph_batch_vector
from .message_passing import LocalLayer

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
STATS_PER_CHANNEL = 2 + len(QUANTILES)  # mean, variance, quantiles


def edge_graph_index(graph: Data) -> tuple[Tensor, int]:
    """Graph index of every parameter edge (int64 [E]) and the number of graphs."""
    batch, num_graphs = graph_batch_vector(graph)
    return batch.long()[graph.edge_index[0].long()], num_graphs


def _as_2d(edge_values: Tensor, graph: Data, channels: int, who: str) -> Tensor:
    v = edge_values[:, None] if edge_values.dim() == 1 else edge_values
    if v.shape[0] != graph.edge_index.shape[1] or v.shape[1] != channels:
        raise ValueError(
            f"{who}: edge_values has shape {tuple(edge_values.shape)}, expected "
            f"[{graph.edge_index.shape[1]}, {channels}] (one row per parameter edge, in edge order)."
        )
    return v


def _graph_shapes(graph: Data) -> list[list[tuple[int, ...]]]:
    """Parameter shapes per graph (a `Batch` collates the per-graph lists into a list of lists)."""
    if isinstance(graph, Batch):
        return [list(s) for s in graph.param_shapes]
    return [list(graph.param_shapes)]


def segment_stats(values: Tensor, seg: Tensor, num_segments: int) -> Tensor:
    """Mean, variance and quantiles 0/25/50/75/100 of ``values`` [M] per segment: ``[S, 7]``.

    Vectorised: one stable sort groups values by segment in ascending order, and each quantile is
    linearly interpolated between neighbouring ranks (as torch.quantile does). Empty segments give 0.
    """
    v = values.float()
    count = torch.zeros(num_segments, device=v.device).index_add_(0, seg, torch.ones_like(v))
    safe = count.clamp(min=1.0)
    mean = torch.zeros(num_segments, device=v.device).index_add_(0, seg, v) / safe
    var = torch.zeros(num_segments, device=v.device).index_add_(0, seg, (v - mean[seg]) ** 2) / safe
    order = torch.argsort(v)
    order = order[torch.argsort(seg[order], stable=True)]
    sorted_v = v[order]
    start = torch.cumsum(count, 0) - count
    qs = torch.tensor(QUANTILES, device=v.device)
    pos = qs[None, :] * (count[:, None] - 1).clamp(min=0)  # [S, Q]
    lo, hi = pos.floor(), pos.ceil()
    frac = pos - lo
    m = max(sorted_v.numel() - 1, 0)
    idx_lo = (start[:, None] + lo).long().clamp(0, m)
    idx_hi = (start[:, None] + hi).long().clamp(0, m)
    quant = sorted_v[idx_lo] * (1 - frac) + sorted_v[idx_hi] * frac
    out = torch.cat([mean[:, None], var[:, None], quant], dim=1)
    return torch.where((count > 0)[:, None], out, torch.zeros_like(out))


class DeepSets(nn.Module):
    """DeepSets over the parameters: per-edge MLP on the values, mean pool per graph, MLP -> [B, k]."""

    def __init__(self, hidden: int = 64, edge_in: int = 1, graph_out: int = 1) -> None:
        super().__init__()
        self.edge_in = edge_in
        self.phi = nn.Sequential(ValueEncoder(edge_in, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.rho = nn.Sequential(
            nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, graph_out)
        )

    def forward(self, graph: Data, edge_values: Tensor) -> Tensor:
        v = _as_2d(edge_values, graph, self.edge_in, "DeepSets")
        edge_batch, b = edge_graph_index(graph)
        edge_batch = edge_batch.to(v.device)
        phi = self.phi(v).float()
        count = torch.zeros(b, device=v.device).index_add_(0, edge_batch, torch.ones_like(phi[:, 0]))
        pooled = torch.zeros(b, phi.shape[1], device=v.device).index_add_(0, edge_batch, phi)
        return self.rho(pooled / count.clamp(min=1.0)[:, None])


class DMC(nn.Module):
    """1-D conv net over each graph's flattened parameter vector (edge order = parameter order).

    Graphs of different sizes in a batch are right-padded to the longest; activations are masked
    to zero past each graph's end after every layer, so a graph in a batch gives the same output
    as alone. Stride-2 blocks shrink the sequence, then masked mean + max pooling and an MLP.
    """

    def __init__(
        self, hidden: int = 64, edge_in: int = 1, graph_out: int = 1, blocks: int = 4, kernel: int = 5
    ) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"DMC: kernel must be odd (got {kernel}) so padding keeps positions aligned.")
        self.edge_in, self.kernel = edge_in, kernel
        chans = [edge_in * FEATURES_PER_VALUE] + [hidden] * blocks
        self.convs = nn.ModuleList(
            nn.Conv1d(chans[i], chans[i + 1], kernel, stride=2, padding=kernel // 2) for i in range(blocks)
        )
        self.mlp = nn.Sequential(
            nn.LayerNorm(2 * hidden), nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, graph_out)
        )

    def forward(self, graph: Data, edge_values: Tensor) -> Tensor:
        v = _as_2d(edge_values, graph, self.edge_in, "DMC")
        edge_batch, b = edge_graph_index(graph)
        edge_batch = edge_batch.to(v.device)
        counts = torch.zeros(b, dtype=torch.long, device=v.device).index_add_(
            0, edge_batch, torch.ones_like(edge_batch)
        )
        starts = torch.cumsum(counts, 0) - counts
        offset = torch.arange(v.shape[0], device=v.device) - starts[edge_batch]
        length = int(counts.max()) if b else 0
        feats = value_features(v)  # zero values give all-zero features, i.e. the same as padding
        x = feats.new_zeros(b, length, feats.shape[1])
        x[edge_batch, offset] = feats
        x = x.transpose(1, 2)  # [B, C, L]
        mask = (torch.arange(length, device=v.device)[None, :] < counts[:, None]).to(x.dtype)
        for conv in self.convs:
            mask = mask[:, ::2]
            x = F.gelu(conv(x)) * mask[:, None, :]
        valid = mask.sum(1).clamp(min=1.0)[:, None]
        mean = x.sum(-1) / valid
        mx = x.masked_fill(mask[:, None, :] == 0, float("-inf")).amax(-1)
        mx = torch.nan_to_num(mx, neginf=0.0)
        return self.mlp(torch.cat([mean, mx], dim=-1))


class StatNN(nn.Module):
    """Per-tensor statistics (mean, variance, quantiles 0/25/50/75/100 per value channel) -> MLP.

    Unterthiner et al. 2020 concatenate the statistics of every layer of one fixed architecture. To
    accept a batch of different architectures, each graph's tensors fill ``max_tensors`` slots: the
    first ``max_tensors // 2`` tensors and the last ``max_tensors - max_tensors // 2`` keep their own
    slots (so input and output layers are always seen); slots a small network does not fill are
    zero with a presence flag of 0; middle tensors of a deeper network are covered only by one
    extra slot of statistics over all of the graph's parameters. Each slot also gets log1p(numel).
    """

    def __init__(
        self, hidden: int = 64, edge_in: int = 1, graph_out: int = 1, max_tensors: int = 16
    ) -> None:
        super().__init__()
        if max_tensors < 2:
            raise ValueError(f"StatNN: max_tensors must be >= 2, got {max_tensors}.")
        self.edge_in, self.max_tensors = edge_in, max_tensors
        self.slot_dim = edge_in * STATS_PER_CHANNEL * FEATURES_PER_VALUE + 2  # + log numel, present
        in_dim = (max_tensors + 1) * self.slot_dim
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, graph_out),
        )

    def features(self, graph: Data, edge_values: Tensor) -> Tensor:
        """The statistics input ``[B, (max_tensors + 1) * slot_dim]`` (exposed for inspection)."""
        v = _as_2d(edge_values, graph, self.edge_in, "StatNN")
        dev = v.device
        shapes = _graph_shapes(graph)
        b = len(shapes)
        numels = [[math.prod(s) for s in g] for g in shapes]
        tensors_per_graph = torch.tensor([len(n) for n in numels], device=dev)
        flat_numels = torch.tensor([n for g in numels for n in g], dtype=torch.long, device=dev)
        if int(flat_numels.sum()) != v.shape[0]:
            raise ValueError(
                f"StatNN: param_shapes cover {int(flat_numels.sum())} parameters but there are "
                f"{v.shape[0]} edges; the graph's param_shapes are inconsistent."
            )
        num_t = flat_numels.numel()
        seg = torch.repeat_interleave(torch.arange(num_t, device=dev), flat_numels)
        tensor_graph = torch.repeat_interleave(torch.arange(b, device=dev), tensors_per_graph)
        first_t = torch.cumsum(tensors_per_graph, 0) - tensors_per_graph
        local = torch.arange(num_t, device=dev) - first_t[tensor_graph]
        n_g = tensors_per_graph[tensor_graph]
        head = self.max_tensors // 2
        tail = self.max_tensors - head
        slot = torch.where(
            local < head, local, torch.where(local >= n_g - tail, self.max_tensors - (n_g - local), -1)
        )
        edge_graph = tensor_graph[seg]

        def slot_feats(values_seg: Tensor, num_seg: int, sizes: Tensor) -> Tensor:
            stats = torch.cat(
                [segment_stats(v[:, c], values_seg, num_seg) for c in range(self.edge_in)], dim=1
            )
            return torch.cat(
                [value_features(stats), torch.log1p(sizes.float())[:, None], (sizes > 0).float()[:, None]],
                dim=1,
            )

        per_tensor = slot_feats(seg, num_t, flat_numels)  # [T, slot_dim]
        graph_sizes = torch.zeros(b, dtype=torch.long, device=dev).index_add_(0, edge_graph, torch.ones_like(seg))
        per_graph = slot_feats(edge_graph, b, graph_sizes)  # [B, slot_dim]
        slots = per_tensor.new_zeros(b, self.max_tensors, self.slot_dim)
        keep = slot >= 0
        slots[tensor_graph[keep], slot[keep]] = per_tensor[keep]
        return torch.cat([slots.flatten(1), per_graph], dim=1)

    def forward(self, graph: Data, edge_values: Tensor) -> Tensor:
        return self.mlp(self.features(graph, edge_values))


class PerParameterMLP(GMN):
    """The GMN with message passing removed: same encoder, heads, constructor and forward.

    ``layers`` residual blocks update every edge and node from itself only (`LocalLayer`), so at
    equal ``hidden`` and ``layers`` the per-edge compute matches the GMN's and the only difference
    is communication along the graph. Graph outputs pool the un-mixed states (a DeepSets over
    structure-aware per-parameter encodings).
    """

    layer_cls = LocalLayer
