"""Accuracy prediction: splits, train-only preprocessing, a GMN that learns, the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from metaopt import to_graph
from metaopt.weightspace import Zoo
from metaopt.weightspace.accuracy import (
    PredictorConfig,
    TargetScaler,
    WeightNormalizer,
    fit_and_score,
    make_split,
    ood_test_mask,
)


def synthetic_zoo(n: int = 160, seed: int = 0) -> Zoo:
    """MLPs of three sizes; 'accuracy' = 0.5 + 0.4 tanh(2 m), where m is a per-model shift of every weight."""
    g = torch.Generator().manual_seed(seed)
    archs = {}
    for name, hidden in (("a", (6,)), ("b", (8,)), ("c", (8, 8))):
        dims = [4, *hidden, 3]
        layers = []
        for i, (p, q) in enumerate(zip(dims[:-1], dims[1:])):
            layers += [nn.Linear(p, q)] + ([nn.ReLU()] if i < len(dims) - 2 else [])
        archs[name] = to_graph(nn.Sequential(*layers), torch.zeros(1, 4))
    records, weights = [], []
    for i in range(n):
        arch = "abc"[i % 3]
        m = float(torch.rand(1, generator=g)) * 2 - 1
        w = torch.randn(archs[arch].num_params, generator=g) * 0.5 + m
        records.append({"id": i, "arch_id": arch, "test_acc": 0.5 + 0.4 * float(np.tanh(2 * m))})
        weights.append(w)
    return Zoo(records, archs, weights, name="synthetic")


def test_splits_fixed_test_and_disjoint():
    zoo = synthetic_zoo(120)
    tr50, te50 = make_split(zoo, "50", 0)
    tr50b, te50b = make_split(zoo, "50", 1)
    tr5, te5 = make_split(zoo, "5", 0)
    assert np.array_equal(te50, te50b) and np.array_equal(te50, te5)  # one test set for every seed and fraction
    assert not set(tr50) & set(te50) and not set(tr5) & set(te5)
    assert len(te50) == 30 and len(tr50) == 60 and len(tr5) == 6
    assert not np.array_equal(tr50, tr50b)


def test_ood_split_holds_out_the_largest_architectures():
    zoo = synthetic_zoo(120)
    tr, te = make_split(zoo, "ood", 0)
    size = lambda i: zoo.graphs[zoo.records[i]["arch_id"]].num_params  # noqa: E731
    assert min(size(i) for i in te) > max(size(i) for i in tr)
    assert {zoo.records[i]["arch_id"] for i in te} == {"c"}  # c is the largest and covers 1/3 >= 25%
    assert ood_test_mask(zoo).sum() == len(te)
    single = Zoo(zoo.records[:3:3], zoo.graphs, zoo.weights[:3:3])
    with pytest.raises(ValueError, match="single architecture"):
        make_split(single, "ood", 0)


def test_normalizer_uses_train_models_only():
    zoo = synthetic_zoo(60)
    train = np.arange(0, 30)
    norm = WeightNormalizer.fit(zoo, train)
    changed = Zoo(zoo.records, zoo.graphs, [w if i < 30 else w * 100 for i, w in enumerate(zoo.weights)])
    norm2 = WeightNormalizer.fit(changed, train)
    for a in norm.shift:
        assert torch.equal(norm.shift[a], norm2.shift[a]) and torch.equal(norm.scale[a], norm2.scale[a])
    # per tensor, normalised training weights have mean 0 and std 1
    g = zoo.graphs["a"]
    idx = [i for i in train if zoo.records[i]["arch_id"] == "a"]
    x = torch.stack([norm.transform(zoo, i) for i in idx]).double()
    for name, t in g.edges_to_params(x.T).items():
        assert float(t.mean()) == pytest.approx(0.0, abs=1e-5) and float(t.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    # an architecture with no training model falls back to per-edge-type statistics (finite)
    only_a = [i for i in range(60) if zoo.records[i]["arch_id"] == "a"]
    fb = WeightNormalizer.fit(zoo, only_a)
    assert torch.isfinite(fb.transform(zoo, 2)).all()  # model 2 has arch c
    s = TargetScaler.fit(torch.tensor([0.2, 0.4, 0.9]))
    assert torch.allclose(s.inverse(s.transform(torch.tensor([0.3]))), torch.tensor([0.3]))


def test_gmn_beats_a_constant_predictor_on_a_known_function():
    zoo = synthetic_zoo(160)
    train, test = make_split(zoo, "50", 0)
    res = fit_and_score(zoo, train, test, "gmn", PredictorConfig(hidden=16, layers=2, steps=150, batch_size=16), 0)
    y = np.array(res["true"])
    const_mse = float(np.mean((y - zoo.targets()[train].mean().item()) ** 2))
    assert res["mse"] < 0.3 * const_mse, (res["mse"], const_mse)
    assert res["r2"] > 0.6 and res["tau"] > 0.6
    assert res["train_curve"][-1] < 0.5 * res["train_curve"][0]


@pytest.mark.parametrize("method", ["deepsets", "dmc", "statnn"])
def test_baselines_run_and_score(method):
    zoo = synthetic_zoo(60)
    train, test = make_split(zoo, "50", 0)
    res = fit_and_score(zoo, train, test, method, PredictorConfig(hidden=8, steps=5, batch_size=8), 0)
    assert np.isfinite(res["r2"]) and -1 <= res["tau"] <= 1 and len(res["pred"]) == len(test)


def test_cli_end_to_end_on_a_tiny_generated_zoo(tmp_path):
    from inner_tasks.zoo import generate
    from experiments.accuracy.__main__ import main

    zoo_dir = tmp_path / "zoo"
    generate(zoo_dir, "diverse-archs", 8, workers=1, tiny=True, shard_size=8, progress=False)
    out = tmp_path / "acc"
    assert main(["--zoo", f"diverse-archs={zoo_dir}", "--split", "50,ood", "--method", "all", "--seeds", "1",
                  "--steps", "3", "--hidden", "8", "--layers", "1", "--batch-size", "4", "--out", str(out)]) == 0
    table = (out / "accuracy.md").read_text()
    data = json.loads((out / "accuracy.json").read_text())
    assert len(data["runs"]) == 2 * 5  # four predictors and the hparams_gb reference
    assert set(data["summary"]["diverse-archs"]) == {"50", "ood"}
    assert data["summary"]["diverse-archs"]["50"]["gmn"]["n"] == 1
    assert "| 50% | GMN |" in table and "| OOD | StatNN |" in table and "Diverse Architectures R²" in table
    assert (out / "accuracy.md").read_text().count("\n| ") >= 9
    assert (out / "scatter_diverse-archs.png").stat().st_size > 1000
