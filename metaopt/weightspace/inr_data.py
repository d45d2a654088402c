"""Read INR sets from disk (no model code), render INRs functionally, and augment them exactly.

An INR set folder (written by `python -m inner_tasks.inr`) stores the SIREN's parameter-graph
structure once plus sharded weights in edge order. Everything here works on the flat weight rows
``[B, E]``: `render` splits them into parameter tensors with `ParameterGraph.edges_to_params` and
runs the SIREN forward with the w0 values from the JSON; the augmentations permute and sign-flip
hidden neurons, which leaves the rendered image unchanged (sin is odd).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from einops import rearrange
import torch
from safetensors.torch import load_file
from torch import Tensor

from metaopt.graph import ParameterGraph

FORMAT = "metaopt-inr-set/1"
STRUCTURE_KEYS = ParameterGraph.STRUCTURE_KEYS


@dataclass
class INRSet:
    """A loaded INR set: shared graph structure, weights ``[M, E]`` and per-INR / per-image metadata."""

    root: Path
    graph: ParameterGraph
    weights: Tensor  # float32 [M, E], edge order
    labels: Tensor  # int64 [M]
    image_index: Tensor  # int64 [M]: row of `images`
    is_test: Tensor  # bool [M]
    psnr: Tensor  # float32 [M]
    seeds: Tensor  # int64 [M]
    images: Tensor  # float32 [N, C, H, W]: the images the INRs were fitted to
    image_labels: Tensor  # int64 [N]
    image_is_test: Tensor  # bool [N]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.meta["data"]["num_classes"])

    @property
    def layers(self) -> list[dict[str, Any]]:
        """SIREN linear layers in order: weight/bias parameter names and the sine w0 after each (None = output)."""
        return list(self.meta["siren"]["layers"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def split(self, test: bool) -> Tensor:
        """Indices of the train (test=False) or test INRs."""
        return torch.nonzero(self.is_test == test).flatten()

    def first_replicate(self, test: bool) -> Tensor:
        """One INR per image of the split (the lowest INR index for each image), ordered by image index."""
        idx = self.split(test)
        order = torch.argsort(self.image_index[idx] * len(self.weights) + idx)
        idx = idx[order]
        keep = torch.ones(len(idx), dtype=torch.bool)
        keep[1:] = self.image_index[idx][1:] != self.image_index[idx][:-1]
        return idx[keep]


def load_structure(root: str | Path) -> tuple[ParameterGraph, dict[str, Any]]:
    """The shared SIREN `ParameterGraph` (structure only) and the set's JSON metadata."""
    root = Path(root)
    meta_path = root / "structure.json"
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{meta_path} not found: {root} is not an INR set; create one with "
            f"`python -m inner_tasks.inr --data digits --out {root}`"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, this reader understands {FORMAT!r}")
    tensors = load_file(str(root / "structure.safetensors"))
    return ParameterGraph.from_structure(tensors, meta), meta


def load_inr_set(root: str | Path) -> INRSet:
    """Load every complete shard of an INR set (as listed in index.jsonl) into memory."""
    root = Path(root)
    graph, meta = load_structure(root)
    index_path = root / "index.jsonl"
    if not index_path.exists():
        raise FileNotFoundError(f"{index_path} not found: no INR of {root} is fitted yet (run inner_tasks.inr)")
    shards = sorted({json.loads(line)["shard"] for line in index_path.read_text().splitlines() if line.strip()})
    parts = []
    for s in shards:
        path = root / "shards" / f"shard_{s:05d}.safetensors"
        if path.exists():
            parts.append(load_file(str(path)))
    if not parts:
        raise FileNotFoundError(f"{root}/shards holds no complete shard; run or resume inner_tasks.inr")
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    if cat["weights"].shape[1] != graph.num_params:
        raise ValueError(
            f"{root}: shards have {cat['weights'].shape[1]} weights per INR, the structure has {graph.num_params} edges"
        )
    img = load_file(str(root / "images.safetensors"))
    image_is_test = img["split"].bool()
    idx = cat["image_index"].long()
    return INRSet(
        root=root, graph=graph, weights=cat["weights"].float(), labels=img["labels"][idx].long(), image_index=idx,
        is_test=image_is_test[idx], psnr=cat["psnr"].float(), seeds=cat["seed"].long(), images=img["images"].float(),
        image_labels=img["labels"].long(), image_is_test=image_is_test, meta=meta,
    )


