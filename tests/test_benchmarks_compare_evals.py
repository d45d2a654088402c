"""benchmarks.compare_evals: summary rows side by side and strict per-task wins (ties count for none)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.compare_evals import main


def _summary(rule_losses: dict[str, float]) -> dict:
    row = {"median_speedup": 1.0, "median_wall_speedup": 1.0, "tasks_speedup_ge_1": 2, "tasks_wall_speedup_ge_1": 2,
           "beats_adam_final_loss": 0, "divergences": 0, "median_cost_vs_adam": 1.0}
    return {"summary": {"adam": row, "rule_gmn": row},
            "per_task": {t: {"adam": {"final_loss": 1.0}, "rule_gmn": {"final_loss": v}} for t, v in rule_losses.items()}}


def test_compare_evals_counts_strictly_lower_final_losses(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text(json.dumps(_summary({"t1": 0.5, "t2": 2.0, "t3": 1.0})))
    (tmp_path / "new.json").write_text(json.dumps(_summary({"t1": 0.4, "t2": 3.0, "t3": 1.0})))
    assert main(["--eval", f"old={tmp_path / 'old.json'}", "--eval", f"new={tmp_path / 'new.json'}",
                 "--out", str(tmp_path / "out")]) == 0
    c = json.loads((tmp_path / "out" / "compare_evals.json").read_text())
    assert c["optimizers"]["rule_gmn"]["lower_final_loss"] == {"old": 1, "new": 1}  # t3 is a tie
    assert c["optimizers"]["adam"]["lower_final_loss"] == {"old": 0, "new": 0}
    assert "| rule_gmn | new |" in (tmp_path / "out" / "compare_evals.md").read_text()
