"""Accuracy prediction levers: machine-readable results (merged JSON with commands), the hyperparameter
reference as a table row, resumable grids, probe features of rebuilt zoo models, early stopping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metaopt.graph.schema import NODE_TYPE, NodeType
from metaopt.weightspace import load_zoo
from metaopt.weightspace.accuracy import PredictorConfig, fit_and_score, make_split

N_MODELS = 12


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    from inner_tasks.zoo import generate

    out = tmp_path_factory.mktemp("zoo") / "diverse"
    generate(out, "diverse-archs", N_MODELS, workers=1, tiny=True, shard_size=8, progress=False)
    return out


def _cli(zoo_dir, out, results, *extra):
    from experiments.accuracy.__main__ import main

    return main(["--zoo", f"diverse-archs={zoo_dir}", "--split", "50,ood", "--seeds", "2", "--steps", "6",
                 "--hidden", "8", "--layers", "1", "--batch-size", "4", "--eval-every", "3", "--out", str(out),
                 "--results-json", str(results), *extra])


def test_results_json_has_the_issue_layout_merges_and_names_the_command(tiny_zoo, tmp_path):
    results = tmp_path / "docs" / "results" / "accuracy.json"
    assert _cli(tiny_zoo, tmp_path / "a", results, "--method", "gmn,gmn_probes,hparams_gb", "--probes", "4") == 0
    data = json.loads(results.read_text())
    assert set(data) == {"diverse-archs"} and set(data["diverse-archs"]) == {"50%", "OOD"}
    row = data["diverse-archs"]["50%"]["gmn"]
    assert {"r2_mean", "r2_std", "tau_mean", "tau_std", "n_seeds", "command"} <= set(row)
    assert row["n_seeds"] == 2 and row["command"].startswith("python -m experiments.accuracy ")
    assert "--method gmn,gmn_probes,hparams_gb" in row["command"]
    assert set(data["diverse-archs"]["OOD"]) == {"gmn", "gmn_probes", "hparams_gb"}
    runs = json.loads((tmp_path / "a" / "accuracy.json").read_text())["runs"]
    assert {(r["method"], r["probes"], r["node_in"]) for r in runs if r["method"].startswith("gmn")} == {("gmn", 0, 0), ("gmn_probes", 4, 5)}
    # a second command adds its rows and keeps the others
    assert _cli(tiny_zoo, tmp_path / "b", results, "--method", "statnn", "--split", "50") == 0
    merged = json.loads(results.read_text())["diverse-archs"]
    assert set(merged["50%"]) == {"gmn", "gmn_probes", "hparams_gb", "statnn"} and merged["50%"]["gmn"] == row
    assert "--method statnn" in merged["50%"]["statnn"]["command"]
    table = (tmp_path / "a" / "accuracy.md").read_text()
    assert "| 50% | hparams+arch GB (reference) |" in table and "| OOD | GMN + probe features |" in table
    with pytest.raises(SystemExit, match="--probes"):
        _cli(tiny_zoo, tmp_path / "c", results, "--method", "gmn_probes")
    # --results-name stores a second configuration of a method beside the first
    assert _cli(tiny_zoo, tmp_path / "d", results, "--method", "statnn", "--split", "50", "--hidden", "4",
                "--results-name", "statnn=statnn_h4") == 0
    named = json.loads(results.read_text())["diverse-archs"]["50%"]
    assert named["statnn"] == merged["50%"]["statnn"] and "--hidden 4" in named["statnn_h4"]["command"]
    with pytest.raises(SystemExit, match="--results-name"):
        _cli(tiny_zoo, tmp_path / "e", results, "--method", "statnn", "--results-name", "gmn=x")


def test_hparams_reference_matches_the_diagnosis(tiny_zoo):
    from experiments.accuracy.diagnose import _fit_predict, hparam_features, reference_fit_and_score

    zoo = load_zoo(tiny_zoo)
    train, test = make_split(zoo, "50", 0)
    res = reference_fit_and_score(zoo, train, test, "hparams_gb")
    y = zoo.targets().numpy().astype(float)
    assert np.allclose(res["pred"], _fit_predict("gb", hparam_features(zoo), y, train, test))
    assert len(res["true"]) == len(test) and np.isfinite(res["r2"])
    with pytest.raises(ValueError, match="unknown reference"):
        reference_fit_and_score(zoo, train, test, "weights_gb")


def test_an_interrupted_grid_resumes_from_the_stored_runs(tiny_zoo, tmp_path, monkeypatch):
    from experiments.accuracy import run as run_mod

    results = tmp_path / "r.json"
    assert _cli(tiny_zoo, tmp_path / "a", results, "--method", "statnn", "--split", "50") == 0
    first = json.loads((tmp_path / "a" / "accuracy.json").read_text())["runs"]
    assert len(list((tmp_path / "a" / "runs").glob("*.json"))) == 2

    def fail(job):
        raise AssertionError(f"rerun of a finished run {job['method']} seed {job['seed']}")

    monkeypatch.setattr(run_mod, "run_one", fail)
    assert _cli(tiny_zoo, tmp_path / "a", results, "--method", "statnn", "--split", "50") == 0
    again = json.loads((tmp_path / "a" / "accuracy.json").read_text())["runs"]
    assert [r["r2"] for r in again] == [r["r2"] for r in first]
    with pytest.raises(AssertionError, match="rerun"):  # other settings are other runs
        _cli(tiny_zoo, tmp_path / "a", results, "--method", "statnn", "--split", "50", "--lr", "1e-3")


def test_probe_features_are_the_rebuilt_models_layer_outputs(tiny_zoo, monkeypatch):
    from inner_tasks.zoo import probes as probes_mod
    from inner_tasks.zoo import zoo_data

    zoo = load_zoo(tiny_zoo)
    feats = probes_mod.zoo_probe_features(tiny_zoo, 4, zoo=zoo)
    assert len(feats) == len(zoo) and (tiny_zoo / "probe_features" / "n4_seed0.safetensors").is_file()
    idx = probes_mod.probe_indices(4)
    _, ytr, _, _ = zoo_data("image")
    assert len(set(ytr[idx].tolist())) == 4  # class-balanced training digits
    for i, rec in enumerate(zoo.records):
        g = zoo.graph_of(i)
        f = feats[i]
        assert f.shape == (g.num_nodes, 5) and torch.isfinite(f).all()
        model = probes_mod.rebuild_model(zoo, i, _shard(tiny_zoo, rec))
        x = zoo_data(rec["layout"])[0][idx]
        with torch.no_grad():
            logits = model(x)
        out_nodes = torch.nonzero(g.x[:, NODE_TYPE] == NodeType.OUTPUT).flatten()
        # the output neurons' probe values are asinh of the logits, in class order
        assert torch.allclose(f[out_nodes, :4], torch.asinh(logits).t(), atol=1e-5), rec["family"]
        assert f[out_nodes, 4].eq(1).all()
        assert f[g.x[:, NODE_TYPE] == NodeType.BIAS].eq(0).all()  # bias nodes have no probe values
    # a second call reads the cache and computes nothing
    monkeypatch.setattr(probes_mod, "node_probe_features", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = probes_mod.zoo_probe_features(tiny_zoo, 4, zoo=zoo)
    assert all(torch.equal(a, b) for a, b in zip(feats, again))


def test_probe_accuracy_is_the_rebuilt_models_accuracy_on_the_probe_digits(tiny_zoo, tmp_path):
    """probe_accuracy reads the argmax of the output nodes' probe values in class order, i.e. exactly the
    rebuilt model's accuracy on the probe digits; the probe_acc reference runs as a row of the grid."""
    from inner_tasks.zoo import probes as probes_mod
    from inner_tasks.zoo import zoo_data

    zoo = load_zoo(tiny_zoo)
    feats = probes_mod.zoo_probe_features(tiny_zoo, 4, zoo=zoo)
    acc = probes_mod.probe_accuracy(zoo, feats, 4)
    idx = probes_mod.probe_indices(4)
    for i, rec in enumerate(zoo.records):
        model = probes_mod.rebuild_model(zoo, i, _shard(tiny_zoo, rec))
        x, y = zoo_data(rec["layout"])[0][idx], zoo_data(rec["layout"])[1][idx]
        with torch.no_grad():
            assert acc[i] == (model(x).argmax(1) == y).double().mean()
    soft = probes_mod.with_output_softmax(zoo, feats, 4)
    for i in range(len(zoo)):
        outs = (zoo.graph_of(i).x[:, NODE_TYPE] == NodeType.OUTPUT).nonzero().flatten()
        others = torch.ones(len(soft[i]), dtype=torch.bool)
        others[outs] = False
        assert soft[i].shape[1] == 9 and torch.equal(soft[i][:, :5], feats[i])
        torch.testing.assert_close(soft[i][outs, 5:].sum(0), torch.ones(4))  # class probabilities per probe
        assert torch.equal(soft[i][outs, 5:].argmax(0), feats[i][outs, :4].argmax(0)) and soft[i][others, 5:].eq(0).all()
    results = tmp_path / "accuracy.json"
    assert _cli(tiny_zoo, tmp_path / "s", results, "--method", "gmn_probes", "--probes", "4", "--probe-softmax",
                "--output-nodes", "10", "--probe-acc-input") == 0
    runs = json.loads((tmp_path / "s" / "accuracy.json").read_text())["runs"]
    assert {r["node_in"] for r in runs} == {9}  # 4 probe values + flag + 4 class probabilities
    assert {r["graph_in"] for r in runs} == {1}  # the probe accuracy
    assert _cli(tiny_zoo, tmp_path / "a", results, "--method", "probe_acc", "--probes", "4") == 0
    row = json.loads(results.read_text())["diverse-archs"]["50%"]["probe_acc"]
    assert np.isfinite(row["r2_mean"]) and "probe-digit accuracy line" in (tmp_path / "a" / "accuracy.md").read_text()
    with pytest.raises(SystemExit, match="--probes"):
        _cli(tiny_zoo, tmp_path / "c", results, "--method", "probe_acc")


