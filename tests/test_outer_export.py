"""``python -m outer_train.export RUN_DIR OUT``: the newest checkpoint's rule, in save_pretrained format."""

from __future__ import annotations

import json
import math
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


def test_comparison_scores_an_adam_equivalent_rule_at_zero_and_a_too_small_step_above(tmp_path: Path) -> None:
    """The score is mean log10(rule loss / Adam loss) over the fixed tasks: a rule whose scale is 1
    (alpha = 0) is Adam, so it ties; a rule pinned at exp(-1.5) of Adam's lr learns slower on these
    short runs, so it scores above 0."""
    from outer_train.compare import Comparison

    cfg = resolve("quick", None, SETS + [f'out_dir="{tmp_path}"', 'name="run"'])
    comparison = Comparison(cfg, steps=60, n_tasks=2)
    assert len({s.seed for s in comparison.specs}) == 2  # two different tasks
    rule = MetaTrainer(cfg).rule
    with torch.no_grad():
        rule.alpha.zero_()
    tie = comparison.run(rule)
    assert len(tie.log_ratios) == 2 and abs(tie.score) < 1e-3
    assert len(tie.curves["learned"]) == len(tie.curves["adam"]) == 60
    with torch.no_grad():  # d = 1 on every parameter (zero weights, output bias 1), scale exp(-1.5 tanh(5)) ~ 0.22
        rule.alpha.fill_(-5.0)
        for name, p in rule.net.named_parameters():
            p.zero_()
        list(rule.net.parameters())[-1].fill_(1.0)
    slow = comparison.run(rule)
    assert slow.score > 0.05, slow.log_ratios


def test_keep_best_keeps_the_best_scored_rule_across_checkpoints_and_exports_it(tmp_path: Path, monkeypatch) -> None:
    """meta.keep_best: the candidate is scored at each comparison (the starting rule included) and kept,
    on disk (rule_best/) and in the checkpoint, only when it beats the best score so far."""
    from outer_train import compare

    scores = iter([0.0, -0.2, 0.3])
    monkeypatch.setattr(compare.Comparison, "run", lambda self, rule: compare.ComparisonResult(
        next(scores), [0.0], [1.0], {"learned": [1.0], "adam": [1.0]}, {"learned": 1.0, "adam": 1.0}))
    sets = SETS + [f'out_dir="{tmp_path}"', 'name="run"', "meta.keep_best=true", "log.compare_every=1",
                   "log.compare_steps=5"]
    trainer = MetaTrainer(resolve("quick", None, sets))
    trainer.compare()  # step 0: the starting rule, score 0.0
    trainer.meta_step()
    trainer.compare()  # step 1: -0.2, the new best
    best = {k: v.detach().clone() for k, v in trainer.rule.state_dict().items()}
    trainer.meta_step()
    trainer.compare()  # step 2: 0.3, worse: the best stays step 1's
    assert trainer.best["step"] == 1 and trainer.best["score"] == -0.2
    assert json.loads((trainer.run_dir / "rule_best" / "best.json").read_text())["step"] == 1
    on_disk = UpdateRule.from_pretrained(trainer.run_dir / "rule_best").state_dict()
    assert all(torch.equal(on_disk[k], best[k]) for k in best)
    assert any(not torch.equal(trainer.rule.state_dict()[k], best[k]) for k in best)
    trainer.save_checkpoint()

    resumed = MetaTrainer(resolve("quick", None, sets))
    assert resumed.try_resume() == 2 and resumed.best["step"] == 1
    out = export_rule(trainer.run_dir, tmp_path / "exported")  # auto = best when kept
    record = json.loads((out / "train_step.json").read_text())
    assert record["weights"] == "best" and record["best_step"] == 1 and record["outer_step"] == 2
    exported = UpdateRule.from_pretrained(out).state_dict()
    assert all(torch.equal(exported[k], best[k]) for k in best)


