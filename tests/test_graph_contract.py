"""The graph contract: one edge per scalar parameter, in parameter order, exact round trips."""

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

import metaopt
from metaopt.graph import EdgeType, NodeType, ParameterGraph, to_graph
from metaopt.graph.schema import AUX_START, EDGE_ATTR_DTYPE, EDGE_TYPE, INDEX_DTYPE, NODE_TYPE

from model_zoo import all_models

EXAMPLES = {"decoder": (torch.randn(2, 5, 8), torch.randn(2, 6, 8)), "conv3d": (torch.randn(2, 1, 4, 4, 4),)}
MODELS = all_models()


@pytest.fixture(params=sorted(MODELS))
def named(request):
    name = request.param
    return name, MODELS[name], to_graph(MODELS[name], EXAMPLES.get(name))


def test_public_api_exports():
    assert metaopt.to_graph is to_graph and metaopt.ParameterGraph is ParameterGraph
    assert callable(metaopt.register_converter)


def test_one_edge_per_parameter_in_order(named):
    name, model, g = named
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert isinstance(g, ParameterGraph)
    assert g.num_params == flat.numel() == g.edge_attr.shape[0]
    assert torch.equal(g.params_to_edges(model), flat)
    assert g.edge_index.dtype == INDEX_DTYPE and g.edge_attr.dtype == EDGE_ATTR_DTYPE
    assert int(g.edge_index.min()) >= 0 and int(g.edge_index.max()) < g.num_nodes
    assert int(g.edge_attr[:, EDGE_TYPE].max()) < AUX_START, "parameter edges use parameter edge types"
    if g.aux_edge_index.numel():
        assert int(g.aux_edge_attr[:, EDGE_TYPE].min()) >= AUX_START
    assert not bool((g.edge_attr[:, EDGE_TYPE] == EdgeType.FREE).any()), f"{name}: nothing should be free"


def test_round_trip_is_bitwise_exact(named):
    _, model, g = named
    values = torch.randn(g.num_params, dtype=torch.float64)
    params = g.edges_to_params(values)
    assert list(params) == g.param_names
    for (n, p), t in zip(model.named_parameters(), params.values()):
        assert t.shape == p.shape
    assert torch.equal(g.params_to_edges(params), values)  # dict in
    assert torch.equal(g.params_to_edges(list(params.values())), values)  # list in
    multi = torch.randn(g.num_params, 3)
    back = g.edges_to_params(multi)
    assert next(iter(back.values())).shape[-1] == 3
    assert torch.equal(torch.cat([t.reshape(-1, 3) for t in back.values()]), multi)


def test_values_map_into_a_model_bitwise(named):
    _, model, g = named
    new = torch.randn(g.num_params)
    with torch.no_grad():
        for p, t in zip(model.parameters(), g.edges_to_params(new).values()):
            p.copy_(t)
    assert torch.equal(g.params_to_edges(model), new)


def test_summary_lists_types_and_layers():
    g = to_graph(MODELS["resnet"])
    s = g.summary()
    for word in ("CONV", "NORM_WEIGHT", "RESIDUAL", "conv2d", "batchnorm2d", "linear", "relu"):
        assert word in s, word


def test_tied_parameters_appear_once():
    lm = MODELS["lm_tied"]
    g = to_graph(lm)
    assert g.num_params == sum(p.numel() for p in lm.parameters())
    assert "head.weight" not in g.param_names and "tok.weight" in g.param_names


def test_pyg_batching_shifts_both_edge_sets():
    g1, g2 = to_graph(MODELS["mlp"]), to_graph(MODELS["resnet"])
    b = Batch.from_data_list([g1, g2])
    assert b.num_graphs == 2 and b.edge_index.shape[1] == g1.num_params + g2.num_params
    assert torch.equal(b.edge_index[:, g1.num_params:].long(), g2.edge_index.long() + g1.num_nodes)
    na = g1.aux_edge_index.shape[1]
    assert torch.equal(b.aux_edge_index[:, na:].long(), g2.aux_edge_index.long() + g1.num_nodes)
    assert b.edge_index.dtype == INDEX_DTYPE
    assert torch.equal(b.batch.bincount(), torch.tensor([g1.num_nodes, g2.num_nodes]))


def test_ordered_io_positions_and_hidden_anonymity():
    g = to_graph(MODELS["mlp"])
    x = g.x
    inputs = x[x[:, NODE_TYPE] == NodeType.INPUT]
    outputs = x[x[:, NODE_TYPE] == NodeType.OUTPUT]
    assert sorted(inputs[:, 2].tolist()) == list(range(6))
    assert sorted(outputs[:, 2].tolist()) == list(range(4))
    assert bool((x[x[:, NODE_TYPE] == NodeType.HIDDEN][:, 2] == -1).all())


def test_structure_cache_reuses_and_distinguishes(monkeypatch):
    import metaopt.graph.convert as tg

    calls = []
    real = tg._convert
    monkeypatch.setattr(tg, "_convert", lambda *a, **k: calls.append(1) or real(*a, **k))
    tg.clear_structure_cache()
    from model_zoo import ResNet

    a, b, c = ResNet(), ResNet(), ResNet(widths=(8, 24))
    ga, gb = to_graph(a), to_graph(b)
    assert len(calls) == 1, "same architecture converts once"
    assert ga.edge_index.data_ptr() == gb.edge_index.data_ptr(), "structure tensors are shared"
    assert ga is not gb
    assert not torch.equal(ga.params_to_edges(a), gb.params_to_edges(b)), "values differ per model"
    to_graph(c)
    assert len(calls) == 2, "a different architecture is converted anew"


def test_index_bytes_reported():
    g = to_graph(MODELS["resnet"])
    ib = g.index_bytes()
    assert ib["edge_index"] == 2 * 4 * g.num_params
    assert ib["total"] >= ib["edge_index"] + ib["edge_attr"]


def test_cache_key_follows_dataflow_not_just_modules():
    """Same modules, different forward choices (a flag kept in a list): different structures."""
    from model_zoo import MLP

    plain, residual = MLP((5, 3, 3, 2), residual=False), MLP((5, 3, 3, 2), residual=True)
    assert repr(plain) == repr(residual)
    gp, gr = to_graph(plain), to_graph(residual)
    assert gp.aux_edge_index.shape[1] == 0 and gr.aux_edge_index.shape[1] > 0


def test_structure_serialisation_round_trip(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    g = to_graph(MODELS["vit"])
    save_file(g.structure_tensors(), str(tmp_path / "s.safetensors"))
    (tmp_path / "s.json").write_text(json.dumps(g.structure_meta()))
    back = ParameterGraph.from_structure(load_file(str(tmp_path / "s.safetensors")), json.loads((tmp_path / "s.json").read_text()))
    for k in ParameterGraph.STRUCTURE_KEYS:
        assert torch.equal(back[k], g[k]) and back[k].dtype == g[k].dtype
    assert back.param_names == g.param_names and back.param_shapes == g.param_shapes and back.num_nodes == g.num_nodes
    assert torch.equal(back.params_to_edges(MODELS["vit"]), g.params_to_edges(MODELS["vit"]))
    with pytest.raises(KeyError, match="edge_attr"):
        ParameterGraph.from_structure({"x": g.x}, g.structure_meta())
