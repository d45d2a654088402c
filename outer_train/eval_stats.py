"""How sure are the held-out figures? Bootstrap intervals for `outer_train.evaluate`'s medians.

The benchmark's headline (median over tasks of each task's median over seeds) comes from 3 seeds per
task, and one seed's speedup can move by 0.4x between seeds of the same task. Before calling one rule
better than another, resample: within each task, draw its seeds with replacement, recompute the
per-task medians and the median over tasks; repeat. Two rules evaluated on the same tasks and seeds
are resampled *paired* (the same seed draws for both), which is what tells a real difference from
seed noise.

``python -m outer_train.eval_stats [LABEL=]SUMMARY[:OPTIMIZER] ... [--key speedup]``
prints each optimizer's median with its 90% interval and, for every pair, the paired probability
that the first one's median is higher and the interval of the difference; ``--json FILE`` keeps
them. SUMMARY is an evaluate ``summary.json`` or ``results.json``, or the ``--out`` JSON of
``outer_train.compare`` (its rules' per-run speedups, e.g. on the dev suite: ``--key speedup`` only);
without ``:OPTIMIZER`` every optimizer in it but Adam is taken.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

DRAWS = 2000
LEVEL = 0.9


def seed_matrix(runs: list[dict[str, Any]], name: str, key: str = "speedup") -> dict[str, dict[int, float]]:
    """Task (without the seed) -> seed -> the optimizer's figure in that run (only runs that have it)."""
    out: dict[str, dict[int, float]] = {}
    for e in runs:
        if name not in e["results"]:
            continue
        task, _, seed = e["task"].partition("/s")
        out.setdefault(task, {})[int(seed or 0)] = float(e["results"][name][key])
    return out


def _medians(values: list[np.ndarray], draws: np.ndarray | None) -> np.ndarray:
    """[B] medians over tasks of per-task medians over (resampled) seeds; ``draws`` [T][B, S] indices."""
    per_task = [np.median(v[d], axis=1) if d is not None else np.full(1, np.median(v))
                for v, d in zip(values, draws if draws is not None else [None] * len(values))]
    return np.median(np.stack(per_task), axis=0)


def _draws(sizes: list[int], n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.integers(0, s, size=(n, s)) for s in sizes]


def bootstrap(series: list[dict[str, dict[int, float]]], draws: int = DRAWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Observed medians [K] and paired bootstrap medians [K, draws] of K optimizers on their common task seeds."""
    tasks = sorted(set.intersection(*(set(s) for s in series)))
    if not tasks:
        raise ValueError("the optimizers share no task: compare evaluations of the same suite")
    seeds = {t: sorted(set.intersection(*(set(s[t]) for s in series))) for t in tasks}
    rng = np.random.default_rng(seed)
    idx = _draws([len(seeds[t]) for t in tasks], draws, rng)
    observed, boot = [], []
    for s in series:
        values = [np.array([s[t][k] for k in seeds[t]]) for t in tasks]
        observed.append(float(_medians(values, None)[0]))
        boot.append(_medians(values, idx))
    return np.array(observed), np.stack(boot)


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def compare(named: dict[str, dict[str, dict[int, float]]], draws: int = DRAWS, level: float = LEVEL,
            seed: int = 0) -> dict[str, Any]:
    """Per optimizer: median and interval; per ordered pair (a, b): P(median a > median b) and the difference's interval."""
    names = list(named)
    observed, boot = bootstrap([named[n] for n in names], draws, seed)
    out: dict[str, Any] = {"level": level, "draws": draws, "optimizers": {}, "pairs": {}}
    for i, n in enumerate(names):
        out["optimizers"][n] = {"median": observed[i], "interval": interval(boot[i], level)}
    for i, j in itertools.combinations(range(len(names)), 2):
        diff = boot[i] - boot[j]
        out["pairs"][f"{names[i]} vs {names[j]}"] = {
            "difference": observed[i] - observed[j], "interval": interval(diff, level),
            "p_first_higher": float(np.mean(diff > 0)), "p_tie": float(np.mean(diff == 0))}
    return out


def load(spec: str, key: str) -> dict[str, dict[str, dict[int, float]]]:
    """``[LABEL=]FILE[:OPTIMIZER]`` -> {label: seed matrix}; the label defaults to ``FILE's folder/OPTIMIZER``."""
    label, _, rest = spec.rpartition("=")
    path, _, name = rest.partition(":")
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and "rules" in data and "runs" not in data:  # outer_train.compare's scores
        runs = compare_runs(data, key)
    else:
        runs = data["runs"] if isinstance(data, dict) else data
    names = [name] if name else list(dict.fromkeys(n for e in runs for n in e["results"] if n != "adam"))
    out = {}
    for n in names:
        m = seed_matrix(runs, n, key)
        if not m:
            raise ValueError(f"{path} has no runs of optimizer {n!r}")
        out[label if label and name else f"{label or Path(path).parent}/{n}"] = m
    return out


def compare_runs(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """An `outer_train.compare` JSON as evaluate's runs: one entry per task seed, each rule's speedup in it."""
    if key != "speedup":
        raise ValueError(f"an outer_train.compare file holds speedups in steps only, not {key!r}: use --key speedup")
    return [{"task": task, "results": {name: {"speedup": row["speedups"][task]} for name, row in data["rules"].items()}}
            for task in data["tasks"]]


def markdown(result: dict[str, Any], key: str) -> str:
    pct = round(100 * result["level"])
    lines = [f"Median over tasks of the per-task median {key} over seeds, with its {pct}% paired bootstrap interval "
             f"({result['draws']} draws of each task's seeds):", "", "| optimizer | median | interval |", "|---|---:|---|"]
    lines += [f"| {n} | {o['median']:.3f} | {o['interval'][0]:.3f} to {o['interval'][1]:.3f} |"
              for n, o in result["optimizers"].items()]
    if result["pairs"]:
        lines += ["", "| pair | difference | interval | P(first higher) |", "|---|---:|---|---:|"]
        lines += [f"| {p} | {v['difference']:+.3f} | {v['interval'][0]:+.3f} to {v['interval'][1]:+.3f} | "
                  f"{v['p_first_higher']:.2f} |" for p, v in result["pairs"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("summaries", nargs="+",
                   help="[LABEL=]FILE[:OPTIMIZER]: an evaluate summary.json / results.json, or a compare --out JSON")
    p.add_argument("--key", default="speedup", choices=("speedup", "wall_speedup", "final_loss", "cost_vs_adam"))
    p.add_argument("--draws", type=int, default=DRAWS)
    p.add_argument("--level", type=float, default=LEVEL)
    p.add_argument("--json", type=Path, help="also write the result here")
    a = p.parse_args(argv)
    named: dict[str, dict[str, dict[int, float]]] = {}
    for spec in a.summaries:
        loaded = load(spec, a.key)
        if clash := set(loaded) & set(named):
            p.error(f"{sorted(clash)} named twice: give LABEL=FILE[:OPTIMIZER]")
        named.update(loaded)
    result = compare(named, a.draws, a.level)
    result.update(key=a.key, inputs=a.summaries)
    print(markdown(result, a.key))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
