"""Shared benchmark plumbing: timing with warm-up, and writing JSON + Markdown results."""

from __future__ import annotations

import copy
import json
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch


def timed(fn: Callable[[], object], repeats: int = 3) -> tuple[float, object]:
    """Best-of-`repeats` wall time in seconds, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def machine() -> dict:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_results(out_dir: str | Path, name: str, rows: list[dict], columns: list[str], title: str) -> Path:
    """Write rows as <name>.json and <name>.md (a Markdown table) in out_dir; print the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    md = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(md)
    print(md)
    return out / f"{name}.md"


def proc_status_bytes(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM, ...) in bytes (Linux).

    VmHWM is this process's own peak: unlike getrusage's ru_maxrss it is not inherited from the
    parent across fork + exec, so it is the right peak for a freshly spawned worker."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) * 1024  # type: ignore[union-attr]


def replace_block(doc: str | Path, marker: str, text: str) -> None:
    """Replace what lies between ``<!-- {marker}:start -->`` and ``<!-- {marker}:end -->`` in a Markdown file."""
    doc = Path(doc)
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    content = doc.read_text()
    if start not in content or end not in content:
        raise SystemExit(f"{doc} has no {start} ... {end} block to fill")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{text.rstrip()}\n{end}{tail}")


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def held_out_model(task_name: str, seed: int, steps: int, tool: str) -> tuple[object, torch.nn.Module]:
    """A held-out task (``inner_tasks.held_out_suite``) and a copy of its model at the seed's init, in train
    mode: what the trace tools train, on ``task.train_batches(seed)``. ``tool`` names the caller in the error."""
    from inner_tasks import build_task
    from inner_tasks.tasks.collections import held_out_suite

    specs = [s for s in held_out_suite((seed,), steps) if s.name.split("/")[0] == task_name]
    if not specs:
        raise SystemExit(f"{tool}: no held-out task named {task_name!r}")
    task = build_task(specs[0])
    model = copy.deepcopy(task.model)
    with torch.no_grad():
        for p, v in zip(model.parameters(), task.init_params(seed).values()):
            p.copy_(v)
    model.train()
    return task, model
