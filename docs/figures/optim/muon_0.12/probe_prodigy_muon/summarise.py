"""Median over seeds per task, then over tasks, of the probe's rows (speedup 0 = never reached tuned Adam's loss).
python summarise.py OUT.md RESULTS.json [RESULTS.json ...]"""
import json, statistics, sys

rows = {}
for f in sys.argv[2:]:
    for run, res in json.load(open(f)).items():
        if "/" not in run:
            continue
        for name, r in res.items():
            rows.setdefault(name, {}).setdefault(run.split("/")[0], []).append(r)
names = list(rows)
tasks = sorted({t for n in names for t in rows[n]})
med = lambda xs: statistics.median(xs)
lines = [f"Inputs: {', '.join(sys.argv[2:])}. Per task: median over seeds of final loss / speedup in steps / by the clock "
         "to tuned Adam's final loss (0 = never).", "",
         "| task | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
for t in tasks:
    cells = []
    for n in names:
        rs = rows[n].get(t, [])
        cells.append(f"{med([r['final_loss'] for r in rs]):.3g} / {med([r['speedup'] for r in rs]):.2f}x / "
                     f"{med([r['wall_speedup'] for r in rs]):.2f}x ({len(rs)} seeds)" if rs else "-")
    lines.append(f"| {t} | " + " | ".join(cells) + " |")
per_task = {n: [(med([r['speedup'] for r in rows[n][t]]), med([r['wall_speedup'] for r in rows[n][t]])) for t in tasks if t in rows[n]] for n in names}
lines.append("| **median over tasks** (steps / clock) | " + " | ".join(
    f"{med([a for a, _ in per_task[n]]):.2f}x / {med([b for _, b in per_task[n]]):.2f}x" for n in names) + " |")
lines.append("| tasks >= 1x in steps | " + " | ".join(f"{sum(a >= 1 for a, _ in per_task[n])}/{len(per_task[n])}" for n in names) + " |")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
