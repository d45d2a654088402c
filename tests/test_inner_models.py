"""Model builders: fx-traceable, exact JSON round trip, deterministic per seed, right symmetries."""

from __future__ import annotations

import json

import pytest
import torch
import torch.fx as fx

from inner_tasks.models import (
    CNNSpec,
    DeepSetsSpec,
    MLPSpec,
    ResNetSpec,
    SIRENSpec,
    TransformerLMSpec,
    ViTSpec,
    build_model,
    count_params,
    resnet18_spec,
    spec_from_dict,
    spec_from_json,
    spec_to_json,
)
from metaopt import to_graph

# name -> (spec, example input)
SPECS = {
    "mlp": (MLPSpec(64, 10, (32, 16), "tanh"), lambda: torch.randn(3, 1, 8, 8)),
    "mlp_layernorm": (MLPSpec(8, 2, (16,), "gelu", "layernorm"), lambda: torch.randn(3, 8)),
    "cnn2d": (CNNSpec(1, 10, (4, 8), (3, 5)), lambda: torch.randn(3, 1, 8, 8)),
    "cnn2d_bn_res": (CNNSpec(3, 5, (4, 8), norm="batch", residual=True, pool="avg"), lambda: torch.randn(3, 3, 8, 8)),
    "cnn1d_gn_res": (CNNSpec(2, 4, (6, 12), dim=1, norm="group", residual=True, groups=3), lambda: torch.randn(3, 2, 20)),
    "resnet": (ResNetSpec(3, 10, 8, (8, 16), (1, 2)), lambda: torch.randn(3, 3, 16, 16)),
    "resnet_gn": (ResNetSpec(1, 10, 8, (8, 16), (1, 1), norm="group"), lambda: torch.randn(3, 1, 8, 8)),
    "vit": (ViTSpec(8, 4, 1, 10, 16, 2, 2), lambda: torch.randn(3, 1, 8, 8)),
    "transformer_lm": (TransformerLMSpec(256, 12, 16, 2, 2), lambda: torch.randint(0, 256, (3, 12))),
    "deepsets": (DeepSetsSpec(2, 3, (16, 16), (8,), "sum"), lambda: torch.randn(3, 7, 2)),
    "siren": (SIRENSpec(2, 3, (16, 16), w0=20.0), lambda: torch.rand(5, 2) * 2 - 1),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_fx_trace_matches_module(name: str) -> None:
    """metaopt.to_graph traces with torch.fx: every model must trace and give identical outputs."""
    spec, make_x = SPECS[name]
    model = build_model(spec, seed=0).eval()
    traced = fx.symbolic_trace(model)
    x = make_x()
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_json_round_trip_rebuilds_identical_model(name: str) -> None:
    spec, make_x = SPECS[name]
    text = spec_to_json(spec)
    rebuilt_spec = spec_from_json(json.loads(json.dumps(text)))
    assert rebuilt_spec == spec and type(rebuilt_spec) is type(spec)
    a, b = build_model(spec, seed=3), build_model(rebuilt_spec, seed=11)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = make_x()
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_init_deterministic_per_seed_and_global_rng_untouched(name: str) -> None:
    spec, _ = SPECS[name]
    state = torch.random.get_rng_state()
    a, b, c = build_model(spec, seed=5), build_model(spec, seed=5), build_model(spec, seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)


def test_spec_errors_are_explicit() -> None:
    with pytest.raises(ValueError, match="kind 'nope' unknown"):
        spec_from_dict({"kind": "nope"})
    with pytest.raises(ValueError, match="no fields \\['width'\\]"):
        spec_from_dict({"kind": "mlp", "in_features": 2, "out_features": 1, "width": 3})
    with pytest.raises(TypeError, match="needs a model spec"):
        build_model({"kind": "mlp"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        build_model(MLPSpec(2, 1, (4,), "swish"))
    with pytest.raises(ValueError, match="divisible by heads"):
        build_model(TransformerLMSpec(dim=10, heads=3))


def test_lm_is_causal_and_accepts_shorter_inputs() -> None:
    model = build_model(TransformerLMSpec(256, 16, 16, 2, 2), seed=0).eval()
    x = torch.randint(0, 256, (2, 16))
    y = model(x)
    x2 = x.clone()
    x2[:, 9] = (x2[:, 9] + 1) % 256
    y2 = model(x2)
    torch.testing.assert_close(y2[:, :9], y[:, :9])  # the past never sees the future
    assert not torch.allclose(y2[:, 9:], y[:, 9:])
    torch.testing.assert_close(model(x[:, :7]), y[:, :7], rtol=1e-5, atol=1e-5)


def test_deepsets_is_permutation_invariant() -> None:
    model = build_model(DeepSetsSpec(2, 3, (16,), (8,), "mean"), seed=0)
    x = torch.randn(4, 9, 2)
    torch.testing.assert_close(model(x[:, torch.randperm(9)]), model(x), rtol=1e-5, atol=1e-6)


def test_siren_init_follows_paper() -> None:
    model = build_model(SIRENSpec(2, 1, (64, 64), w0=30.0), seed=0)
    first, second = model.net[0].weight, model.net[2].weight
    assert first.abs().max() <= 1 / 2 and first.abs().max() > 0.4  # U(-1/n, 1/n), n = 2
    bound = (6 / 64) ** 0.5 / 30
    assert second.abs().max() <= bound and second.abs().max() > 0.9 * bound


def test_resnet18_has_resnet18_size() -> None:
    # torchvision's resnet18 has 11,689,512 params; ours has a 3x3 stem instead of 7x7 (-8,000 weights).
    n = count_params(build_model(resnet18_spec(3, 1000)))
    assert n == 11_689_512 - 64 * 3 * (49 - 9)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_converts_to_parameter_graph(name: str) -> None:
    """Every builder's model converts with metaopt.to_graph: one edge per scalar parameter."""
    spec, make_x = SPECS[name]
    model = build_model(spec, seed=0)
    graph = to_graph(model, (make_x(),))
    assert graph.num_params == count_params(model) == graph.edge_index.shape[1]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(graph.params_to_edges(model), flat)
