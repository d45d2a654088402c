"""outer_train.evaluate on a tiny slice of the held-out suite writes its JSON, table and curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
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


def test_a_collapse_is_a_fit_that_ends_back_near_its_start_and_the_summary_counts_it() -> None:
    """collapsed: the running loss fell below a tenth of the first window's and the final loss is back above
    a quarter of it (a network a spike killed); a fit that stays down, one that never fitted, a diverged and a
    short run are not collapses. `overall` counts them per optimizer."""
    fit = [2.3] * 10 + [1e-4] * 100
    assert not evaluate.collapsed(fit)
    assert evaluate.collapsed(fit + [1.6] * 10) and evaluate.collapsed(fit + [2.3] * 10)
    assert evaluate.collapsed(fit + [1.0] * 10)  # a quarter of the start or more
    assert not evaluate.collapsed(fit + [0.4] * 10)  # back up, but below a quarter of the start: a worse end
    assert not evaluate.collapsed([2.3] * 110)  # never fitted
    assert not evaluate.collapsed(fit + [math.nan] + [2.3] * 10)  # diverged: counted as a divergence instead
    assert not evaluate.collapsed([2.3, 1e-4, 2.3])  # too short to read
    run = {"speedup": 1.0, "wall_speedup": 1.0, "final_loss": 1.0, "ms_per_step": 1.0, "diverged": False,
           "lr": 1e-3, "metric": 0.5, "steps_to_adam": 10}
    entries = [{"task": f"t/s{i}", "metric_name": "accuracy", "results": {"adam": {**run, "curve": fit},
                                               "rule": {**run, "curve": fit + [2.3] * 10 if i else fit}}}
               for i in range(3)]
    summary = evaluate.overall(entries, ["adam", "rule"])
    assert summary["adam"]["collapses"] == 0 and summary["rule"]["collapses"] == 2
    assert "| collapses |" in evaluate.markdown(entries, ["adam", "rule"])


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
    assert set(entry["results"]) == {"adam", "adamw", "sgd_momentum", "rule_gmn", "rule_mlp", "rule_gmn@best",
                                     "rule_mlp@best"}
    res = entry["results"]
    adam = res["adam"]
    assert len(adam["grid"]) == 2 and adam["lr"] in (1e-4, 1e-1) and len(adam["curve"]) == 12
    # the rule at its default lr (GMNOptimizer(model): the rule's default_lr), and at its best lr on Adam's grid
    assert res["rule_gmn"]["lr"] == 1e-3 and res["rule_gmn"]["grid"] is None
    assert res["rule_gmn@best"]["lr"] in (1e-4, 1e-1) and len(res["rule_gmn@best"]["grid"]) == 2
    for r in res.values():  # the whole loop is timed: seconds after every step, increasing
        assert len(r["times"]) == len(r["curve"]) == 12 and r["times"] == sorted(r["times"]) and r["times"][0] > 0
        assert r["wall_speedup"] >= 0.0 and r["speedup"] >= 0.0
    assert res["adam"]["wall_speedup"] == 1.0 and res["adam"]["speedup"] == 1.0
    assert entry["sensitivity"] == {}  # the default lr 1e-3 is not on a 2-point grid
    torch.set_num_threads(threads)
    table = (out / "results.md").read_text()
    assert "| siren_shapes/s0 | rule_gmn |" in table and "median speedup (wall-clock)" in table
    summary = json.loads((out / "summary.json").read_text())
    assert "curve" not in summary["runs"][0]["results"]["adam"] and summary["summary"]["adam"]["median_speedup"] == 1.0
    assert (out / "curves" / "siren_shapes_s0.png").stat().st_size > 1000


@pytest.mark.parametrize("rule_lr, low, high", [(1e-3, 1e-4, 1e-2), (1e-2, 1e-3, 1e-1)])
def test_rule_runs_at_its_default_lr_and_its_sensitivity_comes_from_its_grid(tmp_path: Path, rule_lr, low, high) -> None:
    """On a 4-point grid (1e-4, 1e-3, 1e-2, 1e-1) a rule's default-lr run (its ``default_lr``: what
    GMNOptimizer(model) gives) is the grid's own run at that lr, and its sensitivity is the final loss at
    the grid neighbours over the default's; Adam's stays around 1e-3."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    d = tmp_path / "rule"
    UpdateRule(RuleConfig(kind="gmn", hidden=4, alpha=0.01, refresh_every=5, default_lr=rule_lr)).save_pretrained(d)
    out = tmp_path / "eval"
    evaluate.main(["--rule", str(d), "--tasks", "mlp_shapes", "--seeds", "0", "--steps", "12", "--grid-points", "4",
                   "--threads", "1", "--out", str(out)])
    torch.set_num_threads(threads)
    (entry,) = json.loads((out / "results.json").read_text())["entries"]
    grid = entry["results"]["rule_gmn@best"]["grid"]
    key = {lr: f"{lr:.3g}" for lr in (low, rule_lr, high)}
    assert entry["results"]["rule_gmn"]["lr"] == rule_lr
    assert entry["results"]["rule_gmn"]["final_loss"] == pytest.approx(grid[key[rule_lr]])
    sens = entry["sensitivity"]
    assert (sens["rule_gmn"]["lr_low"], sens["rule_gmn"]["lr_high"]) == pytest.approx((low, high))
    assert sens["rule_gmn"]["low_over_default"] == pytest.approx(grid[key[low]] / grid[key[rule_lr]])
    assert sens["rule_gmn"]["high_over_default"] == pytest.approx(grid[key[high]] / grid[key[rule_lr]])
    assert (sens["adam"]["lr_low"], sens["adam"]["lr_high"]) == pytest.approx((1e-4, 1e-2))
    assert "lr sensitivity" in (out / "results.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["default_lr"] == {"adam": 1e-3, "rule_gmn": rule_lr}



def test_no_best_runs_rules_at_their_default_lr_only_and_can_reuse_a_run_with_the_grid(tmp_path: Path) -> None:
    """--no-best: no <rule>@best rows (the rule runs once per seed at its default lr), Adam tuned as always,
    and such a run may --reuse one made with the grid (the setting concerns only the rows run now)."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    d = tmp_path / "rule"
    UpdateRule(RuleConfig(kind="gmn", hidden=4, alpha=0.01, refresh_every=5, default_lr=1e-2)).save_pretrained(d)
    common = ["--tasks", "mlp_shapes", "--seeds", "0", "1", "--steps", "12", "--grid-points", "3", "--threads", "1",
              "--baselines", "adam"]
    evaluate.main(["--rule", f"a={d}", *common, "--no-best", "--out", str(tmp_path / "nb")])
    evaluate.main(["--rule", f"with_grid={d}", *common, "--out", str(tmp_path / "g")])
    evaluate.main(["--rule", f"b={d}", *common, "--no-best", "--reuse", str(tmp_path / "g" / "results.json"),
                   "--out", str(tmp_path / "both")])
    torch.set_num_threads(threads)
    entries = json.loads((tmp_path / "nb" / "results.json").read_text())["entries"]
    for e in entries:
        assert set(e["results"]) == {"adam", "a"} and e["results"]["a"]["lr"] == 1e-2
        assert e["results"]["adam"]["grid"] is None or len(e["results"]["adam"]["grid"]) == 3
    assert "only (--no-best)" in (tmp_path / "nb" / "results.md").read_text()
    both = json.loads((tmp_path / "both" / "results.json").read_text())["entries"]
    assert {k for e in both for k in e["results"]} == {"adam", "with_grid", "with_grid@best", "b"}
    grid_run = json.loads((tmp_path / "g" / "results.json").read_text())["entries"]
    for e, g in zip(both, grid_run):  # the same rule at the same lr from the same start: the same curve
        assert e["results"]["b"]["curve"] == g["results"]["with_grid"]["curve"]
    # a run on other seeds without the grid merges with one with it (the @best row only where every seed has it)
    evaluate.main(["--rule", f"with_grid={d}", *common[:3], "2", *common[5:], "--no-best", "--out", str(tmp_path / "s2")])
    evaluate.main(["--merge", str(tmp_path / "g" / "results.json"), str(tmp_path / "s2" / "results.json"),
                   "--out", str(tmp_path / "m")])
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    assert merged["settings"]["seeds"] == [0, 1, 2] and merged["settings"]["rule_best"] is False
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert "with_grid" in summary["per_task"]["mlp_shapes"] and "with_grid@best" not in summary["per_task"]["mlp_shapes"]


def test_lrs_tuned_on_first_seed_and_partial_runs_merge(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    common = ["--steps", "12", "--grid-points", "2", "--threads", "1", "--seeds", "0", "1"]
    evaluate.main(["--tasks", "siren_shapes", *common, "--out", str(tmp_path / "a")])
    evaluate.main(["--tasks", "mlp_shapes", *common, "--out", str(tmp_path / "b")])
    torch.set_num_threads(threads)
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    first, second = (e["results"] for e in a["entries"])
    for name in ("adam", "adamw", "sgd_momentum"):
        assert len(first[name]["grid"]) == 2 and second[name]["grid"] is None  # seed 1 reuses seed 0's lr
        assert second[name]["lr"] == first[name]["lr"] and len(second[name]["curve"]) == 12
    evaluate.main(["--merge", str(tmp_path / "a" / "results.json"), str(tmp_path / "b" / "results.json"),
                   "--out", str(tmp_path / "m")])
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    assert [e["task"] for e in merged["entries"]] == ["siren_shapes/s0", "siren_shapes/s1", "mlp_shapes/s0", "mlp_shapes/s1"]
    assert merged["settings"]["tasks"] == ["siren_shapes", "mlp_shapes"]
    table = (tmp_path / "m" / "results.md").read_text()
    assert "| mlp_shapes/s1 | adam |" in table and "Summary over tasks" in table and "| mlp_shapes | 2 |" in table
    assert "torch threads 1." in table  # the parts' threads, not the merging process's
    with pytest.raises(SystemExit):  # the same runs twice cannot be merged
        evaluate.main(["--merge", str(tmp_path / "a" / "results.json"), str(tmp_path / "a" / "results.json"),
                       "--out", str(tmp_path / "x")])
    # --replace: a re-run of part of the tasks replaces those runs, in their place
    evaluate.main(["--tasks", "siren_shapes", *common, "--out", str(tmp_path / "rerun")])
    torch.set_num_threads(threads)
    evaluate.main(["--merge", str(tmp_path / "m" / "results.json"), str(tmp_path / "rerun" / "results.json"),
                   "--replace", "--out", str(tmp_path / "r")])
    replaced = json.loads((tmp_path / "r" / "results.json").read_text())
    rerun = json.loads((tmp_path / "rerun" / "results.json").read_text())["entries"]
    assert [e["task"] for e in replaced["entries"]] == [e["task"] for e in merged["entries"]]
    assert replaced["entries"][:2] == rerun and replaced["entries"][2:] == merged["entries"][2:]
    assert rerun[0]["results"]["adam"]["times"] != merged["entries"][0]["results"]["adam"]["times"]  # a re-run
    # a replicate on other seeds of the same task pools with it (each task's median over all its seeds), and
    # --rename gives an optimizer labelled differently in the two runs one row (its @best row too)
    evaluate.main(["--tasks", "siren_shapes", "--steps", "12", "--grid-points", "2", "--threads", "1",
                   "--seeds", "2", "--out", str(tmp_path / "s2")])
    torch.set_num_threads(threads)
    s2 = json.loads((tmp_path / "s2" / "results.json").read_text())
    s2["entries"][0]["results"]["adam_again"] = s2["entries"][0]["results"].pop("adam")
    (tmp_path / "s2" / "results.json").write_text(json.dumps(s2))
    evaluate.main(["--merge", str(tmp_path / "a" / "results.json"), str(tmp_path / "s2" / "results.json"),
                   "--rename", "adam_again=adam", "--out", str(tmp_path / "pooled")])
    pooled = json.loads((tmp_path / "pooled" / "results.json").read_text())
    assert pooled["settings"]["seeds"] == [0, 1, 2]
    assert [e["task"] for e in pooled["entries"]] == ["siren_shapes/s0", "siren_shapes/s1", "siren_shapes/s2"]
    assert all("adam" in e["results"] and "adam_again" not in e["results"] for e in pooled["entries"])
    assert "| siren_shapes | 3 |" in (tmp_path / "pooled" / "results.md").read_text()
    with pytest.raises(SystemExit):
        evaluate.main(["--rename", "a=b", "--out", str(tmp_path / "x")])  # only with --merge


def test_baselines_can_be_restricted_to_adam(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    evaluate.main(["--tasks", "siren_shapes", "--seeds", "0", "--steps", "12", "--grid-points", "2", "--threads", "1",
                   "--baselines", "adam", "--out", str(tmp_path)])
    torch.set_num_threads(threads)
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["entries"][0]["results"]) == {"adam"} and data["settings"]["baselines"] == ["adam"]


def test_adam_cosine_baseline_decays_the_lr_to_zero_over_the_horizon(tmp_path: Path) -> None:
    """adam_cosine is tuned Adam whose lr follows a half cosine to 0 over --steps: at the horizon the
    optimizer's lr is 0, and its run differs from constant Adam's at the same lr."""
    opt, sched = evaluate.cosine(torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=0.1), 4)
    lrs = []
    for _ in range(4):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and lrs == sorted(lrs, reverse=True)
    threads = torch.get_num_threads()
    evaluate.main(["--tasks", "mlp_shapes", "--seeds", "0", "--steps", "12", "--grid-points", "2", "--threads", "1",
                   "--baselines", "adam", "adam_cosine", "--out", str(tmp_path)])
    torch.set_num_threads(threads)
    res = json.loads((tmp_path / "results.json").read_text())["entries"][0]["results"]
    assert set(res) == {"adam", "adam_cosine"}
    assert res["adam_cosine"]["curve"][1:] != res["adam"]["curve"][1:] or res["adam_cosine"]["lr"] != res["adam"]["lr"]


def test_rule_schedule_cosine_runs_the_rules_under_cosine_decay(tmp_path: Path) -> None:
    """--rule-schedule cosine: each rule runs as <label>+cosine (default lr and @best) under the decay
    adam_cosine uses, so its curve differs from the same rule at a constant lr; the setting is recorded."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=0.1)).save_pretrained(tmp_path / "r")
    common = ["--tasks", "mlp_shapes", "--seeds", "0", "--steps", "12", "--grid-points", "2", "--threads", "1",
              "--baselines", "adam", "--rule", str(tmp_path / "r")]
    evaluate.main([*common, "--out", str(tmp_path / "constant")])
    evaluate.main([*common, "--rule-schedule", "cosine", "--out", str(tmp_path / "cosine")])
    torch.set_num_threads(threads)
    const = json.loads((tmp_path / "constant" / "results.json").read_text())
    cos = json.loads((tmp_path / "cosine" / "results.json").read_text())
    assert cos["settings"]["rule_schedule"] == "cosine" and const["settings"]["rule_schedule"] == "constant"
    res_c, res_k = const["entries"][0]["results"], cos["entries"][0]["results"]
    assert set(res_k) == {"adam", "rule_mlp+cosine", "rule_mlp+cosine@best"}
    assert res_k["adam"]["curve"] == res_c["adam"]["curve"]
    assert res_k["rule_mlp+cosine"]["curve"][:1] == res_c["rule_mlp"]["curve"][:1]  # same start, then decayed
    assert res_k["rule_mlp+cosine"]["curve"][2:] != res_c["rule_mlp"]["curve"][2:]
    with pytest.raises(SystemExit):  # constant- and cosine-schedule runs do not merge into one table
        evaluate.main(["--merge", str(tmp_path / "constant" / "results.json"), str(tmp_path / "cosine" / "results.json"),
                       "--out", str(tmp_path / "merged")])


def test_reuse_adds_a_labelled_rule_and_refuses_a_label_collision(tmp_path: Path) -> None:
    """--reuse keeps an earlier run's optimizers; a second rule of the same kind must get its own label
    (--rule LABEL=DIR), else its rows would be taken from the earlier rule's results."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=0.1)).save_pretrained(tmp_path / "r1")
    UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=-0.1)).save_pretrained(tmp_path / "r2")
    common = ["--tasks", "siren_shapes", "--seeds", "0", "--steps", "12", "--grid-points", "2", "--threads", "1",
              "--baselines", "adam"]
    evaluate.main([*common, "--rule", str(tmp_path / "r1"), "--out", str(tmp_path / "a")])
    first = json.loads((tmp_path / "a" / "results.json").read_text())["entries"][0]["results"]
    with pytest.raises(SystemExit):  # rule_mlp is already in the reused results
        evaluate.main([*common, "--rule", str(tmp_path / "r2"), "--reuse", str(tmp_path / "a" / "results.json"),
                       "--out", str(tmp_path / "b")])
    evaluate.main([*common, "--rule", f"rule_mlp_new={tmp_path / 'r2'}", "--reuse", str(tmp_path / "a" / "results.json"),
                   "--out", str(tmp_path / "c")])
    torch.set_num_threads(threads)
    res = json.loads((tmp_path / "c" / "results.json").read_text())["entries"][0]["results"]
    assert {"adam", "rule_mlp", "rule_mlp@best", "rule_mlp_new", "rule_mlp_new@best"} <= set(res)
    assert res["rule_mlp"]["curve"] == first["rule_mlp"]["curve"] and res["adam"]["curve"] == first["adam"]["curve"]
    assert res["rule_mlp_new"]["curve"] != first["rule_mlp"]["curve"]
    # the table says which optimizers' timings come from the earlier run
    assert "(--reuse) were timed in that run" in (tmp_path / "c" / "results.md").read_text()
    assert "--reuse" not in (tmp_path / "a" / "results.md").read_text()


@pytest.mark.parametrize("suite,task", [("meta_val", "siren_digits_w32"), ("dev", "siren_shapes_w32")])
def test_selection_suites_can_be_evaluated_and_never_mix_with_held_out_names(tmp_path: Path, suite: str, task: str) -> None:
    """--suite meta_val / dev runs that suite's tasks, seed k from its first seed + k (META_VALIDATION_SEED,
    DEV_SEED), for choosing settings without the held-out suite; held-out task names are refused there."""
    from inner_tasks.tasks.collections import SELECTION_SUITES

    first_seed = SELECTION_SUITES[suite][2]
    threads = torch.get_num_threads()
    evaluate.main(["--suite", suite, "--tasks", task, "--seeds", "0", "1", "--steps", "12",
                   "--grid-points", "2", "--threads", "1", "--baselines", "adam", "--out", str(tmp_path)])
    torch.set_num_threads(threads)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["settings"]["suite"] == suite
    assert [e["task"] for e in data["entries"]] == [f"{task}/s{first_seed + k}" for k in (0, 1)]
    with pytest.raises(SystemExit):
        evaluate.main(["--suite", suite, "--tasks", "siren_shapes", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        evaluate.main(["--suite", suite, "--quick", "--out", str(tmp_path / "y")])


def test_resume_continues_an_interrupted_run_without_rerunning_what_is_done(tmp_path: Path) -> None:
    """--resume keeps the task/seed runs already in --out's results.json and runs the rest; the table says
    which runs were timed in an earlier sitting; other settings are refused."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=0.1)).save_pretrained(tmp_path / "r")
    common = ["--tasks", "siren_shapes", "--steps", "12", "--grid-points", "2", "--threads", "1",
              "--baselines", "adam", "--rule", str(tmp_path / "r"), "--out", str(tmp_path / "run")]
    evaluate.main([*common, "--seeds", "0", "1"])
    full = json.loads((tmp_path / "run" / "results.json").read_text())
    # an interruption after the first seed: only its entry is on disk (marked, to see that it is kept)
    marker = {**full["entries"][0]}
    marker["results"] = {**marker["results"], "adam": {**marker["results"]["adam"], "marker": True}}
    (tmp_path / "run" / "results.json").write_text(json.dumps({**full, "entries": [marker]}))
    evaluate.main([*common, "--seeds", "0", "1", "--resume"])
    torch.set_num_threads(threads)
    resumed = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [e["task"] for e in resumed["entries"]] == [e["task"] for e in full["entries"]]
    assert resumed["entries"][0]["results"]["adam"].get("marker")  # kept, not rerun
    assert resumed["entries"][1]["results"]["rule_mlp"]["curve"] == full["entries"][1]["results"]["rule_mlp"]["curve"]
    assert resumed["resumed"] == [full["entries"][0]["task"]]
    assert "Resumed run (--resume): 1 task/seed runs" in (tmp_path / "run" / "results.md").read_text()
    with pytest.raises(SystemExit):  # other settings: refused, nothing mixed
        evaluate.main([*common, "--seeds", "0", "1", "--steps", "14", "--resume"])


