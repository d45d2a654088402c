"""Bootstrap intervals of the held-out benchmark's medians (outer_train.eval_stats)."""

import json

import numpy as np
import pytest

from outer_train import eval_stats
from outer_train.evaluate import overall


def _runs(speedups: dict[str, dict[str, list[float]]]) -> list[dict]:
    """task -> optimizer -> per-seed speedups, as evaluate's run entries (adam = 1, unit cost)."""
    runs = []
    for task, by_opt in speedups.items():
        n = len(next(iter(by_opt.values())))
        for s in range(n):
            res = {"adam": {"speedup": 1.0, "wall_speedup": 1.0, "final_loss": 1.0, "ms_per_step": 1.0, "diverged": False}}
            for name, vals in by_opt.items():
                res[name] = {"speedup": vals[s], "wall_speedup": vals[s], "final_loss": 1.0 / (1 + vals[s]),
                             "ms_per_step": 1.0, "diverged": False}
            runs.append({"task": f"{task}/s{s}", "results": res})
    return runs


RNG = np.random.default_rng(0)
BASE = {f"t{i}": list(RNG.uniform(0.5, 1.5, 3)) for i in range(9)}


def test_observed_median_is_the_benchmark_headline():
    runs = _runs({t: {"a": v} for t, v in BASE.items()})
    observed, boot = eval_stats.bootstrap([eval_stats.seed_matrix(runs, "a")], draws=500)
    assert observed[0] == pytest.approx(overall(runs, ["adam", "a"])["a"]["median_speedup"])
    lo, hi = eval_stats.interval(boot[0])
    assert lo <= observed[0] <= hi and lo < hi  # seeds differ, so the interval has width


def test_paired_bootstrap_separates_a_shift_and_not_a_copy():
    runs = _runs({t: {"a": v, "same": list(v), "better": [x + 0.3 for x in v]} for t, v in BASE.items()})
    res = eval_stats.compare({n: eval_stats.seed_matrix(runs, n) for n in ("a", "same", "better")}, draws=500)
    same = res["pairs"]["a vs same"]
    assert same["difference"] == 0 and same["p_first_higher"] == 0 and same["p_tie"] == 1
    shift = res["pairs"]["a vs better"]
    assert shift["p_first_higher"] == 0 and shift["interval"][1] < 0  # paired: every draw sees the shift
    assert shift["difference"] == pytest.approx(-0.3)


def test_only_common_task_seeds_are_compared():
    a = {"t0": {0: 1.0, 1: 2.0, 2: 3.0}, "t1": {0: 1.0}}
    b = {"t0": {0: 1.0, 1: 2.0}, "t2": {0: 5.0}}
    observed, _ = eval_stats.bootstrap([a, b], draws=10)
    assert list(observed) == [1.5, 1.5]  # t0 seeds 0-1 only
    with pytest.raises(ValueError, match="share no task"):
        eval_stats.bootstrap([{"x": {0: 1.0}}, {"y": {0: 1.0}}])


def test_cli_labels_json_and_clashes(tmp_path, capsys):
    runs = _runs({t: {"rule": v} for t, v in BASE.items()})
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "summary.json").write_text(json.dumps({"runs": runs}))
    one, two = tmp_path / "one" / "summary.json", tmp_path / "two" / "summary.json"
    out = tmp_path / "stats.json"
    assert eval_stats.main([f"A={one}:rule", f"B={two}:rule", "--draws", "200", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["optimizers"]) == {"A", "B"} and res["pairs"]["A vs B"]["p_tie"] == 1
    assert "| A |" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # the same label twice would silently drop a rule
        eval_stats.main([f"A={one}:rule", f"A={two}:rule"])
    with pytest.raises(ValueError, match="no runs of optimizer"):
        eval_stats.main([f"{one}:missing"])


def test_compare_scores_are_bootstrapped_like_held_out_runs(tmp_path, capsys):
    """An outer_train.compare --out JSON (e.g. on the dev suite) loads as runs: each rule's per-run speedups,
    its median the compare score's; only speedups are in it."""
    names = [f"t{i}/s{20 + k}" for i in range(3) for k in range(3)]
    vals = {"r1": [0.0, 1.2, 1.4, 0.9, 1.0, 2.0, 0.0, 0.0, 3.0], "r2": [1.1, 1.3, 1.5, 1.0, 1.1, 2.1, 0.1, 0.2, 3.1]}
    data = {"collection": "dev", "tasks": names, "rules": {r: {"speedups": dict(zip(names, v))} for r, v in vals.items()}}
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(data))
    loaded = eval_stats.load(str(path), "speedup")
    assert set(loaded) == {f"{tmp_path}/r1", f"{tmp_path}/r2"} and loaded[f"{tmp_path}/r1"]["t1"] == {20: 0.9, 21: 1.0, 22: 2.0}
    assert eval_stats.main([f"a={path}:r1", f"b={path}:r2", "--draws", "200"]) == 0
    out = capsys.readouterr().out
    assert "| a | 1.000 |" in out and "| b | 1.100 |" in out and "| a vs b |" in out  # tasks 1.2, 1.0, 0.0 -> 1.0
    with pytest.raises(ValueError, match="speedups in steps only"):
        eval_stats.load(str(path), "wall_speedup")
