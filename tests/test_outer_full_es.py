"""Full-horizon ES on a rule's added input columns: only those move, the best is kept, a rerun resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metaopt.optim import RuleConfig, UpdateRule
from outer_train.full_es import main


def test_full_es_trains_only_the_added_columns_keeps_the_best_and_resumes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = UpdateRule(RuleConfig(kind="gmn", hidden=4, alpha=0.3, refresh_every=10, default_lr=0.03))
    base.save_pretrained(tmp_path / "base")
    args = ["--rule", str(tmp_path / "base"), "--tasks", "1", "--steps", "20", "--val-every", "1", "--sigma", "0.5",
            "--lr", "0.5", "--out", str(tmp_path / "es"), "--cache-dir", str(tmp_path / "cache")]
    assert main(args + ["--iters", "2"]) == 0
    log = json.loads((tmp_path / "es" / "log.json").read_text())
    assert [r["iter"] for r in log["log"]] == [1, 2] and "start_val_score" in log["best"]
    best = UpdateRule.from_pretrained(tmp_path / "es" / "rule_best")
    assert best.features.horizon
    state = torch.load(tmp_path / "es" / "es_state.pt", weights_only=False)
    assert state["theta"].abs().sum() > 0  # the horizon columns moved
    assert main(args + ["--iters", "3"]) == 0  # resumes at iteration 3
    log = json.loads((tmp_path / "es" / "log.json").read_text())
    assert [r["iter"] for r in log["log"]] == [1, 2, 3]
    for name, p in base.state_dict().items():  # everything the base rule had is untouched
        q = best.state_dict()[name]
        assert torch.equal(q[..., : p.shape[-1]] if q.dim() == 2 else q, p), name


def test_full_es_trains_only_the_lr_free_global_correction(tmp_path: Path) -> None:
    """--train global_correction: a rule without one gets it at 0, and only its gate and offset move."""
    torch.manual_seed(0)
    base = UpdateRule(RuleConfig(kind="gmn", hidden=4, alpha=0.3, refresh_every=10))
    base.save_pretrained(tmp_path / "base")
    (tmp_path / "lr_free.toml").write_text("[tasks]\nlr_free = true\nestimate_every = 5\n")
    args = ["--rule", str(tmp_path / "base"), "--train", "global_correction", "--global-bound", "1.5",
            "--config", str(tmp_path / "lr_free.toml"), "--tasks", "1", "--steps", "20",
            "--val-every", "1", "--sigma", "0.5", "--lr", "0.5", "--iters", "2", "--out", str(tmp_path / "es"),
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    log = json.loads((tmp_path / "es" / "log.json").read_text())
    assert all({"global_gate", "global_offset"} <= set(row) for row in log["log"])
    assert abs(log["log"][-1]["global_offset"]) > 0  # the correction moved
    best = UpdateRule.from_pretrained(tmp_path / "es" / "rule_best")
    assert best.config.global_bound == 1.5
    for name, p in base.state_dict().items():  # the rule's network is untouched
        assert torch.equal(best.state_dict()[name], p), name


def test_full_es_global_correction_needs_lr_free(tmp_path: Path) -> None:
    base = UpdateRule(RuleConfig(kind="gmn", hidden=4, refresh_every=10))
    base.save_pretrained(tmp_path / "base")
    (tmp_path / "fixed_lr.toml").write_text("[tasks]\nlr_free = false\n")
    with pytest.raises(SystemExit, match="lr_free"):
        main(["--rule", str(tmp_path / "base"), "--train", "global_correction", "--config",
              str(tmp_path / "fixed_lr.toml"), "--out", str(tmp_path / "es")])


def test_full_es_per_tensor_needs_lr_free(tmp_path: Path) -> None:
    base = UpdateRule(RuleConfig(kind="gmn", hidden=4, refresh_every=10))
    base.save_pretrained(tmp_path / "base")
    (tmp_path / "fixed_lr.toml").write_text("[tasks]\nlr_free = false\n")
    with pytest.raises(SystemExit, match="lr_free"):
        main(["--rule", str(tmp_path / "base"), "--per-tensor", "0.7", "--config", str(tmp_path / "fixed_lr.toml"),
              "--out", str(tmp_path / "es")])