def test_spike_guard_adds_guarded_rows_beside_each_rule(tmp_path: Path, optimizer_calls) -> None:
    """--spike-guard R runs every rule a second time as GMNOptimizer(spike_guard=R), labelled <rule>+guard."""
    threads = torch.get_num_threads()
    UpdateRule(RuleConfig(kind="mlp", hidden=4, alpha=0.1)).save_pretrained(tmp_path / "r")
    common = ["--tasks", "siren_shapes", "--seeds", "0", "--steps", "12", "--grid-points", "2", "--threads", "1",
              "--baselines", "adam", "--rule", str(tmp_path / "r")]
    evaluate.main([*common, "--spike-guard", "3", "--out", str(tmp_path / "g")])
    torch.set_num_threads(threads)
    out = json.loads((tmp_path / "g" / "results.json").read_text())
    assert {"rule_mlp", "rule_mlp@best", "rule_mlp+guard", "rule_mlp+guard@best"} <= set(out["entries"][0]["results"])
    assert out["rules"][-1].endswith("+guard (spike_guard 3)")
    seen = [kw.get("spike_guard") for kw in optimizer_calls]
    assert seen.count(3.0) >= 2 and seen.count(None) >= 2  # grid runs of both, each with its own setting
    with pytest.raises(SystemExit):
        evaluate.main([*common, "--spike-guard", "1", "--out", str(tmp_path / "bad")])


