"""The torchvision model zoo as parameter graphs: the architectures people actually train.

Every definition converts with the exact contract (edge k = element k of the flat parameters,
bitwise round trip). Those outside NON_STRICT convert with strict=True and no FREE edge; the
others convert with strict=False and their free edges are exactly what is reported. Small models
(and tiny configs of the transformer definitions) run by default, every named model under slow.
"""

import warnings

import pytest
import torch

from metaopt.graph import ConversionError, to_graph
from metaopt.graph.schema import EDGE_TYPE, EdgeType

from torchvision_models import MAX_PARAMS, SMALL, all_names, build, count_params, input_size, load_models, small_configs

# definitions with an op no rule reads yet (see docs/layers.md, "torchvision coverage")
NON_STRICT: tuple[str, ...] = ()  # every definition converts strictly now


def _check(model, x, strict: bool):
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    if strict:
        g = to_graph(model, x, cache=False)
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            g = to_graph(model, x, strict=False, cache=False)
        assert len([w for w in caught if "to_graph" in str(w.message)]) == 1
    assert g.num_params == flat.numel() == g.edge_attr.shape[0]
    assert torch.equal(g.params_to_edges(model), flat)
    values = torch.randn(g.num_params, dtype=torch.float64)
    assert torch.equal(g.params_to_edges(g.edges_to_params(values)), values)
    free = int((g.edge_attr[:, EDGE_TYPE] == EdgeType.FREE).sum())
    if strict:
        assert free == 0
    return g, free


def _zoo_case(tv_models, name):
    torch.manual_seed(0)
    model = build(tv_models, name)
    s = input_size(name)
    x = torch.randn(2, 3, s, s)
    if name.startswith(NON_STRICT):
        with pytest.raises(ConversionError, match="register_converter"):
            to_graph(model, x, cache=False)
        _, free = _check(model, x, strict=False)
        assert 0 < free < sum(p.numel() for p in model.parameters())
    else:
        _check(model, x, strict=True)


@pytest.mark.parametrize("name", SMALL)
def test_small_zoo_models_convert_exactly(tv_models, name):
    _zoo_case(tv_models, name)


@pytest.mark.parametrize("name", ["vit_tiny", "convnext_tiny_cfg", "swin_tiny_cfg"])
def test_tiny_configs_of_transformer_definitions(tv_models, name):
    model, s = small_configs(tv_models)[name]
    x = torch.randn(2, 3, s, s)
    if name.startswith(NON_STRICT):
        _check(model, x, strict=False)
    else:
        _check(model, x, strict=True)


def test_vit_image_size_assert_is_traced_with_the_real_input(tv_models):
    """torchvision's ViT asserts the image size: a real-size input converts, a wrong one is explained."""
    from metaopt.graph import ExampleInputError

    model, s = small_configs(tv_models)["vit_tiny"]
    to_graph(model, torch.randn(1, 3, s, s), cache=False)
    with pytest.raises(ExampleInputError, match="Wrong image height"):
        to_graph(model, torch.randn(1, 3, 2 * s, 2 * s), cache=False)


_MODELS = load_models()


@pytest.mark.slow
@pytest.mark.parametrize("name", all_names(_MODELS) if _MODELS is not None else [])
def test_every_zoo_model_converts_exactly(tv_models, name):
    if count_params(tv_models, name) > MAX_PARAMS:
        pytest.skip(f"{name}: over {MAX_PARAMS / 1e6:.0f}M parameters (memory)")
    _zoo_case(tv_models, name)


@pytest.mark.parametrize("name", ["vit_tiny", "convnext_tiny_cfg", "swin_tiny_cfg"])
def test_default_rule_trains_zoo_definitions_from_the_first_batch(tv_models, name):
    """GMNOptimizer(model) with no input: graph from the first batch, the shipped rule steps."""
    import torch.nn.functional as F

    from metaopt import GMNOptimizer

    model, s = small_configs(tv_models)[name]
    x, y = torch.randn(8, 3, s, s), torch.randint(0, 10, (8,))
    opt = GMNOptimizer(model, lr=1e-3)
    assert opt.graph is None
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert not bool((opt.graph.edge_attr[:, EDGE_TYPE] == EdgeType.FREE).any())
    assert opt.rule_fallbacks == 0 and opt.skipped_steps == 0
    assert losses[-1] < losses[0]
