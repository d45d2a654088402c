"""`ParameterGraph`: a network as a graph with one edge per scalar parameter, in parameter order."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from .schema import (
    EDGE_LAYER,
    EDGE_TYPE,
    NODE_LAYER,
    NODE_TYPE,
    Activation,
    EdgeType,
    NodeType,
)


class ParameterGraph(Data):
    """Structure of a network's parameter graph (a `torch_geometric.data.Data`).

    Attributes:
        x: int64 [N, 4] node features (type, layer, ordered position or -1, activation).
        edge_index: int32 [2, E], one edge per scalar parameter; edge k is element k of
            ``torch.cat([p.flatten() for p in model.parameters()])``.
        edge_attr: int16 [E, 5] edge features (type, layer, 3 kernel/spatial position columns).
        aux_edge_index / aux_edge_attr: structural edges that carry no parameter (residual
            adds, norm input links, attention head membership), same layout.
        param_names / param_shapes: the parameters in order, to map edge values back.
        layers: one record per converted layer (name, kind, activation), for summaries.

    Values (weights, gradients, optimizer state) are not stored: the same structure serves
    many value sets, passed as ``Tensor[E]`` in edge order.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    # PyG batching: aux_edge_index holds node ids, so it is shifted like edge_index; int32
    # storage is kept (the increment is a Python int).
    def __inc__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key in ("edge_index", "aux_edge_index"):
            return self.num_nodes
        return super().__inc__(key, value, *args, **kwargs)

    def __cat_dim__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key in ("edge_index", "aux_edge_index"):
            return -1
        return super().__cat_dim__(key, value, *args, **kwargs)

    # ---- sizes -------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        """Number of scalar parameters, equal to the number of (parameter) edges."""
        return int(self.edge_index.shape[1])

    @property
    def param_numels(self) -> list[int]:
        return [math.prod(s) for s in self.param_shapes]

    @property
    def param_offsets(self) -> list[int]:
        """Start edge of each parameter tensor (len = number of tensors + 1)."""
        offsets = [0]
        for n in self.param_numels:
            offsets.append(offsets[-1] + n)
        return offsets

    # ---- values <-> edges --------------------------------------------------------------
    def params_to_edges(
        self, model_or_params: nn.Module | Mapping[str, Tensor] | Iterable[Tensor]
    ) -> Tensor:
        """Flatten a model's (or a params dict's / list's) parameters into edge order: ``Tensor[E]``.

        The result is detached; dtypes are promoted to a common one. Shapes are checked so a
        different architecture gives a clear error instead of misaligned values.
        """
        if isinstance(model_or_params, nn.Module):
            tensors = [p.detach() for p in model_or_params.parameters()]
            names = self.param_names
        elif isinstance(model_or_params, Mapping):
            missing = [n for n in self.param_names if n not in model_or_params]
            if missing:
                raise KeyError(
                    f"params_to_edges: the dict lacks {len(missing)} parameter(s) of this graph, "
                    f"first {missing[:3]}; pass model.named_parameters() of the same architecture."
                )
            tensors = [model_or_params[n].detach() for n in self.param_names]
            names = self.param_names
        else:
            tensors = [t.detach() for t in model_or_params]
            names = self.param_names
        if len(tensors) != len(self.param_shapes):
            raise ValueError(
                f"params_to_edges: got {len(tensors)} parameter tensors, the graph has "
                f"{len(self.param_shapes)}; the model's architecture differs from the graph's."
            )
        for name, t, shape in zip(names, tensors, self.param_shapes):
            if tuple(t.shape) != tuple(shape):
                raise ValueError(
                    f"params_to_edges: parameter '{name}' has shape {tuple(t.shape)}, the graph "
                    f"expects {tuple(shape)}; convert this architecture with to_graph first."
                )
        if not tensors:
            raise ValueError("params_to_edges: the graph has no parameters.")
        return torch.cat([t.reshape(-1) for t in tensors])

    def edges_to_params(self, values: Tensor) -> dict[str, Tensor]:
        """Split per-edge values ``Tensor[E, ...]`` back into ``{name: tensor shaped like the parameter}``.

        Views into ``values`` (no copy), so the round trip with `params_to_edges` is bitwise exact.
        Trailing dimensions (e.g. several value channels) are kept after the parameter shape.
        """
        if values.shape[0] != self.num_params:
            raise ValueError(
                f"edges_to_params: got {values.shape[0]} values, the graph has {self.num_params} edges."
            )
        extra = tuple(values.shape[1:])
        chunks = torch.split(values, self.param_numels, dim=0)
        return {
            name: chunk.view(*shape, *extra)
            for name, chunk, shape in zip(self.param_names, chunks, self.param_shapes)
        }

    def edge_param_ids(self) -> Tensor:
        """int64 [E]: index of the parameter tensor each edge belongs to."""
        return torch.repeat_interleave(
            torch.arange(len(self.param_shapes)), torch.tensor(self.param_numels, dtype=torch.long)
        )

    # ---- serialisation (structure only: stores write these as safetensors + JSON) ---------
    STRUCTURE_KEYS = ("x", "edge_index", "edge_attr", "aux_edge_index", "aux_edge_attr")

    def structure_tensors(self) -> dict[str, Tensor]:
        """The structure tensors, contiguous (ready for `safetensors.torch.save_file`)."""
        return {k: self[k].contiguous() for k in self.STRUCTURE_KEYS}

    def structure_meta(self) -> dict[str, Any]:
        """The JSON-serialisable rest of the structure."""
        return {
            "num_nodes": int(self.num_nodes),
            "param_names": list(self.param_names),
            "param_shapes": [list(s) for s in self.param_shapes],
            "layers": list(self.layers),
        }

    @classmethod
    def from_structure(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> "ParameterGraph":
        """Rebuild a graph from `structure_tensors()` and `structure_meta()` output."""
        missing = [k for k in cls.STRUCTURE_KEYS if k not in tensors]
        missing += [k for k in ("param_names", "param_shapes", "layers") if k not in meta]
        if missing:
            raise KeyError(f"ParameterGraph.from_structure: missing {missing}")
        return cls(
            **{k: tensors[k] for k in cls.STRUCTURE_KEYS},
            num_nodes=int(meta.get("num_nodes", tensors["x"].shape[0])),
            param_names=list(meta["param_names"]),
            param_shapes=[tuple(s) for s in meta["param_shapes"]],
            layers=list(meta["layers"]),
        )

    # ---- structure views ---------------------------------------------------------------
    def copy_structure(self) -> "ParameterGraph":
        """A new graph object sharing this one's tensors (cheap: used by the structure cache)."""
        out = ParameterGraph()
        for key, value in self._store.items():
            out[key] = list(value) if isinstance(value, list) else value
        return out

    def index_bytes(self) -> dict[str, int]:
        """Bytes held by the structure tensors, to compare with the parameters' own bytes."""
        keys = ("x", "edge_index", "edge_attr", "aux_edge_index", "aux_edge_attr")
        out = {k: int(self[k].numel() * self[k].element_size()) for k in keys if k in self}
        out["total"] = sum(out.values())
        return out

    def summary(self) -> str:
        """Human-readable table: nodes and edges by type, and edges per layer."""
        x, ea, aux = self.x, self.edge_attr, self.aux_edge_attr
        lines = [
            f"ParameterGraph: {self.num_nodes} nodes, {self.num_params} parameter edges, "
            f"{aux.shape[0]} structural edges, {len(self.param_shapes)} parameter tensors"
        ]
        node_counts = Counter(x[:, NODE_TYPE].tolist())
        lines.append(
            "  nodes by type: "
            + ", ".join(f"{NodeType(t).name}={c}" for t, c in sorted(node_counts.items()))
        )
        for label, attr in (("parameter edges", ea), ("structural edges", aux)):
            types, counts = torch.unique(attr[:, EDGE_TYPE].long(), return_counts=True)
            lines.append(
                f"  {label} by type: "
                + ", ".join(f"{EdgeType(int(t)).name}={int(c)}" for t, c in zip(types, counts))
            )
        edge_layers, edge_counts = torch.unique(ea[:, EDGE_LAYER].long(), return_counts=True)
        per_layer = dict(zip(edge_layers.tolist(), edge_counts.tolist()))
        node_layers = Counter(x[:, NODE_LAYER].tolist())
        lines.append(f"  {'layer':>5}  {'kind':<22} {'name':<32} {'act':<10} {'nodes':>8} {'edges':>10}")
        for rec in self.layers:
            lid = rec["layer"]
            lines.append(
                f"  {lid:>5}  {rec['kind']:<22} {rec['name']:<32} "
                f"{Activation(rec.get('activation', 0)).name.lower():<10} "
                f"{node_layers.get(lid, 0):>8} {per_layer.get(lid, 0):>10}"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:  # PyG's repr lists every attribute; keep it short
        if "edge_index" not in self:
            return "ParameterGraph()"
        return (
            f"ParameterGraph(nodes={self.num_nodes}, edges={self.num_params}, "
            f"aux_edges={self.aux_edge_index.shape[1]}, tensors={len(self.param_shapes)})"
        )
