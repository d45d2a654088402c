"""Optimizer step cost: GMNOptimizer vs torch Adam (foreach) vs the per-parameter MLP rule.

    python -m benchmarks.bench_step --out results/bench_step [--sizes 1e5 1e6 1e7] [--hidden 16]

For MLPs of about 100k, 1M and 10M parameters, times ``optimizer.step()`` alone (gradients are
fixed random tensors) for every optimizer, interleaved round-robin so the ratios are taken side
by side on this shared machine. Memory: on a GPU, ``torch.cuda.max_memory_allocated`` during a
step; on CPU, the step's peak resident-set growth (VmHWM after resetting it via
/proc/self/clear_refs; large tensors are mmapped, so this tracks torch's transient buffers).
Optimizer state bytes are counted exactly, also relative to the parameter bytes.
Writes ``bench_step.json`` and ``bench_step.md`` to --out. BENCHMARKS.md §2 lists the targets.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch import nn

from metaopt.graph import to_graph
from metaopt.optim import GMNOptimizer, RuleConfig, UpdateRule


class LinearEdgeNet(nn.Module):
    """The cheapest learned rule: a linear map of each edge's features (no hidden layer, no
    message passing). Its row isolates the cost of features + residual plumbing."""

    def __init__(self, edge_in: int) -> None:
        super().__init__()
        self.lin = nn.Linear(edge_in, 2)

    def forward(self, graph: Any, edge_values=None, node_values=None, graph_values=None):
        return SimpleNamespace(edge=self.lin(edge_values), node=None, graph=None)


def _rule(kind: str, hidden: int) -> UpdateRule:
    if kind == "linear":
        rule = UpdateRule(RuleConfig(kind="none", alpha=0.1))
        rule.net = LinearEdgeNet(rule.features.edge_dim)
        return rule
    return UpdateRule(RuleConfig(kind=kind, hidden=hidden, layers=2, alpha=0.1))


def mlp_of_size(target: float) -> nn.Module:
    """A 4-layer square MLP with about ``target`` parameters (4 w^2 + 4 w)."""
    w = max(8, int(round(math.sqrt(target / 4))))
    return nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(w, w), nn.ReLU())][:-1])


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    if isinstance(opt, GMNOptimizer):
        return sum(t.numel() * t.element_size() for t in (opt._buffers or {}).values())
    return sum(
        v.numel() * v.element_size()
        for st in opt.state.values()
        if isinstance(st, dict)
        for v in st.values()
        if isinstance(v, torch.Tensor)
    )


def _proc(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) * 1024  # type: ignore[union-attr]


def _fix_malloc_threshold() -> None:
    """Pin glibc's mmap threshold (128 KiB) so freed large buffers return to the OS and the next
    step's peak shows in VmHWM (glibc otherwise raises the threshold after frees and keeps them)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _peak_step_bytes(step: Callable[[], None], device: torch.device) -> int | None:
    """Extra memory a step needs at its peak (GPU allocator, or CPU resident set)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    base = _proc("VmRSS")
    step()
    return _proc("VmHWM") - base


def bench_size(
    target: float, kinds: list[str], hidden: int, repeats: int, device: torch.device, rule_max: float
) -> dict[str, Any]:
    torch.manual_seed(0)
    base = mlp_of_size(target).to(device)
    n_params = sum(p.numel() for p in base.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    graph = to_graph(base.cpu()).to("cpu")
    base.to(device)
    grads = [torch.randn_like(p) * 1e-2 for p in base.parameters()]
    rows: dict[str, dict[str, Any]] = {}
    runners: dict[str, Callable[[], None]] = {}
    for kind in kinds:
        model = mlp_of_size(target).to(device)
        model.load_state_dict(base.state_dict())
        if kind == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
        elif kind in ("gmnopt-mlp", "gmnopt-gmn") and n_params > rule_max:
            rows[kind] = {"skipped": f"above --rule-max-params {rule_max:.0e} on {device.type}"}
            continue
        else:
            try:
                rule = UpdateRule(RuleConfig(kind="none")) if kind == "gmnopt-adam" else _rule(kind.split("-")[1], hidden)
            except ImportError as exc:
                rows[kind] = {"skipped": str(exc).split(";")[0]}
                continue
            opt = GMNOptimizer(model, rule=rule, lr=1e-3, graph=graph)
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()

        def run(opt=opt) -> None:
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        try:
            run()  # warm-up: allocates state, builds caches
        except RuntimeError as exc:  # e.g. out of memory for a large GMN
            rows[kind] = {"skipped": f"{type(exc).__name__}: {str(exc)[:120]}"}
            continue
        runners[kind] = run
        rows[kind] = {"state_bytes": _state_bytes(opt), "peak_step_bytes": _peak_step_bytes(run, device), "opt": opt}
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):  # round-robin: every optimizer sees the same machine load
        for kind, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[kind].append((time.perf_counter() - t0) * 1e3)
    adam_ms = statistics.median(times["adam"]) if "adam" in times else float("nan")
    out: dict[str, Any] = {"target": target, "params": n_params, "param_bytes": param_bytes, "rows": {}}
    for kind, row in rows.items():
        if "skipped" in row:
            out["rows"][kind] = row
            continue
        ms = statistics.median(times[kind])
        out["rows"][kind] = {
            "ms_per_step": ms,
            "ms_iqr": [statistics.quantiles(times[kind], n=4)[0], statistics.quantiles(times[kind], n=4)[2]],
            "vs_adam": ms / adam_ms,
            "state_bytes": row["state_bytes"],
            "state_over_params": row["state_bytes"] / param_bytes,
            "peak_step_bytes": row["peak_step_bytes"],
            "peak_step_over_params": None if row["peak_step_bytes"] is None else row["peak_step_bytes"] / param_bytes,
        }
    gmn, mlp = out["rows"].get("gmnopt-gmn", {}), out["rows"].get("gmnopt-mlp", {})
    if "ms_per_step" in gmn and "ms_per_step" in mlp:
        out["gmn_over_mlp_rule"] = gmn["ms_per_step"] / mlp["ms_per_step"]
    return out


LABELS = {
    "adam": "torch Adam (foreach)",
    "gmnopt-adam": "GMNOptimizer, rule=\"adam\" (untrained residual: the Adam path)",
    "gmnopt-linear": "GMNOptimizer, linear edge rule (features + plumbing)",
    "gmnopt-mlp": "GMNOptimizer, per-parameter MLP rule",
    "gmnopt-gmn": "GMNOptimizer, GMN rule",
}


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Optimizer step cost ({result['device']}, {result['threads']} threads, GMN/MLP hidden {result['hidden']})",
        "",
        "| params | optimizer | ms/step | x Adam | state / param bytes | step peak / param bytes |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for size in result["sizes"]:
        for kind, row in size["rows"].items():
            if "skipped" in row:
                lines.append(f"| {size['params']:,} | {LABELS[kind]} | skipped: {row['skipped']} | | | |")
                continue
            peak = row["peak_step_over_params"]
            lines.append(
                f"| {size['params']:,} | {LABELS[kind]} | {row['ms_per_step']:.2f} | {row['vs_adam']:.2f} | "
                f"{row['state_over_params']:.2f} | {'n/a' if peak is None else f'{peak:.2f}'} |"
            )
        if "gmn_over_mlp_rule" in size:
            lines.append(f"| {size['params']:,} | GMN rule / MLP rule step | {size['gmn_over_mlp_rule']:.2f} | | | |")
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e5, 1e6, 1e7])
    ap.add_argument("--hidden", type=int, default=16, help="hidden width of the GMN and MLP rules")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="1 by default: OpenMP threads on a loaded shared machine make timings erratic")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--kinds", nargs="+", default=list(LABELS))
    ap.add_argument(
        "--rule-max-params", type=float, default=None,
        help="largest model the MLP/GMN rule rows run on (default 2e6 on CPU, unlimited on GPU)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rule_max = args.rule_max_params or (float("inf") if device.type == "cuda" else 2e6)
    _fix_malloc_threshold()
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": args.threads,
        "hidden": args.hidden,
        "command": "python -m benchmarks.bench_step " + " ".join(argv if argv is not None else sys.argv[1:]),
        "sizes": [],
    }
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **k: x  # noqa: E731
    for target in tqdm(args.sizes, desc="model sizes"):
        result["sizes"].append(bench_size(target, args.kinds, args.hidden, args.repeats, device, rule_max))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_step.json").write_text(json.dumps(result, indent=2) + "\n")
    md = to_markdown(result)
    (args.out / "bench_step.md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
