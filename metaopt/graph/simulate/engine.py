"""The layer loop: every computed layer's neurons from the edges into it, in layer order.

A neuron's value is a tensor [B, *S] (S: its spatial dims, () for dense neurons); a layer's values
are kept together as [n, B, *S]. Each layer's value is the sum of what its edge rules (rules.py)
contribute, then each neuron's activation. Neurons of an earlier layer are read through the op
chain the consumer recorded (pooling, flatten, constants; chain.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..converters.grid import cell_weights
from ..parameter_graph import ParameterGraph
from ..schema import (EDGE_KPOS, EDGE_LAYER, EDGE_TYPE, NODE_ACTIVATION, NODE_LAYER, NODE_POSITION, NODE_TYPE,
                      Activation, EdgeType, NodeType)
from . import activations, chain
from .recurrent import KINDS as RECURRENT_KINDS
from .rules import LAYER_RULES, RULES, SUPPORTED_AUX, SUPPORTED_EDGES

# not computed by a layer (TOKEN: an embedding's vocabulary rows, looked up by embedding.py)
_SOURCE_TYPES = (NodeType.INPUT, NodeType.BIAS, NodeType.NORM, NodeType.GRID, NodeType.TOKEN)


def unsupported_edge_types(graph: ParameterGraph) -> list[str]:
    """Names of the graph's edge types `simulate` cannot run (empty: it can)."""
    found = set(torch.unique(graph.edge_attr[:, EDGE_TYPE]).tolist()) - {int(t) for t in SUPPORTED_EDGES}
    found |= set(torch.unique(graph.aux_edge_attr[:, EDGE_TYPE]).tolist()) - {int(t) for t in SUPPORTED_AUX}
    return sorted(EdgeType(t).name for t in found)


def unsupported_reasons(graph: ParameterGraph) -> list[str]:
    """Why `simulate` cannot run this graph: edge types, then what its layer records say (empty: it can)."""
    out = [f"edge type {n}" for n in unsupported_edge_types(graph)]
    etype, elayer = graph.edge_attr[:, EDGE_TYPE], graph.edge_attr[:, EDGE_LAYER]
    tables = set(torch.unique(elayer[(etype == EdgeType.PARAM_ADD) | (etype == EdgeType.PARAM_CAT)]).tolist())
    for rec in graph.layers:
        where = f"layer '{rec['name']}' ({rec['kind']})"
        kind, op = rec["kind"], rec.get("op") or {}
        if kind in _REFUSED_KINDS and "rows_shape" not in op:
            out.append(f"{where}: {_REFUSED_KINDS[kind]}")
        elif kind == "multihead_attention" and "num_heads" not in op:
            out.append(f"{where}: no recorded token layout (a graph converted before it was recorded)")
        elif kind == "attention" and "scores" not in op:
            out.append(f"{where}: hand-written attention without recorded operands (a graph converted "
                       f"before they were recorded)")
        elif kind == "attention":
            out += [f"{where}: {o['why']}" for o in op["scores"] if o["op"] == "opaque"]
            out += [f"{where} reads its {role} through {o['why']}" for role in ("query", "key")
                    for r in op.get(f"reads_{role[0]}", []) for o in r["ops"] if o["op"] == "opaque"]
        elif kind in RECURRENT_KINDS and "mode" not in op:
            out.append(f"{where}: a recurrent cell (nn.GRUCell & co.) unrolled in a loop, or a graph converted "
                       f"before recurrent layers were recorded")
        elif kind == "embedding" and "ids" not in op and not rec.get("inexact"):
            out.append(f"{where}: no recorded ids (a graph converted before they were recorded)")
        elif rec["layer"] in tables and "rows_shape" not in op:
            out.append(f"{where}: a parameter table in a layout simulate does not replay (a slice or gather "
                       f"of the parameter, or features not on the last dim)")
        out += [f"{where}: {why}" for why in rec.get("inexact", [])]
        out += [f"{where} reuses the tied parameter '{u['param']}' in a layout simulate does not replay "
                f"(only a Linear's weight, as an LM head tied to its token embedding)"
                for u in op.get("tied", []) if "in" not in u]
        out += [f"{where} reads neurons through {op['why']}" for r in rec.get("reads", [])
                for op in r["ops"] if op["op"] == "opaque"]
        out += [f"{where} reads h_n / c_n of a stacked or bidirectional recurrent layer (h_n[-1] of several "
                f"layers: a gather over layers simulate does not replay; the 1-layer h_n and the output sequence are)"
                for r in rec.get("reads", []) if _final_state_gather(r["ops"])]
        out += [f"{where} reads neurons through F.normalize over a head's vector outside attention scores"
                for r in rec.get("reads", []) for op in r["ops"] if op["op"] == "head_normalize"]
    return out