def test_lr_free_rows_tune_the_multiplier_and_variants_only_skips_the_plain_rule(tmp_path: Path, optimizer_calls) -> None:
    """--lr-free runs every rule again as GMNOptimizer(lr_free=True), labelled <rule>+lrfree, with its lr a
    multiplier on powers of 3 around 1 (so its sensitivity reads 1/3x and 3x); --variants-only drops the
    rule's own rows; a shipped rule's name works in place of a directory; --reuse of an earlier run of
    the same LABEL=DIR keeps that rule's rows."""
    def seen() -> list:
        return [(kw.get("lr_free", False), kw.get("lr")) for kw in optimizer_calls]

    threads = torch.get_num_threads()
    common = ["--tasks", "siren_shapes", "--seeds", "0", "--steps", "12", "--grid-points", "2", "--threads", "1",
              "--baselines", "adam", "--rule", "prodigy=adam"]
    evaluate.main([*common, "--lr-free", "--variants-only", "--out", str(tmp_path / "v")])
    res = json.loads((tmp_path / "v" / "results.json").read_text())
    assert set(res["entries"][0]["results"]) == {"adam", "prodigy+lrfree@best", "prodigy+lrfree"}
    assert res["rules"] == ["prodigy=adam+lrfree (lr_free)"]
    assert {lr for free, lr in seen() if free} == set(evaluate.LR_FREE_GRID)  # the multipliers (default 1 among them)
    sens = res["entries"][0]["sensitivity"]["prodigy+lrfree"]
    assert (sens["default_lr"], sens["lr_low"], sens["lr_high"]) == pytest.approx((1.0, 1 / 3, 3.0))
    evaluate.main([*common, "--out", str(tmp_path / "plain")])
    optimizer_calls.clear()
    evaluate.main([*common, "--lr-free", "--reuse", str(tmp_path / "plain" / "results.json"), "--out", str(tmp_path / "r")])
    torch.set_num_threads(threads)
    assert seen() and all(free for free, _ in seen())  # the plain rule's rows came from the reused run
    res = json.loads((tmp_path / "r" / "results.json").read_text())["entries"][0]["results"]
    assert {"prodigy", "prodigy@best", "prodigy+lrfree", "prodigy+lrfree@best"} <= set(res)
    assert "prodigy+lrfree reaches a lower final loss than prodigy on" in (tmp_path / "r" / "results.md").read_text()
    with pytest.raises(SystemExit):
        evaluate.main([*common, "--variants-only", "--out", str(tmp_path / "bad")])
    # --lr-free-multiplier: the +lrfree row runs at that multiplier (GMNOptimizer's lr), its @best grid unchanged
    optimizer_calls.clear()
    evaluate.main([*common, "--lr-free", "--lr-free-multiplier", "1.5", "--variants-only", "--out", str(tmp_path / "m")])
    torch.set_num_threads(threads)
    assert {lr for free, lr in seen() if free} == {*evaluate.LR_FREE_GRID, 1.5}
    assert not any("multiplier" in kw for kw in optimizer_calls)
    res = json.loads((tmp_path / "m" / "results.json").read_text())
    assert res["entries"][0]["results"]["prodigy+lrfree"]["lr"] == 1.5
    assert res["rules"] == ["prodigy=adam+lrfree (lr_free, multiplier 1.5)"]
    for bad in (["--lr-free-multiplier", "1.5"], ["--lr-free", "--lr-free-multiplier", "0"]):
        with pytest.raises(SystemExit):
            evaluate.main([*common, *bad, "--out", str(tmp_path / "bad")])
    evaluate.main([*common, "--lr-free", "--spike-guard", "3", "--variants-only", "--out", str(tmp_path / "g")])
    torch.set_num_threads(threads)
    res = json.loads((tmp_path / "g" / "results.json").read_text())["entries"][0]["results"]
    assert {n for n in res if not n.endswith("@best")} == {"adam", "prodigy+lrfree", "prodigy+guard", "prodigy+lrfree+guard"}


