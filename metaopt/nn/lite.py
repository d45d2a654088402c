"""Lite graph metanetworks for the learned optimizer's rule: one edge -> node -> edge round, width 8.

The general `GMN` (encoders, gated edge MLPs, several layers) costs about 2 microseconds per edge
per forward on one CPU thread, so a rule built from it costs hundreds of Adam steps per call. A
rule runs over every parameter, so its per-edge work must be a few hundred FLOPs (Celo2: a 2x8
per-parameter MLP). `LiteGMN` keeps the per-edge part that small and moves message passing to
the nodes, which are far fewer than edges:

    h_e  = act(W1 x_e + type_e)                                    per edge (hidden H)
    n_v  = MLP([mean_in h, mean_out h, node values, type_v]) + g   per node (graph values g)
    out_e = w2 . act(W2 h_e + P n_src(e) + Q n_dst(e))              per edge

Means over a node's incoming / outgoing parameter edges keep it equivariant to hidden-unit
permutations, as every GMN here. `LitePerParameterMLP` is the same network without the node
round (the per-parameter baseline: same inputs, head and width, no message passing).

Both take a `LiteGraph` (``prepare_lite``: int64 endpoints, inverse degrees, graph ids), built
once per structure, and the same ``(graph, edge_values=, node_values=, graph_values=)`` call as
`GMN`, returning a `GMNOutput` whose ``.edge`` is ``[E, edge_out]``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from metaopt.graph.schema import EDGE_TYPE, NODE_TYPE

from .gmn import GMNOutput, graph_batch_vector

_EDGE_TYPES = 32  # parameter edge types are < AUX_START = 32
_NODE_TYPES = 32
# Without autograd (the optimizer's refresh), edges are processed in chunks of this many: every
# temporary then stays in cache, which is 3-5x faster than full-size passes over memory at 1M+
# edges on one CPU thread. That path is also feature-major: it computes h^T [hidden, chunk] =
# W @ x^T, because a BLAS product with 8 output columns ([chunk, 9] @ [9, 8]) runs 10-15x slower
# than the same product with 8 output rows. Values equal the autograd path's up to float rounding
# (tests/test_optim_fast_paths.py).
CHUNK = 1 << 14
# A chunk whose edges fall into at most this many runs of one edge type adds the type embedding
# run by run (a broadcast add) instead of gathering it per edge.
_MAX_TYPE_RUNS = 16


def _chunks(n: int) -> list[slice]:
    return [slice(a, min(a + CHUNK, n)) for a in range(0, n, CHUNK)]


def _chunked() -> bool:
    """The no-grad path (feature-major, in chunks) runs whenever autograd is off."""
    return not torch.is_grad_enabled()


def _linear_t(layer: nn.Linear, x_t: Tensor, bias: Tensor | None = None) -> Tensor:
    """``layer`` applied feature-major: ``W @ x^T + b`` -> [out, n] (``bias`` replaces the layer's)."""
    b = layer.bias if bias is None else bias
    return torch.addmm(b[:, None], layer.weight, x_t)


def _incidence(node: Tensor, num_nodes: int) -> Tensor:
    """``A`` [num_nodes, len(node)] in CSR with ``A[node[j], j] = 1``: ``A @ h`` sums rows of ``h`` per node.

    On CPU a CSR product is ~6x faster than ``index_add_``, which adds one row at a time.
    """
    order = torch.argsort(node, stable=True)
    counts = torch.bincount(node, minlength=num_nodes)
    crow = torch.zeros(num_nodes + 1, dtype=torch.int32, device=node.device)
    crow[1:] = torch.cumsum(counts, 0)
    values = torch.ones(node.shape[0], device=node.device)
    with warnings.catch_warnings():  # "CSR support is in beta": CSR @ dense is all that is used
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, order.to(torch.int32), values, (num_nodes, node.shape[0]),
                                       check_invariants=False)


