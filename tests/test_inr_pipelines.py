"""End-to-end INR classification and editing on a tiny set: every method runs, the GMN beats chance,
edited INRs beat "no edit", and GMN representations are invariant to the SIREN's symmetries."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from inner_tasks.inr import INRSetConfig, generate_inr_set

from experiments.inr_classify import markdown_table, run_classification
from metaopt.weightspace.inr_classify import IMAGE_METHODS, WEIGHT_METHODS, ClassifyConfig, train_classifier
from metaopt.weightspace.inr_data import augment, load_inr_set
from metaopt.weightspace.inr_edit import EditConfig, evaluate_editor, train_editor


@pytest.fixture(scope="module")
def inrs(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("inrs") / "digits"
    generate_inr_set(INRSetConfig(data="digits", n=160, steps=100, shard_size=160, shared_init=True), out, progress=False)
    return load_inr_set(out)


def test_every_method_runs_and_the_table_lists_it(inrs) -> None:
    cfg = ClassifyConfig(hidden=16, layers=2, epochs=1, batch_size=32)
    result = run_classification(inrs, list(WEIGHT_METHODS + IMAGE_METHODS), seeds=1, cfg=cfg, progress=False)
    table = markdown_table(result)
    for m in WEIGHT_METHODS + IMAGE_METHODS:
        assert 0.0 <= result["summary"][m]["test_acc_mean"] <= 1.0
        assert result["summary"][m]["name"] in table
    probed = run_classification(inrs, ["gmn", "probe_pixels"], seeds=1, cfg=replace(cfg, probes=8), progress=False)
    assert set(probed["summary"]) == {"gmn", "probe_pixels"}


@pytest.mark.slow
def test_gmn_classifier_fits_a_batch_and_image_reference_beats_chance(inrs) -> None:
    import torch.nn.functional as F

    from metaopt.weightspace.inr_classify import WeightSpaceClassifier

    model = WeightSpaceClassifier("gmn", inrs.graph, inrs.num_classes, hidden=32, layers=3)
    model.fit_scale(inrs.weights[inrs.split(False)])
    x, y = inrs.weights[:32], inrs.labels[:32]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(100):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses[::10]  # gradients reach the weights' encoding
    _, ref = train_classifier("image_mlp", inrs, ClassifyConfig(epochs=20, batch_size=16, lr=3e-3))
    assert ref["test_acc"] > 0.5  # 10 classes: chance is 0.1


def test_gmn_classifier_fits_its_training_set(inrs) -> None:
    """Regression (v0.0, 2026-11): the GMN's mean-pooled graph head left train accuracy near chance (loss at
    log 10) because pooled features hardly differed between INRs; the group readout + BatchNorm head
    fits 120 INRs within a few epochs."""
    cfg = ClassifyConfig(hidden=16, layers=2, epochs=12, batch_size=16, lr=3e-3)
    _, res = train_classifier("gmn", inrs, cfg)
    assert res["train_acc"] > 0.8, res
    assert res["loss_curve"][-1] < 0.5 * res["loss_curve"][0], res["loss_curve"]


@pytest.mark.slow
def test_gmn_classifier_beats_chance_on_tiny_set(inrs) -> None:
    cfg = ClassifyConfig(hidden=32, layers=3, epochs=30, batch_size=16, lr=3e-3)
    _, res = train_classifier("gmn", inrs, cfg)
    assert res["test_acc"] > 0.3, res  # 10 classes: chance is 0.1


@pytest.mark.parametrize("probes", [0, 8])
def test_gmn_classifier_is_invariant_to_permutations_and_sign_flips(inrs, probes: int) -> None:
    model, _ = train_classifier("gmn", inrs, ClassifyConfig(hidden=16, layers=2, epochs=1, batch_size=32, probes=probes))
    model.eval()
    w = inrs.weights[:8]
    aug = augment(inrs.graph, inrs.layers, w, generator=torch.Generator().manual_seed(2))
    assert (aug - w).abs().max() > 0.1
    assert torch.allclose(model(w), model(aug), atol=1e-4)
    # without sign canonicalisation the same model is not sign-flip invariant: the test can fail
    model.canonical = False
    assert not torch.allclose(model(w), model(aug), atol=1e-4)


def test_gmn_representations_are_invariant_to_siren_permutations(inrs) -> None:
    model, _ = train_classifier("gmn", inrs, ClassifyConfig(hidden=16, layers=2, epochs=1, batch_size=32))
    w = inrs.weights[:8]
    perm_only = augment(inrs.graph, inrs.layers, w, generator=torch.Generator().manual_seed(1), flip_signs=False)
    reps, reps_p = model.representations(w), model.representations(perm_only)
    assert len(reps) == 3  # 2 message-passing layers + logits
    for a, b in zip(reps, reps_p):
        assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.slow
def test_gmn_editor_beats_no_edit(inrs) -> None:
    none = evaluate_editor(None, inrs, "dilate")["test_mse"]
    model, res = train_editor("gmn", inrs, EditConfig(hidden=32, layers=3, epochs=8, batch_size=16, lr=2e-3))
    assert res["test_mse"] < 0.8 * none, (res["test_mse"], none)
    # an untrained editor is exactly "no edit" (the edge head starts at zero)
    from metaopt.weightspace.inr_edit import WeightEditor

    fresh = WeightEditor("gmn", inrs.graph, 16, 2)
    assert float(fresh(inrs.weights[:4]).abs().max()) == 0.0


def test_classifier_rejects_settings_it_cannot_honour(inrs) -> None:
    from metaopt.weightspace.inr_models import WeightSpaceClassifier

    with pytest.raises(ValueError, match="siren_layers"):
        WeightSpaceClassifier("gmn", inrs.graph, 10, probes=4)
    with pytest.raises(ValueError, match="siren_layers"):
        WeightSpaceClassifier("gmn", inrs.graph, 10, canonical=True)
    with pytest.raises(ValueError, match="only gmn / mlp"):
        WeightSpaceClassifier("statnn", inrs.graph, 10, probes=4, siren_layers=inrs.layers)
    with pytest.raises(ValueError, match="probes > 0"):
        WeightSpaceClassifier("probe_pixels", inrs.graph, 10, siren_layers=inrs.layers)


def test_experiment_clis_write_results_and_reject_unknown_methods(inrs, tmp_path: Path) -> None:
    import json

    from experiments.inr_classify import main as classify_main
    from experiments.inr_edit import main as edit_main

    small = ["--seeds", "1", "--epochs", "1", "--hidden", "8", "--layers", "1"]
    classify_main(["--inrs", str(inrs.root), "--method", "statnn,image_mlp", *small, "--out", str(tmp_path / "c")])
    result = json.loads((tmp_path / "c" / "classify.json").read_text())
    assert set(result["summary"]) == {"statnn", "image_mlp"} and len(result["runs"]) == 2
    assert "StatNN" in (tmp_path / "c" / "classify.md").read_text()
    edit_main(["--inrs", str(inrs.root), "--method", "mlp", *small, "--out", str(tmp_path / "e")])
    result = json.loads((tmp_path / "e" / "edit_dilate.json").read_text())
    assert set(result["summary"]) == {"none", "mlp"}
    assert "no edit" in (tmp_path / "e" / "edit_dilate.md").read_text()
    with pytest.raises(SystemExit):
        classify_main(["--inrs", str(inrs.root), "--method", "nope"])


def test_classify_cli_writes_the_results_json_and_resumes(inrs, tmp_path: Path, monkeypatch) -> None:
    import json

    import experiments.inr_classify as ic

    results = tmp_path / "docs" / "results" / "inr.json"
    small = ["--seeds", "2", "--epochs", "1", "--hidden", "8", "--layers", "1", "--out", str(tmp_path / "c"),
             "--results-json", str(results)]
    ic.main(["--inrs", str(inrs.root), "--method", "gmn,image_mlp", *small])
    data = json.loads(results.read_text())
    assert set(data) == {"gmn", "mlp_pixels"}  # a shared-init set: top level
    row = data["gmn"]
    assert {"acc_mean", "acc_std", "n_seeds", "command"} <= set(row) and row["n_seeds"] == 2
    assert row["command"].startswith("python -m experiments.inr_classify ") and "--method gmn,image_mlp" in row["command"]
    # the random-init section sits beside the top-level rows; a rerun loads its finished runs
    monkeypatch.setattr(ic, "train_classifier", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    ic.main(["--inrs", str(inrs.root), "--method", "gmn", *small, "--results-section", "random_init"])
    data = json.loads(results.read_text())
    assert set(data) == {"gmn", "mlp_pixels", "random_init"} and data["random_init"]["gmn"]["acc_mean"] == row["acc_mean"]
    with pytest.raises(AssertionError, match="retrained"):  # other settings are other runs
        ic.main(["--inrs", str(inrs.root), "--method", "gmn", *small, "--input-shift", "0.1"])
    entries = ic.results_entries({"config": {"probes": 8}, "summary": {
        m: {"test_acc_mean": 0.5, "test_acc_std": 0.1, "seeds": 3} for m in ("gmn", "probe_pixels", "image_cnn")}}, "random_init")
    assert set(entries["random_init"]) == {"gmn_probes", "probe_pixels", "cnn_pixels"}


def test_input_augmentation_trains_and_leaves_the_references_alone(inrs) -> None:
    cfg = ClassifyConfig(hidden=8, layers=1, epochs=1, batch_size=32, input_rotate=10, input_scale=0.1, input_shift=0.1)
    _, aug = train_classifier("gmn", inrs, cfg)
    _, plain = train_classifier("gmn", inrs, replace(cfg, input_rotate=0, input_scale=0, input_shift=0))
    assert aug["loss_curve"] != plain["loss_curve"] and 0 <= aug["test_acc"] <= 1
    _, img = train_classifier("image_mlp", inrs, cfg)
    _, img_plain = train_classifier("image_mlp", inrs, replace(cfg, input_rotate=0, input_scale=0, input_shift=0))
    assert img["loss_curve"] == img_plain["loss_curve"]