def _shard(root, rec):
    from safetensors.torch import load_file

    return load_file(str(root / "shards" / rec["shard"]))


def test_stored_models_rebuild_with_their_recorded_accuracy(tiny_zoo):
    from inner_tasks.zoo import zoo_data
    from inner_tasks.zoo.probes import rebuild_model

    zoo = load_zoo(tiny_zoo)
    for i, rec in enumerate(zoo.records):
        model = rebuild_model(zoo, i, _shard(tiny_zoo, rec))
        _, _, xte, yte = zoo_data(rec["layout"])
        with torch.no_grad():
            acc = (model(xte).argmax(-1) == yte).float().mean().item()
        assert acc == pytest.approx(rec["test_acc"], abs=1e-6)


def test_gmn_reads_probe_features_and_other_methods_refuse_them(tiny_zoo):
    from inner_tasks.zoo.probes import zoo_probe_features

    zoo = load_zoo(tiny_zoo)
    feats = zoo_probe_features(tiny_zoo, 4, zoo=zoo)
    train, test = make_split(zoo, "50", 0)
    cfg = PredictorConfig(hidden=8, layers=1, steps=4, batch_size=4, eval_every=2)
    res = fit_and_score(zoo, train, test, "gmn", cfg, 0, node_features=feats)
    assert res["node_in"] == 5 and np.isfinite(res["r2"])
    assert res["predictor_params"] > fit_and_score(zoo, train, test, "gmn", cfg, 0)["predictor_params"]
    with pytest.raises(ValueError, match="GMN only"):
        fit_and_score(zoo, train, test, "statnn", cfg, 0, node_features=feats)
    with pytest.raises(ValueError, match="entries"):
        fit_and_score(zoo, train, test, "gmn", cfg, 0, node_features=feats[:3])
    # a graph-level value per model (e.g. its probe accuracy) is a GMN graph input
    acc = torch.rand(len(zoo), 1)
    res = fit_and_score(zoo, train, test, "gmn", cfg, 0, node_features=feats, graph_features=acc)
    assert res["graph_in"] == 1 and np.isfinite(res["r2"])
    with pytest.raises(ValueError, match="graph_features"):
        fit_and_score(zoo, train, test, "gmn", cfg, 0, graph_features=acc[:3])


