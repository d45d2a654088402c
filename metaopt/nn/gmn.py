"""The graph metanetwork (GMN): encoder -> L edge-aware message-passing layers -> heads.

Reads a `ParameterGraph` (or a PyG `Batch` of graphs of different architectures) plus value
channels the caller passes (weights, gradients, optimizer features) and returns per-edge
(one per parameter, equivariant), per-node (equivariant) and per-graph (invariant) outputs.
Everything is sparse and vectorised: cost and memory O(E * d) per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint
from torch_geometric.data import Batch, Data

from metaopt.graph.schema import EDGE_FEATURES, NODE_LAYER, NODE_POSITION, NODE_TYPE, NodeType

from .encoders import EdgeEncoder, NodeEncoder, ValueEncoder
from .message_passing import EdgeAwareLayer, scatter_mean


@dataclass
class GraphInputs:
    """A graph (or batch) prepared for the GMN: int64 indices, parameter + structural edges
    concatenated (parameter edges first), degrees and pooling weights precomputed.

    Preparing costs O(E); callers that run many forwards on one structure (a learned optimizer
    stepping a fixed model) call `prepare_graph` once and pass the result instead of the graph.
    """

    x: Tensor  # int64 [N, 4] node features
    edge_index: Tensor  # int64 [2, E + A]: parameter edges, then structural edges
    edge_attr: Tensor  # int16 [E + A, 5]
    num_param_edges: int  # E
    batch: Tensor  # int64 [N]: graph of each node
    num_graphs: int  # B
    node_numeric: Tensor  # float32 [N, 3]: log1p(in-degree), log1p(out-degree), relative depth
    inv_deg_in: Tensor  # float32 [N, 1]: 1 / max(in-degree, 1)
    inv_deg_out: Tensor  # float32 [N, 1]
    edge_batch: Tensor  # int64 [E]: graph of each parameter edge
    inv_nodes_per_graph: Tensor  # float32 [B, 1]
    inv_edges_per_graph: Tensor  # float32 [B, 1]

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str) -> "GraphInputs":
        """Move every tensor to ``device``."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return GraphInputs(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in kw.items()})


def graph_batch_vector(graph: Data) -> tuple[Tensor, int]:
    """Node -> graph index and the number of graphs, for a single graph or a PyG `Batch`."""
    if isinstance(graph, Batch):
        return graph.batch, int(graph.num_graphs)
    if "batch" in graph and graph.batch is not None:
        return graph.batch, int(graph.batch.max()) + 1 if graph.batch.numel() else 1
    return torch.zeros(graph.num_nodes, dtype=torch.long, device=graph.x.device), 1


