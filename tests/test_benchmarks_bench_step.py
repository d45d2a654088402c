"""benchmarks.bench_step: timed blocks start with a refresh, state is 3x the parameters for the
rules (5x lr-free, 6x with per-tensor estimates, 3.3x with those reading every 10th entry) and 2x for Adam, and the peak memory pass (a fresh process per size, glibc's mmap threshold
pinned) fills every row."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_bench_step_writes_times_state_and_peaks(tmp_path) -> None:
    subprocess.run([sys.executable, "-m", "benchmarks.bench_step", "--out", str(tmp_path), "--sizes", "1e5",
                    "--repeats", "1", "--kinds", "adam", "gmnopt-default", "gmnopt-default-lrfree",
                    "gmnopt-default-lrfree-stride4-every10", "gmnopt-default-lrfree-every10-tensor70",
                    "gmnopt-default-lrfree-stride10-every10-tensor70"],
                   check=True, capture_output=True)
    result = json.loads((tmp_path / "bench_step.json").read_text())
    (size,) = result["sizes"]
    adam, rule = size["rows"]["adam"], size["rows"]["gmnopt-default"]
    assert size["block"] == 100 and adam["vs_adam"] == 1.0
    assert abs(adam["state_over_params"] - 2.0) < 0.01 and abs(rule["state_over_params"] - 3.0) < 0.01
    assert abs(size["rows"]["gmnopt-default-lrfree"]["state_over_params"] - 5.0) < 0.01  # + the start and a gradient sum
    # every 4th entry: x_0 and s hold a quarter of the parameters
    assert abs(size["rows"]["gmnopt-default-lrfree-stride4-every10"]["state_over_params"] - 3.5) < 0.01
    # per-tensor estimates: their gradient sum on top
    assert abs(size["rows"]["gmnopt-default-lrfree-every10-tensor70"]["state_over_params"] - 6.0) < 0.01
    # strided, x_0 and both sums hold every 11th entry of each weight (the prime near 10 that divides none of
    # its dimensions): 3x + 3/11, plus the biases, read whole (fewer than core.MIN_TENSOR_SAMPLE entries)
    assert 3.27 <= size["rows"]["gmnopt-default-lrfree-stride10-every10-tensor70"]["state_over_params"] < 3.31
    assert rule["refresh_ms"] > rule["plain_step_ms"] > 0  # the rule runs on the block's first step only
    assert all(row["peak_step_bytes"] is not None and row["peak_step_bytes"] >= 0 for row in size["rows"].values())
    md = (tmp_path / "bench_step.md").read_text()
    assert "GMNOptimizer, rule=\"default\"" in md and "estimate_stride=4, estimate_every=10" in md
    assert "estimate_every=10, per_tensor=0.7" in md


def test_a_retired_default_runs_by_its_options() -> None:
    """gmnopt-lrfree_plateau-lrfree (0.8's default, a retired rule name since 0.12) is rule="adam" lr-free with
    RETIRED_RULES' options, options after -lrfree overriding them; the current kinds name no retired rule."""
    from benchmarks.bench_step import CURRENT_KINDS, _rule_of, label
    from metaopt.optim.rules import RETIRED_RULES

    assert _rule_of("gmnopt-lrfree_plateau-lrfree") == ("adam", True, RETIRED_RULES["lrfree_plateau"].options)
    assert _rule_of("gmnopt-lrfree_lean-lrfree-every5")[2] == {**RETIRED_RULES["lrfree_lean"].options, "estimate_every": 5}
    assert "0.8's default" in label("gmnopt-lrfree_plateau-lrfree")
    assert not any(_rule_of(k)[0] in RETIRED_RULES for k in CURRENT_KINDS if k != "adam")


def test_soap_switch_kinds_time_soaps_step_and_count_its_bases(tmp_path) -> None:
    """gmnopt-shipped-soap[-both|-columns][-block<b>]: after the switch (forced), the moments and each matrix's
    statistics and bases are the state; the estimate's buffers are freed. A 50-wide MLP (4 layers of 50 x 50 + 50):
    GMNOptimizer(model)'s switch (the input side, 50 <= 64: whole) keeps 2 x 50^2 per layer, both sides 2 (50^2 +
    50^2), the columns in blocks of 25 2 x 2 x 25^2."""
    subprocess.run([sys.executable, "-m", "benchmarks.bench_step", "--out", str(tmp_path), "--sizes", "1e4",
                    "--repeats", "1", "--kinds", "adam", "gmnopt-shipped", "gmnopt-shipped-soap", "gmnopt-shipped-soap-both",
                    "gmnopt-shipped-soap-columns-block32"], check=True, capture_output=True)
    (size,) = json.loads((tmp_path / "bench_step.json").read_text())["sizes"]
    params = 4 * (50 * 50 + 50)
    rows = size["rows"]
    default, both, blocked = rows["gmnopt-shipped-soap"], rows["gmnopt-shipped-soap-both"], rows["gmnopt-shipped-soap-columns-block32"]
    # gmnopt-shipped is the step before the switch (on fixed gradients the mode would switch within the timed blocks):
    # the lr-free state, every entry of tensors this small sampled (x_0 and a gradient sum: 4x)
    assert abs(rows["gmnopt-shipped"]["state_over_params"] - 4.0) < 0.01
    assert abs(default["state_over_params"] - (2 * params + 4 * 2 * 50**2) / params) < 0.01
    assert abs(both["state_over_params"] - (2 * params + 4 * 2 * 2 * 50**2) / params) < 0.01
    assert abs(blocked["state_over_params"] - (2 * params + 4 * 2 * 2 * 25**2) / params) < 0.01
    assert default["ms_per_step"] > 0 and both["ms_per_step"] > 0 and blocked["ms_per_step"] > 0
    md = (tmp_path / "bench_step.md").read_text()
    assert "SoapSwitch(sides='columns', block=32, statistics_every=1, precondition_every=10)" in md
    assert "SoapSwitch(sides='both', block=64, statistics_every=1, precondition_every=10)" in md
    assert "after its soap switch" in md


def test_soap_switch_kind_names_parse_to_their_switch() -> None:
    """-both / -columns, -block<b>, -stats<k> and -precond<k> set the switch's sides, blocks, statistics_every and
    precondition_every in any order
    (none: GMNOptimizer(model)'s, SoapSwitch()); other suffixes are refused with the grammar; kinds that are not the
    switch's have none."""
    from benchmarks.bench_step import _soap_switch_of
    from metaopt.optim import SoapSwitch

    assert _soap_switch_of("gmnopt-shipped-soap") == SoapSwitch()
    assert _soap_switch_of("gmnopt-shipped-soap-stats4-columns-block32") == SoapSwitch(
        sides="columns", block=32, statistics_every=4)
    assert _soap_switch_of("gmnopt-shipped-soap-both-block64") == SoapSwitch(sides="both", block=64)
    assert _soap_switch_of("gmnopt-shipped-soap-precond20-stats2") == SoapSwitch(precondition_every=20, statistics_every=2)
    assert _soap_switch_of("gmnopt-shipped") is None and _soap_switch_of("adam") is None
    for bad in ("gmnopt-shipped-soap-stats", "gmnopt-shipped-soap-rows", "gmnopt-shipped-soap-stats0",
                "gmnopt-shipped-soap-precond", "gmnopt-shipped-soap-precond0"):
        with pytest.raises(ValueError, match="-precond<k>|statistics_every|precondition_every"):
            _soap_switch_of(bad)
