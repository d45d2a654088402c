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
    cfg = resolve(None, f, ["tasks.truncation=5", "rule.arch=mlp", "tasks.families=deepsets,teacher_student"])
    assert cfg.preset == "quick" and cfg.name == "mine"
    assert cfg.tasks.truncation == 5 and cfg.meta.lr == 1e-2 and cfg.rule.arch == "mlp"
    assert cfg.tasks.max_params == 1500  # from the preset
    assert cfg.tasks.families == ["deepsets", "teacher_student"]
    assert TrainConfig().tasks.truncation == 10  # defaults untouched


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
        ("rule.arch=transformer", "rule.arch must be gmn or mlp"),
        ("tasks.unroll_min=500", "unroll_min <= tasks.unroll_max"),
        ("truncation", "section.key=value"),
    ],
)
def test_bad_overrides_raise_with_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve(None, None, [override])


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
