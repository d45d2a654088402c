"""How often does 0.17's switch come in the shapes CNN's starting plateau, and what would following the estimate after
the switch cost where it does not? Per fresh seed of the held-out shapes CNN and shapes MLP: the step the switch came
after, the loss there (mean of the 10 steps before it) over the first loss, and the loss at 1,000 steps with 0.17's
GMNOptimizer(model) (frozen), with SoapSwitch(follow=True) and with 0.16's (rule="lrfree_soap"). Steps only, one
thread; the seeds are split over processes by the first argument (k of n). Writes plateau_rate_probe_<k>.json; with
--merge, plateau_rate_probe.md from them.

    python docs/figures/optim/window_0.17/plateau_rate_probe.py 0 2 &
    python docs/figures/optim/window_0.17/plateau_rate_probe.py 1 2
    python docs/figures/optim/window_0.17/plateau_rate_probe.py --merge
"""
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch

from inner_tasks import build_task
from inner_tasks.tasks.collections import held_out_suite
from metaopt.optim import GMNOptimizer
from outer_train.evaluate import run_optimizer

torch.set_num_threads(1)
HERE = Path(__file__).parent
STEPS, SEEDS, TASKS = 1000, tuple(range(144, 164)), ("cnn_shapes", "mlp_shapes")
PLATEAU = 0.75  # the loss at the switch above this fraction of the first: in (or near) the starting plateau


def make(kind: str):
    def build(model):
        if kind == "0.16":
            return GMNOptimizer(model, rule="lrfree_soap")
        opt = GMNOptimizer(model)
        if kind == "follow":
            opt = GMNOptimizer(model, rule="lrfree_soap_1e4",
                               soap_switch=dataclasses.replace(opt.soap_switch, follow=True))
        return opt
    return build


def probe(part: int, parts: int) -> None:
    rows = []
    for spec in held_out_suite(SEEDS[part::parts], STEPS):
        if spec.name.split("/")[0] not in TASKS:
            continue
        task, seed = build_task(spec), int(spec.name.rsplit("/s", 1)[1])
        row = {"task": spec.name}
        for kind in ("0.17", "follow", "0.16"):
            box = {}
            run = run_optimizer(task, lambda m, kind=kind, box=box: box.setdefault("opt", make(kind)(m)), STEPS, seed)
            t = box["opt"].soap_switched_at
            row[kind] = {"final": run["final_loss"], "switched_at": t,
                         "at_switch": sum(run["curve"][t - 10:t]) / 10 / run["curve"][0] if t else None}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (HERE / f"plateau_rate_probe_{part}.json").write_text(json.dumps({"steps": STEPS, "rows": rows}, indent=1) + "\n")


def merge() -> None:
    rows = [r for f in sorted(HERE.glob("plateau_rate_probe_*.json")) for r in json.loads(f.read_text())["rows"]]
    lines = [f"Held-out shapes CNN and MLP, seeds {SEEDS[0]}-{SEEDS[-1]}, {STEPS} steps (`python "
             "docs/figures/optim/window_0.17/plateau_rate_probe.py`): 0.17's switch (the step, the loss there over the "
             "first loss) and the loss at the end with 0.17 (frozen), `follow=True` and 0.16. A switch is in the "
             f"plateau where the loss there is above {PLATEAU} of the first.", ""]
    for name in TASKS:
        mine = [r for r in rows if r["task"].startswith(name + "/")]
        plateau = [r for r in mine if (r["0.17"]["at_switch"] or 0) > PLATEAU]
        med = {k: statistics.median(r[k]["final"] for r in mine) for k in ("0.17", "follow", "0.16")}
        follow_worse = sum(r["follow"]["final"] > 3 * r["0.17"]["final"] for r in mine)
        follow_better = sum(r["follow"]["final"] < r["0.17"]["final"] / 3 for r in mine)
        lines += [f"**{name}**: {len(plateau)} of {len(mine)} switches in the plateau; median final loss 0.17 "
                  f"{med['0.17']:.3g}, follow {med['follow']:.3g}, 0.16 {med['0.16']:.3g}; follow 3x lower on "
                  f"{follow_better}, 3x higher on {follow_worse}.", "",
                  "| run | switched after | loss there / first | 0.17 | follow | 0.16 |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in mine:
            z = r["0.17"]
            lines.append(f"| {r['task']} | {z['switched_at']} | "
                         + (f"{z['at_switch']:.2f}" if z["at_switch"] is not None else "-")
                         + f" | {z['final']:.3g} | {r['follow']['final']:.3g} | {r['0.16']['final']:.3g} |")
        lines.append("")
    (HERE / "plateau_rate_probe.md").write_text("\n".join(lines))


if __name__ == "__main__":
    merge() if sys.argv[1:] == ["--merge"] else probe(int(sys.argv[1]), int(sys.argv[2]))
