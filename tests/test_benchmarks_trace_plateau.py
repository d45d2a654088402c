"""benchmarks.trace_plateau: held-out tasks under GMNOptimizer(model) (the plateau decay with its boost), 0.8's
and 0.7's defaults, the loss and the gradient's squared norm along each run, the cuts and the boosts."""

from __future__ import annotations

import json
import math

from benchmarks import trace_plateau as tp


def test_trace_writes_norms_losses_and_cuts_and_the_first_1000_steps_are_0_7s(tmp_path) -> None:
    """Up to step 1,000 the three defaults are the same run to the bit (neither a cut nor a boost can come
    before it)."""
    assert tp.main(["--tasks", "mlp_shapes", "--seed", "0", "--steps", "1000", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "trace_s0.json").read_text())
    runs = saved["tasks"]["mlp_shapes"]
    assert set(runs) == {"boost", "plateau", "settled"} and len(runs["plateau"]["losses"]) == 1000 // tp.EVERY
    assert all(math.isfinite(v) and v > 0 for v in runs["plateau"]["norms"])
    # a cut can come at step 1,000 at the earliest and acts from that step's update on: every loss and
    # gradient up to it is 0.7's to the bit
    assert runs["plateau"]["losses"] == runs["settled"]["losses"] == runs["boost"]["losses"]
    assert runs["plateau"]["norms"] == runs["settled"]["norms"] == runs["boost"]["norms"]
    assert all(abs(t) >= 2 * tp.BLOCK and (t < 0 or t % tp.BLOCK == 0) for t in runs["boost"]["boosts"])
    assert runs["settled"]["cuts"] == [] and all(t % tp.BLOCK == 0 and t >= 2 * tp.BLOCK for t in runs["plateau"]["cuts"])
    assert "| mlp_shapes |" in (tmp_path / "trace_s0.md").read_text() and (tmp_path / "trace_s0.png").stat().st_size > 0
    assert tp.block_means([1.0] * 10 + [4.0] * 10, block=10) == [1.0, 4.0]