def prepare_graph(graph: Data, device: torch.device | str | None = None) -> GraphInputs:
    """Turn a `ParameterGraph` / `Batch` into `GraphInputs` (indices cast to int64 once)."""
    for key in ("x", "edge_index", "edge_attr"):
        if key not in graph or graph[key] is None:
            raise ValueError(
                f"prepare_graph: the graph has no '{key}'; build it with metaopt.to_graph(model)."
            )
    device = torch.device(device) if device is not None else graph.x.device
    x = graph.x.to(device=device, dtype=torch.long)
    ei = graph.edge_index.to(device)
    ea = graph.edge_attr.to(device)
    if ea.shape[1] != EDGE_FEATURES or ei.shape[1] != ea.shape[0]:
        raise ValueError(
            f"prepare_graph: edge_attr has shape {tuple(ea.shape)} for {ei.shape[1]} edges; "
            f"expected [E, {EDGE_FEATURES}] (see metaopt.graph.schema)."
        )
    num_param_edges = int(ei.shape[1])
    if "aux_edge_index" in graph and graph.aux_edge_index is not None and graph.aux_edge_index.numel():
        ei = torch.cat([ei, graph.aux_edge_index.to(device=device, dtype=ei.dtype)], dim=1)
        ea = torch.cat([ea, graph.aux_edge_attr.to(device=device, dtype=ea.dtype)], dim=0)
    edge_index = ei.long()
    batch, num_graphs = graph_batch_vector(graph)
    batch = batch.to(device=device, dtype=torch.long)
    n = x.shape[0]
    src, dst = edge_index[0], edge_index[1]
    ones = torch.ones(edge_index.shape[1], dtype=torch.float32, device=device)
    deg_in = torch.zeros(n, dtype=torch.float32, device=device).index_add_(0, dst, ones)
    deg_out = torch.zeros(n, dtype=torch.float32, device=device).index_add_(0, src, ones)
    # Relative depth (layer / deepest layer of the node's graph) generalises across depths where the
    # clamped absolute layer embedding cannot.
    layer = x[:, NODE_LAYER].clamp(min=0).float()
    max_layer = torch.zeros(num_graphs, dtype=torch.float32, device=device).scatter_reduce(
        0, batch, layer, reduce="amax", include_self=True
    )
    rel_depth = layer / max_layer.clamp(min=1.0)[batch]
    numeric = torch.stack([torch.log1p(deg_in), torch.log1p(deg_out), rel_depth], dim=-1)
    edge_batch = batch[src[:num_param_edges]]
    nodes_per_graph = torch.zeros(num_graphs, device=device).index_add_(
        0, batch, torch.ones(n, device=device)
    )
    edges_per_graph = torch.zeros(num_graphs, device=device).index_add_(
        0, edge_batch, ones[:num_param_edges]
    )
    return GraphInputs(
        x=x,
        edge_index=edge_index,
        edge_attr=ea,
        num_param_edges=num_param_edges,
        batch=batch,
        num_graphs=num_graphs,
        node_numeric=numeric,
        inv_deg_in=(1.0 / deg_in.clamp(min=1.0))[:, None],
        inv_deg_out=(1.0 / deg_out.clamp(min=1.0))[:, None],
        edge_batch=edge_batch,
        inv_nodes_per_graph=(1.0 / nodes_per_graph.clamp(min=1.0))[:, None],
        inv_edges_per_graph=(1.0 / edges_per_graph.clamp(min=1.0))[:, None],
    )


@dataclass
class GMNOutput:
    """Outputs of a GMN; a field is None when its head has zero outputs."""

    edge: Tensor | None  # [E, edge_out], one row per parameter edge, in edge order
    node: Tensor | None  # [N, node_out]
    graph: Tensor | None  # [B, graph_out]


def mlp_head(hidden: int, out: int) -> nn.Sequential:
    """Pre-norm two-layer MLP head ``[M, hidden] -> [M, out]``."""
    return nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out))


def ordered_output_states(h: Tensor, g: GraphInputs, k: int) -> Tensor:
    """``[B, k, d]``: each graph's OUTPUT-node states in output order (position 0..k-1; zeros where a
    graph has fewer outputs). Output neurons are ordered, not interchangeable, so reading them by
    position keeps the GMN invariant to hidden-unit permutations."""
    ntype, pos = g.x[:, NODE_TYPE], g.x[:, NODE_POSITION]
    m = (ntype == int(NodeType.OUTPUT)) & (pos >= 0) & (pos < k)
    out = h.new_zeros(g.num_graphs, k, h.shape[1])
    out[g.batch[m], pos[m]] = h[m]
    return out