def _final_state_gather(ops: list[dict]) -> bool:
    """A recurrent layer's final states (last_step) then a gather recorded over h_n's layer dim."""
    kinds = [o["op"] for o in ops]
    return "last_step" in kinds and "take" in kinds[kinds.index("last_step"):]


_REFUSED_KINDS = {
    "head_scale": "per-head scales of attention scores in a layout simulate does not replay",
}


def simulate(graph: ParameterGraph, values: Tensor, x: Tensor, eps: float = 1e-5,
             buffers: Mapping[str, Tensor] | nn.Module | None = None) -> Tensor:
    """The network's output on `x` with per-edge `values` [E], computed from the graph alone.

    `x` is the model's input with the same layout as the conversion's example (any batch size):
    [B, n_in] for dense nets, [B, C, *spatial] for conv nets, query points [B, d] for a feature
    grid, token ids [B, T] (integers) for a model starting with an embedding; the output has
    `values`' dtype then. `buffers` holds running statistics (BatchNorm in eval mode), by name as in
    `model.named_buffers()` (or the model itself): they are values like the weights, not structure,
    so they are passed beside `values`. `eps` is the norm epsilon for graphs that predate recorded
    hyperparameters. Returns [B, n_out, *S] (the OUTPUT neurons in order).

    Raises NotImplementedError naming the edge type, layer or op that no rule runs.
    """
    reasons = unsupported_reasons(graph)
    if reasons:
        raise NotImplementedError(f"simulate cannot run this graph: {reasons[0]}"
                                  + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""))
    if isinstance(buffers, nn.Module):
        buffers = dict(buffers.named_buffers())
    if x.is_floating_point():
        values = values.to(x.dtype)
    zeroed = [(name, el) for rec in graph.layers for name, el in ((rec.get("op") or {}).get("zeroed") or {}).items()]
    if zeroed:  # parameter elements zeroed in place before their use (edge k = element k of the parameters)
        values, offsets = values.clone(), graph.param_offsets
        for name, el in zeroed:
            values[offsets[graph.param_names.index(name)] + torch.tensor(el, dtype=torch.long)] = 0
    state = State(graph, values, x, eps, buffers or {})
    return state.run()


