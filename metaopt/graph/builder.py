"""Accumulates nodes and edges while a model's dataflow is walked, then emits a `ParameterGraph`.

Parameter edges are written straight into preallocated buffers at each parameter's offset in the
flat parameter vector, so the finished graph is in parameter order without any sort or gather.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .parameter_graph import ParameterGraph
from .schema import (
    EDGE_ATTR_DTYPE,
    EDGE_FEATURES,
    INDEX_DTYPE,
    NO_POSITION,
    NODE_ATTR_DTYPE,
    NODE_FEATURES,
    Activation,
    EdgeType,
    NodeType,
)


@dataclass
class NeuronMap:
    """Which graph node each feature index of a tensor belongs to.

    `nodes[k]` is the node of feature index k along tensor dimension `dim`; `pos[k]` is a spatial
    coordinate (d, h, w) when a feature map was flattened into that dimension (then nodes repeat:
    one channel node per spatial position). `dim` is a non-negative index into the tensor.
    """

    nodes: Tensor  # int64 [K]
    dim: int
    pos: Tensor | None = None  # int64 [K, 3] or None when no spatial positions are folded in
    ndim: int = 0  # number of dimensions of the tensor this map describes
    # producer layer -> parameter-free ops applied to its neurons since (op_records.py); None: none
    ops: dict | None = None

    @property
    def size(self) -> int:
        return int(self.nodes.numel())

    @property
    def is_spatial(self) -> bool:
        return self.pos is not None

    def moved(self, dim: int, ndim: int) -> "NeuronMap":
        """The same neurons in a tensor of `ndim` dims along `dim`."""
        return NeuronMap(self.nodes, dim, self.pos, ndim, self.ops)

    def same_neurons(self, other: "NeuronMap") -> bool:
        if self.size != other.size or not torch.equal(self.nodes, other.nodes):
            return False
        if (self.pos is None) != (other.pos is None):
            return False
        return self.pos is None or torch.equal(self.pos, other.pos)


@dataclass
class _ParamSlot:
    name: str
    offset: int
    numel: int
    shape: tuple[int, ...]
    state: int = 0  # 0: no edges yet, 1: some elements have edges, 2: all elements have edges


@dataclass
class LayerRecord:
    layer: int
    name: str
    kind: str
    activation: int = 0
    # what simulate needs beyond the edges (op_records.py documents the keys); omitted when empty
    op: dict | None = None
    act_args: dict = field(default_factory=dict)
    reads: list = field(default_factory=list)
    inexact: list = field(default_factory=list)

    def as_dict(self) -> dict:
        out = {"layer": self.layer, "name": self.name, "kind": self.kind, "activation": self.activation}
        for key in ("op", "act_args", "reads", "inexact"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out


class GraphBuilder:
    """Mutable graph under construction; converters call its `add_*` methods."""

    def __init__(self, model: nn.Module) -> None:
        self.slots: dict[int, _ParamSlot] = {}
        offset = 0
        for name, p in model.named_parameters():
            n = p.numel()
            self.slots[id(p)] = _ParamSlot(name, offset, n, tuple(p.shape))
            offset += n
        self.num_edges = offset
        # every element is written exactly once (by a converter or as a free edge), so no fill;
        # attributes are built column-major so each column write is contiguous
        self.edge_index = torch.empty((2, offset), dtype=INDEX_DTYPE)
        self._attr_cols = torch.empty((EDGE_FEATURES, offset), dtype=EDGE_ATTR_DTYPE)
        self.covered = torch.zeros(offset, dtype=torch.bool)
        self._node_chunks: list[Tensor] = []
        self.num_nodes = 0
        self._aux: list[tuple[Tensor, Tensor, int, int]] = []
        self._activations: list[tuple[Tensor, int]] = []
        self._activated = np.zeros(1024, dtype=bool)  # per node: has an activation been recorded
        self.layers: list[LayerRecord] = [LayerRecord(0, "<input>", "input")]
        self._bias_nodes: dict[int, int] = {}
        self.buffer_names = {id(b): name for name, b in model.named_buffers()}
        self.memo: dict[object, object] = {}  # state converters keep across calls (a cell called per step)

    # ---- layers and nodes ----------------------------------------------------------------
    def new_layer(self, name: str, kind: str) -> int:
        lid = len(self.layers)
        self.layers.append(LayerRecord(lid, name, kind))
        return lid

    def add_nodes(
        self, n: int, node_type: NodeType, layer: int, positions: Tensor | None = None
    ) -> Tensor:
        """Create `n` nodes; returns their ids (int64 [n]). `positions` only for ordered nodes."""
        feats = torch.empty((n, NODE_FEATURES), dtype=NODE_ATTR_DTYPE)
        feats[:, 0] = int(node_type)
        feats[:, 1] = layer
        feats[:, 2] = NO_POSITION if positions is None else positions
        feats[:, 3] = int(Activation.NONE)
        self._node_chunks.append(feats)
        ids = torch.arange(self.num_nodes, self.num_nodes + n)
        self.num_nodes += n
        return ids

    def bias_node(self, layer: int) -> int:
        """The single bias node of `layer` (created on first use)."""
        if layer not in self._bias_nodes:
            self._bias_nodes[layer] = int(self.add_nodes(1, NodeType.BIAS, layer)[0])
        return self._bias_nodes[layer]

    def set_activation(self, nodes: Tensor, act: Activation, layer: int | None = None,
                       spec: dict | None = None) -> None:
        """Tag `nodes` with `act`; `spec` ({"fn": ..., kwargs}) is its exact function, for simulate."""
        self._activations.append((nodes, int(act)))
        self._grow_activated()
        self._activated[nodes.numpy()] = True
        lids = [layer] if layer is not None else [l for l in self.node_layers(nodes) if 0 < l < len(self.layers)]
        for lid in lids:  # record on the layers that produced these nodes
            rec = self.layers[lid]
            rec.activation = int(act)
            if spec is not None:
                old = rec.act_args.get(act.name)
                if old is not None and old != spec:
                    self.mark_inexact([lid], f"neurons tagged {act.name} with different functions {old} and {spec}")
                rec.act_args[act.name] = spec

    # ---- records for simulate (op_records.py) ------------------------------------------------
    def set_layer_op(self, layer: int, op: dict) -> None:
        old = self.layers[layer].op or {}  # uses of parameters recorded by add_param_edges are kept
        self.layers[layer].op = {**{k: old[k] for k in ("tied", "zeroed") if k in old}, **op}

    def note_model_input(self, tensor: Tensor | None = None) -> None:
        """One more tensor argument of the model (simulate replays models of one input tensor)."""
        self._model_inputs = getattr(self, "_model_inputs", 0) + 1
        if tensor is not None:  # the example tensor itself: an embedding checks it reads the input unchanged
            self.model_input_tensors = [*getattr(self, "model_input_tensors", []), tensor]
        if self._model_inputs > 1:
            self.mark_inexact([0], "the model takes several input tensors (simulate takes one)")

    def note_input_dim(self, dim: int) -> None:
        """The model input is read with its features along `dim` (recorded on layer 0 unless 1)."""
        self._input_dims = getattr(self, "_input_dims", set()) | {dim}
        rec = self.layers[0]
        if len(self._input_dims) > 1:
            self.mark_inexact([0], "inputs read with features along different dims")
        elif dim != 1:
            rec.op = {"feature_dim": dim}

    def note_reads(self, layer: int, ops: dict | None) -> None:
        """`layer` reads producer p's neurons through the op chain ops[p]."""
        for p, chain in (ops or {}).items():
            if chain:
                self.layers[layer].reads.append({"from": int(p), "ops": list(chain)})

    def mark_inexact(self, layers, reason: str) -> None:
        for lid in layers:
            if reason not in self.layers[lid].inexact:
                self.layers[lid].inexact.append(reason)

    def node_layers(self, nodes: Tensor) -> list[int]:
        """The distinct layers of `nodes`."""
        return self._node_layers(nodes)

    def has_activation(self, nodes: Tensor) -> bool:
        """Whether any of `nodes` already had a nonlinearity recorded."""
        self._grow_activated()
        return bool(self._activated[nodes.numpy()].any())

    def _grow_activated(self) -> None:
        if self._activated.shape[0] < self.num_nodes:
            grown = np.zeros(2 * self.num_nodes, dtype=bool)
            grown[: self._activated.shape[0]] = self._activated
            self._activated = grown

    def _node_layers(self, nodes: Tensor) -> list[int]:
        all_nodes = torch.cat(self._node_chunks) if len(self._node_chunks) > 1 else self._node_chunks[0]
        self._node_chunks = [all_nodes]
        return torch.unique(all_nodes[nodes, 1]).tolist()

    # ---- edges ---------------------------------------------------------------------------
    def owns(self, param: Tensor) -> bool:
        return id(param) in self.slots

    def param_name(self, param: Tensor) -> str:
        return self.slots[id(param)].name

    def is_claimed(self, param: Tensor) -> bool:
        slot = self.slots.get(id(param))
        return slot is not None and slot.state > 0

    def add_param_edges(
        self,
        param: Tensor,
        src: Tensor,
        dst: Tensor,
        edge_type: EdgeType | Tensor,
        layer: int,
        kpos: Tensor | None = None,
        elements: Tensor | None = None,
    ) -> bool:
        """Edges for a parameter's elements (all, in flatten order, unless `elements` is given).

        Without `elements`, `src`/`dst` may be flat [numel] or any shape broadcastable to the
        parameter's shape (e.g. [O, 1] and [1, K] for a dense weight) and `kpos` likewise with a
        trailing coordinate dim: they are written straight into the int32/int16 buffers, never
        materialised at full size in int64. With `elements` (flat indices), all are flat [n].
        Returns False when the parameter was already claimed (tied weights keep their first edges).
        """
        zeroed = getattr(self, "zeroed", {}).get(id(param))
        if zeroed:  # elements zeroed in place before this use (Swin V2's key bias): simulate zeroes them
            rec = self.layers[layer]
            op = dict(rec.op or {})
            op["zeroed"] = {**op.get("zeroed", {}), self.param_name(param): sorted(zeroed)}
            rec.op = op
        slot = self.slots.get(id(param))
        if slot is None:
            raise KeyError("add_param_edges: tensor is not a parameter of the converted model")
        if slot.state == 2:
            return self._tied_use(slot, layer)
        if elements is not None:
            rows = elements.long() + slot.offset
            if slot.state == 1 and bool(self.covered[rows].any()):
                return self._tied_use(slot, layer)
            self.edge_index[0, rows] = src.reshape(-1).to(INDEX_DTYPE)
            self.edge_index[1, rows] = dst.reshape(-1).to(INDEX_DTYPE)
            cols = self._attr_cols[:, rows]
            self._fill_attr(cols, edge_type, layer, kpos, (rows.numel(),))
            self._attr_cols[:, rows] = cols
            self.covered[rows] = True
            slot.state = 2 if bool(self.covered[slot.offset : slot.offset + slot.numel].all()) else 1
            return True
        if slot.state == 1:
            return self._tied_use(slot, layer)
        sl = slice(slot.offset, slot.offset + slot.numel)
        flat = src.dim() == 1 and dst.dim() == 1 and src.numel() == dst.numel() == slot.numel
        shape = (slot.numel,) if flat or not slot.shape else slot.shape
        try:
            self.edge_index[0, sl].view(shape).copy_(_broadcast(src, shape))
            self.edge_index[1, sl].view(shape).copy_(_broadcast(dst, shape))
        except RuntimeError as exc:
            raise ValueError(
                f"converter edges for parameter '{slot.name}' of shape {slot.shape} do not match it "
                f"(src {tuple(src.shape)}, dst {tuple(dst.shape)}): one edge per scalar is required."
            ) from exc
        if kpos is not None and kpos.dim() == 2 and kpos.shape[0] == slot.numel and len(shape) > 1:
            kpos = kpos.view(*shape, kpos.shape[-1])
        self._fill_attr(self._attr_cols[:, sl], edge_type, layer, kpos, shape)
        self.covered[sl] = True
        slot.state = 2
        return True

    def _tied_use(self, slot: "_ParamSlot", layer: int) -> bool:
        """A parameter used again (tied weights): no edges, but the layer records the use for simulate
        (``op["tied"]``, op_records.py; a converter that can say how the layer reads it adds that)."""
        rec = self.layers[layer]
        op = dict(rec.op or {})
        op["tied"] = [*op.get("tied", []), {"param": slot.name}]
        rec.op = op
        return False

    @staticmethod
    def _fill_attr(cols: Tensor, edge_type, layer: int, kpos: Tensor | None, shape: tuple) -> None:
        """Write the type/layer/position rows of `cols` ([5, n] view) for elements of `shape`."""
        if isinstance(edge_type, Tensor):
            cols[0] = edge_type.reshape(-1).to(EDGE_ATTR_DTYPE)
        else:
            cols[0] = int(edge_type)
        cols[1] = layer
        kd = 0 if kpos is None or not kpos.numel() else kpos.shape[-1]
        for c in range(kd):
            cols[2 + c].view(shape).copy_(_broadcast(kpos[..., c], shape))
        if kd < 3:
            cols[2 + kd :] = 0

    def add_aux_edges(self, src: Tensor, dst: Tensor, edge_type: EdgeType, layer: int) -> None:
        """Structural edges (no parameter): residual operands, norm inputs, head membership."""
        self._aux.append((src.reshape(-1).long(), dst.reshape(-1).long(), int(edge_type), layer))

    # ---- parameters nothing understood --------------------------------------------------
    def uncovered_params(self) -> list[tuple[str, int]]:
        """(name, number of uncovered elements) for parameters with elements lacking an edge."""
        if bool(self.covered.all()):
            return []
        out = []
        for slot in self.slots.values():
            missing = int((~self.covered[slot.offset : slot.offset + slot.numel]).sum())
            if missing:
                out.append((slot.name, missing))
        return out

    def add_free_edges(self, names: list[str] | None = None) -> None:
        """Self-loops on one FREE node per tensor for every uncovered element: nothing is dropped."""
        for slot in self.slots.values():
            if names is not None and slot.name not in names:
                continue
            seg = self.covered[slot.offset : slot.offset + slot.numel]
            missing = (~seg).nonzero().squeeze(1)
            if missing.numel() == 0:
                continue
            layer = self.new_layer(slot.name, "free")
            node = int(self.add_nodes(1, NodeType.FREE, layer)[0])
            rows = missing + slot.offset
            self.edge_index[:, rows] = node
            self._attr_cols[0, rows] = int(EdgeType.FREE)
            self._attr_cols[1, rows] = layer
            self._attr_cols[2:, rows] = 0
            self.covered[rows] = True
            slot.state = 2

    # ---- output --------------------------------------------------------------------------
    def mark_outputs(self, nodes: Tensor) -> None:
        all_nodes = torch.cat(self._node_chunks) if len(self._node_chunks) > 1 else self._node_chunks[0]
        self._node_chunks = [all_nodes]
        uniq = torch.unique_consecutive(nodes)
        all_nodes[uniq, 0] = int(NodeType.OUTPUT)
        all_nodes[uniq, 2] = torch.arange(uniq.numel())

    def retype(self, nodes: Tensor, old: NodeType, new: NodeType) -> None:
        """Nodes of type `old` among `nodes` become `new` (e.g. projection neurons read as queries)."""
        all_nodes = torch.cat(self._node_chunks) if len(self._node_chunks) > 1 else self._node_chunks[0]
        self._node_chunks = [all_nodes]
        sel = nodes[all_nodes[nodes, 0] == int(old)]
        all_nodes[sel, 0] = int(new)

    def finish(self) -> ParameterGraph:
        if self.uncovered_params():
            raise RuntimeError("internal: finish() with uncovered parameters")  # callers resolve first
        x = torch.cat(self._node_chunks) if self._node_chunks else torch.zeros(0, NODE_FEATURES, dtype=NODE_ATTR_DTYPE)
        for nodes, act in self._activations:
            x[nodes, 3] = act
        if self._aux:
            src = torch.cat([a[0] for a in self._aux])
            dst = torch.cat([a[1] for a in self._aux])
            aux_attr = torch.zeros((src.numel(), EDGE_FEATURES), dtype=EDGE_ATTR_DTYPE)
            aux_attr[:, 0] = torch.cat([torch.full((a[0].numel(),), a[2]) for a in self._aux])
            aux_attr[:, 1] = torch.cat([torch.full((a[0].numel(),), a[3]) for a in self._aux])
            aux_index = torch.stack([src, dst]).to(INDEX_DTYPE)
        else:
            aux_index = torch.zeros((2, 0), dtype=INDEX_DTYPE)
            aux_attr = torch.zeros((0, EDGE_FEATURES), dtype=EDGE_ATTR_DTYPE)
        slots = list(self.slots.values())
        return ParameterGraph(
            x=x,
            edge_index=self.edge_index,
            edge_attr=self._attr_cols.t(),  # [E, 5] view of the column-major buffer
            aux_edge_index=aux_index,
            aux_edge_attr=aux_attr,
            num_nodes=self.num_nodes,
            param_names=[s.name for s in slots],
            param_shapes=[s.shape for s in slots],
            layers=[r.as_dict() for r in self.layers],
        )