class GraphHead(nn.Module):
    """Invariant graph readout: mean and max of node states, mean of parameter-edge states (and the
    graph value embedding, if any) per graph -> MLP -> ``[B, out]``.

    ``output_nodes`` = k > 0 also reads the states of the first k OUTPUT nodes in output order (e.g.
    the 10 class logits' neurons) and, with ``output_values`` = C > 0, the C value channels the caller
    gave those nodes, unprocessed: a mean over all nodes dilutes what the output neurons carry (with
    probe features: the network's outputs on the probe inputs), which a graph-level prediction such as
    accuracy depends on most, and the raw values let the head form linear functions of them.
    ``dropout`` acts on the pooled vector and the MLP's hidden layer (a regulariser for graph-level
    predictors trained on a few hundred graphs); it has no parameters."""

    def __init__(self, hidden: int, out: int, dropout: float = 0.0, output_nodes: int = 0, output_values: int = 0) -> None:
        super().__init__()
        self.norm_mean = nn.LayerNorm(hidden)
        self.norm_max = nn.LayerNorm(hidden)
        self.norm_edge = nn.LayerNorm(hidden)
        self.output_nodes = output_nodes
        self.norm_out = nn.LayerNorm(hidden) if output_nodes > 0 else None
        self.output_values = output_values if output_nodes > 0 else 0
        width = (4 + output_nodes) * hidden + output_nodes * self.output_values
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, out))
        self.dropout = nn.Dropout(dropout)  # outside `mlp`, so its state-dict keys stay those of older checkpoints

    def forward(self, h: Tensor, e_param: Tensor, g: GraphInputs, graph_emb: Tensor | None,
                node_values: Tensor | None = None) -> Tensor:
        b, d = g.num_graphs, h.shape[1]
        node_mean = scatter_mean(h, g.batch, g.inv_nodes_per_graph, b)
        node_max = torch.full((b, d), float("-inf"), dtype=h.dtype, device=h.device).scatter_reduce(
            0, g.batch[:, None].expand(-1, d), h, reduce="amax", include_self=True
        )
        node_max = torch.nan_to_num(node_max.float(), neginf=0.0)  # graphs without nodes
        edge_mean = scatter_mean(e_param, g.edge_batch, g.inv_edges_per_graph, b)
        if graph_emb is None:
            graph_emb = torch.zeros(b, d, dtype=node_mean.dtype, device=h.device)
        parts = [self.norm_mean(node_mean), self.norm_max(node_max), self.norm_edge(edge_mean), graph_emb.to(node_mean.dtype)]
        if self.norm_out is not None:
            parts.append(self.norm_out(ordered_output_states(h, g, self.output_nodes)).reshape(b, -1).to(node_mean.dtype))
        if self.output_values:
            if node_values is None:
                raise ValueError("GraphHead: built to read the output nodes' values, but no node values were passed.")
            raw = ordered_output_states(node_values, g, self.output_nodes)
            parts.append(raw.reshape(b, -1).to(node_mean.dtype))
        pooled = torch.cat(parts, dim=-1)
        first, act, last = self.mlp
        return last(self.dropout(act(first(self.dropout(pooled)))))