def test_lr_free_rows_take_the_estimate_options(tmp_path: Path, optimizer_calls) -> None:
    """--growth-rate / --estimate-stride / --estimate-every (and the others: --plateau-boost too) reach every
    +lrfree row's GMNOptimizer (and are named in its label); without --lr-free they are refused."""
    threads = torch.get_num_threads()
    common = ["--tasks", "siren_shapes", "--seeds", "0", "--steps", "12", "--grid-points", "2", "--threads", "1",
              "--baselines", "adam", "--rule", "prodigy=adam"]
    evaluate.main([*common, "--lr-free", "--growth-rate", "1.1", "--estimate-stride", "3", "--estimate-every", "5",
                   "--variants-only", "--out", str(tmp_path / "v")])
    torch.set_num_threads(threads)
    seen = {(kw.get("growth_rate"), kw.get("estimate_stride"), kw.get("estimate_every")) for kw in optimizer_calls}
    assert seen == {(1.1, 3, 5)}
    res = json.loads((tmp_path / "v" / "results.json").read_text())
    assert res["rules"] == ["prodigy=adam+lrfree (lr_free, growth_rate 1.1, estimate_stride 3, estimate_every 5)"]
    with pytest.raises(SystemExit):
        evaluate.main([*common, "--growth-rate", "1.1", "--out", str(tmp_path / "bad")])
    optimizer_calls.clear()
    evaluate.main([*common, "--lr-free", "--estimate-every", "5", "--estimate-warmup", "20", "--per-tensor", "0.7",
                   "--d0", "1e-4", "--variants-only", "--out", str(tmp_path / "t")])
    torch.set_num_threads(threads)
    assert {(kw.get("per_tensor"), kw.get("estimate_warmup"), kw.get("d0")) for kw in optimizer_calls} == {(0.7, 20, 1e-4)}
    res = json.loads((tmp_path / "t" / "results.json").read_text())
    assert res["rules"] == ["prodigy=adam+lrfree (lr_free, estimate_every 5, estimate_warmup 20, per_tensor 0.7, d0 0.0001)"]
    with pytest.raises(SystemExit):
        evaluate.main([*common, "--per-tensor", "0.7", "--out", str(tmp_path / "bad")])
    optimizer_calls.clear()
    evaluate.main([*common, "--lr-free", "--plateau-block", "500", "--plateau-boost", "--plateau-anchor",
                   "--variants-only", "--out", str(tmp_path / "p")])
    torch.set_num_threads(threads)
    assert {(kw.get("plateau_block"), kw.get("plateau_boost"), kw.get("plateau_anchor"))
            for kw in optimizer_calls} == {(500, True, True)}
    for bad in ("--plateau-boost", "--plateau-anchor"):
        with pytest.raises(SystemExit):
            evaluate.main([*common, bad, "--out", str(tmp_path / "bad")])


