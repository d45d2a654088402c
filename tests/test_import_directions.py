"""The library never imports its drivers: `metaopt` must not import `experiments`, `inner_tasks` or `outer_train`.

Checked on the source (every import statement, including ones inside functions), so a lazy import
that would only fail at run time is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"metaopt": ("experiments", "inner_tasks", "outer_train"), "inner_tasks": ("experiments", "outer_train")}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file; relative imports are skipped (they stay inside)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_its_drivers(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no source files under {ROOT / package}"
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in files
        for line, module in imported_modules(path)
        if module.split(".")[0] in FORBIDDEN[package]
    ]
    assert not bad, "\n".join(bad)


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n    from outer_train.config import X\n    import experiments.demo as d\n")
    assert [m for _, m in imported_modules(src)] == ["os", "outer_train.config", "experiments.demo"]