def _broadcast(t: Tensor, shape: tuple) -> Tensor:
    """A per-element tensor given flat or broadcastable, viewed/expanded to `shape`."""
    if t.dim() == 1 and t.numel() == math.prod(shape) and len(shape) > 1:
        return t.view(shape)
    return t.expand(shape)


def dense_edges(in_map: NeuronMap, out_nodes: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """src, dst, kpos for a [out, in] weight, as broadcastable [1, K], [O, 1], [1, K, 3] tensors."""
    src = in_map.nodes.view(1, -1)
    dst = out_nodes.view(-1, 1)
    kpos = in_map.pos.view(1, -1, 3) if in_map.pos is not None else None
    return src, dst, kpos


def flat_dense_edges(in_map: NeuronMap, out_nodes: Tensor) -> tuple[Tensor, Tensor]:
    """Materialised flat src, dst of a [out, in] weight (when several blocks are concatenated)."""
    K, O = in_map.size, out_nodes.numel()
    return in_map.nodes.repeat(O), out_nodes.repeat_interleave(K)


def grouped_kernel_edges(
    in_nodes: Tensor, out_nodes: Tensor, groups: int, kernel: tuple[int, ...], transposed: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """src, dst, centred kernel offsets of a conv weight, broadcastable to its shape.

    Conv weight is [O, I/g, *k]; transposed conv weight is [I, O/g, *k]. Only [O, I/g] index
    grids are built; the taps are covered by broadcasting.
    """
    C_in, C_out = in_nodes.numel(), out_nodes.numel()
    ones = (1,) * len(kernel)
    if not transposed:
        per_in = C_in // groups
        o = torch.arange(C_out).view(-1, 1)
        i = torch.arange(per_in).view(1, -1)
        src = in_nodes[(o // (C_out // groups)) * per_in + i].view(C_out, per_in, *ones)
        dst = out_nodes.view(C_out, 1, *ones)
    else:
        per_out = C_out // groups
        i = torch.arange(C_in).view(-1, 1)
        o = torch.arange(per_out).view(1, -1)
        src = in_nodes.view(C_in, 1, *ones)
        dst = out_nodes[(i // (C_in // groups)) * per_out + o].view(C_in, per_out, *ones)
    grid = torch.stack(
        torch.meshgrid(*[torch.arange(k) - (k - 1) // 2 for k in kernel], indexing="ij"), dim=-1
    )
    kpos = grid.view(1, 1, *kernel, len(kernel))
    return src, dst, kpos


def warn_once(msg: str) -> None:
    warnings.warn(msg, UserWarning, stacklevel=3)