def test_early_stopping_ends_training_after_patience_evaluations():
    from test_accuracy_selection import unique_arch_zoo

    zoo = unique_arch_zoo(60)
    train, test = make_split(zoo, "50", 0)
    cfg = PredictorConfig(hidden=8, steps=400, batch_size=8, eval_every=5, patience=3, lr=3e-2)
    res = fit_and_score(zoo, train, test, "statnn", cfg, 0)
    assert res["steps_run"] < 400 and len(res["val_curve"]) == res["steps_run"] // 5
    best = int(np.argmin(res["val_curve"]))
    assert res["best_step"] == 5 * (best + 1) and len(res["val_curve"]) - 1 - best == 3  # stopped 3 evals after the best
    full = fit_and_score(zoo, train, test, "statnn", PredictorConfig(hidden=8, steps=40, batch_size=8, eval_every=5,
                                                                      patience=0, schedule="onecycle"), 0)
    assert full["steps_run"] == 40 and len(full["val_curve"]) == 8
    with pytest.raises(ValueError, match="schedule"):
        fit_and_score(zoo, train, test, "statnn", PredictorConfig(steps=2, schedule="cosine"), 0)


def test_plateau_schedule_warms_up_and_halves_the_lr():
    from metaopt.weightspace.accuracy.predict import PlateauSchedule

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s = PlateauSchedule(opt, 1.0, warmup=4, lr_patience=2)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(5):
        s.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    s.report(False)
    assert opt.param_groups[0]["lr"] == 1.0
    s.report(False)
    assert opt.param_groups[0]["lr"] == 0.5
    s.report(True)
    s.report(False)
    assert opt.param_groups[0]["lr"] == 0.5


