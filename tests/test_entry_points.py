"""Console scripts in pyproject point at real `main(argv)` functions, and the demo's checks pass."""

from __future__ import annotations

import importlib
import inspect
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_targets_a_main_taking_argv(name: str) -> None:
    module, _, attr = SCRIPTS[name].partition(":")
    func = getattr(importlib.import_module(module), attr)
    assert callable(func), SCRIPTS[name]
    assert "argv" in inspect.signature(func).parameters, f"{SCRIPTS[name]} should accept argv (testable without sys.argv)"


def test_every_experiment_module_with_a_cli_is_registered() -> None:
    targets = {target.partition(":")[0] for target in SCRIPTS.values()}
    for path in sorted((ROOT / "experiments").rglob("*.py")):
        if "def main(" in path.read_text():
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            assert module in targets, f"{module} has a main() but no console script in pyproject.toml"


def test_every_experiment_cli_runs_under_python_m() -> None:
    """`python -m experiments.X` must call main(): a module with main() but no __main__ guard (or
    __main__.py in its package) would exit 0 having done nothing."""
    for path in sorted((ROOT / "experiments").rglob("*.py")):
        text = path.read_text()
        if "def main(" not in text or path.name == "__main__.py":
            continue
        runs = 'if __name__ == "__main__":' in text or (path.name == "__init__.py" and (path.parent / "__main__.py").exists())
        assert runs, f"{path.relative_to(ROOT)} defines main() but `python -m` would not call it"


def test_demo_checks_pass(capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.demo import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out and out.count("bitwise exact: True") == 3
