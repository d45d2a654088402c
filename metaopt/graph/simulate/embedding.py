"""Embeddings: nn.Embedding / F.embedding / nn.EmbeddingBag looked up from the graph's EMBEDDING edges.

The embedding layer has one ordered TOKEN node per vocabulary row (a source, like a BIAS node) and
its embedding neurons; the EMBEDDING edge token v -> neuron d holds W[v, d]. Neuron d's value is
W[ids, d], of the ids' shape ([B, T] for the model's token ids, [T] or [1, T] for a constant
position index): the token dims are the neuron's per-sample dims, as for any token model. The
layer record says which ids (``op["ids"]``: ``"input"``, the model input itself, or ``{"constant":
[...]}``); an EmbeddingBag's record adds ``bag`` (sum / mean / max over the bag's tokens, the last
dim of [B, T]) and ``padding_idx`` (left out of the bag).
"""

from __future__ import annotations

import torch

from ..schema import NODE_POSITION, EdgeType


def lookup(state, lid, nodes, e, a):
    """EMBEDDING: W[ids, d] for each embedding neuron d of the layer (reduced over bags)."""
    sel = e[state.etype[e] == EdgeType.EMBEDDING]
    if not sel.numel():
        return []
    op = state.record(lid).get("op") or {}
    ids = ids_of(state, lid, op)
    rows = state.graph.x[state.src[sel], NODE_POSITION].long()
    V = int(rows.max()) + 1
    W = state.values.new_zeros(V, nodes.numel())
    W[rows, state.local[state.dst[sel]]] = state.values[sel]
    if bool(((ids < 0) | (ids >= V)).any()):
        raise IndexError(f"simulate: {state.where(lid)}: token ids outside [0, {V})")
    out = W[ids].movedim(-1, 0)  # [D, *ids.shape]
    mode = op.get("bag")
    if mode is not None:
        out = _bag(out, ids, mode, op.get("padding_idx"), state.where(lid))
    return [(torch.arange(nodes.numel()), out)]


def ids_of(state, lid, op: dict) -> torch.Tensor:
    ids = op.get("ids")
    if ids == "input":
        if state.x.is_floating_point() or state.x.is_complex():
            raise TypeError(f"simulate: {state.where(lid)} looks up the model input as token ids, "
                            f"got a {state.x.dtype} tensor")
        return state.x.long()
    if isinstance(ids, dict) and "constant" in ids:
        return torch.tensor(ids["constant"], dtype=torch.long)
    raise NotImplementedError(f"simulate: {state.where(lid)}: no recorded ids")


def _bag(out: torch.Tensor, ids: torch.Tensor, mode: str, padding_idx, where: str) -> torch.Tensor:
    """out [D, B, T] reduced over each bag's tokens (the last dim), padding tokens left out."""
    keep = torch.ones_like(ids, dtype=torch.bool) if padding_idx is None else ids != padding_idx
    if mode == "sum":
        return (out * keep).sum(-1)
    if mode == "mean":
        return (out * keep).sum(-1) / keep.sum(-1).clamp_min(1)
    if mode == "max":  # an empty bag (all padding) gives zeros, as torch does
        m = out.masked_fill(~keep, float("-inf")).amax(-1)
        return torch.where(keep.any(-1), m, torch.zeros_like(m))
    raise NotImplementedError(f"simulate: {where}: EmbeddingBag mode {mode!r}")