class State:
    """Values computed so far, and the graph indexed by layer."""

    def __init__(self, graph: ParameterGraph, values: Tensor, x: Tensor, eps: float, buffers: Mapping) -> None:
        self.graph, self.values, self.x, self.eps, self.buffers = graph, values, x, eps, buffers
        self.B = x.shape[0]
        nx = graph.x
        self.ntype, self.nlayer = nx[:, NODE_TYPE], nx[:, NODE_LAYER]
        # one edge per parameter: the edge columns stay compact, read as int64 where indexed
        self.src, self.dst = Column(graph.edge_index[0]), Column(graph.edge_index[1])
        self.etype = Column(graph.edge_attr[:, EDGE_TYPE])
        self.elayer = Column(graph.edge_attr[:, EDGE_LAYER])
        self.kpos = Column(graph.edge_attr[:, EDGE_KPOS])
        self.asrc, self.adst = graph.aux_edge_index.long()  # aux edges: a few per neuron
        self.aux_layer = graph.aux_edge_attr[:, EDGE_LAYER].long()
        self.aux_type = graph.aux_edge_attr[:, EDGE_TYPE].long()
        self._tables: dict[int, tuple[Tensor, Tensor, list[int]]] = {}
        self.records = {rec["layer"]: rec for rec in graph.layers}
        computed = ~torch.isin(self.ntype, torch.tensor([int(t) for t in _SOURCE_TYPES]))
        inputs = self.ntype == NodeType.INPUT
        self.computed = computed
        # local index: rank of a node among its layer's computed (or input) nodes, by node id
        self.local = torch.full((nx.shape[0],), -1, dtype=torch.long)
        self.layer_nodes: dict[int, Tensor] = {}
        keyed = computed | inputs
        order = torch.argsort(self.nlayer[keyed] * nx.shape[0] + keyed.nonzero().squeeze(1))
        ids = keyed.nonzero().squeeze(1)[order]
        lay = self.nlayer[ids]
        for lid, nodes in zip(*_groups(lay, ids)):
            self.layer_nodes[lid] = nodes
            self.local[nodes] = torch.arange(nodes.numel())
        self.vals: dict[int, Tensor] = {}
        self.grid_rows = torch.full((nx.shape[0],), -1, dtype=torch.long)
        grid_nodes, grid_w = cell_weights(graph, x)
        self.grid_vals = grid_w.to(values.dtype)
        self.grid_rows[grid_nodes] = torch.arange(grid_nodes.numel())
        self._inputs(nx, inputs)

    def _inputs(self, nx: Tensor, inputs: Tensor) -> None:
        """INPUT neurons: feature k of x (dim 1) is the input node at position k."""
        nodes = inputs.nonzero().squeeze(1)
        if not nodes.numel():
            return
        lid = int(self.nlayer[nodes[0]])
        pos = nx[self.layer_nodes[lid], NODE_POSITION]
        dim = (self.record(lid).get("op") or {}).get("feature_dim", 1)  # [B, tokens, C] inputs: 2
        self.vals[lid] = self.x.movedim(dim, 0)[pos]

    def table(self, layer: int, nodes: Tensor, rank: int) -> Tensor:
        """The parameter table of a param_add / param_cat layer for `nodes`: [k, *rows_shape]
        (rows_shape with ones prepended up to `rank` dims; zeros for neurons it does not reach)."""
        if layer not in self._tables:
            shape = (self.record(layer).get("op") or {}).get("rows_shape")
            if shape is None:
                raise NotImplementedError(f"simulate: {self.where(layer)}: no recorded table layout")
            sel = (self.elayer.data == layer).nonzero().squeeze(1)
            sel = sel[torch.isin(self.etype[sel], torch.tensor([int(EdgeType.PARAM_ADD), int(EdgeType.PARAM_CAT),
                                                                int(EdgeType.BIAS), int(EdgeType.NORM_WEIGHT)]))]
            src = self.src[sel]  # a BIAS source, or a head_scale's NORM source (one element per head): row 0
            row = torch.where((self.ntype[src] == NodeType.BIAS) | (self.ntype[src] == NodeType.NORM), 0,
                              self.graph.x[src, NODE_POSITION])
            if (self.record(layer).get("op") or {}).get("prefix"):  # pos[:T]: rows T.. are not read
                keep = row < math.prod(shape)
                sel, row = sel[keep], row[keep]
            udst, inv = torch.unique(self.dst[sel], return_inverse=True)
            T = self.values.new_zeros(udst.numel(), max(1, math.prod(shape)))
            T[inv, row] = self.values[sel]
            self._tables[layer] = (udst, T, list(shape))
        udst, T, shape = self._tables[layer]
        idx = torch.searchsorted(udst, nodes).clamp(max=max(0, udst.numel() - 1))
        hit = (udst[idx] == nodes).to(T.dtype) if udst.numel() else torch.zeros(nodes.numel(), dtype=T.dtype)
        out = T[idx] * hit[:, None] if udst.numel() else T.new_zeros(nodes.numel(), T.shape[1])
        return out.view(nodes.numel(), *([1] * (rank - len(shape))), *shape)

    def record(self, layer: int) -> dict:
        return self.records.get(layer, {"name": f"layer {layer}", "kind": "?"})

    def where(self, layer: int) -> str:
        rec = self.record(layer)
        return f"layer '{rec['name']}' ({rec['kind']})"

    # ---- reading neurons ---------------------------------------------------------------------
    def read(self, layer: int, nodes: Tensor, reads: list | None = None) -> Tensor:
        """Values [k, B, *S] of `nodes` as `layer` reads them (through its recorded op chains, or
        through `reads` in the same format: an attention's query and key operands)."""
        reads = self.record(layer).get("reads", []) if reads is None else reads
        chains = {r["from"]: r["ops"] for r in reads}
        parts, rows = [], []
        grid = self.grid_rows[nodes] >= 0
        if bool(grid.any()):
            parts.append(self.grid_vals[self.grid_rows[nodes[grid]]])
            rows.append(grid.nonzero().squeeze(1))
        rest = (~grid).nonzero().squeeze(1)
        for lid, idx in zip(*_groups(self.nlayer[nodes[rest]], rest)):
            if lid not in self.vals:
                bad = nodes[idx[0]]
                raise NotImplementedError(f"simulate: {self.where(layer)} reads a "
                                          f"{NodeType(int(self.ntype[bad])).name} node of "
                                          f"{self.where(lid)}, which no rule computes")
            v = self.vals[lid][self.local[nodes[idx]]]
            parts.append(chain.apply(v, chains.get(lid, []), self.where(layer), self, nodes[idx]))
            rows.append(idx)
        if len(parts) == 1:
            return parts[0]
        shape = torch.broadcast_shapes(*[p.shape[1:] for p in parts])
        out = parts[0].new_empty(nodes.numel(), *shape)
        for p, r in zip(parts, rows):  # per-neuron shapes broadcast right-aligned (a constant lookup: [T])
            out[r] = p.view(p.shape[0], *([1] * (len(shape) - p.dim() + 1)), *p.shape[1:]).expand(p.shape[0], *shape)
        return out

    # ---- the loop -------------------------------------------------------------------------------
    def run(self) -> Tensor:
        # tables applied by op chains (param_add / param_cat ops) are not part of their target layer
        deferred = [r["layer"] for r in self.graph.layers if (r.get("op") or {}).get("deferred")]
        e_groups = self._edges_by_layer(deferred)
        a_layer = self.nlayer[self.adst] if self.adst.numel() else self.adst
        a_groups = dict(zip(*_groups(a_layer))) if self.adst.numel() else {}
        empty = torch.zeros(0, dtype=torch.long)
        for lid in sorted(k for k in self.layer_nodes if k not in self.vals):
            nodes = self.layer_nodes[lid]
            e = torch.cat([torch.arange(*r) if isinstance(r, tuple) else r for r in e_groups.pop(lid, [])] or [empty])
            a = a_groups.get(lid, empty)
            layer_rule = LAYER_RULES.get(self.record(lid)["kind"])
            if layer_rule is not None:  # a layer computed as a whole (attention)
                self.vals[lid] = self._activate(lid, nodes, layer_rule(self, lid, nodes, e, a))
                continue
            parts = []
            for rule in RULES:
                parts += rule(self, lid, nodes, e, a)
            shape = torch.broadcast_shapes(*[p.shape[1:] for _, p in parts]) if parts else (self.B,)
            pre = self.values.new_zeros(nodes.numel(), *shape)
            for rows, p in parts:  # per-neuron shapes broadcast right-aligned (a bias is a scalar)
                p = p.view(p.shape[0], *([1] * (len(shape) - p.dim() + 1)), *p.shape[1:])
                pre.index_add_(0, rows, p.expand(rows.numel(), *shape))
            self.vals[lid] = self._activate(lid, nodes, pre)
        out = (self.ntype == NodeType.OUTPUT).nonzero().squeeze(1)
        out = out[self.graph.x[out, NODE_POSITION].argsort()]
        reader = next((r["layer"] for r in self.graph.layers if r["kind"] == "output"), -1)
        dim = (self.record(reader).get("op") or {}).get("feature_dim", 1)  # [B, tokens, C] outputs: 2
        return self.read(reader, out).movedim(0, dim)  # through the output's op chain, if recorded

    def _edges_by_layer(self, deferred: list[int]) -> dict[int, list[tuple[int, int] | Tensor]]:
        """The edges into each layer's neurons (deferred tables' edges under -1), in edge order, as
        ranges where a whole parameter's edges go to one layer (the usual case) else index tensors.
        One parameter at a time and no sort over every edge: a layer's ids are made when it runs."""
        nlayer = self.nlayer.to(torch.int32)
        deferred_t = torch.tensor(deferred, dtype=torch.int32)
        groups: dict[int, list[tuple[int, int] | Tensor]] = {}
        offsets = self.graph.param_offsets
        if offsets[-1] != self.dst.data.numel():
            raise ValueError(f"simulate: the graph has {self.dst.data.numel()} edges but its parameters "
                             f"{offsets[-1]} elements (edge k must be element k of the flat parameters)")
        for start, end in zip(offsets[:-1], offsets[1:]):
            lay = nlayer[self.dst.data[start:end]]
            if deferred:
                lay[torch.isin(self.elayer.data[start:end], deferred_t)] = -1
            if end > start and bool(lay.min() == lay.max()):
                groups.setdefault(int(lay[0]), []).append((start, end))
                continue
            for key, idx in zip(*_groups(lay)):
                groups.setdefault(key, []).append(idx + start)
        return groups

    def _activate(self, lid: int, nodes: Tensor, pre: Tensor) -> Tensor:
        codes = self.graph.x[nodes, NODE_ACTIVATION]
        specs = self.record(lid).get("act_args", {})
        for code in torch.unique(codes).tolist():
            if code == 0:
                continue
            fn = activations.function(code, specs.get(Activation(code).name), self.where(lid))
            sel = (codes == code).nonzero().squeeze(1)
            pre[sel] = fn(pre[sel])
        return pre


class Column:
    """A compact integer column of the graph (edge_index's int32 rows, edge_attr's int16 columns) that
    reads as int64 where indexed. Simulate never copies a whole column to int64: five such copies
    cost 40 bytes per parameter, 12 GB for a 300M-parameter ViT-L."""

    __slots__ = ("data",)

    def __init__(self, data: Tensor) -> None:
        self.data = data

    def __getitem__(self, idx) -> Tensor:
        return self.data[idx].long()


def _groups(keys: Tensor, items: Tensor | None = None) -> tuple[list[int], list[Tensor]]:
    """Split `items` (default: the positions 0..n-1) by equal `keys` (sorted or not): (distinct keys,
    items of each, in their order)."""
    if not keys.numel():
        return [], []
    order = torch.argsort(keys, stable=True)
    k, it = keys[order], (order if items is None else items[order])
    uniq, counts = torch.unique_consecutive(k, return_counts=True)
    return uniq.tolist(), list(torch.split(it, counts.tolist()))
