"""Neurons of one feature axis spread over several tensor dims: head splits, channel shuffles.

`x.view(B, G, C // G, H, W)` (a channel shuffle) or `qkv.reshape(B, N, 3, heads, D)` (attention
heads) spreads a layer's neurons over several dims. A `SplitMap` keeps the probes that say, per
element, which neuron it is, so shape ops keep following it exactly (on the probes); once the
features lie along one dim again it is a plain `NeuronMap`. Ops that *compute* with split
features must know the split: scaled_dot_product_attention reads it as heads (see
converters/attention.py); any other consumer is an error naming the op.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .builder import NeuronMap


@dataclass
class SplitMap:
    """`feat[e]` is the index into `source.nodes` of element e; `rest[e]` its flat other-dims index."""

    source: NeuronMap
    src_shape: torch.Size  # shape of the tensor `source` described, where the probes started
    feat: Tensor
    rest: Tensor

    @property
    def ndim(self) -> int:
        return self.feat.ndim

    def feature_dims(self) -> list[int]:
        """Dims along which the neuron changes."""
        q = self.feat
        return [d for d in range(q.ndim) if q.shape[d] > 1 and bool((q.amax(d) != q.amin(d)).any())]

    def node_grid(self) -> Tensor:
        """Node ids over the feature dims (element 0 of every other dim), in dim order."""
        vary = self.feature_dims()
        index = tuple(slice(None) if d in vary else 0 for d in range(self.ndim))
        return self.source.nodes[self.feat[index].long()]

    def like(self, shape: torch.Size, dim: int) -> "SplitMap":
        """The same neurons in an output whose `dim` (a token/sequence dim) has another length.

        Of the same length (self-attention), the probes stay as they are: each token keeps its
        position, which is what readers of an attention output read."""
        if tuple(shape) == tuple(self.feat.shape):
            return self
        feat = self.feat.narrow(dim, 0, 1)
        rest = self.rest.narrow(dim, 0, 1)
        return SplitMap(self.source, self.src_shape, feat.expand(shape), rest.expand(shape))


@dataclass
class Scores:
    """Attention scores `q @ k^T` (tokens x tokens): no neurons of their own, only which query and
    key neurons (node grids `[heads, dim]`) made them. Scaling, masking, softmax and dropout keep
    them; `scores @ v` is the attention (converters/attention.py)."""

    q: Tensor
    k: Tensor
    heads: Tensor  # HEAD node ids, one per row of q/k
    layer: int  # the attention layer they belong to
    head_of: Tensor  # per element of the scores tensor: its head (shape ops act on it as on probes)

    @staticmethod
    def head_probe(shape: torch.Size, dims: tuple[int, ...], heads: int) -> Tensor:
        """The head index of every element of a scores tensor whose heads lie along `dims`."""
        view = [1] * len(shape)
        sizes = [shape[d] for d in dims]
        for d, size in zip(dims, sizes):
            view[d] = size
        if not dims:
            return torch.zeros((1,) * len(shape), dtype=torch.long).expand(shape)
        return torch.arange(heads).view(sizes).view(view).expand(shape)


def head_dims(value: object, ndim: int) -> tuple[int, ...]:
    """Dims of an attention operand `[..., tokens, dim]` that index its heads (none: one head)."""
    if isinstance(value, SplitMap):
        return tuple(d for d in value.feature_dims() if d < ndim - 2)
    return ()


def transposed(value: object) -> object:
    """The operand with its last two dims swapped (`k.transpose(-2, -1)` undone)."""
    if isinstance(value, SplitMap):
        return SplitMap(value.source, value.src_shape, value.feat.transpose(-1, -2), value.rest.transpose(-1, -2))
    if isinstance(value, NeuronMap) and value.dim >= value.ndim - 2:
        return NeuronMap(value.nodes, 2 * value.ndim - 3 - value.dim, value.pos, value.ndim)
    return value


def head_grid(value: object, ndim: int) -> Tensor | None:
    """An attention operand `[..., tokens, E]` as node ids `[heads, E]`, or None if it is not one.

    Heads are the feature dims before the token dim (dim -2, which must not carry features);
    a NeuronMap along the last dim is a single head.
    """
    if isinstance(value, NeuronMap):
        if value.dim != ndim - 1 or value.pos is not None:
            return None
        return value.nodes.view(1, -1)
    if isinstance(value, SplitMap):
        vary = value.feature_dims()
        if ndim - 1 not in vary or ndim - 2 in vary or value.source.pos is not None:
            return None
        grid = value.node_grid()
        return grid.reshape(-1, grid.shape[-1])
    return None
