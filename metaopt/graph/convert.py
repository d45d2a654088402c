"""`to_graph(model)`: the public entry point, with the per-architecture structure cache."""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from . import converters  # noqa: F401  (registers the built-in converters)
from .builder import GraphBuilder
from .parameter_graph import ParameterGraph
from .registry import ConversionError, find_converter, registry_generation
from .tracing import trace, walk

_CACHE: "OrderedDict[str, ParameterGraph]" = OrderedDict()
_CACHE_SIZE = 64


def clear_structure_cache() -> None:
    """Forget cached structures (registering a converter already invalidates them via the key)."""
    _CACHE.clear()


def to_graph(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    strict: bool = True,
    cache: bool = True,
) -> ParameterGraph:
    """Convert `model` into its `ParameterGraph` (one edge per scalar parameter, parameter order).

    Connectivity comes from the model's real dataflow: the model is traced with torch.fx and run
    once on `example_inputs` (a tensor or tuple). Without them, a small input is inferred from the
    model's `example_inputs()` method if it has one, else from its first layer.

    strict=True raises on parameters no converter understands, naming the module and how to
    register a converter; strict=False keeps them as FREE edges (nothing is dropped) and warns
    once. The structure is cached per architecture, so a second model of the same architecture
    only costs the cache lookup.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_graph expects an nn.Module, got {type(model).__name__}")
    params = list(model.parameters())
    if not params:
        raise ConversionError(
            f"{type(model).__name__} has no parameters: a parameter graph has one edge per "
            f"parameter, so there is nothing to convert."
        )
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise ConversionError(
            f"{type(model).__name__} has parameters on the meta device (e.g. '{meta[0]}'), which "
            f"hold no values. Materialise them first, e.g. model.to_empty(device='cpu') and "
            f"initialise, then convert."
        )
    inputs = _example_inputs(model, example_inputs)
    key = architecture_key(model, inputs, strict) if cache else None
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key].copy_structure()
    graph = _convert(model, inputs, strict)
    if key is not None:
        _CACHE[key] = graph
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return graph.copy_structure()
    return graph


def _convert(model: nn.Module, inputs: tuple, strict: bool) -> ParameterGraph:
    was_training = {m: m.training for m in model.modules()}
    model.eval()  # the example pass must not update BatchNorm statistics
    try:
        try:
            builder, walker = walk(model, inputs, strict)
        except ConversionError as exc:
            if strict or "torch.fx could not trace" not in str(exc):
                raise
            warnings.warn(
                f"{exc}\nstrict=False: every parameter of {type(model).__name__} becomes a free "
                f"edge (no connectivity).",
                UserWarning,
                stacklevel=3,
            )
            builder = GraphBuilder(model)
            builder.add_free_edges()
            return builder.finish()
    finally:
        for m, flag in was_training.items():
            m.training = flag
    problems = builder.uncovered_params()
    if problems:
        _resolve_uncovered(model, builder, walker, problems, strict)
    if walker.warnings:
        warnings.warn("to_graph: " + "; ".join(walker.warnings), UserWarning, stacklevel=3)
    return builder.finish()


def _resolve_uncovered(model, builder, walker, problems, strict) -> None:
    """Parameters without edges: unknown layers, unknown uses, or unused. Never dropped."""
    used_unknown = {name: op for name, op in walker.unclaimed.items()}
    in_unknown_module = {
        name for name, _ in problems
        if any(name.startswith(q + ".") for q in walker.unknown_modules)
    }
    not_understood = [n for n, _ in problems if n in used_unknown or n in in_unknown_module]
    if strict and not_understood:
        name = not_understood[0]
        if name in used_unknown:
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            mod = model.get_submodule(owner) if owner else model
            raise ConversionError(
                f"parameter '{name}' (module '{owner or '<root>'}' of type "
                f"{type(mod).__qualname__}) is used by {used_unknown[name]}, which no converter "
                f"understands. Register a converter for {type(mod).__qualname__} with "
                f"metaopt.register_converter so it becomes a leaf, or convert with strict=False "
                f"to keep it as free edges."
            )
    names = [n for n, _ in problems]
    listing = ", ".join(f"{n} ({k} elements)" for n, k in problems[:8])
    more = f" and {len(problems) - 8} more" if len(problems) > 8 else ""
    unused = [n for n in names if n not in not_understood]
    why = (
        "not understood by any converter" if not unused
        else "unused in the forward pass or not understood" if not_understood
        else "unused in the forward pass"
    )
    warnings.warn(
        f"to_graph: {len(problems)} parameter(s) {why} are kept as FREE edges: {listing}{more}.",
        UserWarning,
        stacklevel=4,
    )
    builder.add_free_edges(names)


def architecture_key(model: nn.Module, example_inputs: tuple, strict: bool) -> str:
    """A key equal for models of the same architecture: same traced dataflow, modules and shapes.

    The traced fx graph is part of the key, so Python-level choices in `forward` (flags in
    lists, dicts, custom objects) that change the dataflow also change the key.
    """
    h = hashlib.sha1()
    h.update(repr(model).encode())
    h.update(f"{strict}:{registry_generation()}".encode())
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)}".encode())
    for name, m in model.named_modules():
        h.update(f"{name}:{type(m).__module__}.{type(m).__qualname__}".encode())
    for t in _flat_tensors(example_inputs):
        h.update(f"{tuple(t.shape)}:{t.dtype}".encode())
    try:
        h.update(str(trace(model, len(example_inputs)).graph).encode())
    except ConversionError as exc:  # untraceable: conversion will raise or fall back; key by its reason
        h.update(str(exc).encode())
    return h.hexdigest()


def _flat_tensors(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _flat_tensors(v)]
    return []


def _example_inputs(model: nn.Module, given: Any) -> tuple:
    if given is not None:
        return tuple(given) if isinstance(given, (tuple, list)) else (given,)
    if hasattr(model, "example_inputs") and callable(model.example_inputs):
        ex = model.example_inputs()
        return tuple(ex) if isinstance(ex, (tuple, list)) else (ex,)
    # the first module (in definition order) that a converter handles tells the input's layout
    first = next((m for m in model.modules() if find_converter(m) is not None), None)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    if first is not None and callable(getattr(first, "example_inputs", None)):  # e.g. metaopt.layers
        ex = first.example_inputs()
        return tuple(t.to(device) for t in (ex if isinstance(ex, (tuple, list)) else (ex,)))
    if isinstance(first, nn.Linear):
        return (torch.randn(2, first.in_features, device=device, dtype=dtype),)
    if isinstance(first, nn.modules.conv._ConvNd):
        c = first.in_channels
        k = len(first.kernel_size)
        return (torch.randn(2, c, *([32] * k), device=device, dtype=dtype),)
    if isinstance(first, (nn.Embedding, nn.EmbeddingBag)):
        return (torch.randint(0, first.num_embeddings, (2, 8), device=device),)
    if isinstance(first, nn.MultiheadAttention):
        shape = (2, 8, first.embed_dim) if first.batch_first else (8, 2, first.embed_dim)
        return (torch.randn(*shape, device=device, dtype=dtype),)
    if isinstance(first, (nn.TransformerEncoderLayer, nn.TransformerEncoder)):
        layer = first.layers[0] if isinstance(first, nn.TransformerEncoder) else first
        E = layer.self_attn.embed_dim
        shape = (2, 8, E) if layer.self_attn.batch_first else (8, 2, E)
        return (torch.randn(*shape, device=device, dtype=dtype),)
    raise ConversionError(
        f"to_graph could not infer an example input for {type(model).__name__}: pass "
        f"example_inputs=(tensor, ...) with a small batch of valid inputs, or give the model an "
        f"example_inputs() method."
    )

