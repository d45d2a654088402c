"""Probe features of zoo models: every neuron's response to a few fixed inputs, as node values of its graph.

The "probe features" of Neural Graphs (Kofinas et al., ICLR 2024): each stored model is rebuilt from its
spec and weights (and BatchNorm statistics), run in eval mode on ``n`` fixed *training* digits (the test
digits that define the target accuracy are never used), and the output of every parametrised layer
(Linear, Conv, norm layers, ...) is written to the graph nodes that layer's parameters point to: the
destination node of weight element ``[o, ...]`` is neuron / channel ``o``. Conv and token outputs are
averaged over positions, so a node gets one number per probe input. Values are passed through ``asinh``
(pre-activations and logits span orders of magnitude). One extra channel is 1 where a node has probe
values and 0 elsewhere (inputs, bias / norm nodes, residual sums, ...).

The features permute with their neuron, so a GMN that reads them stays equivariant to hidden-unit
permutations. The output layer's nodes see the network's logits on the probes; since the probes are
fixed, a predictor can learn how right those logits are, i.e. part of what it reads is accuracy on the
probe digits (the documented role of probes; keep ``n`` small).

Computed once per zoo and cached (resumable: only missing models are computed) in
``<zoo>/probe_features/n<n>_seed<seed>.safetensors``; `metaopt` only sees the resulting tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from metaopt.weightspace.zoo_io import Zoo, atomic_save_tensors, load_zoo

from ..models import build_model, spec_from_dict
from .train import zoo_data

CHANNEL_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
                 nn.modules.instancenorm._InstanceNorm)


def probe_indices(n: int, seed: int = 0) -> Tensor:
    """The ``n`` training digits used as probes: a fixed class-balanced draw (round-robin over classes)."""
    _, ytr, _, _ = zoo_data("image")
    g = torch.Generator().manual_seed(10_007 + seed)
    per_class = [torch.nonzero(ytr == c).flatten() for c in range(int(ytr.max()) + 1)]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    out = [per_class[k % len(per_class)][k // len(per_class)] for k in range(n)]
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.long)


def rebuild_model(zoo: Zoo, i: int, shard_tensors: dict[str, Tensor] | None = None) -> nn.Module:
    """Model ``i`` of a generated zoo with its stored weights and BatchNorm buffers, in eval mode."""
    rec = zoo.records[i]
    model = build_model(spec_from_dict(rec["spec"]), seed=0)
    params = zoo.graph_of(i).edges_to_params(zoo.weights[i].float())
    missing, _ = model.load_state_dict(params, strict=False)
    named = dict(model.named_parameters())
    if any(k in named for k in missing):
        raise ValueError(f"model {rec['id']}: the stored graph lacks parameters {[k for k in missing if k in named]}")
    key = f"{rec['id']}.buffers"
    if shard_tensors is not None and key in shard_tensors:
        bufs = [b for b in model.buffers() if b.is_floating_point()]
        torch.nn.utils.vector_to_parameters(shard_tensors[key].float(), bufs)
    return model.eval()


def _layer_nodes(graph: Any) -> dict[str, Tensor]:
    """{module name: node id of each of its output neurons/channels}: destination of the first element of
    every output slice of the module's first parameter tensor (weight [out, ...] or vector [out])."""
    out: dict[str, Tensor] = {}
    dst = graph.edge_index[1].long()
    for name, shape, start in zip(graph.param_names, graph.param_shapes, graph.param_offsets):
        module = name.rpartition(".")[0]
        if not module or module in out or not shape:
            continue
        rest = int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1
        out[module] = dst[start + torch.arange(shape[0]) * rest]
    return out


@torch.no_grad()
def node_probe_features(model: nn.Module, graph: Any, probes: Tensor) -> Tensor:
    """float32 [num_nodes, P + 1]: asinh of each layer output at the P probe inputs (mean over positions),
    written to that layer's output nodes, plus a 0/1 "has probe values" channel."""
    p = probes.shape[0]
    feats = torch.zeros(graph.num_nodes, p + 1)
    nodes = _layer_nodes(graph)
    captured: dict[str, Tensor] = {}
    hooks = []
    for name, ids in nodes.items():
        try:
            module = model.get_submodule(name) if name else model
        except AttributeError:
            continue

        def hook(mod: nn.Module, inp: Any, out: Any, name: str = name) -> None:
            if isinstance(out, Tensor) and out.dim() >= 2 and out.shape[0] == p:
                captured[name] = out.detach()

        hooks.append(module.register_forward_hook(hook))
    try:
        model(probes)
    finally:
        for h in hooks:
            h.remove()
    for name, out in captured.items():
        ids = nodes[name]
        module = model.get_submodule(name) if name else model
        if isinstance(module, CHANNEL_FIRST):
            out = out.movedim(1, -1)
        if out.shape[-1] != len(ids):
            continue  # output width does not match the parameter's neurons (e.g. a packed projection)
        vals = out.reshape(p, -1, out.shape[-1]).float().mean(1)  # [P, width]
        feats[ids, :p] = torch.asinh(torch.nan_to_num(vals, nan=0.0, posinf=1e6, neginf=-1e6)).t()
        feats[ids, p] = 1.0
    return feats


