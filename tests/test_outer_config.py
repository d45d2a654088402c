"""outer_train.config: files, presets, dotted overrides, saving, and the CLI's --print-config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from outer_train.config import ConfigError, TrainConfig, from_dict, load_file, parse_override, resolve

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_preset_file_and_overrides_layer_in_order(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('preset = "quick"\nname = "mine"\n[tasks]\ntruncation = 7\n[meta]\nlr = 1e-2\n')
    cfg = resolve(None, f, ["tasks.truncation=5", "rule.refresh_every=5", "rule.arch=mlp", "tasks.families=deepsets,teacher_student"])
    assert cfg.preset == "quick" and cfg.name == "mine"
    assert cfg.tasks.truncation == 5 and cfg.meta.lr == 1e-2 and cfg.rule.arch == "mlp"
    assert cfg.tasks.max_params == 1500  # from the preset
    assert cfg.tasks.families == ["deepsets", "teacher_student"]
    assert TrainConfig().tasks.truncation == 100 and TrainConfig().rule.arch == "gmn"  # defaults untouched


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = resolve("quick", None, ["seed=7", "estimator.kind=pes", "meta.clip=0.5"])
    path = cfg.save(tmp_path / "config.json")
    again = from_dict(load_file(path))
    assert again == cfg and again.to_dict() == json.loads(path.read_text())


@pytest.mark.parametrize(
    "override,match",
    [
        ("tasks.nope=1", "unknown key 'nope'"),
        ("meta.steps=1.5", "expected int"),
        ("rule.arch=transformer", "rule.arch must be a registered rule kind with a network"),
        ("rule.arch=none", "rule.arch must be a registered rule kind with a network"),
        ("tasks.truncation=15", "must be a multiple of rule.refresh_every"),
        ("meta.max_consecutive_skips=0", "max_consecutive_skips must be >= 1"),
        ("tasks.unroll_min=500", "unroll_min <= tasks.unroll_max"),
        ("truncation", "section.key=value"),
        ("rule.global_bound=1.0", "rule.global_bound corrects the lr-free estimate"),
        ("rule.global_bound=-1.0", "rule.global_bound must be >= 0"),
    ],
)
def test_bad_overrides_raise_with_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve("quick" if override.startswith("tasks.truncation") else None, None, [override])


def test_new_rule_and_inner_optimizer_fields_resolve() -> None:
    cfg = resolve("quick", None, ["rule.bound=1.5", "rule.refresh_every=5", "tasks.truncation=15", "rule.max_step=300",
                                  "tasks.beta1=0.8", "tasks.beta2=0.99", "tasks.eps=1e-6", "tasks.weight_decay=0.01",
                                  "tasks.stagger=false", "meta.max_consecutive_skips=4"])
    assert (cfg.rule.bound, cfg.rule.refresh_every, cfg.rule.max_step) == (1.5, 5, 300)
    assert (cfg.tasks.beta1, cfg.tasks.beta2, cfg.tasks.eps, cfg.tasks.weight_decay) == (0.8, 0.99, 1e-6, 0.01)
    assert cfg.tasks.stagger is False and cfg.meta.max_consecutive_skips == 4
    from outer_train.train import build_rule

    rule = build_rule(cfg)
    assert (rule.config.bound, rule.config.refresh_every, rule.features.max_step) == (1.5, 5, 300)
    cfg = resolve("quick", None, ["tasks.lr_free=true", "rule.global_bound=1.5"])
    assert build_rule(cfg).config.global_bound == 1.5
    for preset in ("quick", "gpu", "multi"):  # every preset is valid as shipped
        c = resolve(preset)
        assert c.tasks.truncation % c.rule.refresh_every == 0


def test_override_parsing_and_bad_files(tmp_path: Path) -> None:
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    assert parse_override("name=hello world") == {"name": "hello world"}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve(None, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(None, tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve("huge")


def test_cli_prints_resolved_config() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "outer_train", "--preset", "quick", "--rule-arch", "mlp", "--steps", "3", "--print-config"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    cfg = json.loads(out.stdout)
    assert cfg["rule"]["arch"] == "mlp" and cfg["meta"]["steps"] == 3 and cfg["preset"] == "quick"
    bad = subprocess.run([sys.executable, "-m", "outer_train", "--set", "meta.stepz=3", "--print-config"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown key 'stepz'" in bad.stderr


def test_shipped_config_files_resolve_and_differ_only_in_the_estimator() -> None:
    """The configs that produced the shipped rules stay loadable; the PES one is the TBPTT one with PES."""
    from pathlib import Path

    from outer_train.config import resolve

    root = Path(__file__).resolve().parents[1] / "outer_train" / "configs"
    tbptt, pes = resolve(None, root / "cpu_ship.toml"), resolve(None, root / "cpu_ship_pes.toml")
    assert (tbptt.estimator.kind, pes.estimator.kind) == ("tbptt", "pes")
    a, b = tbptt.to_dict(), pes.to_dict()
    differ = {k for k in a if a[k] != b[k]}
    assert differ <= {"estimator", "meta", "name"}, differ
    assert {k for k in a["meta"] if a["meta"][k] != b["meta"][k]} <= {"time_budget_s"}


def test_every_shipped_config_resolves_and_builds_its_rule() -> None:
    """Each file in outer_train/configs validates, and a rule it continues (rule.init_from, a path in the
    repository) exists and loads with the features the config asks for."""
    from outer_train.train import build_rule

    repo = Path(__file__).resolve().parents[1]
    configs = sorted((repo / "outer_train" / "configs").glob("*.toml"))
    assert len(configs) >= 5
    for path in configs:
        cfg = resolve(None, path)
        if cfg.rule.init_from:
            assert (repo / cfg.rule.init_from / "config.json").is_file(), (path.name, cfg.rule.init_from)
            cfg.rule.init_from = str(repo / cfg.rule.init_from)
            rule = build_rule(cfg)
            assert rule.config.kind == cfg.rule.arch and rule.features.relative_lr >= cfg.rule.relative_lr
