"""The CKA study end to end on a tiny INR set: tables, figures, cached runs and the sample analysis."""

import json
from pathlib import Path

import pytest
import torch

from experiments.cka import StudyConfig, run_study, sample_analysis
from inner_tasks.inr import INRSetConfig, generate_inr_set
from metaopt.weightspace.inr_data import load_inr_set


@pytest.mark.slow
def test_study_writes_tables_and_figures_and_reuses_runs(tmp_path: Path) -> None:
    generate_inr_set(INRSetConfig(data="digits", n=60, steps=60, shard_size=60, shared_init=True), tmp_path / "inrs", progress=False)
    inrs = load_inr_set(tmp_path / "inrs")
    cfg = StudyConfig(seeds=2, gmn_epochs=1, image_epochs=2, hidden=16, layers=4)
    summary = run_study(inrs, tmp_path / "study", cfg, kernels=("linear",))
    lin = summary["cka"]["linear"]
    assert set(lin) == {"GMN vs GMN", "MLP vs MLP", "CNN vs CNN", "GMN vs MLP", "GMN vs CNN", "MLP vs CNN"}
    assert torch.tensor(lin["GMN vs GMN"]["mean"]).shape == (5, 5)  # 4 message-passing layers + logits
    assert lin["GMN vs MLP"]["pairs"] == 4 and lin["GMN vs GMN"]["pairs"] == 1
    vals = torch.tensor([v for t in lin.values() for row in t["mean"] for v in row])
    assert ((vals > -1e-6) & (vals < 1 + 1e-6)).all()
    for f in ("cka_heatmaps_linear.png", "cka_curves_linear.png", "samples_gmn_right_images_wrong.png",
              "cka_summary.json", "cka_summary.md"):
        assert (tmp_path / "study" / f).stat().st_size > 0
    # a rerun loads the cached runs: identical accuracies and CKA
    again = run_study(inrs, tmp_path / "study", cfg, kernels=("linear",))
    assert again["accuracy"] == summary["accuracy"] and again["cka"] == summary["cka"]


def test_sample_analysis_sets() -> None:
    labels = [0, 1, 2, 3]
    runs = {
        "GMN": [{"labels": labels, "preds": [0, 1, 9, 9]}, {"labels": labels, "preds": [0, 1, 9, 3]}],
        "MLP": [{"labels": labels, "preds": [9, 1, 2, 9]}],
        "CNN": [{"labels": labels, "preds": [9, 9, 2, 9]}],
    }
    s = sample_analysis(runs)
    assert s["gmn_right_images_wrong"] == [0]
    assert s["images_right_gmn_wrong"] == [2]
    assert s["all_wrong"] == []
    assert json.dumps(s)


def test_gmn_levers_reach_the_gmn_only() -> None:
    from experiments.cka import classify_config

    cfg = StudyConfig(gmn_epochs=3, image_epochs=5, probes=8, input_shift=0.1, dropout=0.2)
    g = classify_config(cfg, "gmn", 1)
    assert (g.epochs, g.probes, g.input_shift, g.dropout, g.seed) == (3, 8, 0.1, 0.2, 1)
    m = classify_config(cfg, "image_mlp", 1)
    assert (m.epochs, m.probes, m.input_shift, m.dropout) == (5, 0, 0.0, 0.0)
