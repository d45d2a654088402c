"""The decision rule of README.md, read off a merged evaluation summary: per row, the median over tasks of the
per-task median over seeds (steps and clock to tuned Adam's final loss), tasks >= 1x by the clock, runs that never
reach tuned Adam's loss, divergences; then whether the candidate meets each condition against the baseline.

    python docs/figures/optim/stats2_0.17/decide.py SUMMARY.json BASELINE_ROW CANDIDATE_ROW [--json OUT]
"""
import json
import statistics
import sys
from collections import defaultdict


def figures(runs: list[dict], row: str) -> dict:
    by_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    never = diverged = 0
    for run in runs:
        r = run["results"][row]
        task = run["task"].rsplit("/", 1)[0]
        by_task[task]["steps"].append(r["speedup"])
        by_task[task]["clock"].append(r["wall_speedup"])
        never += r["steps_to_adam"] is None
        diverged += bool(r["diverged"])
    per_task = {t: {k: statistics.median(v) for k, v in d.items()} for t, d in by_task.items()}
    return {"steps": statistics.median(d["steps"] for d in per_task.values()),
            "clock": statistics.median(d["clock"] for d in per_task.values()),
            "tasks_clock_at_least_1x": sum(d["clock"] >= 1 for d in per_task.values()),
            "never_reached": never, "divergences": diverged, "runs": len(runs), "per_task": per_task}


def main() -> None:
    summary, base, cand = sys.argv[1:4]
    runs = json.load(open(summary))["runs"]
    b, c = figures(runs, base), figures(runs, cand)
    rule = {"1 clock median >=": c["clock"] >= b["clock"], "2 steps median >= baseline - 0.05": c["steps"] >= b["steps"] - 0.05,
            "3a tasks >= 1x by the clock, no fewer": c["tasks_clock_at_least_1x"] >= b["tasks_clock_at_least_1x"],
            "3b never-reached runs, no more": c["never_reached"] <= b["never_reached"], "4 no divergence": c["divergences"] == 0}
    out = {base: b, cand: c, "conditions": rule, "met": all(rule.values())}
    for name, f in ((base, b), (cand, c)):
        print(f"{name}: steps {f['steps']:.3f}, clock {f['clock']:.3f}, tasks >= 1x by the clock {f['tasks_clock_at_least_1x']}/"
              f"{len(f['per_task'])}, never reached {f['never_reached']}/{f['runs']}, divergences {f['divergences']}")
    for k, v in rule.items():
        print(f"  {k}: {'yes' if v else 'no'}")
    print("rule met" if out["met"] else "rule not met")
    if "--json" in sys.argv:
        json.dump(out, open(sys.argv[sys.argv.index("--json") + 1], "w"), indent=1)


if __name__ == "__main__":
    main()