@dataclass
class LiteGraph:
    """What a lite network needs of a graph (or batch), on one device."""

    src: Tensor  # int64 [E]
    dst: Tensor  # int64 [E]
    edge_type: Tensor  # int64 [E]
    node_type: Tensor  # int64 [N]
    inv_in: Tensor  # float32 [N, 1]: 1 / incoming parameter edges (0 where none)
    inv_out: Tensor  # float32 [N, 1]
    batch: Tensor  # int64 [N]: graph of each node
    edge_batch: Tensor  # int64 [E]: graph of each edge
    num_nodes: int
    num_graphs: int

    def chunk_incidences(self) -> list[tuple[Tensor, Tensor]]:
        """Per edge chunk, the (incoming, outgoing) incidence matrices (`_incidence`); built once, kept."""
        cache = self.__dict__.get("_incidences")
        if cache is None or cache[0] != CHUNK:
            mats = [(_incidence(self.dst[c], self.num_nodes), _incidence(self.src[c], self.num_nodes))
                    for c in _chunks(self.src.shape[0])]
            cache = self.__dict__["_incidences"] = (CHUNK, mats)
        return cache[1]

    def chunk_type_runs(self) -> list[list[tuple[int, int, int]] | None]:
        """Per edge chunk, its runs of one edge type as (start, end, type) within the chunk, or None
        where there are more than `_MAX_TYPE_RUNS` (parameter tensors are contiguous, so few)."""
        cache = self.__dict__.get("_type_runs")
        if cache is None or cache[0] != CHUNK:
            plans: list[list[tuple[int, int, int]] | None] = []
            for c in _chunks(self.edge_type.shape[0]):
                types, counts = torch.unique_consecutive(self.edge_type[c], return_counts=True)
                if types.numel() > _MAX_TYPE_RUNS:
                    plans.append(None)
                    continue
                ends = torch.cumsum(counts, 0).tolist()
                plans.append([(e - n, e, t) for e, n, t in zip(ends, counts.tolist(), types.tolist())])
            cache = self.__dict__["_type_runs"] = (CHUNK, plans)
        return cache[1]

    def to(self, device: torch.device | str) -> "LiteGraph":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return LiteGraph(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in kw.items()})


def prepare_lite(graph: Data, device: torch.device | str | None = None) -> LiteGraph:
    """Parameter edges only (structural edges carry no parameter and no optimizer state)."""
    device = torch.device(device) if device is not None else graph.edge_index.device
    ei = graph.edge_index.to(device=device, dtype=torch.long)
    n = int(graph.num_nodes)
    ones = torch.ones(ei.shape[1], device=device)
    indeg = torch.zeros(n, device=device).index_add_(0, ei[1], ones)
    outdeg = torch.zeros(n, device=device).index_add_(0, ei[0], ones)
    batch, num_graphs = graph_batch_vector(graph)
    batch = batch.to(device)
    return LiteGraph(
        src=ei[0].contiguous(),
        dst=ei[1].contiguous(),
        edge_type=graph.edge_attr[:, EDGE_TYPE].to(device=device, dtype=torch.long).clamp(0, _EDGE_TYPES - 1),
        node_type=graph.x[:, NODE_TYPE].to(device=device, dtype=torch.long).clamp(0, _NODE_TYPES - 1),
        inv_in=(1.0 / indeg.clamp_min(1.0)).where(indeg > 0, torch.zeros_like(indeg))[:, None],
        inv_out=(1.0 / outdeg.clamp_min(1.0)).where(outdeg > 0, torch.zeros_like(outdeg))[:, None],
        batch=batch,
        edge_batch=batch[ei[0]],
        num_nodes=n,
        num_graphs=num_graphs,
    )


