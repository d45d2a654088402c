"""Rerunning a finished meta-training run leaves it as it was: same final.json, no second events file."""

from __future__ import annotations

import json
from pathlib import Path

from outer_train.__main__ import finished_run, main
from outer_train.logging import RunLogger

SETS = ['tasks.families=["teacher_student"]', "tasks.max_params=300", "tasks.groups=2", "tasks.unroll_min=10",
        "tasks.unroll_max=10", "tasks.truncation=5", "rule.refresh_every=5", "rule.hidden=4", "threads=1", "log.progress=false",
        "log.compare_every=0"]


def _argv(out: Path, steps: int) -> list[str]:
    argv = ["--preset", "quick", "--steps", str(steps), "--out", str(out), "--name", "r"]
    for s in SETS:
        argv += ["--set", s]
    return argv


def test_rerun_of_a_finished_run_changes_nothing_and_more_steps_continue_it(tmp_path: Path) -> None:
    run = tmp_path / "r"
    assert main(_argv(tmp_path, 2)) == 0
    final = (run / "final.json").read_text()
    events = sorted(p.name for p in (run / "tb").iterdir())
    assert "meta_loss" in json.loads(final) and len(events) == 1

    assert main(_argv(tmp_path, 2)) == 0
    assert (run / "final.json").read_text() == final
    assert sorted(p.name for p in (run / "tb").iterdir()) == events

    assert finished_run(run, 3) is None  # more steps than done: the run resumes
    assert main(_argv(tmp_path, 3)) == 0
    assert json.loads((run / "final.json").read_text())["step"] == 3
    assert [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_logger_that_writes_nothing_opens_no_events_file(tmp_path: Path) -> None:
    log = RunLogger(tmp_path, enabled=True, resume_step=5)
    log.close()
    assert not (tmp_path / "tb").exists()
    log = RunLogger(tmp_path, enabled=True)
    log.scalars(1, {"meta_loss": 0.5})
    log.close()
    assert len(list((tmp_path / "tb").iterdir())) == 1


def test_torn_or_missing_final_json_is_not_finished(tmp_path: Path) -> None:
    assert finished_run(tmp_path, 1) is None
    (tmp_path / "rule").mkdir()
    (tmp_path / "final.json").write_text("{")
    assert finished_run(tmp_path, 1) is None
    (tmp_path / "final.json").write_text('{"step": 4}')
    assert finished_run(tmp_path, 4) == {"step": 4} and finished_run(tmp_path, 5) is None
