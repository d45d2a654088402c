"""The held-out suite, this release's rules against the v0.1 default rule, side by side.

    python -m benchmarks.compare_versions --old docs/figures/outer_train/eval_results.json \
        --new docs/figures/outer_train/v0.2/summary.json --out docs/figures/outer_train/v0.2

v0.1's default (a per-step residual rule, metaopt 0.1) cannot run in this release (its rule format
is refused), so its figures come from its own evaluation file: same tasks, seeds, steps and
baseline grids, its rule run at tuned Adam's lr. Its wall-clock speedup is computed from that
run's mean ms/step (v0.1 timed the loop without optimizer construction): tuned Adam's steps x
Adam's ms/step over the rule's steps x the rule's ms/step. Writes ``versions.json`` and
``versions.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def _median_by_task(rows: list[tuple[str, float]]) -> dict[str, float]:
    by: dict[str, list[float]] = {}
    for task, x in rows:
        by.setdefault(task, []).append(x)
    return {t: float(statistics.median(v)) for t, v in by.items()}


def old_rule(path: Path, name: str = "rule_gmn") -> dict[str, dict[str, float]]:
    """Per task (median over seeds): v0.1 rule's step speedup, wall-clock speedup and final loss."""
    data = json.loads(path.read_text())
    steps, wall, loss, cost = [], [], [], []
    for e in data["entries"]:
        task, res = e["task"].split("/")[0], e["results"]
        r, adam = res[name], res["adam"]
        steps.append((task, r["speedup"]))
        adam_steps = adam.get("steps_to_adam")
        ok = r["steps_to_adam"] and adam_steps
        wall.append((task, (adam_steps * adam["ms_per_step"]) / (r["steps_to_adam"] * r["ms_per_step"]) if ok else 0.0))
        loss.append((task, r["final_loss"]))
        cost.append((task, r["ms_per_step"] / adam["ms_per_step"]))
    s, w, f, c = _median_by_task(steps), _median_by_task(wall), _median_by_task(loss), _median_by_task(cost)
    return {t: {"speedup": s[t], "wall_speedup": w[t], "final_loss": f[t], "cost_vs_adam": c[t]} for t in s}


def compare(old: Path, new: Path) -> dict[str, Any]:
    prev = old_rule(old)
    cur = json.loads(new.read_text())["per_task"]
    names = [n for n in ("rule_gmn", "rule_gmn@best", "rule_mlp", "rule_mlp@best") if any(n in t for t in cur.values())]
    tasks = [t for t in cur if t in prev]
    table = {t: {"v0.1 rule_gmn (at tuned Adam's lr)": prev[t], **{n: cur[t][n] for n in names if n in cur[t]},
                 "adam": cur[t]["adam"]} for t in tasks}
    cols = list(next(iter(table.values())))
    summary = {c: {"median_speedup": statistics.median(table[t][c]["speedup"] for t in tasks),
                   "median_wall_speedup": statistics.median(table[t][c]["wall_speedup"] for t in tasks),
                   "median_cost_vs_adam": statistics.median(table[t][c]["cost_vs_adam"] for t in tasks)}
               for c in cols}
    return {"old": str(old), "new": str(new), "per_task": table, "summary": summary}


def markdown(result: dict[str, Any]) -> str:
    cols = list(next(iter(result["per_task"].values())))
    lines = ["Per task, median over seeds: final training loss (speedup in steps / in wall-clock time vs tuned Adam):",
             "", "| task | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for task, row in result["per_task"].items():
        lines.append(f"| {task} | " + " | ".join(
            f"{row[c]['final_loss']:.3g} ({row[c]['speedup']:.2f}x / {row[c]['wall_speedup']:.2f}x)" for c in cols) + " |")
    lines += ["", "| optimizer | median speedup (steps) | median speedup (wall-clock) | loop ms/step vs Adam |",
              "|---|---:|---:|---:|"]
    for c, s in result["summary"].items():
        lines.append(f"| {c} | {s['median_speedup']:.2f} | {s['median_wall_speedup']:.2f} | {s['median_cost_vs_adam']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="v0.1 results.json (with curves and ms/step)")
    ap.add_argument("--new", type=Path, required=True, help="this release's summary.json")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    result = compare(a.old, a.new)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "versions.json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    (a.out / "versions.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
