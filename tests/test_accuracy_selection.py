"""Accuracy prediction: validation split and best-checkpoint selection; weight normalisation keeps the
per-model weight scale in zoos where (nearly) every model has its own architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from metaopt import to_graph
from metaopt.weightspace import Zoo
from metaopt.weightspace.accuracy import PredictorConfig, WeightNormalizer, fit_and_score, make_split
from metaopt.weightspace.accuracy.predict import BestCheckpoint, split_validation


def unique_arch_zoo(n: int = 120, seed: int = 0) -> Zoo:
    """MLPs whose hidden widths mostly differ per model; 'accuracy' is a smooth function of the weight scale.

    This is the regime of a zoo where architecture statistics come from one or two models each, so a
    normaliser that standardises per architecture would erase the only signal.
    """
    g = torch.Generator().manual_seed(seed)
    records, weights, archs = [], [], {}
    for i in range(n):
        widths = tuple(int(w) for w in torch.randint(3, 13, (1 + i % 2,), generator=g))
        name = "x".join(map(str, widths))
        if name not in archs:
            dims = [4, *widths, 3]
            layers: list[nn.Module] = []
            for j, (p, q) in enumerate(zip(dims[:-1], dims[1:])):
                layers += [nn.Linear(p, q)] + ([nn.ReLU()] if j < len(dims) - 2 else [])
            archs[name] = to_graph(nn.Sequential(*layers), torch.zeros(1, 4))
        log_s = float(torch.rand(1, generator=g)) * 2 - 1  # scale in [1/e, e]
        weights.append(torch.randn(archs[name].num_params, generator=g) * float(np.exp(log_s)))
        records.append({"id": i, "arch_id": name, "test_acc": 0.5 + 0.4 * float(np.tanh(1.5 * log_s))})
    return Zoo(records, archs, weights, name="unique-archs")


def test_split_validation_is_disjoint_and_sized():
    idx = np.arange(10, 50)
    fit, val = split_validation(idx, 0.2, 0)
    assert len(val) == 8 and len(fit) == 32 and not set(fit) & set(val) and set(fit) | set(val) == set(idx)
    assert len(split_validation(idx[:5], 0.2, 0)[1]) == 2  # at least 2 validation models
    assert len(split_validation(idx, 0.0, 0)[1]) == 0 and len(split_validation(idx[:3], 0.5, 0)[1]) == 0


def test_best_checkpoint_restores_the_lowest_validation_loss():
    model = nn.Linear(2, 1)
    best = BestCheckpoint()
    snapshots = {}
    for step, loss in enumerate([0.9, 0.5, 0.7, 0.5, 0.8], start=1):
        with torch.no_grad():
            model.weight.fill_(float(step))
        snapshots[step] = model.weight.clone()
        best.update(model, loss, step)
    assert best.step == 2 and best.loss == 0.5  # a later tie does not replace the earlier best
    best.restore(model)
    assert torch.equal(model.weight, snapshots[2])


def test_fit_and_score_reports_the_step_with_the_best_validation_loss():
    zoo = unique_arch_zoo(80)
    train, test = make_split(zoo, "50", 0)
    cfg = PredictorConfig(hidden=8, steps=60, batch_size=8, eval_every=10, val_fraction=0.25)
    res = fit_and_score(zoo, train, test, "statnn", cfg, 0)
    assert len(res["val_curve"]) == 6 and res["n_val"] == 10 and res["n_fit"] + res["n_val"] == len(train)
    assert res["best_step"] == 10 * (int(np.argmin(res["val_curve"])) + 1)


def test_rare_architectures_keep_the_per_model_weight_scale():
    zoo = unique_arch_zoo(60)
    train = np.arange(40)
    norm = WeightNormalizer.fit(zoo, train)
    stds = np.array([float(norm.transform(zoo, i).std()) for i in train])
    scales = np.array([float(zoo.weights[i].std()) for i in train])
    # one shared (pooled) scale per edge type: normalised spreads stay proportional to the raw ones
    assert np.corrcoef(np.log(stds), np.log(scales))[0, 1] > 0.95
    # an architecture with enough training models is standardised on its own statistics
    common = WeightNormalizer.fit(zoo, train, min_models=1)
    assert all(abs(float(common.transform(zoo, i).std()) - 1) < 0.2 for i in train
               if sum(zoo.records[j]["arch_id"] == zoo.records[i]["arch_id"] for j in train) == 1)
    with pytest.raises(ValueError, match="min_models"):
        WeightNormalizer.fit(zoo, train, min_models=0)


def test_statnn_learns_the_weight_scale_across_unique_architectures():
    zoo = unique_arch_zoo(160)
    train, test = make_split(zoo, "50", 0)
    res = fit_and_score(zoo, train, test, "statnn", PredictorConfig(hidden=16, steps=200, batch_size=16, lr=3e-3), 0)
    assert res["r2"] > 0.7 and res["tau"] > 0.6, (res["r2"], res["tau"])


def test_diagnose_reference_regressors_find_the_weight_scale_signal():
    from experiments.accuracy.diagnose import diagnose, noise_ceiling

    zoo = unique_arch_zoo(120)
    res = diagnose(zoo, seeds=1, splits=("50",))["splits"]["50"]
    assert res["weight stats ridge"]["r2"] > 0.8 and res["weight stats GB"]["r2"] > 0.6
    y = np.array([0.5, 0.9, 0.1, 0.7])
    assert noise_ceiling(y, 450) > noise_ceiling(y, 45)  # fewer test examples, noisier accuracies


def test_predictor_dropout_is_gmn_only_and_trains():
    from metaopt.weightspace.accuracy.predict import build_predictor

    with pytest.raises(ValueError, match="act on the GMN only"):
        build_predictor("statnn", PredictorConfig(dropout=0.2))
    zoo = unique_arch_zoo(60)
    train, test = make_split(zoo, "50", 0)
    cfg = PredictorConfig(hidden=8, layers=1, steps=60, eval_every=20, patience=0, dropout=0.2)
    res = fit_and_score(zoo, train, test, "gmn", cfg, seed=0)
    assert np.isfinite(res["r2"]) and res["train_curve"][-1] < res["train_curve"][0]


def test_family_table_counts_models_at_chance_per_family():
    from experiments.accuracy.diagnose import family_table

    zoo = unique_arch_zoo(40)
    for i, r in enumerate(zoo.records):  # two families, accuracies known
        r["family"], r["test_acc"] = ("a" if i < 10 else "b"), (0.1 if i % 4 == 0 else 0.8)
    t = family_table(zoo)
    assert set(t) == {"a", "b", "all"} and t["a"]["n"] == 10 and t["all"]["n"] == 40
    assert t["a"]["share_at_chance"] == 3 / 10 and t["b"]["share_at_chance"] == 7 / 30
    assert t["all"]["share_at_chance"] == 10 / 40
    assert abs(t["all"]["mean"] - (10 * 0.1 + 30 * 0.8) / 40) < 1e-6