class LitePerParameterMLP(nn.Module):
    """A two-layer per-parameter MLP (width ``hidden``) with edge-type and per-graph inputs."""

    message_passing = False

    def __init__(self, hidden: int = 8, edge_in: int = 0, node_in: int = 0, graph_in: int = 0,
                 edge_out: int = 1, **_: object) -> None:
        super().__init__()
        if hidden < 1 or edge_in < 1 or edge_out < 1:
            raise ValueError(f"{type(self).__name__}: need hidden, edge_in, edge_out >= 1, got {hidden}, {edge_in}, {edge_out}.")
        self.hidden, self.node_in, self.graph_in, self.edge_out = hidden, node_in, graph_in, edge_out
        self.edge_in_proj = nn.Linear(edge_in, hidden)
        self.edge_type = nn.Embedding(_EDGE_TYPES, hidden)
        nn.init.zeros_(self.edge_type.weight)
        self.graph_proj = nn.Linear(graph_in, hidden) if graph_in > 0 else None
        self.mix = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, edge_out)
        self.act = nn.SiLU()

    def prepare(self, graph: Data, device: torch.device | str | None = None) -> LiteGraph:
        return prepare_lite(graph, device)

    def edge_hidden(self, edge_type: Tensor, edge_values: Tensor) -> Tensor:
        return self.act(self.edge_in_proj(edge_values) + self.edge_type(edge_type))

    def graph_context(self, graph_values: Tensor | None, g: LiteGraph) -> Tensor | None:
        if self.graph_proj is None:
            return None
        if graph_values is None or graph_values.shape != (g.num_graphs, self.graph_in):
            got = None if graph_values is None else tuple(graph_values.shape)
            raise ValueError(f"{type(self).__name__}: graph_values must be [{g.num_graphs}, {self.graph_in}], got {got}.")
        return self.graph_proj(graph_values)

    # ---- the feature-major no-grad path (see CHUNK) ------------------------------------------
    def edge_hidden_t(self, g: LiteGraph, c: slice, runs: list[tuple[int, int, int]] | None,
                      values_t: Tensor) -> Tensor:
        """`edge_hidden` of chunk ``c`` feature-major: ``values_t`` [F, n] -> [hidden, n]."""
        h_t = _linear_t(self.edge_in_proj, values_t)
        type_t = self.edge_type.weight.t()  # [hidden, types]
        if runs is None:
            h_t += type_t.index_select(1, g.edge_type[c])
        else:
            for a, b, t in runs:
                h_t[:, a:b] += type_t[:, t : t + 1]
        return nn.functional.silu(h_t, inplace=True)

    def edge_out_t(self, g: LiteGraph, c: slice, h_t: Tensor, ctx: Tensor | None,
                   node_terms: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The output of chunk ``c`` from its hidden states [hidden, n] -> [edge_out, n]; ``ctx``
        the per-graph context, ``node_terms`` the GMN's [hidden, N] node terms (as source, as destination)."""
        one_graph = ctx is not None and g.num_graphs == 1
        pre = _linear_t(self.mix, h_t, self.mix.bias + ctx[0] if one_graph else None)
        if ctx is not None and not one_graph:
            pre += ctx.t().index_select(1, g.edge_batch[c])
        if node_terms is not None:
            pre += node_terms[0].index_select(1, g.src[c])
            pre += node_terms[1].index_select(1, g.dst[c])
        return _linear_t(self.out, nn.functional.silu(pre, inplace=True))

    def forward(self, graph: LiteGraph | Data, edge_values: Tensor, node_values: Tensor | None = None,
                graph_values: Tensor | None = None) -> GMNOutput:
        g = graph if isinstance(graph, LiteGraph) else prepare_lite(graph, edge_values.device)
        ctx = self.graph_context(graph_values, g)
        if _chunked():
            values_t = edge_values.t()
            out = edge_values.new_empty(edge_values.shape[0], self.edge_out)
            for c, runs in zip(_chunks(edge_values.shape[0]), g.chunk_type_runs()):
                out[c] = self.edge_out_t(g, c, self.edge_hidden_t(g, c, runs, values_t[:, c]), ctx).t()
            return GMNOutput(edge=out, node=None, graph=None)
        pre = self.mix(self.edge_hidden(g.edge_type, edge_values))
        if ctx is not None:
            pre = pre + (ctx[0] if g.num_graphs == 1 else ctx.index_select(0, g.edge_batch))
        return GMNOutput(edge=self.out(self.act(pre)), node=None, graph=None)


class LiteGMN(LitePerParameterMLP):
    """`LitePerParameterMLP` plus one round through the nodes (mean over in/out parameter edges)."""

    message_passing = True

    def __init__(self, hidden: int = 8, edge_in: int = 0, node_in: int = 0, graph_in: int = 0,
                 edge_out: int = 1, **kw: object) -> None:
        super().__init__(hidden, edge_in, node_in, graph_in, edge_out, **kw)
        self.node_type = nn.Embedding(_NODE_TYPES, hidden)
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden + node_in + hidden, 2 * hidden), nn.SiLU(),
                                      nn.Linear(2 * hidden, 2 * hidden))

    def forward(self, graph: LiteGraph | Data, edge_values: Tensor, node_values: Tensor | None = None,
                graph_values: Tensor | None = None) -> GMNOutput:
        g = graph if isinstance(graph, LiteGraph) else prepare_lite(graph, edge_values.device)
        chunked = _chunked()
        if chunked:  # sums first; each chunk's hidden states are recomputed for the output below
            values_t = edge_values.t()
            plans = list(zip(_chunks(edge_values.shape[0]), g.chunk_type_runs(), g.chunk_incidences()))
            sum_in_t = edge_values.new_zeros(self.hidden, g.num_nodes)
            sum_out_t = edge_values.new_zeros(self.hidden, g.num_nodes)
            for c, runs, (a_in, a_out) in plans:
                h_t = self.edge_hidden_t(g, c, runs, values_t[:, c])
                # h^T @ A^T (dense @ CSC view) is ~5x faster than A @ h on CPU
                sum_in_t += h_t @ a_in.t()
                sum_out_t += h_t @ a_out.t()
            sum_in, sum_out = sum_in_t.t(), sum_out_t.t()
        else:
            h = self.edge_hidden(g.edge_type, edge_values)
            zeros = edge_values.new_zeros(g.num_nodes, self.hidden)
            sum_in, sum_out = zeros.index_add(0, g.dst, h), zeros.index_add(0, g.src, h)
        parts = [sum_in * g.inv_in, sum_out * g.inv_out, self.node_type(g.node_type)]
        if self.node_in:
            if node_values is None or node_values.shape != (g.num_nodes, self.node_in):
                got = None if node_values is None else tuple(node_values.shape)
                raise ValueError(f"LiteGMN: node_values must be [{g.num_nodes}, {self.node_in}], got {got}.")
            parts.insert(2, node_values)
        node = self.node_mlp(torch.cat(parts, dim=1))  # [N, 2H]: the node as a source, as a destination
        ctx = self.graph_context(graph_values, g)
        if ctx is not None:
            node = node + (ctx[0] if g.num_graphs == 1 else ctx.index_select(0, g.batch)).repeat(1, 2)
        if chunked:
            node_terms = (node[:, : self.hidden].t().contiguous(), node[:, self.hidden :].t().contiguous())
            out = edge_values.new_empty(edge_values.shape[0], self.edge_out)
            for c, runs, _ in plans:
                h_t = self.edge_hidden_t(g, c, runs, values_t[:, c])
                out[c] = self.edge_out_t(g, c, h_t, None, node_terms).t()
            return GMNOutput(edge=out, node=None, graph=None)
        as_src, as_dst = (t.contiguous() for t in node.split(self.hidden, dim=1))
        pre = self.mix(h) + as_src.index_select(0, g.src) + as_dst.index_select(0, g.dst)
        return GMNOutput(edge=self.out(self.act(pre)), node=None, graph=None)
