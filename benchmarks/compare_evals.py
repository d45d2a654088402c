"""Two held-out evaluations side by side (e.g. the shipped rules before and after a retraining).

    python -m benchmarks.compare_evals --eval tbptt=docs/figures/outer_train/v0.2/held_out_1000/summary.json \
        --eval pes=runs/pes_eval1k/summary.json --out docs/figures/outer_train/v0.3

Reads each evaluation's ``summary.json`` (written by ``python -m outer_train.evaluate``) and puts,
for every optimizer both hold, the summary row and the per-task median final loss next to each
other, with a per-task count of which evaluation ends lower. Steps-based figures are deterministic
and comparable across runs; wall-clock figures are each run's own (same machine, other load).
Writes ``compare_evals.json`` and ``compare_evals.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SUMMARY_KEYS = ("median_speedup", "median_wall_speedup", "tasks_speedup_ge_1", "tasks_wall_speedup_ge_1",
                "beats_adam_final_loss", "divergences", "median_cost_vs_adam")


def compare(evals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Summary rows and per-task final losses of the optimizers every evaluation holds."""
    names = list(evals)
    common = [o for o in evals[names[0]]["summary"] if all(o in e["summary"] for e in evals.values())]
    tasks = [t for t in evals[names[0]]["per_task"] if all(t in e["per_task"] for e in evals.values())]
    out: dict[str, Any] = {"evals": names, "optimizers": {}}
    for o in common:
        losses = {t: {n: evals[n]["per_task"][t][o]["final_loss"] for n in names} for t in tasks}
        out["optimizers"][o] = {
            "summary": {n: {k: evals[n]["summary"][o][k] for k in SUMMARY_KEYS} for n in names},
            "final_loss": losses,
            # strictly lower than every other evaluation (ties, e.g. deterministic Adam runs, count for none)
            "lower_final_loss": {n: sum(all(v[n] < v[m] for m in names if m != n) for v in losses.values())
                                 for n in names},
        }
    return out


def markdown(c: dict[str, Any]) -> str:
    names = c["evals"]
    lines = ["Summary over tasks, side by side:", "",
             "| optimizer | eval | " + " | ".join(SUMMARY_KEYS) + " | tasks with the lower final loss |",
             "|---|---|" + "---:|" * (len(SUMMARY_KEYS) + 1)]
    for o, r in c["optimizers"].items():
        for n in names:
            s = r["summary"][n]
            cells = [f"{s[k]:.2f}" if isinstance(s[k], float) else str(s[k]) for k in SUMMARY_KEYS]
            lines.append(f"| {o} | {n} | " + " | ".join(cells) + f" | {r['lower_final_loss'][n]}/{len(r['final_loss'])} |")
    for o, r in c["optimizers"].items():
        if o == "adam":
            continue
        lines += ["", f"{o}: median final loss per task", "", "| task | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]
        lines += [f"| {t} | " + " | ".join(f"{v[n]:.3g}" for n in names) + " |" for t, v in r["final_loss"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval", action="append", required=True, metavar="NAME=SUMMARY_JSON",
                   help="an evaluation's summary.json under a label; give two or more")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if len(a.eval) < 2 or any("=" not in e for e in a.eval):
        p.error("give at least two --eval NAME=SUMMARY_JSON")
    evals = {name: json.loads(Path(path).read_text()) for name, path in (e.split("=", 1) for e in a.eval)}
    c = compare(evals)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_evals.json").write_text(json.dumps(c, indent=1))
    text = markdown(c)
    (out / "compare_evals.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
