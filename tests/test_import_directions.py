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


def private_uses(path: Path, package: str) -> list[str]:
    """`from .x import _name` and `x._name` on a module or object imported from `package` (line: use).

    Relative imports count as the package's own; dunders (`__version__`) are public.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    private = lambda name: name.startswith("_") and not name.startswith("__")  # noqa: E731
    imported: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] == package):
            for alias in node.names:
                imported.add(alias.asname or alias.name)
                if private(alias.name):
                    found.append(f"{node.lineno}: from {'.' * node.level}{node.module or ''} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == package:
                    imported.add(alias.asname or alias.name.split(".")[0])
                    if any(private(part) for part in alias.name.split(".")):
                        found.append(f"{node.lineno}: import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported \
                and private(node.attr):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_graph_modules_use_no_private_names_of_each_other() -> None:
    """metaopt/graph files talk through public names only (converters, ops rules and the walker)."""
    files = sorted((ROOT / "metaopt" / "graph").rglob("*.py"))
    assert len(files) > 10
    bad = [f"{path.relative_to(ROOT)}:{use}" for path in files for use in private_uses(path, "metaopt")]
    assert not bad, "\n".join(bad)


def test_the_private_scan_sees_imports_and_attributes(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("from . import ops\nfrom .ops import _wrap, probe\nfrom metaopt.graph.ops import _flat\n"
                   "import metaopt.graph.ops as o\nimport os\n\n"
                   "def f(x):\n    from .registry import _CONVERTERS\n"
                   "    return ops._map(x), o._probe, os._exit, x._y, ops.__name__, probe\n")
    assert sorted(private_uses(src, "metaopt")) == [
        "2: from .ops import _wrap", "3: from metaopt.graph.ops import _flat", "8: from .registry import _CONVERTERS",
        "9: o._probe", "9: ops._map",
    ]
