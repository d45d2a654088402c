"""Evaluate learned rules against tuned baselines on held-out tasks (BENCHMARKS.md §1).

``python -m outer_train.evaluate --rule DIR [--rule DIR2] [--suite held_out] [--quick] [--out DIR]``

Per task and seed: Adam, AdamW (weight decay 1e-2) and SGD+momentum (0.9) each run over a log
grid of learning rates and keep the lr with the lowest final training loss; every rule given
runs through the real `GMNOptimizer` at tuned Adam's lr (the residual is learned on top of Adam,
so this isolates what the rule adds). Final loss = mean training loss of the last 10 steps.
"Steps to Adam" = first step where the rule's 10-step running mean reaches tuned Adam's final
loss; speedup = Adam's own steps to that loss / the rule's. Writes ``results.json``,
``results.md`` and one loss-curve PNG per task and seed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from inner_tasks import Task, TaskSpec, build_task
from inner_tasks.tasks.collections import HELD_OUT_TASKS, held_out_suite
from metaopt.optim import GMNOptimizer, UpdateRule


WINDOW = 10  # steps averaged for "final loss" and for reaching a target


@dataclass
class EvalSettings:
    """What to run: suite subset, seeds, horizon and lr grid."""

    tasks: list[str]
    seeds: list[int]
    steps: int
    grid_points: int = 7
    lr_min: float = 1e-4
    lr_max: float = 1e-1
    sgd_lr_min: float = 1e-3
    sgd_lr_max: float = 1.0
    # "first_seed": each task's lr grid runs on its first seed and the chosen lr is reused for the
    # other seeds (the lr is tuned per task, as in BENCHMARKS.md; 3x cheaper); "every_seed": per seed.
    tune: str = "first_seed"

    def grid(self, lo: float, hi: float) -> list[float]:
        return [float(x) for x in np.geomspace(lo, hi, self.grid_points)]


QUICK_TASKS = ["mlp_digits_deep", "cnn_shapes", "siren_shapes"]


def final_loss(curve: list[float]) -> float:
    """Mean of the last WINDOW losses; inf for a diverged (non-finite) run."""
    if not curve or not all(math.isfinite(x) for x in curve):
        return math.inf
    return float(np.mean(curve[-WINDOW:]))


def steps_to(curve: list[float], target: float) -> int | None:
    """First step (1-based, end of the window) where the running mean of WINDOW losses <= target."""
    if not curve or not math.isfinite(target):
        return None
    c = np.asarray(curve, dtype=np.float64)
    if not np.isfinite(c).all():
        c = c[: int(np.argmax(~np.isfinite(c)))]
    if len(c) < WINDOW:
        return None
    run = np.convolve(c, np.ones(WINDOW) / WINDOW, mode="valid")
    hit = np.nonzero(run <= target * (1 + 1e-9))[0]
    return int(hit[0]) + WINDOW if hit.size else None


def run_optimizer(task: Task, make_opt: Callable, steps: int, seed: int) -> dict[str, Any]:
    """Train once from init ``seed`` with batch order ``seed``; curve, final loss, held-out metric,
    ms/step, diverged flag."""
    import copy
    from itertools import islice

    model = copy.deepcopy(task.model)
    with torch.no_grad():
        for p, v in zip(model.parameters(), task.init_params(seed).values()):
            p.copy_(v)
    opt = make_opt(model)
    model.train()
    curve: list[float] = []
    t0 = time.perf_counter()
    for batch in islice(task.train_batches(seed), steps):
        loss = task.loss(model(batch[0]), batch)
        curve.append(float(loss.detach()))
        if not math.isfinite(curve[-1]):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    ms = 1000 * (time.perf_counter() - t0) / max(len(curve), 1)
    diverged = not all(math.isfinite(x) for x in curve)
    metric = math.nan
    if not diverged:
        ev = task.evaluate(dict(model.named_parameters()), dict(model.named_buffers()))
        metric = ev[task.metric_name]
    return {"curve": curve, "final_loss": final_loss(curve), "metric": metric, "ms_per_step": ms, "diverged": diverged}


def tune(task: Task, make: Callable[[float], Callable], grid: list[float], steps: int, seed: int) -> dict[str, Any]:
    """Run every lr of the grid; keep the run with the lowest final loss (ties -> smaller lr)."""
    runs = {lr: run_optimizer(task, make(lr), steps, seed) for lr in grid}
    best = min(grid, key=lambda lr: (runs[lr]["final_loss"], lr))
    out = dict(runs[best])
    out["lr"] = best
    out["grid"] = {f"{lr:.3g}": runs[lr]["final_loss"] for lr in grid}
    out["grid_divergences"] = sum(r["diverged"] for r in runs.values())
    return out


def evaluate_task(
    spec: TaskSpec, rules: dict[str, UpdateRule], s: EvalSettings, previous: dict[str, Any] | None = None,
    tuned_lrs: dict[str, float] | None = None,
) -> dict[str, Any]:
    """All optimizers on one task and seed (results in ``previous`` are reused, not rerun). With
    ``tuned_lrs`` (baseline -> lr chosen on another seed of the task) the baselines run once at that
    lr instead of over the grid."""
    task = build_task(spec)
    graph = task.graph if rules else None
    res: dict[str, Any] = dict(previous or {})
    baselines = {
        "adam": (lambda lr: lambda m: torch.optim.Adam(m.parameters(), lr=lr), s.grid(s.lr_min, s.lr_max)),
        "adamw": (lambda lr: lambda m: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=1e-2), s.grid(s.lr_min, s.lr_max)),
        "sgd_momentum": (lambda lr: lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9),
                         s.grid(s.sgd_lr_min, s.sgd_lr_max)),
    }
    for name, (make, grid) in baselines.items():
        if name in res:
            continue
        if tuned_lrs is not None:
            res[name] = {**run_optimizer(task, make(tuned_lrs[name]), s.steps, spec.seed), "lr": tuned_lrs[name],
                         "grid": None, "grid_divergences": 0}
        else:
            res[name] = tune(task, make, grid, s.steps, spec.seed)
    lr = res["adam"]["lr"]
    for name, rule in rules.items():
        r = run_optimizer(task, lambda m, rule=rule: GMNOptimizer(m, rule=rule, lr=lr, graph=graph), s.steps, spec.seed)
        r["lr"] = lr
        res[name] = r
    target = res["adam"]["final_loss"]
    adam_steps = steps_to(res["adam"]["curve"], target)
    for name, r in res.items():
        r["steps_to_adam"] = steps_to(r["curve"], target)
        r["speedup"] = (adam_steps / r["steps_to_adam"]) if (adam_steps and r["steps_to_adam"]) else 0.0
    return {"task": spec.name, "family": spec.family, "params": task.num_params, "metric_name": task.metric_name,
            "higher_is_better": task.higher_is_better, "results": res}


def plot(entry: dict[str, Any], path: Path) -> None:
    """Loss curves of every optimizer on one task (log y)."""
    from .plots import loss_figure

    curves = {f"{k} (lr {v['lr']:.2g})": v["curve"] for k, v in entry["results"].items()}
    fig = loss_figure(curves, f"{entry['task']} ({entry['params']:,} params)")
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def task_summary(entries: list[dict[str, Any]], optimizers: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Task (name without the seed) -> optimizer -> median over seeds of speedup and final loss."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_task.setdefault(e["task"].split("/")[0], []).append(e)
    return {
        task: {
            name: {key: float(np.median([e["results"][name][key] for e in es])) for key in ("speedup", "final_loss")}
            for name in optimizers
        }
        for task, es in by_task.items()
    }


def markdown(entries: list[dict[str, Any]], optimizers: list[str]) -> str:
    """Per-task table plus a summary per optimizer."""
    lines = [
        "| task | optimizer | lr | final loss | test metric | steps to Adam's loss | speedup | divergences | ms/step |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        for name in optimizers:
            r = e["results"][name]
            steps = "-" if r["steps_to_adam"] is None else str(r["steps_to_adam"])
            div = int(r["diverged"]) + int(r.get("grid_divergences", 0))
            lines.append(
                f"| {e['task']} | {name} | {r['lr']:.2g} | {r['final_loss']:.4g} | {e['metric_name']} {r['metric']:.4g} | "
                f"{steps} | {r['speedup']:.2f} | {div} | {r['ms_per_step']:.1f} |"
            )
    per_task = task_summary(entries, optimizers)
    seeds = {t: sum(e["task"].split("/")[0] == t for e in entries) for t in per_task}
    lines += ["", "Per task, median over its seeds: final training loss (speedup vs tuned Adam):", "",
              "| task | seeds | " + " | ".join(optimizers) + " |", "|---|---:|" + "---:|" * len(optimizers)]
    for task, res in per_task.items():
        cells = [f"{res[n]['final_loss']:.3g} ({res[n]['speedup']:.2f}x)" for n in optimizers]
        lines.append(f"| {task} | {seeds[task]} | " + " | ".join(cells) + " |")
    lines += ["", "Summary over tasks (each task: median over its seeds):", "",
              "| optimizer | median speedup vs tuned Adam | tasks >= 1.0x | beats tuned Adam (final loss) | divergences |",
              "|---|---:|---:|---:|---:|"]
    for name in optimizers:
        sp = [t[name]["speedup"] for t in per_task.values()]
        wins = sum(t[name]["final_loss"] < t["adam"]["final_loss"] for t in per_task.values())
        div = sum(int(e["results"][name]["diverged"]) for e in entries)
        lines.append(f"| {name} | {statistics.median(sp):.2f} | {sum(x >= 1.0 for x in sp)}/{len(sp)} | "
                     f"{wins}/{len(per_task)} | {div} |")
    gmn = [n for n in optimizers if n.startswith("rule_gmn")]
    mlp = [n for n in optimizers if n.startswith("rule_mlp")]
    if gmn and mlp:
        g, m = gmn[0], mlp[0]
        wins = sum(t[g]["final_loss"] < t[m]["final_loss"] for t in per_task.values())
        lines += ["", f"{g} reaches a lower final loss than {m} on {wins}/{len(per_task)} tasks (median over seeds)."]
    return "\n".join(lines) + "\n"


def write_tables(entries: list[dict[str, Any]], s: EvalSettings, out: Path) -> None:
    """results.md (settings header, per-run table, per-task summary), also printed."""
    optimizers = list(dict.fromkeys(k for e in entries for k in e["results"]))
    tuning = "tuned on each task's first seed" if s.tune == "first_seed" else "tuned per seed"
    header = (f"Settings: tasks {s.tasks}, seeds {s.seeds}, {s.steps} steps, {s.grid_points}-point lr grids "
              f"(Adam/AdamW {s.lr_min:g}..{s.lr_max:g}, SGD {s.sgd_lr_min:g}..{s.sgd_lr_max:g}; {tuning}); "
              f"rules at tuned Adam's lr.\n\n")
    text = header + markdown(entries, optimizers)
    (out / "results.md").write_text(text)
    print(text)


def merge_results(files: list[Path], out: Path) -> int:
    """One results.json/results.md from runs over disjoint task subsets with otherwise equal settings."""
    parts = [json.loads(f.read_text()) for f in files]
    base = {k: v for k, v in parts[0]["settings"].items() if k != "tasks"}
    for f, part in zip(files, parts):
        other = {k: v for k, v in part["settings"].items() if k != "tasks"}
        if other != base:
            raise SystemExit(f"--merge: {f} was run with settings {other}, {files[0]} with {base}")
    entries = [e for part in parts for e in part["entries"]]
    names = [e["task"] for e in entries]
    if len(set(names)) != len(names):
        raise SystemExit(f"--merge: some task/seed runs appear twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    settings = EvalSettings(**{**base, "tasks": list(dict.fromkeys(t for p in parts for t in p["settings"]["tasks"]))})
    out.mkdir(parents=True, exist_ok=True)
    rules = list(dict.fromkeys(r for p in parts for r in p.get("rules", [])))
    (out / "results.json").write_text(json.dumps({"settings": settings.__dict__, "rules": rules, "entries": entries}, indent=1))
    write_tables(entries, settings, out)
    return 0


def load_rules(dirs: list[str]) -> dict[str, UpdateRule]:
    """Rules by label (their kind, de-duplicated with the directory name)."""
    rules: dict[str, UpdateRule] = {}
    for d in dirs:
        rule = UpdateRule.from_pretrained(d).eval()
        label = f"rule_{rule.config.kind}"
        if label in rules:
            label = f"{label}_{Path(d).resolve().parent.name}"
        rules[label] = rule
    return rules


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m outer_train.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--rule", action="append", default=[], help="rule directory (save_pretrained format); repeatable")
    p.add_argument("--suite", default="held_out", choices=["held_out"])
    p.add_argument("--tasks", nargs="*", help=f"subset of {list(HELD_OUT_TASKS)}")
    p.add_argument("--seeds", nargs="*", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--grid-points", type=int)
    p.add_argument("--quick", action="store_true", help=f"tasks {QUICK_TASKS}, seed 0, 150 steps, 4-point grids")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--tune", choices=["first_seed", "every_seed"], default="first_seed",
                   help="tune baseline lrs on each task's first seed and reuse them (default), or on every seed")
    p.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                   help="combine results.json files of runs over disjoint task subsets (same settings) into one "
                        "table in --out; nothing is run")
    p.add_argument("--reuse", help="a results.json from an earlier run with the same settings: its optimizers are "
                   "kept (not rerun) and the rules given here are added")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    s = EvalSettings(tasks=QUICK_TASKS if a.quick else list(HELD_OUT_TASKS), seeds=[0] if a.quick else [0, 1, 2],
                     steps=150 if a.quick else 1000, grid_points=4 if a.quick else 7)
    if a.tasks:
        unknown = sorted(set(a.tasks) - set(HELD_OUT_TASKS))
        if unknown:
            p.error(f"unknown held-out tasks {unknown}; choose from {list(HELD_OUT_TASKS)}")
        s.tasks = a.tasks
    if a.seeds:
        s.seeds = a.seeds
    if a.steps:
        s.steps = a.steps
    if a.grid_points:
        s.grid_points = a.grid_points
    s.tune = a.tune
    if s.grid_points < 2 or s.steps < WINDOW:
        p.error(f"need --grid-points >= 2 and --steps >= {WINDOW}")
    if a.merge:
        return merge_results([Path(f) for f in a.merge], Path(a.out))
    rules = load_rules(a.rule)
    out = Path(a.out)
    (out / "curves").mkdir(parents=True, exist_ok=True)
    specs = [sp for sp in held_out_suite(tuple(s.seeds), s.steps) if sp.name.split("/")[0] in s.tasks]
    previous: dict[str, dict[str, Any]] = {}
    prev_rules: list[str] = []
    if a.reuse:
        old = json.loads(Path(a.reuse).read_text())
        differ = {k for k in set(old["settings"]) | set(s.__dict__) if k != "tasks" and old["settings"].get(k) != s.__dict__.get(k)}
        if differ:  # the task list may differ: only the tasks run here are taken from it
            p.error(f"--reuse {a.reuse} was run with other settings ({sorted(differ)}): {old['settings']}, not {s.__dict__}")
        previous = {e["task"]: e["results"] for e in old["entries"]}
        prev_rules = [r for r in old.get("rules", []) if r not in a.rule]
    entries = []
    tuned: dict[str, dict[str, float]] = {}  # task -> baseline -> lr chosen on the task's first seed
    for spec in tqdm(specs, desc="evaluate", dynamic_ncols=True):
        task_name = spec.name.split("/")[0]
        reuse_lrs = tuned.get(task_name) if s.tune == "first_seed" else None
        entry = evaluate_task(spec, rules, s, previous.get(spec.name), reuse_lrs)
        tuned.setdefault(task_name, {k: entry["results"][k]["lr"] for k in ("adam", "adamw", "sgd_momentum")})
        entries.append(entry)
        plot(entry, out / "curves" / f"{spec.name.replace('/', '_')}.png")
        (out / "results.json").write_text(
            json.dumps({"settings": s.__dict__, "rules": prev_rules + a.rule, "entries": entries}, indent=1)
        )
    write_tables(entries, s, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
