"""outer_train.eval_decide: a candidate against a baseline by a rule fixed before the sitting."""

from __future__ import annotations

import json

import pytest

from outer_train.eval_decide import decide, main


def _run(task: str, seed: int, **rows: tuple) -> dict:
    """rows: name -> (speedup, wall_speedup, final_loss, steps_to_adam, diverged)."""
    keys = ("speedup", "wall_speedup", "final_loss", "steps_to_adam", "diverged")
    return {"task": f"{task}/s{seed}", "results": {n: dict(zip(keys, v)) for n, v in rows.items()}}


RUNS = [  # task a: the candidate ahead in steps, level by the clock; task b: the candidate behind, never reaching once
    _run("a", 0, base=(2.0, 1.5, 1e-3, 500, False), cand=(2.5, 1.5, 1e-4, 400, False)),
    _run("a", 1, base=(2.2, 1.7, 2e-3, 450, False), cand=(2.6, 1.6, 2e-4, 380, False)),
    _run("a", 2, base=(1.8, 1.1, 3e-3, 550, False), cand=(2.4, 1.4, 3e-4, 410, False)),
    _run("b", 0, base=(1.2, 0.9, 1e-2, 800, False), cand=(1.0, 0.8, 2e-2, None, False)),
    _run("b", 1, base=(1.4, 1.1, 1e-2, 700, False), cand=(1.1, 0.9, 2e-2, 900, False)),
    _run("b", 2, base=(1.3, 1.0, 1e-2, 750, False), cand=(1.2, 0.95, 2e-2, 850, False)),
]


def test_the_figures_are_medians_over_tasks_of_medians_over_seeds_and_each_condition_is_read() -> None:
    out = decide(RUNS, "base", "cand", final_loss_wins=1)
    assert out["base"]["steps"] == pytest.approx((2.0 + 1.3) / 2) and out["cand"]["steps"] == pytest.approx((2.5 + 1.1) / 2)
    assert out["base"]["clock"] == pytest.approx((1.5 + 1.0) / 2) and out["cand"]["clock"] == pytest.approx((1.5 + 0.9) / 2)
    assert out["base"]["tasks_clock_at_least_1x"] == 2 and out["cand"]["tasks_clock_at_least_1x"] == 1
    assert out["cand"]["never_reached"] == 1 and out["cand"]["final_loss_wins"] == 1
    met = list(out["conditions"].values())
    assert met == [False, True, False, False, True, True] and not out["met"]
    # a margin on the clock changes condition 1 only; a clock 0.05 down passes a 0.1 margin
    assert list(decide(RUNS, "base", "cand", clock_margin=0.1)["conditions"].values())[0]
    assert decide(RUNS, "cand", "cand")["met"]  # a row against itself meets every condition (its never-reached too)
    assert not decide(RUNS, "base", "base", final_loss_wins=1)["met"]  # no task where it is below itself


def test_a_diverged_run_fails_the_rule_and_the_command_writes_its_json(tmp_path, capsys) -> None:
    runs = [*RUNS[:5], _run("b", 2, base=(1.3, 1.0, 1e-2, 750, False), cand=(1.2, 0.95, float("nan"), 850, True))]
    assert decide(runs, "base", "base")["met"]  # the divergence is the candidate row's only
    assert decide(runs, "base", "cand", clock_margin=1, steps_margin=1)["conditions"]["4 no divergence"] is False
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"runs": RUNS}))
    out = main([str(path), "base", "cand", "--json", str(tmp_path / "d.json")])
    assert "rule not met" in capsys.readouterr().out
    assert json.loads((tmp_path / "d.json").read_text())["met"] is False == out["met"]
    with pytest.raises(KeyError, match="not in the run"):
        decide(RUNS, "base", "missing")


def test_tasks_at_1x_can_be_counted_in_steps_and_a_negative_margin_asks_for_a_gain() -> None:
    """Task b is at 1.0x in steps in both rows and 1.02x / 0.98x by the clock (timing noise): counted by the clock the
    candidate has one task fewer at >= 1x, in steps none; a steps margin of -0.1 asks for a gain of 0.1."""
    runs = [_run("a", s, base=(1.5, 1.4, 1e-3, 600, False), cand=(1.8, 1.7, 1e-4, 550, False)) for s in range(3)]
    runs += [_run("b", s, base=(1.0, 1.02, 1e-2, 990, False), cand=(1.0, 0.98, 1e-2, 990, False)) for s in range(3)]
    assert not decide(runs, "base", "cand")["met"]
    out = decide(runs, "base", "cand", count_tasks_by="steps")
    assert out["met"] and out["cand"]["tasks_steps_at_least_1x"] == 2 and "3a tasks >= 1x in steps, no fewer" in out["conditions"]
    assert decide(runs, "base", "cand", steps_margin=-0.1, count_tasks_by="steps")["met"]  # +0.15 in steps
    assert not decide(runs, "base", "cand", steps_margin=-0.2, count_tasks_by="steps")["met"]
    with pytest.raises(ValueError, match="count_tasks_by"):
        decide(runs, "base", "cand", count_tasks_by="wall")