def test_export_of_a_best_rule_the_run_did_not_keep_fails_clearly(tmp_path: Path) -> None:
    trainer = MetaTrainer(resolve("quick", None, SETS + [f'out_dir="{tmp_path}"', 'name="run"']))
    trainer.meta_step()
    trainer.save_checkpoint()
    with pytest.raises(SystemExit, match="holds no best rule"):
        export_rule(trainer.run_dir, tmp_path / "out", weights="best")


def test_keep_best_needs_the_comparison() -> None:
    from outer_train.config import ConfigError

    with pytest.raises(ConfigError, match="keep_best selects on the comparison"):
        resolve("quick", None, SETS + ["meta.keep_best=true", "log.compare_every=0"])


def test_comparison_on_the_meta_validation_suite(tmp_path: Path) -> None:
    """log.compare_collection = "meta_val": the comparison trains the first n tasks of the fixed
    meta-validation suite (held-out-shaped, never held-out); an Adam-equivalent rule still ties."""
    from inner_tasks.tasks import meta_validation_suite
    from outer_train.compare import Comparison
    from outer_train.config import ConfigError

    cfg = resolve("quick", None, SETS + [f'out_dir="{tmp_path}"', 'name="run"', 'log.compare_collection="meta_val"'])
    comparison = Comparison(cfg, steps=20, n_tasks=2, collection=cfg.log.compare_collection)
    assert [s.name for s in comparison.specs] == [s.name for s in meta_validation_suite()[:2]]
    rule = MetaTrainer(cfg).rule
    with torch.no_grad():
        rule.alpha.zero_()
    assert abs(comparison.run(rule).score) < 1e-3
    with pytest.raises(ValueError, match="has 6 tasks"):
        Comparison(cfg, steps=20, n_tasks=7, collection="meta_val")
    # the dev suite (the held-out tasks' siblings) the same way, outside meta-training only, task-major over seeds
    from inner_tasks.tasks.collections import DEV_SEED, DEV_TASKS, dev_suite

    dev = Comparison(cfg, steps=20, n_tasks=2, collection="dev", seeds=2)
    assert [s.name for s in dev.specs] == [s.name for t in zip(dev_suite()[:2], dev_suite(DEV_SEED + 1)[:2]) for s in t]
    with pytest.raises(ValueError, match=f"has {len(DEV_TASKS)} tasks"):
        Comparison(cfg, steps=20, n_tasks=len(DEV_TASKS) + 1, collection="dev")
    with pytest.raises(ConfigError, match="compare_collection"):
        resolve("quick", None, SETS + ['log.compare_collection="dev"'])
    with pytest.raises(ConfigError, match="compare_collection"):
        resolve("quick", None, SETS + ['log.compare_collection="held_out"'])


def test_compare_cli_scores_saved_rules_on_the_meta_validation_suite(tmp_path: Path, capsys) -> None:
    """`python -m outer_train.compare --rule DIR ...`: the exact-Adam rule scores 0 on every task."""
    from inner_tasks.tasks import dev_suite
    from outer_train.compare import main
    from metaopt.optim.rules import ADAM_RULE_DIR

    out = tmp_path / "scores.json"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["--rule", str(ADAM_RULE_DIR), "--steps", "10", "--tasks", "1", "--out", str(out), *cache]) == 0
    data = json.loads(out.read_text())
    assert data["collection"] == "meta_val" and data["tasks"] == ["mlp_digits_w128/s7"]
    assert data["rules"][str(ADAM_RULE_DIR)]["score"] == 0.0
    assert "| score (loss_ratio) |" in capsys.readouterr().out
    assert main(["--rule", str(ADAM_RULE_DIR), "--steps", "10", "--tasks", "2", "--seeds", "2", "--out", str(out),
                 *cache]) == 0
    data = json.loads(out.read_text())
    assert data["seeds"] == 2 and data["tasks"] == ["mlp_digits_w128/s7", "mlp_digits_w128/s8", "mlp_digits_d3/s7",
                                                    "mlp_digits_d3/s8"]
    row = data["rules"][str(ADAM_RULE_DIR)]
    assert row["score"] == row["score_mean"] == row["score_median"] == 0.0
    assert row["task_medians"] == {"mlp_digits_w128": 0.0, "mlp_digits_d3": 0.0}  # each task's term
    assert "Median over seeds" in capsys.readouterr().out
    # --tasks defaults to the whole fixed suite
    assert main(["--rule", str(ADAM_RULE_DIR), "--collection", "dev", "--steps", "10", "--out", str(out), *cache]) == 0
    assert json.loads(out.read_text())["tasks"] == [s.name for s in dev_suite()]


