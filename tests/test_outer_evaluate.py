"""outer_train.evaluate on a tiny slice of the held-out suite writes its JSON, table and curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from metaopt.optim import RuleConfig, UpdateRule
from outer_train import evaluate
from outer_train.evaluate import final_loss, steps_to


def test_steps_to_and_final_loss() -> None:
    curve = [10.0 - i for i in range(10)] + [0.5] * 20
    assert final_loss(curve) == 0.5 and math.isinf(final_loss(curve + [float("nan")]))
    assert steps_to(curve, 0.5) == 20  # first full window at the target
    assert steps_to(curve, 0.1) is None
    assert steps_to([1.0] * 5, 2.0) is None  # shorter than a window


def test_evaluate_cli_quick_on_a_tiny_suite(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    rules = []
    for kind in ("gmn", "mlp"):
        d = tmp_path / f"rule_{kind}"
        UpdateRule(RuleConfig(kind=kind, hidden=4, layers=1, alpha=0.01)).save_pretrained(d)
        rules += ["--rule", str(d)]
    out = tmp_path / "eval"
    evaluate.main([*rules, "--quick", "--tasks", "siren_shapes", "--steps", "12", "--grid-points", "2", "--threads", "1",
                   "--out", str(out)])
    data = json.loads((out / "results.json").read_text())
    (entry,) = data["entries"]
    assert entry["task"] == "siren_shapes/s0"
    assert set(entry["results"]) == {"adam", "adamw", "sgd_momentum", "rule_gmn", "rule_mlp"}
    adam = entry["results"]["adam"]
    assert len(adam["grid"]) == 2 and adam["lr"] in (1e-4, 1e-1) and len(adam["curve"]) == 12
    assert entry["results"]["rule_gmn"]["lr"] == adam["lr"]
    torch.set_num_threads(threads)
    table = (out / "results.md").read_text()
    assert "| siren_shapes/s0 | rule_gmn |" in table and "median speedup" in table
    assert (out / "curves" / "siren_shapes_s0.png").stat().st_size > 1000
