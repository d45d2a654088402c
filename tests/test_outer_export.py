"""``python -m outer_train.export RUN_DIR OUT``: the newest checkpoint's rule, in save_pretrained format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metaopt.optim import GMNOptimizer, UpdateRule
from outer_train.config import resolve
from outer_train.export import export_rule, main
from outer_train.train import MetaTrainer

SETS = ['tasks.families=["teacher_student"]', "tasks.max_params=300", "tasks.groups=1", "tasks.unroll_min=10",
        "tasks.unroll_max=10", "tasks.truncation=5", "rule.refresh_every=5", "rule.hidden=4", "rule.arch=mlp",
        "rule.bound=1.5", "threads=1", "log.progress=false", "meta.lr=0.05"]


def test_export_writes_the_checkpointed_rule(tmp_path: Path) -> None:
    cfg = resolve("quick", None, SETS + [f'out_dir="{tmp_path}"', 'name="run"'])
    trainer = MetaTrainer(cfg)
    for _ in range(2):
        trainer.meta_step()
    trainer.save_checkpoint()
    assert float(trainer.rule.alpha.detach()) != 0.0  # a trained rule, not the initial one
    cfg.save(cfg.run_dir / "config.json")

    out = tmp_path / "exported"
    assert main([str(cfg.run_dir), str(out)]) == 0
    back = UpdateRule.from_pretrained(out)
    assert back.config.to_dict() == trainer.rule.config.to_dict()
    assert back.config.kind == "mlp" and back.config.bound == 1.5 and back.config.refresh_every == 5
    want = trainer.rule.state_dict()
    got = back.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert json.loads((out / "train_step.json").read_text()) == {"checkpoint": "step_000002", "outer_step": 2,
                                                                 "weights": "last"}
    assert json.loads((out / "train_config.json").read_text())["rule"]["arch"] == "mlp"
    # the exported rule drives the optimizer
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    opt = GMNOptimizer.from_pretrained(out, model)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    assert opt.rule_refreshes == 1 and opt.rule_fallbacks == 0

    # a later checkpoint replaces it
    trainer.meta_step()
    trainer.save_checkpoint()
    export_rule(cfg.run_dir, out)
    assert float(UpdateRule.from_pretrained(out).alpha.detach()) == float(trainer.rule.alpha.detach())


def test_export_without_a_checkpoint_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="holds no complete checkpoint"):
        export_rule(tmp_path, tmp_path / "out")


def test_weight_average_is_an_ema_of_the_rule_kept_across_resume_and_exported(tmp_path: Path) -> None:
    """meta.ema_decay = d: the average is the first step's rule, then d * average + (1 - d) * rule after
    every meta step; it survives a checkpoint and resume, and export takes it (or, asked, the last rule)."""
    sets = SETS + [f'out_dir="{tmp_path}"', 'name="run"', "meta.ema_decay=0.5"]
    trainer = MetaTrainer(resolve("quick", None, sets))
    want = None
    for _ in range(3):
        trainer.meta_step()
        now = {k: v.detach().clone() for k, v in trainer.rule.named_parameters()}
        want = now if want is None else {k: 0.5 * want[k] + 0.5 * now[k] for k in now}
    got = dict(trainer.ema.module.named_parameters())
    assert all(torch.allclose(got[k], want[k], rtol=1e-6, atol=1e-7) for k in want)
    assert any(not torch.equal(got[k], now[k]) for k in now)  # an average, not the last rule
    trainer.save_checkpoint()

    resumed = MetaTrainer(resolve("quick", None, sets))
    assert resumed.try_resume() == 3 and int(resumed.ema.n_averaged) == 3
    assert all(torch.equal(a, b) for a, b in zip(resumed.ema.parameters(), trainer.ema.parameters()))

    out = tmp_path / "avg"
    export_rule(trainer.run_dir, out)
    assert json.loads((out / "train_step.json").read_text())["weights"] == "ema"
    back = dict(UpdateRule.from_pretrained(out).named_parameters())
    assert all(torch.equal(back[k], got[k].detach()) for k in want)
    export_rule(trainer.run_dir, tmp_path / "last", weights="last")
    last = dict(UpdateRule.from_pretrained(tmp_path / "last").named_parameters())
    assert all(torch.equal(last[k], now[k]) for k in now)


def test_export_of_an_average_the_run_did_not_keep_fails_clearly(tmp_path: Path) -> None:
    trainer = MetaTrainer(resolve("quick", None, SETS + [f'out_dir="{tmp_path}"', 'name="run"']))
    trainer.meta_step()
    trainer.save_checkpoint()
    with pytest.raises(SystemExit, match="holds no weight average"):
        export_rule(trainer.run_dir, tmp_path / "out", weights="ema")