def test_comparison_against_tuned_adam_takes_adams_best_lr(tmp_path: Path) -> None:
    """log.compare_against = "tuned_adam": Adam's curve is the best tail loss over the lr grid, so the
    exact-Adam rule at the reference lr scores >= 0 (it can only lose to a tuned Adam), and more
    than zero where another lr of the grid is better."""
    from outer_train.compare import TUNED_ADAM_GRID, Comparison, tail_loss

    cfg = resolve("quick", None, SETS + [f'out_dir="{tmp_path}"', 'name="run"'])
    same = Comparison(cfg, steps=30, n_tasks=2, collection="meta_val")
    tuned = Comparison(cfg, steps=30, n_tasks=2, collection="meta_val", against="tuned_adam")
    assert len(TUNED_ADAM_GRID) >= 7 and 1.0 in TUNED_ADAM_GRID
    for a, b in zip(same.adam_curves, tuned.adam_curves):
        assert tail_loss(b) <= tail_loss(a)
    rule = MetaTrainer(cfg).rule
    with torch.no_grad():
        rule.alpha.zero_()
    assert abs(same.run(rule).score) < 1e-3
    result = tuned.run(rule)
    assert result.score > 0.05 and all(r >= 0 for r in result.log_ratios), result.log_ratios
    with pytest.raises(ValueError, match="compare_against"):
        Comparison(cfg, steps=30, n_tasks=1, against="sgd")


def test_comparison_caches_adams_curves_by_setting(tmp_path: Path) -> None:
    """cache_dir: Adam's curves are computed once per setting (tasks, horizon, grid) and read back by
    a later comparison of the same setting without training Adam; another horizon is another entry;
    a cache file that does not hold the curves is recomputed with a warning, not trusted."""
    from outer_train.compare import Comparison

    cfg = resolve("quick", None, SETS + [f'out_dir="{tmp_path}"', 'name="run"'])
    cache = tmp_path / "cache"
    first = Comparison(cfg, steps=20, n_tasks=2, collection="meta_val", against="tuned_adam", cache_dir=cache)
    curves = first.adam_curves
    assert [p.name for p in cache.iterdir()] == [first.cache_path.name]

    again = Comparison(cfg, steps=20, n_tasks=2, collection="meta_val", against="tuned_adam", cache_dir=cache)
    again._adam_curve = lambda spec, task: pytest.fail("Adam retrained despite the cache")
    assert again.adam_curves == curves
    other = Comparison(cfg, steps=25, n_tasks=2, collection="meta_val", against="tuned_adam", cache_dir=cache)
    assert other.cache_path != first.cache_path
    assert Comparison(cfg, steps=20, n_tasks=2, collection="meta_val", cache_dir=cache).cache_path != first.cache_path

    first.cache_path.write_text('{"curves": [[1.0]]}')
    broken = Comparison(cfg, steps=20, n_tasks=2, collection="meta_val", against="tuned_adam", cache_dir=cache)
    with pytest.warns(UserWarning, match="another shape"):
        assert broken.adam_curves == curves
    first.cache_path.write_text("not json")
    with pytest.warns(UserWarning, match="does not read"):
        fresh = Comparison(cfg, steps=20, n_tasks=2, collection="meta_val", against="tuned_adam", cache_dir=cache)
        assert fresh.adam_curves == curves
    assert json.loads(first.cache_path.read_text())["curves"] == curves


