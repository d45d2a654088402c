"""benchmarks.bench_user_loops: plain user-style loops, Adam tuned on the first seed, GMNOptimizer(model) as
shipped; the speedups are the ratios of the steps and seconds each takes to reach tuned Adam's final loss."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import bench_user_loops as ul


def test_every_loop_trains_with_the_default_optimizer() -> None:
    """Each user-style model (GRU and BatchNorm included) builds its graph and steps under GMNOptimizer(model)."""
    for loop in ul.loops().values():
        run = ul.train(loop, ul.gmn_default, 12, seed=0)
        assert len(run["curve"]) == len(run["times"]) == 12 and all(math.isfinite(x) for x in run["curve"])
        assert run["times"] == sorted(run["times"])


def test_batches_and_runs_are_reproducible_per_seed() -> None:
    loop = ul.loops()["tabular_mlp"]
    a, b = ul.train(loop, ul.adam(1e-2), 20, seed=3), ul.train(loop, ul.adam(1e-2), 20, seed=3)
    assert a["curve"] == b["curve"]
    assert ul.train(loop, ul.adam(1e-2), 20, seed=4)["curve"] != a["curve"]


def test_bench_writes_rows_summary_and_plot(tmp_path) -> None:
    assert ul.main(["--out", str(tmp_path), "--steps", "60", "--seeds", "0", "1", "--tasks", "logistic_regression"]) == 0
    data = json.loads((tmp_path / "user_loops.json").read_text())
    rows = data["rows"]
    assert [(r["task"], r["seed"]) for r in rows] == [("logistic_regression", 0), ("logistic_regression", 1)]
    first, second = rows
    assert first["adam_lr"] == second["adam_lr"] in ul.ADAM_GRID  # tuned on the first seed only
    assert first["adam_grid"] is not None and second["adam_grid"] is None
    assert min(first["adam_grid"].values()) == pytest.approx(first["adam_final_loss"])
    for r in rows:
        assert r["adam_steps"] is not None and r["adam_steps"] <= 60  # Adam reaches its own final loss
        if r["gmn_steps"]:
            assert r["speedup_steps"] == pytest.approx(r["adam_steps"] / r["gmn_steps"])
            assert r["speedup_clock"] == pytest.approx(r["adam_seconds"] / r["gmn_seconds"])
        else:
            assert r["speedup_steps"] == r["speedup_clock"] == 0.0 and r["gmn_final_loss"] > r["adam_final_loss"]
    s = data["summary"]["60"]
    assert s["tasks"] == 1 and s["median_speedup_steps"] == pytest.approx(
        sorted(r["speedup_steps"] for r in rows)[0] / 2 + sorted(r["speedup_steps"] for r in rows)[1] / 2)
    assert "| 60 |" in (tmp_path / "user_loops.md").read_text()
    assert (tmp_path / "user_loops_60.png").stat().st_size > 0


def test_default_optimizer_lowers_the_loss_of_a_plain_loop() -> None:
    torch.manual_seed(0)
    run = ul.train(ul.loops()["logistic_regression"], ul.gmn_default, 300, seed=0)
    assert run["final_loss"] < 0.5 * run["curve"][0]


def test_variants_share_tuned_adam_and_are_summarised_apart(tmp_path) -> None:
    ul.main(["--out", str(tmp_path), "--steps", "40", "--seeds", "0", "1", "--tasks", "tabular_mlp",
             "--variants", "default", "per_tensor_0"])
    data = json.loads((tmp_path / "user_loops.json").read_text())
    rows = data["rows"]
    assert [(r["seed"], r["variant"]) for r in rows] == [(0, "default"), (0, "per_tensor_0"), (1, "default"),
                                                         (1, "per_tensor_0")]
    curves = json.loads((tmp_path / "user_loops_curves.json").read_text())
    assert [(c["seed"], c["variant"]) for c in curves] == [(r["seed"], r["variant"]) for r in rows]
    assert all("curves" not in r for r in rows)  # user_loops.json stays small
    for seed in (0, 1):  # one Adam run per seed, whatever runs beside it
        a, b = [c["curves"] for c in curves if c["seed"] == seed]
        assert a["adam"] == b["adam"] and a["gmn"] != b["gmn"]
    assert set(data["summary"]) == {"40", "40/per_tensor_0"}
    assert "GMNOptimizer(model, per_tensor=0)" in (tmp_path / "user_loops.md").read_text()


def test_retired_variants_run_by_their_options() -> None:
    """--variants plateau (0.8's default, a retired rule name since 0.12) builds rule="adam" lr-free with 0.8's
    options and labels its row with the call a user would type."""
    from metaopt.optim.rules import RETIRED_RULES

    label, make = ul.VARIANTS["plateau"]
    opt = make(torch.nn.Linear(4, 2))
    assert label == RETIRED_RULES["lrfree_plateau"].call() and label.startswith('GMNOptimizer(model, rule="adam"')
    assert opt.lr_free and opt.plateau_block == 500 and not opt.plateau_boost and opt.rule.is_identity


def test_merge_summarises_two_runs_as_one_and_refuses_a_row_twice(tmp_path) -> None:
    """--merge: tasks run as two processes give the summary one run over all of them would (medians over tasks)."""
    for name in ("logistic_regression", "tabular_mlp"):
        ul.main(["--out", str(tmp_path / name), "--steps", "40", "--seeds", "0", "--tasks", name])
    parts = [tmp_path / name / "user_loops.json" for name in ("logistic_regression", "tabular_mlp")]
    assert ul.main(["--merge", *map(str, parts), "--out", str(tmp_path / "both")]) == 0
    merged = json.loads((tmp_path / "both" / "user_loops.json").read_text())
    rows = [r for p in parts for r in json.loads(p.read_text())["rows"]]
    assert merged["rows"] == rows and merged["summary"] == ul.summary(rows)
    assert merged["summary"]["40"]["tasks"] == 2 and "| 40 |" in (tmp_path / "both" / "user_loops.md").read_text()
    with pytest.raises(SystemExit, match="more than one file"):
        ul.main(["--merge", str(parts[0]), str(parts[0]), "--out", str(tmp_path / "twice")])
