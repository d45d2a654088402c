"""Checkpoint/resume: a run SIGKILLed mid-way and resumed ends exactly where an uninterrupted run does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from outer_train.logging import read_metrics

ROOT = Path(__file__).resolve().parents[1]
DETERMINISTIC = ("meta_loss", "meta_grad_norm", "skipped", "alpha", "tasks_sampled")


def _cmd(out: Path, name: str, steps: int) -> list[str]:
    sets = ['tasks.families=["teacher_student","deepsets"]', "tasks.max_params=700", "tasks.groups=2",
            "tasks.unroll_min=10", "tasks.unroll_max=40", "tasks.truncation=5", "rule.refresh_every=5", "checkpoint.every=2",
            "log.compare_every=4", "log.compare_steps=10", "log.hist_every=3", "threads=1", "log.progress=false"]
    cmd = [sys.executable, "-m", "outer_train", "--preset", "quick", "--steps", str(steps), "--out", str(out), "--name", name]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _latest_step(run: Path) -> int:
    pointer = run / "checkpoints" / "latest"
    return int(pointer.read_text().strip().split("_")[1]) if pointer.is_file() else -1


@pytest.mark.slow  # three subprocess runs: ~30-60 s on an idle 2-core machine
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    steps = 8
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cmd(tmp_path, "straight", steps), cwd=ROOT, env=env, check=True, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(tmp_path, "killed", steps), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while _latest_step(run) < 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _latest_step(run)
    assert 4 <= killed_at < steps, f"the run was not killed mid-way (latest checkpoint {killed_at})"
    assert not (run / "rule").exists()
    before = {m["step"]: m for m in read_metrics(run)}

    subprocess.run(_cmd(tmp_path, "killed", steps), cwd=ROOT, env=env, check=True, capture_output=True)
    a, b = read_metrics(tmp_path / "straight"), read_metrics(run)
    assert [m["step"] for m in b] == list(range(1, steps + 1))  # no duplicated or missing steps
    for x, y in zip(a, b):
        for key in DETERMINISTIC:
            assert x[key] == y[key] or (x[key] != x[key] and y[key] != y[key]), (x["step"], key, x[key], y[key])
    for step in range(1, killed_at + 1):  # nothing up to the last checkpoint was lost or rewritten
        assert all(before[step][k] == b[step - 1][k] for k in DETERMINISTIC)
    ra, rb = load_file(tmp_path / "straight" / "rule" / "rule.safetensors"), load_file(run / "rule" / "rule.safetensors")
    assert ra.keys() == rb.keys() and all(torch.equal(ra[k], rb[k]) for k in ra)
    final = json.loads((run / "final.json").read_text())
    assert final["step"] == steps and final["rule_identical_across_ranks"]
    assert (run / "config.json").is_file() and any((run / "tb").iterdir())


def test_in_process_resume_is_bit_exact(tmp_path: Path) -> None:
    """The fast check of the same property: 4 straight steps == 2 steps, checkpoint, new trainer, 2 steps.

    Trajectories of 4 truncations: the checkpoint falls inside them, so PES's accumulated
    perturbations (the estimator's state) must come back too."""
    from outer_train.config import resolve
    from outer_train.train import MetaTrainer

    sets = ['tasks.families=["teacher_student"]', "tasks.max_params=300", "tasks.groups=2", "tasks.unroll_min=20",
            "tasks.unroll_max=20", "tasks.truncation=5", "rule.refresh_every=5", "rule.hidden=4", "threads=1",
            "estimator.kind=pes"]
    a = MetaTrainer(resolve("quick", None, sets + [f'out_dir="{tmp_path}"', 'name="a"']))
    ma = [a.meta_step() for _ in range(4)]
    b = MetaTrainer(resolve("quick", None, sets + [f'out_dir="{tmp_path}"', 'name="b"']))
    mb = [b.meta_step() for _ in range(2)]
    b.save_checkpoint()
    c = MetaTrainer(resolve("quick", None, sets + [f'out_dir="{tmp_path}"', 'name="b"']))
    assert c.try_resume() == 2
    assert c.estimator.state.xi and all(torch.equal(c.estimator.state.xi[k], v) for k, v in b.estimator.state.xi.items())
    mb += [c.meta_step() for _ in range(2)]
    for x, y in zip(ma, mb):
        assert all(x[k] == y[k] for k in DETERMINISTIC), (x, y)
    for (k, v), w in zip(a.rule.state_dict().items(), c.rule.state_dict().values()):
        assert torch.equal(v, w), k