def test_speedup_metric_scores_with_the_held_out_statistic(tmp_path: Path, capsys) -> None:
    """compare_metric = "speedup": per curve tuned Adam's steps to its final loss over the rule's (0 if
    never), the median over a task's seeds and over tasks, negated; the CLI writes both scores and
    runs lr-free."""
    from outer_train.compare import Comparison, main
    from outer_train.evaluate import final_loss, steps_to
    from metaopt.optim.rules import ADAM_RULE_DIR

    cfg = resolve("quick", None, SETS + [f'out_dir="{tmp_path}"', 'name="run"'])
    comparison = Comparison(cfg, steps=30, n_tasks=3, collection="meta_val", seeds=2, aggregate="median",
                            metric="speedup", cache_dir=tmp_path / "cache")
    assert comparison.speedup_score([1.0, 3.0, 0.0, 0.0, 2.0, 2.0]) == -2.0  # task medians 2, 0, 2
    assert comparison.speedup_score([1.0, 3.0, 0.0, 0.0, 2.0, 2.0], "mean") == pytest.approx(-4 / 3)
    result = comparison.run(UpdateRule.from_pretrained(ADAM_RULE_DIR))  # exact Adam against Adam at its lr
    assert result.speedups == [1.0] * 6 and result.score == -1.0
    tuned = Comparison(cfg, steps=30, n_tasks=1, collection="meta_val", against="tuned_adam", metric="speedup")
    result = tuned.run(UpdateRule.from_pretrained(ADAM_RULE_DIR))
    adam, mine = result.curves["adam"], result.curves["learned"]
    reached = steps_to(mine, final_loss(adam))
    assert result.speedups == [steps_to(adam, final_loss(adam)) / reached if reached else 0.0]
    with pytest.raises(ValueError, match="compare_metric"):
        Comparison(cfg, steps=30, n_tasks=1, metric="accuracy")

    out = tmp_path / "scores.json"
    assert main(["--rule", str(ADAM_RULE_DIR), "--steps", "20", "--tasks", "1", "--against", "tuned_adam", "--metric", "speedup",
                 "--lr-free", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    data = json.loads(out.read_text())
    row = data["rules"][str(ADAM_RULE_DIR)]
    assert data["metric"] == "speedup" and data["lr_free"] and row["score"] == row["speedup_score_mean"]
    assert "x |" in capsys.readouterr().out


def test_compare_cli_tunes_a_rules_default_lr_on_the_meta_validation_suite(tmp_path: Path) -> None:
    """`--tune-lr --set-default-lr`: the rule is scored at every lr of the grid (one lr for every task,
    as GMNOptimizer(model) uses it), the best-scoring lr is reported and written into the rule's
    config.json as default_lr, the weights untouched; GMNOptimizer then uses it."""
    import shutil

    from metaopt.optim import GMNOptimizer
    from metaopt.optim.rules import DEFAULT_RULE_DIR
    from outer_train.compare import main

    rule_dir = tmp_path / "rule"
    shutil.copytree(DEFAULT_RULE_DIR, rule_dir)
    before = UpdateRule.from_pretrained(rule_dir).state_dict()
    out = tmp_path / "scores.json"
    assert main(["--rule", str(rule_dir), "--steps", "10", "--tasks", "1", "--against", "tuned_adam", "--tune-lr",
                 "--lr-grid", "1e-4,1e-2,3", "--set-default-lr", "--out", str(out), "--cache-dir", ""]) == 0
    rows = json.loads(out.read_text())["rules"]
    grid = {lr: rows[f"{rule_dir}@{lr:g}"]["score"] for lr in (1e-4, 1e-3, 1e-2)}
    best = rows[str(rule_dir)]["best_lr"]
    assert grid[best] == min(grid.values()) and rows[str(rule_dir)]["score"] == grid[best]
    after = UpdateRule.from_pretrained(rule_dir)
    assert after.config.default_lr == best
    assert all(torch.equal(before[k], v) for k, v in after.state_dict().items())
    assert GMNOptimizer(torch.nn.Linear(3, 2), rule=rule_dir).defaults["lr"] == best
    with pytest.raises(SystemExit):
        main(["--rule", str(rule_dir), "--set-default-lr"])


def test_comparison_over_several_seeds_and_the_median_over_tasks(tmp_path: Path) -> None:
    """compare_seeds: every meta-validation task from seeds 7, 8, ... (task-major), a task's term the
    mean of its seeds' clipped log ratios; compare_aggregate="median": the median of those terms, so
    one task far off cannot move it alone; both refused where they make no sense."""
    from outer_train.compare import Comparison

    cfg = resolve("quick", None, SETS + [f'out_dir="{tmp_path}"', 'name="run"'])
    mean = Comparison(cfg, steps=3, n_tasks=3, collection="meta_val", seeds=2)
    assert [s.name for s in mean.specs][:2] == [mean.specs[0].name.split("/")[0] + "/s7",
                                                 mean.specs[0].name.split("/")[0] + "/s8"]
    assert len(mean.specs) == 6 and len({s.name for s in mean.specs}) == 6
    ratios = [0.2, 0.4, -5.0, -3.0, 0.1, 0.3]  # task 2 far below: clipped to -1 per seed
    assert mean.score(ratios) == pytest.approx((0.3 - 1.0 + 0.2) / 3)
    median = Comparison(cfg, steps=3, n_tasks=3, collection="meta_val", seeds=2, aggregate="median")
    assert median.score(ratios) == pytest.approx(0.2)
    assert median.score([0.2, 0.4, 9.0, 9.0, 0.1, 0.3]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="compare_seeds"):
        Comparison(cfg, steps=3, n_tasks=1, collection="meta_train", seeds=2)
    with pytest.raises(ValueError, match="compare_aggregate"):
        Comparison(cfg, steps=3, n_tasks=1, aggregate="max")
    from outer_train.config import ConfigError

    with pytest.raises(ConfigError, match="compare_seeds"):
        resolve("quick", None, SETS + ["log.compare_seeds=3"])  # meta_train tasks are drawn, not seeded
    with pytest.raises(ConfigError, match="compare_aggregate"):
        resolve("quick", None, SETS + ['log.compare_aggregate="max"'])


def test_comparison_with_the_rules_lr_tuned_keeps_its_best_curve_per_task(tmp_path: Path) -> None:
    """rule_lr="tuned": the rule runs over the tuned-Adam grid around each task's reference lr and its
    lowest tail loss counts (the held-out @best protocol), so every task's ratio is at most the
    reference-lr one, and the exact-Adam rule against tuned Adam scores exactly 0."""
    from metaopt.optim.rules import ADAM_RULE_DIR, DEFAULT_RULE_DIR
    from outer_train.compare import Comparison

    cfg = resolve("quick", None, SETS + [f'out_dir="{tmp_path}"', 'name="run"'])
    at_ref = Comparison(cfg, steps=12, n_tasks=2, collection="meta_val", against="tuned_adam")
    tuned = Comparison(cfg, steps=12, n_tasks=2, collection="meta_val", against="tuned_adam", rule_lr="tuned")
    rule = UpdateRule.from_pretrained(DEFAULT_RULE_DIR)
    ref, best = at_ref.run(rule), tuned.run(rule)
    assert all(b <= r + 1e-12 for b, r in zip(best.log_ratios, ref.log_ratios)), (best.log_ratios, ref.log_ratios)
    assert tuned.run(UpdateRule.from_pretrained(ADAM_RULE_DIR)).score == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="compare_rule_lr"):
        Comparison(cfg, steps=3, n_tasks=1, rule_lr="best")


def test_comparison_runs_an_lr_free_rule_lr_free(tmp_path: Path, optimizer_calls) -> None:
    """With tasks.lr_free the comparison runs the rule as it was meta-trained: GMNOptimizer(lr_free=True)
    at the multiplier 1 (an lr to tune there is refused)."""
    from outer_train.compare import Comparison

    cfg = resolve("quick", None, SETS + [f'out_dir="{tmp_path}"', 'name="run"', "tasks.lr_free=true"])
    result = Comparison(cfg, steps=20, n_tasks=2).run(MetaTrainer(cfg).rule)
    assert [(kw.get("lr_free"), kw.get("lr")) for kw in optimizer_calls] == [(True, 1.0), (True, 1.0)]
    assert all(math.isfinite(r) for r in result.log_ratios)
    with pytest.raises(ValueError, match="lr_free"):
        Comparison(cfg, steps=20, n_tasks=2, rule_lr="tuned")
    # the run's options of the estimate (tasks.growth_rate / estimate_stride / estimate_every) are the comparison's too
    optimizer_calls.clear()
    cfg = resolve("quick", None, SETS + [f'out_dir="{tmp_path}"', 'name="run"', "tasks.lr_free=true",
                                         "tasks.growth_rate=1.1", "tasks.estimate_stride=3", "tasks.estimate_every=5",
                                         "tasks.estimate_warmup=9", "tasks.d0=1e-4"])
    Comparison(cfg, steps=20, n_tasks=1).run(MetaTrainer(cfg).rule)
    assert [(kw.get("growth_rate"), kw.get("estimate_stride"), kw.get("estimate_every"), kw.get("estimate_warmup"),
             kw.get("d0")) for kw in optimizer_calls] == [(1.1, 3, 5, 9, 1e-4)]


def test_compare_runs_lr_free_rules_with_per_tensor_estimates(tmp_path: Path, capsys) -> None:
    """`python -m outer_train.compare --lr-free --per-tensor a` runs the rules as GMNOptimizer(lr_free=True,
    per_tensor=a): a curve of its own against the same Adam; refused without --lr-free."""
    from outer_train.compare import Comparison, main
    from metaopt.optim.rules import ADAM_RULE_DIR

    cfg = resolve(None, None, ["tasks.lr_free=true"])
    cache = tmp_path / "cache"
    plain = Comparison(cfg, steps=40, n_tasks=1, collection="meta_val", cache_dir=cache)
    shared = Comparison(cfg, steps=40, n_tasks=1, collection="meta_val", cache_dir=cache, per_tensor=0.7)
    assert shared.lr_free_options["per_tensor"] == 0.7 and "per_tensor" not in plain.lr_free_options
    rule = UpdateRule.from_pretrained(ADAM_RULE_DIR)
    a, b = plain.run(rule), shared.run(rule)
    assert a.curves["adam"] == b.curves["adam"] and a.curves["learned"] != b.curves["learned"]
    with pytest.raises(ValueError, match="per_tensor"):
        Comparison(resolve(None, None, []), steps=40, n_tasks=1, collection="meta_val", per_tensor=0.5)
    out = tmp_path / "scores.json"
    assert main(["--rule", str(ADAM_RULE_DIR), "--lr-free", "--per-tensor", "0.7", "--steps", "40", "--tasks", "1",
                 "--out", str(out), "--cache-dir", str(cache)]) == 0
    assert json.loads(out.read_text())["rules"][str(ADAM_RULE_DIR)]["log_ratios"]["mlp_digits_w128/s7"] == \
        pytest.approx(b.log_ratios[0])
    with pytest.raises(SystemExit):
        main(["--rule", str(ADAM_RULE_DIR), "--per-tensor", "0.7", "--steps", "40"])
    # a shipped rule by name, at one multiplier; and the config's tasks.per_tensor is the comparison's default
    assert main(["--rule", "adam", "--lr-free", "--per-tensor", "0.7", "--lr", "0.5", "--steps", "40", "--tasks", "1",
                 "--out", str(out), "--cache-dir", str(cache)]) == 0
    saved = json.loads(out.read_text())
    assert saved["lr"] == 0.5 and saved["per_tensor"] == 0.7
    assert saved["rules"]["adam"]["log_ratios"]["mlp_digits_w128/s7"] == pytest.approx(shared.run(rule, 0.5).log_ratios[0])
    with pytest.raises(SystemExit):
        main(["--rule", "adam", "--lr", "0.5", "--tune-lr", "--steps", "40"])
    configured = Comparison(resolve(None, None, ["tasks.lr_free=true", "tasks.per_tensor=0.3"]), steps=40, n_tasks=1,
                            collection="meta_val", cache_dir=cache)
    assert configured.lr_free_options["per_tensor"] == 0.3