def test_results_table_is_rendered_from_the_json(tmp_path) -> None:
    """docs show `python -m experiments.results docs/results/accuracy.json`: rows split x method, a column pair per zoo."""
    from experiments.results import accuracy_markdown, update_results_json

    rec = {"r2_mean": 0.5, "r2_std": 0.01, "tau_mean": 0.4, "tau_std": 0.02, "n_seeds": 3}
    data = update_results_json(tmp_path / "a.json", {"zooA": {"50%": {"gmn": rec}, "OOD": {"statnn": rec}},
                                                     "zooB": {"50%": {"statnn": rec}}}, depth=3, command="cmd")
    lines = accuracy_markdown(data).splitlines()
    assert lines[0] == "| split | method | zooA R² | zooA τ | zooB R² | zooB τ |"
    assert lines[2:] == ["| 50% | gmn | 0.500 ± 0.010 | 0.400 ± 0.020 | - | - |",
                         "| 50% | statnn | - | - | 0.500 ± 0.010 | 0.400 ± 0.020 |",
                         "| OOD | statnn | 0.500 ± 0.010 | 0.400 ± 0.020 | - | - |"]


def test_residual_base_starts_at_the_least_squares_line_and_learns_a_correction(tiny_zoo):
    """residual_base: the untrained predictor is exactly the line fitted on the training models' graph
    features (gate 0); training moves the gate; it needs graph features and the GMN."""
    from torch_geometric.data import Batch

    from metaopt.weightspace.accuracy.predict import ResidualOnBase, build_predictor

    zoo = load_zoo(tiny_zoo)
    net = build_predictor("gmn", PredictorConfig(hidden=8, layers=1), graph_in=2)
    feats = torch.randn(40, 2, dtype=torch.float64)
    y = 0.7 * feats[:, 0] - 0.2 * feats[:, 1] + 0.5
    model = ResidualOnBase.fit(net, feats, y)
    torch.testing.assert_close(model.coef, torch.tensor([0.7, -0.2]), rtol=0, atol=1e-6)
    assert float(model.intercept.detach()) == pytest.approx(0.5, abs=1e-6) and float(model.gate.detach()) == 0.0
    graphs = [zoo.graph_of(i) for i in range(3)]
    batch = Batch.from_data_list(graphs)
    values = torch.randn(batch.edge_index.shape[1], 1)
    out = model(batch, values, None, feats[:3].float())
    torch.testing.assert_close(out, (0.7 * feats[:3, 0] - 0.2 * feats[:3, 1] + 0.5).float(), rtol=0, atol=1e-5)

    train, test = make_split(zoo, "50", 0)
    cfg = PredictorConfig(hidden=8, layers=1, steps=6, batch_size=4, eval_every=2, patience=0, residual_base=True)
    acc = torch.rand(len(zoo), 1)
    res = fit_and_score(zoo, train, test, "gmn", cfg, 0, graph_features=acc)
    assert np.isfinite(res["r2"]) and res["predictor_params"] == 1 + sum(p.numel() for p in build_predictor(
        "gmn", cfg, graph_in=1).parameters())
    with pytest.raises(ValueError, match="needs graph_features"):
        fit_and_score(zoo, train, test, "gmn", cfg, 0)
    with pytest.raises(ValueError, match="GMN only"):
        fit_and_score(zoo, train, test, "statnn", cfg, 0)


def test_model_selection_can_minimise_minus_kendall_tau(tiny_zoo):
    """select_on="tau": the validation curve is -tau (in [-1, 1]) and the kept checkpoint is its minimum."""
    zoo = load_zoo(tiny_zoo)
    train, test = make_split(zoo, "50", 0)
    cfg = PredictorConfig(hidden=8, layers=1, steps=8, batch_size=4, eval_every=2, patience=0, val_fraction=0.5,
                          select_on="tau")
    res = fit_and_score(zoo, train, test, "statnn", cfg, 0)
    assert res["val_curve"] and all(-1.0 <= v <= 1.0 for v in res["val_curve"])
    assert res["best_step"] == 2 * (1 + min(range(len(res["val_curve"])), key=lambda i: (res["val_curve"][i], i)))
    with pytest.raises(ValueError, match="select_on"):
        fit_and_score(zoo, train, test, "statnn", PredictorConfig(steps=2, select_on="r2"), 0)