class GMN(nn.Module):
    """Graph metanetwork over parameter graphs, equivariant to hidden-unit permutations by construction.

    ``GMN(hidden, layers, edge_in, node_in, graph_in, edge_out, node_out, graph_out)``; ``*_in``
    are value channels the caller passes in forward (0 = none), ``*_out`` head sizes (0 = no head).
    ``checkpoint=True`` recomputes each layer in backward (memory O(E * d) instead of O(L * E * d));
    ``ff_mult`` sets the edge MLP's hidden width (f = ff_mult * hidden; per-edge cost ~3 f d);
    ``head_dropout``: dropout in the graph head (training mode only); ``head_output_nodes`` = k: the
    graph head also reads the first k OUTPUT nodes' states in output order, and their ``node_in`` value
    channels as given (`GraphHead`).
    """

    layer_cls: type[nn.Module] = EdgeAwareLayer

    def __init__(
        self,
        hidden: int = 64,
        layers: int = 4,
        edge_in: int = 0,
        node_in: int = 0,
        graph_in: int = 0,
        edge_out: int = 0,
        node_out: int = 0,
        graph_out: int = 0,
        *,
        checkpoint: bool = False,
        ff_mult: float = 1.0,
        head_dropout: float = 0.0,
        head_output_nodes: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= head_dropout < 1.0:
            raise ValueError(f"GMN: head_dropout must be in [0, 1), got {head_dropout}.")
        if hidden < 2 or layers < 0:
            raise ValueError(f"GMN: need hidden >= 2 and layers >= 0, got hidden={hidden}, layers={layers}.")
        if min(edge_in, node_in, graph_in, edge_out, node_out, graph_out, head_output_nodes) < 0:
            raise ValueError("GMN: *_in and *_out sizes and head_output_nodes must be >= 0.")
        self.hidden, self.num_layers = hidden, layers
        self.edge_in, self.node_in, self.graph_in = edge_in, node_in, graph_in
        self.edge_out, self.node_out, self.graph_out = edge_out, node_out, graph_out
        self.checkpoint = checkpoint
        self.node_encoder = NodeEncoder(hidden, node_in)
        self.edge_encoder = EdgeEncoder(hidden, edge_in)
        self.graph_encoder = ValueEncoder(graph_in, hidden) if graph_in > 0 else None
        self.layers = nn.ModuleList(self.layer_cls(hidden, ff_mult) for _ in range(layers))
        self.edge_head = mlp_head(hidden, edge_out) if edge_out > 0 else None
        self.node_head = mlp_head(hidden, node_out) if node_out > 0 else None
        self.graph_head = GraphHead(hidden, graph_out, head_dropout, head_output_nodes, node_in) if graph_out > 0 else None

    @torch.no_grad()
    def reset_output_(self, scale: float = 0.0) -> None:
        """Scale the last linear layer of every head (0 = outputs start at exactly zero, e.g. so an
        untrained learned-optimizer residual is a no-op)."""
        for head in (self.edge_head, self.node_head, self.graph_head):
            if head is None:
                continue
            last = head[-1] if isinstance(head, nn.Sequential) else head.mlp[-1]
            last.weight.mul_(scale)
            last.bias.mul_(scale)

    def forward(
        self,
        graph: Data | GraphInputs,
        edge_values: Tensor | None = None,
        node_values: Tensor | None = None,
        graph_values: Tensor | None = None,
    ) -> GMNOutput:
        """Run the GMN on a graph / batch (or prepared `GraphInputs`) with per-edge/node/graph values."""
        device = self.node_encoder.type_emb.weight.device
        g = graph if isinstance(graph, GraphInputs) else prepare_graph(graph, device)
        if node_values is not None and node_values.shape[0] != g.num_nodes:
            raise ValueError(f"GMN: node_values has {node_values.shape[0]} rows, the graph has {g.num_nodes} nodes.")
        h = self.node_encoder(g.x, g.node_numeric, node_values)
        graph_emb = None
        if self.graph_encoder is None and graph_values is not None:
            raise ValueError("GMN: graph_values were passed but the model was built with graph_in=0.")
        if self.graph_encoder is not None:
            if graph_values is None or graph_values.shape[0] != g.num_graphs:
                got = None if graph_values is None else tuple(graph_values.shape)
                raise ValueError(
                    f"GMN: built with graph_in={self.graph_in}; graph_values must be "
                    f"[{g.num_graphs}, {self.graph_in}] (one row per graph), got {got}."
                )
            graph_emb = self.graph_encoder(graph_values)
            h = h + graph_emb.index_select(0, g.batch)
        e = self.edge_encoder(g.edge_attr, g.num_param_edges, edge_values)
        src, dst = g.edge_index[0], g.edge_index[1]
        for layer in self.layers:
            if self.checkpoint and torch.is_grad_enabled():
                h, e = activation_checkpoint(
                    layer, h, e, src, dst, g.inv_deg_in, g.inv_deg_out, use_reentrant=False
                )
            else:
                h, e = layer(h, e, src, dst, g.inv_deg_in, g.inv_deg_out)
        e_param = e[: g.num_param_edges]  # parameter edges come first: a view, no copy
        return GMNOutput(
            edge=self.edge_head(e_param) if self.edge_head is not None else None,
            node=self.node_head(h) if self.node_head is not None else None,
            graph=self.graph_head(h, e_param, g, graph_emb, node_values) if self.graph_head is not None else None,
        )