def zoo_probe_features(root: str | Path, n: int, seed: int = 0, zoo: Zoo | None = None,
                       progress: bool = False) -> list[Tensor]:
    """Probe features ``[num_nodes_i, n + 1]`` of every model of the generated zoo at ``root``, in zoo
    order; cached in ``root/probe_features`` (models already there are not recomputed)."""
    root = Path(root)
    zoo = zoo if zoo is not None else load_zoo(root)
    if not zoo.records or "spec" not in zoo.records[0]:
        raise ValueError(f"{root}: probe features need a generated zoo (models rebuilt from their specs)")
    cache = root / "probe_features" / f"n{n}_seed{seed}.safetensors"
    have = load_file(str(cache)) if cache.is_file() else {}
    idx = probe_indices(n, seed)
    todo = [i for i, r in enumerate(zoo.records)
            if str(r["id"]) not in have or have[str(r["id"])].shape != (zoo.graph_of(i).num_nodes, n + 1)]
    if todo:
        from tqdm.auto import tqdm

        shard_cache: dict[str, dict[str, Tensor]] = {}
        for i in tqdm(todo, desc="probe features", disable=not progress):
            rec = zoo.records[i]
            shard = rec.get("shard")
            if shard and shard not in shard_cache:
                shard_cache.clear()  # shards are read in order; keep one in memory
                path = root / "shards" / shard
                shard_cache[shard] = load_file(str(path)) if path.is_file() else {}
            model = rebuild_model(zoo, i, shard_cache.get(shard))
            x = zoo_data(rec.get("layout", "image"))[0][idx]
            have[str(rec["id"])] = node_probe_features(model, zoo.graph_of(i), x)
        atomic_save_tensors(cache, have, metadata={"n": str(n), "seed": str(seed),
                                                   "probe_train_indices": json.dumps(idx.tolist())})
    return [have[str(r["id"])] for r in zoo.records]


def probe_accuracy(zoo: Zoo, features: list[Tensor], n: int, seed: int = 0) -> Tensor:
    """float64 [N]: each model's accuracy on its ``n`` probe digits, read from its probe features: the
    OUTPUT nodes in class order hold asinh(logits) (asinh keeps the argmax). What the probes say
    about accuracy with no learning at all: the reference a predictor that reads them should beat."""
    from metaopt.graph.schema import NODE_POSITION, NODE_TYPE, NodeType

    _, ytr, _, _ = zoo_data("image")
    labels = ytr[probe_indices(n, seed)]
    out = torch.zeros(len(zoo), dtype=torch.float64)
    for i in range(len(zoo)):
        x = zoo.graph_of(i).x
        nodes = (x[:, NODE_TYPE] == int(NodeType.OUTPUT)).nonzero().flatten()
        nodes = nodes[x[nodes, NODE_POSITION].argsort()]
        if len(nodes) == 0 or features[i].shape[1] < n + 1:
            raise ValueError(f"probe_accuracy: model {i} has no output nodes or fewer than {n} probe channels")
        out[i] = (features[i][nodes, :n].argmax(0) == labels).double().mean()
    return out


def with_output_softmax(zoo: Zoo, features: list[Tensor], n: int) -> list[Tensor]:
    """The probe features with ``n`` more channels: on the OUTPUT nodes, the softmax over the outputs of
    each probe's logits (the network's class probabilities for that probe digit; zeros elsewhere).

    A label-free transform of what the output nodes already hold (asinh(logits)): the probability a
    model gives probe j's true class is one fixed entry of it, so a predictor can form the soft
    accuracy on the probes as a linear function of the output nodes' values."""
    from metaopt.graph.schema import NODE_TYPE, NodeType

    out = []
    for i, f in enumerate(features):
        x = zoo.graph_of(i).x
        nodes = (x[:, NODE_TYPE] == int(NodeType.OUTPUT)).nonzero().flatten()
        extra = torch.zeros(f.shape[0], n, dtype=f.dtype)
        if len(nodes):
            extra[nodes] = torch.softmax(torch.sinh(f[nodes, :n].double()), dim=0).to(f.dtype)
        out.append(torch.cat([f, extra], dim=1))
    return out
