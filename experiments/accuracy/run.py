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

from .report import SPLIT_LABELS, markdown_table, scatter_plot, summarize

# Reference regressors that need no metanetwork, run as rows of the same table (experiments/accuracy/diagnose.py):
# hparams_gb = gradient boosting on the stored training hyperparameters and architecture knobs;
# probe_acc = a line from each model's accuracy on the probe digits (needs --probes) to its test accuracy.
REFERENCE_METHODS: tuple[str, ...] = ("hparams_gb", "probe_acc")
# The GMN reading probe features as node values (`inner_tasks.zoo.probes`) besides the weights: its own row.
PROBE_METHODS: tuple[str, ...] = ("gmn_probes",)
NEEDS_PROBES: tuple[str, ...] = PROBE_METHODS + ("probe_acc",)


@lru_cache(maxsize=4)
def open_zoo(path: str) -> Zoo:
    """A generated zoo (zoo.json) or an external Small CNN Zoo folder (weights.npy, layout.csv, metrics.csv)."""
    return load_small_cnn_zoo(path) if is_small_cnn_zoo(path) else load_zoo(path)


def zoo_name(path: str) -> str:
    """Column name of a zoo: its preset (generated zoos) or its folder name (external ones)."""
    return open_zoo(path).name


@lru_cache(maxsize=4)
def probe_features(path: str, n: int, seed: int = 0) -> list[torch.Tensor]:
    """Probe features of every model of a generated zoo (computed once, cached in <zoo>/probe_features)."""
    from inner_tasks.zoo.probes import zoo_probe_features

    if is_small_cnn_zoo(path):
        raise SystemExit(f"--probes: {path} is an external zoo; probe features need a generated zoo (model specs)")
    return zoo_probe_features(path, n, seed, zoo=open_zoo(path), progress=True)