def pixel_coords(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """[H * W, 2] (x = column, y = row) on linspace(-1, 1), row-major: the set's stored convention."""
    ys = torch.linspace(-1.0, 1.0, height, device=device)
    xs = torch.linspace(-1.0, 1.0, width, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).reshape(-1, 2)


def weights_to_params(graph: ParameterGraph, weights: Tensor) -> dict[str, Tensor]:
    """Flat rows ``[B, E]`` -> ``{name: [B, *shape]}`` via `graph.edges_to_params` (differentiable)."""
    per_edge = graph.edges_to_params(weights.transpose(0, 1))  # {name: [*shape, B]}
    return {k: v.movedim(-1, 0) for k, v in per_edge.items()}


def params_to_weights(graph: ParameterGraph, params: dict[str, Tensor]) -> Tensor:
    """Inverse of `weights_to_params`: ``{name: [B, *shape]}`` -> ``[B, E]`` in edge order."""
    b = next(iter(params.values())).shape[0]
    return torch.cat([params[n].reshape(b, -1) for n in graph.param_names], dim=1)


def activations(graph: ParameterGraph, layers: list[dict[str, Any]], weights: Tensor, coords: Tensor) -> list[Tensor]:
    """Functional SIREN forward of every row of ``weights [B, E]`` at ``coords [P, 2]``: the output of
    every linear layer after its activation, ``[[B, P, width_l] for each layer]`` (last = the INR's output)."""
    p = weights_to_params(graph, weights)
    h = coords.to(weights.dtype).unsqueeze(0).expand(weights.shape[0], -1, -1)
    outs = []
    for layer in layers:
        h = torch.baddbmm(p[layer["bias"]].unsqueeze(1), h, p[layer["weight"]].transpose(1, 2))
        if layer["w0"] is not None:
            h = torch.sin(layer["w0"] * h)
        outs.append(h)
    return outs


def render(graph: ParameterGraph, layers: list[dict[str, Any]], weights: Tensor, coords: Tensor) -> Tensor:
    """Functional SIREN forward of every row of ``weights [B, E]`` at ``coords [P, 2]`` -> ``[B, P, C]``."""
    return activations(graph, layers, weights, coords)[-1]


def neuron_nodes(graph: ParameterGraph, layers: list[dict[str, Any]]) -> tuple[Tensor, list[Tensor]]:
    """Graph node of every input coordinate ``[in]`` and of every neuron of each linear layer
    (``[width_l]`` per layer), read from the edges of the weight tensors (edge k of W [out, in] is
    element (k // in, k % in): it runs from input unit k % in to neuron k // in)."""
    ids, (src, dst) = graph.edge_param_ids(), graph.edge_index.long()
    index = {n: i for i, n in enumerate(graph.param_names)}
    per_layer = []
    inputs = None
    for layer in layers:
        t = index[layer["weight"]]
        out_f, in_f = graph.param_shapes[t]
        e = torch.nonzero(ids == t).flatten()
        per_layer.append(dst[e].view(out_f, in_f)[:, 0].clone())
        if inputs is None:
            inputs = src[e].view(out_f, in_f)[0].clone()
    assert inputs is not None
    return inputs, per_layer


def render_images(inrs: INRSet, weights: Tensor) -> Tensor:
    """Render weight rows ``[B, E]`` of `inrs`'s architecture as images ``[B, C, H, W]``."""
    c, h, w = inrs.image_shape
    out = render(inrs.graph, inrs.layers, weights, pixel_coords(h, w, weights.device))
    return rearrange(out, "b (h w) c -> b c h w", h=h, w=w)


def augment(
    graph: ParameterGraph, layers: list[dict[str, Any]], weights: Tensor, generator: torch.Generator | None = None,
    permute: bool = True, flip_signs: bool = True,
) -> Tensor:
    """Function-preserving random transform of each row of ``weights [B, E]``.

    For every hidden layer: a random permutation of its neurons (rows of W_l and b_l, columns of
    W_{l+1}) and, for sine layers, random sign flips (negate W_l row, b_l entry and W_{l+1} column:
    sin(-z) = -sin(z)). Vectorised over the batch with gathers; the rendered images are unchanged.
    """
    if flip_signs and any(l["w0"] is None for l in layers[:-1]):
        raise ValueError("augment: sign flips need an odd activation (sine) after every hidden layer")
    p = weights_to_params(graph, weights)
    p = {k: v.clone() for k, v in p.items()}
    b = weights.shape[0]
    dev = weights.device
    for i in range(len(layers) - 1):
        w_in, b_in, w_out = layers[i]["weight"], layers[i]["bias"], layers[i + 1]["weight"]
        width = p[b_in].shape[1]
        if permute:
            perm = torch.argsort(torch.rand(b, width, generator=generator, device=dev), dim=1)
            p[w_in] = torch.gather(p[w_in], 1, perm[:, :, None].expand_as(p[w_in]))
            p[b_in] = torch.gather(p[b_in], 1, perm)
            p[w_out] = torch.gather(p[w_out], 2, perm[:, None, :].expand_as(p[w_out]))
        if flip_signs:
            sign = torch.where(torch.rand(b, width, generator=generator, device=dev) < 0.5, -1.0, 1.0).to(weights.dtype)
            p[w_in] = p[w_in] * sign[:, :, None]
            p[b_in] = p[b_in] * sign
            p[w_out] = p[w_out] * sign[:, None, :]
    return params_to_weights(graph, p)


def canonicalize_signs(graph: ParameterGraph, layers: list[dict[str, Any]], weights: Tensor) -> Tensor:
    """Map each row of ``weights [B, E]`` to the representative of its sign-flip orbit: every hidden
    sine neuron is flipped (its W_l row, b_l entry and W_{l+1} column negated) so that its bias is >= 0.

    The rendered INR is unchanged (sin is odd), the map commutes with hidden permutations, and two
    INRs that differ only by sign flips give the same output (up to neurons with bias exactly 0), so
    a permutation-invariant model on canonical weights is invariant to the SIREN's whole hidden
    symmetry group without having to learn the 2^(hidden units) sign flips from augmentation.
    """
    if any(l["w0"] is None for l in layers[:-1]):
        raise ValueError("canonicalize_signs: needs an odd activation (sine) after every hidden layer")
    p = weights_to_params(graph, weights)
    for i in range(len(layers) - 1):
        w_in, b_in, w_out = layers[i]["weight"], layers[i]["bias"], layers[i + 1]["weight"]
        sign = torch.where(p[b_in] < 0, -1.0, 1.0).to(weights.dtype)  # [B, width]
        p[w_in] = p[w_in] * sign[:, :, None]
        p[b_in] = p[b_in] * sign
        p[w_out] = p[w_out] * sign[:, None, :]
    return params_to_weights(graph, p)


def transform_inputs(graph: ParameterGraph, layers: list[dict[str, Any]], weights: Tensor, matrix: Tensor, shift: Tensor) -> Tensor:
    """Exact image-space affine transform of INRs in weight space: the returned INR at coordinate ``x``
    equals the original at ``A x + t`` (``matrix`` A ``[B, d, d]``, ``shift`` t ``[B, d]``, one per row of
    ``weights [B, E]``).

    Only the first linear layer changes: W1 <- W1 A, b1 <- b1 + W1 t. So a rotation / scaling / shift of
    the image becomes a weight-space augmentation that needs no re-fitting (the "input-space"
    augmentations of Shamsian et al., ICML 2023, exact for any first layer that reads the coordinates
    linearly). Outside the fitted square the INR extrapolates, so keep the transforms small.
    """
    p = weights_to_params(graph, weights)
    w_in, b_in = layers[0]["weight"], layers[0]["bias"]
    w1 = p[w_in]  # [B, width, d]
    p = dict(p)
    p[b_in] = p[b_in] + torch.einsum("bod,bd->bo", w1, shift.to(w1.dtype))
    p[w_in] = torch.bmm(w1, matrix.to(w1.dtype))
    return params_to_weights(graph, p)


def random_affine(
    batch: int, rotate_deg: float = 0.0, scale: float = 0.0, shift: float = 0.0, generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """``batch`` random 2-D affine maps (A ``[B, 2, 2]``, t ``[B, 2]``): rotation uniform in +-``rotate_deg``
    degrees, isotropic scale uniform in 1 +- ``scale``, shift uniform in +-``shift`` per axis (coordinates
    span [-1, 1], so 0.125 is one pixel of a 16x16 image)."""
    u = torch.rand(batch, 4, generator=generator, dtype=torch.float64) * 2 - 1
    theta = u[:, 0] * rotate_deg * torch.pi / 180
    s = 1 + u[:, 1] * scale
    c, si = torch.cos(theta) * s, torch.sin(theta) * s
    a = torch.stack([torch.stack([c, -si], 1), torch.stack([si, c], 1)], 1)
    return a.to(dtype), (u[:, 2:] * shift).to(dtype)