def test_gmn_vs_mlp_line_for_every_row_pair(tmp_path: Path, optimizer_calls) -> None:
    """rule_gmn against rule_mlp is counted for each pair of rows they both have: lr-free ones included."""
    threads = torch.get_num_threads()
    rules = []
    for kind in ("gmn", "mlp"):
        UpdateRule(RuleConfig(kind=kind, hidden=4, alpha=0.01)).save_pretrained(tmp_path / f"rule_{kind}")
        rules += ["--rule", str(tmp_path / f"rule_{kind}")]
    evaluate.main([*rules, "--tasks", "siren_shapes", "--seeds", "0", "--steps", "12", "--grid-points", "2",
                   "--threads", "1", "--baselines", "adam", "--lr-free", "--variants-only", "--out", str(tmp_path / "v")])
    torch.set_num_threads(threads)
    table = (tmp_path / "v" / "results.md").read_text()
    for row in ("+lrfree", "+lrfree@best"):
        assert f"rule_gmn{row} reaches a lower final loss than rule_mlp{row} on " in table


def test_a_rule_with_a_recorded_mode_runs_fixed_lr_in_plain_rows_and_in_its_mode_lr_free(tmp_path: Path,
                                                                                        optimizer_calls) -> None:
    """A rule recording an lr-free mode (RuleConfig.lr_free, as the shipped "lrfree" rule): its plain row
    still runs at a fixed lr (lr_free=False explicitly), its +lrfree row in the recorded mode (the options
    it records reach the optimizer) unless the command line gives one."""
    from metaopt.optim import GMNOptimizer, RuleConfig, UpdateRule

    threads = torch.get_num_threads()
    rule_dir = UpdateRule(RuleConfig(kind="mlp", hidden=4)).with_lr_free({"estimate_every": 4}).save_pretrained(
        tmp_path / "moded")
    common = ["--tasks", "siren_shapes", "--seeds", "0", "--steps", "12", "--grid-points", "2", "--threads", "1",
              "--baselines", "adam", "--rule", f"moded={rule_dir}"]
    built: list[GMNOptimizer] = []
    original = GMNOptimizer.step

    def keep(self, *args, **kwargs):
        if self not in built:
            built.append(self)
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GMNOptimizer, "step", keep)
        evaluate.main([*common, "--lr-free", "--out", str(tmp_path / "e")])
    torch.set_num_threads(threads)
    assert {kw["lr_free"] for kw in optimizer_calls} == {False, True}
    assert {o.estimate_every for o in built if not o.lr_free} == {1}
    assert {o.estimate_every for o in built if o.lr_free} == {4}  # the rule's recorded option
