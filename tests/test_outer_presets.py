"""The GPU-sized presets run on CPU: ``--preset gpu`` and ``--preset multi`` (wide rule,
second-order TBPTT, k = 50) take their first two outer steps on tiny tasks without a skipped
step, and the rule moves off Adam."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from outer_train.__main__ import main

SMALL = ['tasks.families=["teacher_student"]', "tasks.max_params=300", "tasks.groups=2", "tasks.group_size=2",
         "threads=1", "log.progress=false", "log.every=1", "log.compare_every=0", "log.hist_every=0"]


@pytest.mark.parametrize("preset", ["gpu", "multi"])
def test_preset_takes_two_outer_steps_on_cpu(tmp_path: Path, preset: str) -> None:
    argv = ["--preset", preset, "--steps", "2", "--out", str(tmp_path), "--name", preset]
    for s in SMALL:
        argv += ["--set", s]
    assert main(argv) == 0
    run = tmp_path / preset
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["preset"] == preset and cfg["estimator"]["second_order"] is True
    assert cfg["rule"]["hidden"] == 16 and cfg["tasks"]["truncation"] % cfg["rule"]["refresh_every"] == 0
    final = json.loads((run / "final.json").read_text())
    assert final["step"] == 2 and final["skipped_total"] == 0
    assert final["alpha"] != 0.0  # the rule moved off alpha = 0 (Adam)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["meta_grad_norm"] > 0 for m in metrics)
