"""bench_simulate: one model measured in a fresh process, results accumulating across runs, the doc block."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks import bench_simulate
from benchmarks.common import replace_block

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torchvision_models import count_params, load_models  # noqa: E402


def test_replace_block_rewrites_only_between_the_markers(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- t:start -->\nold\n<!-- t:end -->\nafter\n")
    replace_block(doc, "t", "new table\n")
    assert doc.read_text() == "before\n<!-- t:start -->\nnew table\n<!-- t:end -->\nafter\n"
    with pytest.raises(SystemExit, match="no <!-- u:start -->"):
        replace_block(doc, "u", "x")


def test_runs_accumulate_rows_and_fill_the_doc(tmp_path: Path, monkeypatch) -> None:
    """A run replaces the rows of the models it measured and keeps the others; the doc shows all."""
    if load_models() is None:
        pytest.skip("torchvision is not installed (test extra)")
    measured = iter([{"rel_err": 2e-7, "seconds": 1.5, "peak_rss_gb": 0.5},
                     {"refused": "layer 'x' (attention): an op"},
                     {"rel_err": 3e-7, "seconds": 1.0, "peak_rss_gb": 0.4}])
    monkeypatch.setattr(bench_simulate, "_fresh", lambda name: {"name": name, **next(measured)})
    doc = tmp_path / "layers.md"
    doc.write_text("<!-- bench_simulate:start -->\n<!-- bench_simulate:end -->\n")
    monkeypatch.setattr(sys, "argv", ["bench_simulate", "resnet18", "alexnet", "--out", str(tmp_path), "--doc", str(doc)])
    bench_simulate.main()
    monkeypatch.setattr(sys, "argv", ["bench_simulate", "resnet18", "--out", str(tmp_path), "--doc", str(doc)])
    bench_simulate.main()
    rows = {r["model"]: r for r in json.loads((tmp_path / "bench_simulate.json").read_text())["rows"]}
    assert set(rows) == {"alexnet", "resnet18"} and rows["resnet18"]["rel_err"] == 3e-7  # replaced by the 2nd run
    tv = load_models()
    n_resnet, n_alexnet = count_params(tv, "resnet18"), count_params(tv, "alexnet")
    assert rows["resnet18"]["params"] == n_resnet
    text = doc.read_text()
    assert f"| resnet18 | {n_resnet:,} | rel err 3.0e-07 (1.0 s, 0.4 GB) |" in text
    assert f"| alexnet | {n_alexnet:,} | refused: layer 'x' (attention): an op |" in text
    assert "1 of 2 measured torchvision definitions reproduced to <= 1e-4" in text


def test_measure_reproduces_a_small_definition() -> None:
    if load_models() is None:
        pytest.skip("torchvision is not installed (test extra)")
    r = bench_simulate.measure("squeezenet1_1")
    assert r["rel_err"] <= 1e-4 and r["peak_rss_gb"] > 0 and r["seconds"] > 0
