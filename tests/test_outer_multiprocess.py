"""Two CPU processes (torchrun + Accelerate's MULTI_CPU/gloo mode): different tasks per rank, one identical rule.

accelerate 1.15's ``accelerate launch --cpu`` starts a single process, so multi-process CPU runs go
through ``torchrun`` (which ``accelerate launch --multi_gpu`` also uses on GPU machines); the
training code is the same Accelerator either way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # two processes with gloo start-up: ~40-90 s on 2 cores
def test_two_process_run_keeps_one_rule_and_samples_different_tasks(tmp_path: Path) -> None:
    launcher = shutil.which("torchrun")
    if launcher is None:
        pytest.skip("torchrun is not on PATH")
    cmd = [launcher, "--standalone", "--nproc_per_node", "2", "-m", "outer_train", "--preset", "quick", "--steps", "3", "--out", str(tmp_path),
           "--name", "ddp", "--set", 'tasks.families=["teacher_student"]', "--set", "tasks.max_params=300",
           "--set", "log.compare_every=0", "--set", "checkpoint.every=3", "--set", "threads=1",
           "--set", "log.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "ddp"
    final = json.loads((run / "final.json").read_text())
    assert final["world_size"] == 2 and final["step"] == 3
    assert final["rule_identical_across_ranks"] is True
    ckpt = run / "checkpoints" / "step_000003"
    r0 = torch.load(ckpt / "rank0.pt", weights_only=False)
    r1 = torch.load(ckpt / "rank1.pt", weights_only=False)
    specs0 = {g["spec"] for g in r0["groups"]}
    specs1 = {g["spec"] for g in r1["groups"]}
    assert specs0.isdisjoint(specs1)  # each rank draws its own tasks
    assert (run / "rule" / "config.json").is_file()
