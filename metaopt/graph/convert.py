"""`to_graph(model)`: the public entry point, with the per-architecture structure cache."""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from . import converters  # noqa: F401  (registers the built-in converters)
from .builder import GraphBuilder
from .example_call import ExampleCall
from .parameter_graph import ParameterGraph
from .registry import ConversionError, ExampleInputError, find_converter, registry_generation
from .tracing import trace, walk

_CACHE: "OrderedDict[str, tuple[ParameterGraph, str | None]]" = OrderedDict()  # graph, its warning
_CACHE_SIZE = 64


def clear_structure_cache() -> None:
    """Forget cached structures (registering a converter already invalidates them via the key)."""
    _CACHE.clear()


def to_graph(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    example_kwargs: dict[str, Any] | None = None,
    strict: bool = True,
    cache: bool = True,
) -> ParameterGraph:
    """Convert `model` into its `ParameterGraph` (one edge per scalar parameter, parameter order).

    Connectivity comes from the model's real dataflow: the model is traced with torch.fx and run
    once on the example call `model(*example_inputs, **example_kwargs)` (a tensor or tuple of
    positional args; a real batch is best). Without them, the input is inferred from the model's
    `example_inputs()` method if it has one, else from its first layer; a model that rejects the
    inferred input is an `ExampleInputError` that asks for a real one.

    strict=True raises on anything no rule understands, naming the module, the op and how to
    register a converter; strict=False never raises on the model's structure: what cannot be read
    becomes FREE edges (nothing is dropped), with one warning naming the modules/ops. The
    structure is cached per architecture, so a second model of the same architecture only costs
    the cache lookup.
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
    if example_inputs is None and example_kwargs:
        example_inputs = ()
    call, guess = infer_call(model, example_inputs, example_kwargs)
    try:
        key = architecture_key(model, call, strict) if cache else None
        if key is not None and key in _CACHE:
            _CACHE.move_to_end(key)
            graph, note = _CACHE[key]
            _warn(note)  # a cached structure repeats its conversion's one warning
            return graph.copy_structure()
        graph, note = _convert(model, call, strict)
    except ExampleInputError as exc:
        if guess is None:
            raise
        raise ExampleInputError(
            f"to_graph could not infer an example input for {type(model).__name__}: it tried "
            f"{call.describe()} ({guess}), and the model rejected it:\n{exc}\nPass "
            f"example_inputs=(a small batch the model accepts), or give the model an "
            f"example_inputs() method."
        ) from exc
    _warn(note)
    if key is not None:
        _CACHE[key] = (graph, note)
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return graph.copy_structure()
    return graph


def _warn(note: str | None) -> None:
    if note:
        warnings.warn(note, UserWarning, stacklevel=3)  # points at the caller of to_graph


def _convert(model: nn.Module, call: ExampleCall, strict: bool) -> tuple[ParameterGraph, str | None]:
    """The graph and the one warning (or None) that says what was not read."""
    was_training = {m: m.training for m in model.modules()}
    model.eval()  # the example pass must not update BatchNorm statistics
    try:
        try:
            builder, walker = walk(model, call, strict)
            problems = builder.uncovered_params()
            free = _resolve_uncovered(model, walker, problems, strict) if problems else []
            if free:
                builder.add_free_edges(free)
            return builder.finish(), _note(model, problems, walker)
        except ExampleInputError:
            raise  # a wrong input is never hidden behind free edges
        except Exception as exc:
            if strict:
                raise
            # strict=False never fails on structure: whatever broke, every parameter stays an edge
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            note = (f"to_graph ({type(model).__name__}, strict=False): could not read the model "
                    f"({type(exc).__name__}: {reason}); every parameter becomes a free edge (no "
                    f"connectivity).")
            builder = GraphBuilder(model)
            builder.add_free_edges()
            return builder.finish(), note
    finally:
        for m, flag in was_training.items():
            m.training = flag


def _resolve_uncovered(model, walker, problems, strict) -> list[str]:
    """Parameters without edges: unknown layers, unknown uses, or unused. Never dropped.

    strict raises for parameters a module or op uses in a way no rule understands; the names of
    the parameters to keep as FREE edges are returned.
    """
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
    return [n for n, _ in problems]


def _note(model: nn.Module, problems: list[tuple[str, int]], walker) -> str | None:
    """One warning for everything that was not read: free parameters, unknown modules and ops."""
    if not problems and not walker.warnings and not walker.unreadable:
        return None
    parts = []
    if problems:
        names = [n for n, _ in problems]
        understood = [n for n in names if n not in walker.unclaimed
                      and not any(n.startswith(q + ".") for q in walker.unknown_modules)]
        why = ("unused in the forward pass" if len(understood) == len(names)
               else "not understood by any converter" if not understood
               else "unused in the forward pass or not understood")
        listing = ", ".join(f"{n} ({k} elements)" for n, k in problems[:8])
        more = f" and {len(problems) - 8} more" if len(problems) > 8 else ""
        parts.append(f"{len(problems)} parameter(s) {why} are kept as FREE edges: {listing}{more}")
    if walker.unknown_modules:
        mods = ", ".join(f"'{q}' ({t})" for q, t in list(walker.unknown_modules.items())[:6])
        parts.append(f"modules without a converter: {mods}")
    if walker.unreadable:
        more = f" and {len(walker.unreadable) - 4} more" if len(walker.unreadable) > 4 else ""
        parts.append("ops no rule could read (their outputs got fresh neurons): "
                     + "; ".join(walker.unreadable[:4]) + more)
    parts.extend(walker.warnings)
    return f"to_graph ({type(model).__name__}): " + ". ".join(parts) + "."


def architecture_key(model: nn.Module, call: ExampleCall, strict: bool) -> str:
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
    for t in call.tensors():
        h.update(f"{tuple(t.shape)}:{t.dtype}".encode())
    h.update(repr([_kind(a) for a in call.args] + [(k, _kind(v)) for k, v in call.kwargs.items()]).encode())
    try:
        h.update(str(trace(model, call)[0].graph).encode())
    except ConversionError as exc:  # untraceable: conversion will raise or fall back; key by its reason
        h.update(str(exc).encode())
    return h.hexdigest()


def _kind(v: Any) -> str:
    """What of a call argument the structure may depend on: its value if plain data, else its type."""
    return repr(v) if v is None or isinstance(v, (bool, int, float, str)) else type(v).__name__


def infer_call(model: nn.Module, given: Any, given_kwargs: dict[str, Any] | None = None
               ) -> tuple[ExampleCall, str | None]:
    """The example call to convert from, and how it was guessed (None when given or declared).

    Declared: `example_inputs` passed in, or the model's own `example_inputs()` method. Guessed:
    a small batch shaped for the first layer a converter handles (a layer's `example_inputs()`,
    or `nn.Linear` / conv / embedding / attention sizes); the caller reports a rejected guess.
    """
    if given is not None:
        return ExampleCall.of(given, given_kwargs), None
    if hasattr(model, "example_inputs") and callable(model.example_inputs):
        return ExampleCall.of(model.example_inputs()), None
    # the first module (in definition order) that a converter handles tells the input's layout
    named = next(((q, m) for q, m in model.named_modules() if find_converter(m) is not None), None)
    if named is None:
        raise ExampleInputError(
            f"to_graph could not infer an example input for {type(model).__name__} (no layer it "
            f"knows tells the input's shape): pass example_inputs=(tensor, ...) with a small batch "
            f"of valid inputs, or give the model an example_inputs() method."
        )
    qual, first = named
    guess = f"guessed from its first layer '{qual or '<root>'}' ({type(first).__name__})"
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    if callable(getattr(first, "example_inputs", None)):  # e.g. metaopt.layers
        ex = first.example_inputs()
        return ExampleCall.of(ex).map(lambda t: t.to(device)), guess
    shape: tuple[int, ...] | None = None
    if isinstance(first, nn.Linear):
        shape = (2, first.in_features)
    elif isinstance(first, nn.modules.conv._ConvNd):
        shape = (2, first.in_channels, *([32] * len(first.kernel_size)))
    elif isinstance(first, (nn.Embedding, nn.EmbeddingBag)):
        return ExampleCall((torch.randint(0, first.num_embeddings, (2, 8), device=device),)), guess
    elif isinstance(first, nn.MultiheadAttention):
        shape = (2, 8, first.embed_dim) if first.batch_first else (8, 2, first.embed_dim)
    elif isinstance(first, (nn.TransformerEncoderLayer, nn.TransformerEncoder)):
        layer = first.layers[0] if isinstance(first, nn.TransformerEncoder) else first
        E = layer.self_attn.embed_dim
        shape = (2, 8, E) if layer.self_attn.batch_first else (8, 2, E)
    if shape is None:
        raise ExampleInputError(
            f"to_graph could not infer an example input for {type(model).__name__}: its first layer "
            f"'{qual or '<root>'}' ({type(first).__name__}) does not tell the input's shape. Pass "
            f"example_inputs=(tensor, ...) with a small batch of valid inputs, or give the model an "
            f"example_inputs() method."
        )
    return ExampleCall((torch.randn(*shape, device=device, dtype=dtype),)), guess
