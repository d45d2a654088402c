"""benchmarks.trace_schedule_free: one held-out task under GMNOptimizer(model, rule="lrfree_sf"), the loss at y
and at the average x at log-spaced steps."""

from __future__ import annotations

import json
import math

from benchmarks import trace_schedule_free as tsf


def test_trace_records_losses_at_y_and_x_and_the_estimate(tmp_path) -> None:
    result = tsf.main(["--task", "mlp_shapes", "--seed", "0", "--steps", "200", "--out", str(tmp_path)])
    rows = result["rows"]
    assert rows[0]["step"] == 1 and rows[-1]["step"] == 200 and [r["step"] for r in rows] == sorted({r["step"] for r in rows})
    assert all(math.isfinite(r["loss_y"]) and math.isfinite(r["loss_x"]) for r in rows)
    assert rows[-1]["loss_y"] < rows[0]["loss_y"] and rows[-1]["d"] > rows[0]["d"]  # it trains; d grew
    assert any(r["loss_x"] != r["loss_y"] for r in rows[1:])  # x is not y once z has moved
    saved = json.loads((tmp_path / "trace_mlp_shapes_s0.json").read_text())
    assert saved["rows"] == rows and "| step | loss at y |" in (tmp_path / "trace_mlp_shapes_s0.md").read_text()
