"""Run the accuracy-prediction experiment grid (zoos x splits x methods x seeds) and write the results."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from metaopt.weightspace.accuracy import PredictorConfig, fit_and_score, make_split
from metaopt.weightspace.external import is_small_cnn_zoo, load_small_cnn_zoo
from metaopt.weightspace.zoo_io import Zoo, load_zoo

from .report import markdown_table, scatter_plot, summarize


@lru_cache(maxsize=4)
def open_zoo(path: str) -> Zoo:
    """A generated zoo (zoo.json) or an external Small CNN Zoo folder (weights.npy, layout.csv, metrics.csv)."""
    return load_small_cnn_zoo(path) if is_small_cnn_zoo(path) else load_zoo(path)


def zoo_name(path: str) -> str:
    """Column name of a zoo: its preset (generated zoos) or its folder name (external ones)."""
    return open_zoo(path).name


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One (zoo, split, method, seed) run; the unit of work of the process pool."""
    torch.set_num_threads(job.get("threads", 1))
    zoo = open_zoo(job["path"])
    train, test = make_split(zoo, job["split"], job["seed"])
    t0 = time.time()
    res = fit_and_score(zoo, train, test, job["method"], PredictorConfig(**job["cfg"]), job["seed"])
    return {k: job[k] for k in ("zoo", "split", "method", "seed")} | res | {"seconds": time.time() - t0}


def run_grid(zoos: dict[str, str], splits: list[str], methods: list[str], seeds: int, cfg: PredictorConfig,
             workers: int = 1, progress: bool = True) -> list[dict[str, Any]]:
    """All runs of the grid; with workers > 1 runs go to spawned processes with one torch thread each."""
    jobs = [{"zoo": name, "path": path, "split": s, "method": m, "seed": seed, "cfg": cfg.to_dict()}
            for name, path in zoos.items() for s in splits for m in methods for seed in range(seeds)]
    runs: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), desc="accuracy runs", disable=not progress)
    if workers <= 1:
        for job in jobs:
            runs.append(run_one(job))
            bar.update(1)
            bar.set_postfix_str(_short(runs[-1]))
    else:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            for fut in as_completed([pool.submit(run_one, j) for j in jobs]):
                runs.append(fut.result())
                bar.update(1)
                bar.set_postfix_str(_short(runs[-1]))
    bar.close()
    key = {name: i for i, name in enumerate(zoos)}
    return sorted(runs, key=lambda r: (key[r["zoo"]], splits.index(r["split"]), methods.index(r["method"]), r["seed"]))


def _short(r: dict[str, Any]) -> str:
    return f"{r['zoo']} {r['split']} {r['method']} s{r['seed']}: R2={r['r2']:.3f} tau={r['tau']:.3f}"


def write_results(out: Path, runs: list[dict[str, Any]], zoos: dict[str, str], splits: list[str],
                  methods: list[str], cfg: PredictorConfig, command: str) -> str:
    """accuracy.json (config, every run, summary), accuracy.md (table), scatter_<zoo>.png; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    table = markdown_table(summary, list(zoos), splits, methods)
    info = {name: {"path": p, "models": len(open_zoo(p)), "architectures": len(open_zoo(p).graphs)}
            for name, p in zoos.items()}
    (out / "accuracy.json").write_text(json.dumps(
        {"command": command, "config": cfg.to_dict(), "zoos": info, "summary": summary, "runs": runs}, indent=1))
    zoo_lines = "".join(f"- {n}: {i['models']} models, {i['architectures']} architectures ({i['path']})\n"
                        for n, i in info.items())
    (out / "accuracy.md").write_text(
        f"# Accuracy prediction from weights\n\n```\n{command}\n```\n\n{zoo_lines}\n"
        f"Predictor config: {cfg.to_dict()}\n\nR² and Kendall τ on held-out models, mean ± std over seeds.\n\n{table}")
    for name in zoos:
        scatter_plot(runs, out / f"scatter_{name}.png", name)
    return table