@lru_cache(maxsize=4)
def probe_accuracies(path: str, n: int, seed: int = 0) -> torch.Tensor:
    """Each model's accuracy on the ``n`` probe digits (from its probe features), once per zoo and process."""
    from inner_tasks.zoo.probes import probe_accuracy

    return probe_accuracy(open_zoo(path), probe_features(path, n, seed), n, seed)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One (zoo, split, method, seed) run; the unit of work of the process pool."""
    torch.set_num_threads(job.get("threads", 1))
    zoo = open_zoo(job["path"])
    train, test = make_split(zoo, job["split"], job["seed"])
    t0 = time.time()
    if job["method"] in REFERENCE_METHODS:
        from .diagnose import reference_fit_and_score

        acc = None
        if job["method"] == "probe_acc":
            if job.get("probes", 0) <= 0:
                raise ValueError("probe_acc needs probes > 0 (--probes P)")
            acc = probe_accuracies(job["path"], job["probes"], job.get("probe_seed", 0)).numpy()
        res = reference_fit_and_score(zoo, train, test, job["method"], probe_acc=acc) | {"probes": job.get("probes", 0)}
    else:
        probes = job.get("probes", 0) if job["method"] in PROBE_METHODS else 0
        if job["method"] in PROBE_METHODS and probes <= 0:
            raise ValueError(f"{job['method']} needs probes > 0 (--probes P)")
        nodes = probe_features(job["path"], probes, job.get("probe_seed", 0)) if probes else None
        graph = None
        if nodes is not None and job.get("probe_acc_input"):  # the probe-accuracy line's input, as a graph value
            graph = probe_accuracies(job["path"], probes, job.get("probe_seed", 0)).float()[:, None]
        if nodes is not None and job.get("probe_softmax"):
            from inner_tasks.zoo.probes import with_output_softmax

            nodes = with_output_softmax(zoo, nodes, probes)
        method = "gmn" if job["method"] in PROBE_METHODS else job["method"]
        res = fit_and_score(zoo, train, test, method, PredictorConfig(**job["cfg"]), job["seed"],
                            node_features=nodes, graph_features=graph) | {"probes": probes}
    return {k: job[k] for k in ("zoo", "split", "method", "seed")} | res | {"seconds": time.time() - t0}


def _job_key(job: dict[str, Any]) -> str:
    """File name of a run in the resume folder: zoo, split, method, seed and a hash of everything else."""
    import hashlib

    rest = {k: v for k, v in job.items() if k not in ("zoo", "split", "method", "seed", "path")}
    rest["path"] = str(Path(job["path"]).resolve())
    digest = hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:10]
    return f"{job['zoo']}_{job['split']}_{job['method']}_s{job['seed']}_{digest}.json"


def run_grid(zoos: dict[str, str], splits: list[str], methods: list[str], seeds: int, cfg: PredictorConfig,
             workers: int = 1, progress: bool = True, probes: int = 0, probe_seed: int = 0,
             resume_dir: Path | None = None, probe_softmax: bool = False,
             probe_acc_input: bool = False) -> list[dict[str, Any]]:
    """All runs of the grid; with workers > 1 runs go to spawned processes with one torch thread each.

    ``probes``: how many probe features per node the ``gmn_probes`` runs read (computed here once per zoo,
    before the workers start); ``gmn`` always reads the weights only. ``probe_softmax``: the probe methods'
    output nodes also get each probe's class probabilities (`inner_tasks.zoo.probes.with_output_softmax`);
    ``probe_acc_input``: they also read each model's accuracy on the probe digits as a graph-level value. ``resume_dir``: every finished run is saved there as JSON (atomically) and runs
    already there with the same settings are loaded instead of rerun, so an interrupted grid resumes.
    """
    jobs = [{"zoo": name, "path": path, "split": s, "method": m, "seed": seed,
             "cfg": {} if m in REFERENCE_METHODS else cfg.to_dict(),
             "probes": probes if m in NEEDS_PROBES else 0, "probe_seed": probe_seed if m in NEEDS_PROBES else 0,
             **({"probe_softmax": True} if probe_softmax and m in PROBE_METHODS else {}),
             **({"probe_acc_input": True} if probe_acc_input and m in PROBE_METHODS else {})}
            for name, path in zoos.items() for s in splits for m in methods for seed in range(seeds)]
    if any(m in NEEDS_PROBES for m in methods):
        if probes <= 0:
            raise ValueError(f"{[m for m in methods if m in NEEDS_PROBES]} need probes > 0 (--probes P)")
        for path in zoos.values():
            probe_features(path, probes, probe_seed)
    runs: list[dict[str, Any]] = []
    todo = []
    for job in jobs:
        done = resume_dir / _job_key(job) if resume_dir is not None else None
        if done is not None and done.is_file():
            runs.append(json.loads(done.read_text()))
        else:
            todo.append(job)
    bar = tqdm(total=len(jobs), initial=len(runs), desc="accuracy runs", disable=not progress)

    def finish(job: dict[str, Any], res: dict[str, Any]) -> None:
        runs.append(res)
        if resume_dir is not None:
            resume_dir.mkdir(parents=True, exist_ok=True)
            tmp = resume_dir / (_job_key(job) + ".tmp")
            tmp.write_text(json.dumps(res))
            tmp.replace(resume_dir / _job_key(job))
        bar.update(1)
        bar.set_postfix_str(_short(res))

    if workers <= 1:
        for job in todo:
            finish(job, run_one(job))
    else:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_one, j): j for j in todo}
            for fut in as_completed(futures):
                finish(futures[fut], fut.result())
    bar.close()
    key = {name: i for i, name in enumerate(zoos)}
    return sorted(runs, key=lambda r: (key[r["zoo"]], splits.index(r["split"]), methods.index(r["method"]), r["seed"]))


def _short(r: dict[str, Any]) -> str:
    return f"{r['zoo']} {r['split']} {r['method']} s{r['seed']}: R2={r['r2']:.3f} tau={r['tau']:.3f}"


def results_entries(summary: dict[str, Any], names: dict[str, str] | None = None) -> dict[str, Any]:
    """The summary in the layout of docs/results/accuracy.json: {zoo: {"50%"|"5%"|"OOD": {method: {r2_mean,
    r2_std, tau_mean, tau_std, n_seeds}}}}; ``names`` renames methods (one configuration of a method beside
    another, e.g. ``{"gmn_probes": "gmn_probes64"}``)."""
    names = names or {}
    return {zoo: {SPLIT_LABELS.get(split, split): {
        names.get(method, method): {"r2_mean": s["r2_mean"], "r2_std": s["r2_std"], "tau_mean": s["tau_mean"], "tau_std": s["tau_std"],
                 "n_seeds": s["n"]} for method, s in rows.items()} for split, rows in splits.items()}
        for zoo, splits in summary.items()}


def write_results(out: Path, runs: list[dict[str, Any]], zoos: dict[str, str], splits: list[str],
                  methods: list[str], cfg: PredictorConfig, command: str, results_json: Path | None = None,
                  results_names: dict[str, str] | None = None) -> str:
    """accuracy.json (config, every run, summary), accuracy.md (table), scatter_<zoo>.png; returns the table.

    ``results_json``: also merge the summary into that file (see `results_entries`, `experiments.results`).
    """
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    if results_json is not None:
        from ..results import update_results_json

        update_results_json(results_json, results_entries(summary, results_names), depth=3, command=command)
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
