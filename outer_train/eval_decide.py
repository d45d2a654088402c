"""Does a candidate replace a baseline? A rule fixed before a held-out sitting, read off its evaluation summary.

A change to what ``GMNOptimizer(model)`` runs is decided on fresh held-out seeds by conditions written down (and
committed) before those seeds run, so the figures cannot choose the conditions. This reads them off one merged
``outer_train.evaluate`` summary: per row, the median over tasks of each task's median over seeds, in steps
(``speedup``) and by the clock (``wall_speedup``), both to tuned Adam's final loss; the tasks at >= 1x by the clock;
the runs that never reach tuned Adam's loss; the divergences; and, where asked, on how many tasks the candidate's
final loss (median over seeds) is below the baseline's. The candidate meets the rule when:

1. its clock median is >= the baseline's minus ``--clock-margin`` (0: no lower),
2. its steps median is >= the baseline's minus ``--steps-margin`` (0.05),
3. it has no fewer tasks >= 1x by the clock (``--count-tasks-by steps``: in steps, where a task at about 1x in both
   rows would be decided by the machine's timing noise), and no more never-reached runs,
4. none of its runs diverges,
5. (with ``--final-loss-wins N``) its final loss is below the baseline's on >= N tasks.

``python -m outer_train.eval_decide SUMMARY.json BASELINE_ROW CANDIDATE_ROW [--clock-margin X] [--steps-margin X]
[--count-tasks-by clock|steps] [--final-loss-wins N] [--json OUT]`` (a negative margin asks for a gain) prints both
rows' figures, each condition, and "rule met" / "rule not met".
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any


def figures(runs: list[dict[str, Any]], row: str) -> dict[str, Any]:
    """One row's figures over the summary's runs (each ``{"task": "<task>/s<seed>", "results": {row: ...}}``)."""
    by_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    never = diverged = 0
    for run in runs:
        if row not in run["results"]:
            raise KeyError(f"row {row!r} is not in the run {run['task']} (rows: {sorted(run['results'])})")
        r = run["results"][row]
        task = run["task"].rsplit("/", 1)[0]
        by_task[task]["steps"].append(r["speedup"])
        by_task[task]["clock"].append(r["wall_speedup"])
        by_task[task]["final_loss"].append(r["final_loss"])
        never += r["steps_to_adam"] is None
        diverged += bool(r["diverged"])
    per_task = {t: {k: statistics.median(v) for k, v in d.items()} for t, d in by_task.items()}
    return {"steps": statistics.median(d["steps"] for d in per_task.values()),
            "clock": statistics.median(d["clock"] for d in per_task.values()),
            "tasks_clock_at_least_1x": sum(d["clock"] >= 1 for d in per_task.values()),
            "tasks_steps_at_least_1x": sum(d["steps"] >= 1 for d in per_task.values()),
            "never_reached": never, "divergences": diverged, "runs": len(runs), "per_task": per_task}


def decide(runs: list[dict[str, Any]], base: str, cand: str, clock_margin: float = 0.0, steps_margin: float = 0.05,
           final_loss_wins: int | None = None, count_tasks_by: str = "clock") -> dict[str, Any]:
    """Both rows' `figures`, each condition of the rule (name -> met) and whether all are met."""
    if count_tasks_by not in ("clock", "steps"):
        raise ValueError(f"count_tasks_by is 'clock' or 'steps', got {count_tasks_by!r}")
    b, c = figures(runs, base), figures(runs, cand)
    at_least = f"tasks_{count_tasks_by}_at_least_1x"
    by = "by the clock" if count_tasks_by == "clock" else "in steps"
    rule = {f"1 clock median >= baseline - {clock_margin:g}": c["clock"] >= b["clock"] - clock_margin,
            f"2 steps median >= baseline - {steps_margin:g}": c["steps"] >= b["steps"] - steps_margin,
            f"3a tasks >= 1x {by}, no fewer": c[at_least] >= b[at_least],
            "3b never-reached runs, no more": c["never_reached"] <= b["never_reached"],
            "4 no divergence": c["divergences"] == 0}
    if final_loss_wins is not None:
        wins = sum(c["per_task"][t]["final_loss"] < b["per_task"][t]["final_loss"] for t in b["per_task"])
        c["final_loss_wins"] = wins
        rule[f"5 final loss below the baseline's on >= {final_loss_wins} tasks"] = wins >= final_loss_wins
    return {base: b, cand: c, "conditions": rule, "met": all(rule.values())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m outer_train.eval_decide", description=__doc__.split("\n\n")[0])
    p.add_argument("summary", help="a (merged) outer_train.evaluate summary.json or results.json")
    p.add_argument("baseline", help="the baseline's row, e.g. soap+lrfree")
    p.add_argument("candidate", help="the candidate's row")
    p.add_argument("--clock-margin", type=float, default=0.0)
    p.add_argument("--steps-margin", type=float, default=0.05)
    p.add_argument("--count-tasks-by", choices=["clock", "steps"], default="clock",
                   help="condition 3a counts the tasks at >= 1x by the clock (default) or in steps")
    p.add_argument("--final-loss-wins", type=int)
    p.add_argument("--json", help="write the figures and conditions here")
    a = p.parse_args(argv)
    data = json.loads(Path(a.summary).read_text())
    runs = data["runs"] if "runs" in data else [{"task": e["task"], "results": e["results"]} for e in data["entries"]]
    out = decide(runs, a.baseline, a.candidate, a.clock_margin, a.steps_margin, a.final_loss_wins, a.count_tasks_by)
    for name in (a.baseline, a.candidate):
        f = out[name]
        wins = f" final loss lower on {f['final_loss_wins']}/{len(f['per_task'])} tasks," if "final_loss_wins" in f else ""
        print(f"{name}: steps {f['steps']:.3f}, clock {f['clock']:.3f}, tasks >= 1x by the clock "
              f"{f['tasks_clock_at_least_1x']}/{len(f['per_task'])}, in steps {f['tasks_steps_at_least_1x']}/"
              f"{len(f['per_task'])},{wins} never reached {f['never_reached']}/{f['runs']}, "
              f"divergences {f['divergences']}")
    for k, v in out["conditions"].items():
        print(f"  {k}: {'yes' if v else 'no'}")
    print("rule met" if out["met"] else "rule not met")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
