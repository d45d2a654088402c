"""Optimizer step cost: GMNOptimizer (shipped rules, amortised) vs torch Adam (foreach).

    python -m benchmarks.bench_step --out results/bench_step [--sizes 1e5 1e6 1e7]

For MLPs of about 100k, 1M and 10M parameters, times ``optimizer.step()`` alone (gradients are
fixed random tensors). ``gmnopt-shipped-soap[-both|-columns][-block<b>][-stats<k>]`` is ``GMNOptimizer(model,
soap_switch=SoapSwitch(...))`` after its switch (forced after the warm-up step: fixed gradients would keep its
estimate growing), i.e. SOAP's step, its statistics and bases counted in its state. The shipped rules run
every ``refresh_every`` steps, so each optimizer is timed over blocks of that many steps (one refresh + the
plain steps between), and the amortised step is the block time / its length; the refresh and the plain step
are also timed alone.
Optimizers are interleaved round-robin, so the ratios are taken side by side on a shared machine.
Memory: on a GPU, ``torch.cuda.max_memory_allocated`` during a step; on CPU, the step's peak
resident-set growth (VmHWM after resetting it via /proc/self/clear_refs). Optimizer state bytes
are counted exactly, also relative to the parameter bytes. Writes ``bench_step.json`` and
``bench_step.md`` to --out. Targets: docs/benchmarks.md §2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from benchmarks.common import proc_status_bytes
from metaopt.graph import to_graph
from metaopt.optim import GMNOptimizer, SoapSwitch
from metaopt.optim.optimizer import SHIPPED_LR_FREE
from metaopt.optim.rules import RETIRED_RULES, resolve_rule


def mlp_of_size(target: float) -> nn.Module:
    """A 4-layer square MLP with about ``target`` parameters (4 w^2 + 4 w)."""
    w = max(8, int(round(math.sqrt(target / 4))))
    return nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(w, w), nn.ReLU())][:-1])


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    if isinstance(opt, GMNOptimizer):  # the flat buffers, and the soap switch's statistics and bases
        bases = [v for b in opt.state.get("soap_bases", {}).values() for v in b.values()]
        return sum(t.numel() * t.element_size() for t in [*(opt._buffers or {}).values(), *bases])
    return sum(
        v.numel() * v.element_size()
        for st in opt.state.values()
        if isinstance(st, dict)
        for v in st.values()
        if isinstance(v, torch.Tensor)
    )


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
    base = proc_status_bytes("VmRSS")
    step()
    return max(0, proc_status_bytes("VmHWM") - base)  # pages freed during the step can leave HWM a little under base


ESTIMATE_OPTIONS = {"stride": "estimate_stride", "every": "estimate_every",  # kind suffix -> GMNOptimizer option
                    "tensor": "per_tensor"}
PERCENT_OPTIONS = ("per_tensor",)  # given in percent: -tensor70 is per_tensor=0.7


SHIPPED_KIND = "gmnopt-shipped"  # GMNOptimizer(model): the shipped default (SHIPPED_LR_FREE) in the mode it records
NEVER = 2**62  # a switch window no run reaches
SOAP_KIND = f"{SHIPPED_KIND}-soap"  # ... with soap_switch, timed after the switch: -both / -columns set its sides,
# -<suffix><k> the SoapSwitch field SOAP_NUMBERS names
SOAP_NUMBERS = {"block": "block", "stats": "statistics_every", "precond": "precondition_every"}


def _soap_switch_of(kind: str) -> SoapSwitch | None:
    """`SOAP_KIND`[-both|-columns][-block<b>][-stats<k>][-precond<k>] -> its SoapSwitch (sides, block, statistics_every,
    precondition_every; by default `SoapSwitch`'s, what ``GMNOptimizer(model)`` switches to: the input side in blocks
    of 64 since 0.16); None for any other kind."""
    if not (kind == SOAP_KIND or kind.startswith(SOAP_KIND + "-")):
        return None
    options: dict[str, Any] = {}
    for part in filter(None, kind[len(SOAP_KIND):].split("-")):
        suffix = part.rstrip("0123456789")
        if part in ("columns", "both"):
            options["sides"] = part
        elif suffix in SOAP_NUMBERS and part != suffix:
            options[SOAP_NUMBERS[suffix]] = int(part[len(suffix):])
        else:
            raise ValueError(f"bench_step: {kind!r}: after {SOAP_KIND} come -both / -columns / -block<b> / -stats<k> / "
                             f"-precond<k>, e.g. {SOAP_KIND}-columns-block64 or {SOAP_KIND}-stats2-precond20")
    return SoapSwitch(**options).check()


def _rule_of(kind: str) -> tuple[str, bool, dict[str, float]]:
    """``gmnopt-<rule>[-lrfree[-stride<k>][-every<j>][-tensor<percent>]]`` -> (rule name, lr_free, options of the
    estimate); `SHIPPED_KIND` -> what ``GMNOptimizer(model)`` runs, lr-free with the options it records."""
    if kind == SHIPPED_KIND or _soap_switch_of(kind) is not None:
        return SHIPPED_LR_FREE, True, {}
    name, *rest = kind.split("-", 1)[1].split("-lrfree")
    options = {}
    for part in (rest[0].split("-")[1:] if rest else []):
        key = next((k for k in ESTIMATE_OPTIONS if part.startswith(k) and part[len(k):].isdigit()), None)
        if key is None:
            raise ValueError(f"bench_step: {kind!r}: after -lrfree come -stride<k> / -every<j> / -tensor<percent>, "
                             "e.g. gmnopt-default-lrfree-stride11-every10 or gmnopt-default-lrfree-every10-tensor70")
        option, value = ESTIMATE_OPTIONS[key], int(part[len(key):])
        options[option] = value / 100 if option in PERCENT_OPTIONS else value
    if name in RETIRED_RULES:  # a default of 0.5-0.9 (retired in 0.12): rule="adam" with the options of its mode
        return "adam", True, {**RETIRED_RULES[name].options, **options}
    return name, bool(rest), options


def _make(kind: str, model: nn.Module, graph: Any) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    rule, lr_free, options = _rule_of(kind)
    switch = _soap_switch_of(kind)
    recorded = resolve_rule(rule).config.soap_switch if kind == SHIPPED_KIND else None
    if recorded is not None:  # the step before the switch, its watch included: on fixed gradients the estimate stops
        # moving within the timed blocks and the mode would switch (0.16)
        switch = dataclasses.replace(SoapSwitch.from_dict(recorded), window=NEVER)
    if switch is not None:
        options = {**options, "soap_switch": switch}
    return GMNOptimizer(model, rule=rule, lr=1.0 if lr_free else 1e-3, graph=graph, lr_free=lr_free, **options)


def _setup(target: float, kinds: list[str], device: torch.device) -> dict[str, Any]:
    """One model per optimizer kind (same init, same fixed gradients), each optimizer warmed up."""
    torch.manual_seed(0)
    base = mlp_of_size(target).to(device)
    graph = to_graph(base.cpu()).to("cpu")
    base.to(device)
    grads = [torch.randn_like(p) * 1e-2 for p in base.parameters()]
    runners: dict[str, Callable[[int], None]] = {}
    opts: dict[str, torch.optim.Optimizer] = {}
    for kind in kinds:
        model = mlp_of_size(target).to(device)
        model.load_state_dict(base.state_dict())
        opt = _make(kind, model, graph)
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()

        def run(n: int, opt=opt) -> None:
            for _ in range(n):
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        run(1)  # warm-up: allocates state, builds caches, runs the rule once (step 1 is a refresh)
        if _soap_switch_of(kind) is not None:
            opt._switch_to_soap(opt._buffers)  # what the switch does once d has settled
            run(1)  # the matrices' first statistics and bases
        runners[kind], opts[kind] = run, opt
    return {
        "params": sum(p.numel() for p in base.parameters()),
        "param_bytes": sum(p.numel() * p.element_size() for p in base.parameters()),
        "block": max(resolve_rule(_rule_of(k)[0]).config.refresh_every for k in kinds if k != "adam"),
        "runners": runners,
        "opts": opts,
    }


def bench_size(target: float, kinds: list[str], repeats: int, device: torch.device) -> dict[str, Any]:
    """Step times (amortised over blocks that start with a refresh) and optimizer state of each kind."""
    setup = _setup(target, kinds, device)
    runners, opts, block, param_bytes = setup["runners"], setup["opts"], setup["block"], setup["param_bytes"]
    times: dict[str, list[float]] = {k: [] for k in runners}
    plain: dict[str, list[float]] = {k: [] for k in runners}
    refresh: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):  # round-robin: every optimizer sees the same machine load
        for kind, run in runners.items():
            opt = opts[kind]
            done = opt.state.get("steps_taken", 0) if isinstance(opt, GMNOptimizer) else 0
            if done % block:  # align the block so that it starts with a refresh step
                run(block - done % block)
            t0 = time.perf_counter()
            run(1)
            refresh[kind].append((time.perf_counter() - t0) * 1e3)
            t1 = time.perf_counter()
            run(block - 1)
            elapsed = time.perf_counter() - t0
            plain[kind].append((time.perf_counter() - t1) * 1e3 / max(block - 1, 1))
            times[kind].append(elapsed * 1e3 / block)
    adam_ms = statistics.median(times["adam"]) if "adam" in times else float("nan")
    out: dict[str, Any] = {"target": target, "params": setup["params"], "param_bytes": param_bytes, "block": block,
                           "rows": {}}
    for kind in runners:
        ms = statistics.median(times[kind])
        state = _state_bytes(opts[kind])
        out["rows"][kind] = {
            "ms_per_step": ms,
            "ms_range": [min(times[kind]), max(times[kind])],
            "vs_adam": ms / adam_ms,
            "refresh_ms": statistics.median(refresh[kind]),
            "plain_step_ms": statistics.median(plain[kind]),
            "state_bytes": state,
            "state_over_params": state / param_bytes,
            "peak_step_bytes": None,
            "peak_step_over_params": None,
        }
    gmn, mlp = out["rows"].get("gmnopt-default", {}), out["rows"].get("gmnopt-mlp", {})
    if "ms_per_step" in gmn and "ms_per_step" in mlp:
        out["gmn_over_mlp_rule"] = gmn["ms_per_step"] / mlp["ms_per_step"]
    return out


def _peak_worker(target: float, kinds: list[str], device: str, threads: int) -> dict[str, int | None]:
    torch.set_num_threads(threads)
    _fix_malloc_threshold()
    return peak_size(target, kinds, torch.device(device))


def _peak_in_fresh_process(target: float, kinds: list[str], device: str, threads: int) -> dict[str, int | None]:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_peak_worker, (target, kinds, device, threads))


def peak_size(target: float, kinds: list[str], device: torch.device) -> dict[str, int | None]:
    """Extra memory of one (plain) step of each kind; on CPU run after `_fix_malloc_threshold`."""
    setup = _setup(target, kinds, device)
    return {kind: _peak_step_bytes(lambda run=run: run(1), device) for kind, run in setup["runners"].items()}


LABELS = {
    "adam": "torch Adam (foreach)",
    "gmnopt-adam": "GMNOptimizer, rule=\"adam\" (exactly Adam)",
    "gmnopt-default": "GMNOptimizer, rule=\"default\" (GMN rule)",
    "gmnopt-mlp": "GMNOptimizer, rule=\"mlp\" (per-parameter MLP rule)",
    "gmnopt-adam-lrfree": "GMNOptimizer, rule=\"adam\", lr_free=True (Prodigy)",
    "gmnopt-default-lrfree": "GMNOptimizer, rule=\"default\", lr_free=True",
    "gmnopt-default-lrfree-stride11": "GMNOptimizer, rule=\"default\", lr_free=True, estimate_stride=11",
    "gmnopt-lrfree_sf-lrfree": "GMNOptimizer, rule=\"lrfree_sf\" (schedule-free), lr_free=True",
    SHIPPED_KIND: f"GMNOptimizer(model): rule=\"{SHIPPED_LR_FREE}\" in its lr-free mode (before its switch)",
    SOAP_KIND: f"GMNOptimizer(model): rule=\"{SHIPPED_LR_FREE}\" after its soap switch (SoapSwitch())",
    "gmnopt-lrfree_boost1-lrfree": "GMNOptimizer, rule=\"lrfree_boost1\" (the default of 0.10), lr_free=True",
}
CURRENT_KINDS = list(LABELS)  # what --kinds runs by default
# The retired defaults of 0.5-0.9 (gmnopt-lrfree_plateau-lrfree, ...) still run by name, for the recorded commands.
LABELS.update({f"gmnopt-{name}-lrfree": f"GMNOptimizer, rule=\"adam\", lr_free=True with the options of "
               f"{retired.default_of}'s default ({name!r}, retired)" for name, retired in RETIRED_RULES.items()})


def label(kind: str) -> str:
    """The table's name for an optimizer kind (any options of an lr-free kind)."""
    if kind in LABELS:
        return LABELS[kind]
    switch = _soap_switch_of(kind)
    if switch is not None:  # the fields that set the switched step's work
        fields = ", ".join(f"{k}={getattr(switch, k)!r}" for k in ("sides", *SOAP_NUMBERS.values()))
        return f"GMNOptimizer(model, soap_switch=SoapSwitch({fields})), after the switch"
    rule, _, options = _rule_of(kind)
    base = LABELS.get(f"gmnopt-{rule}-lrfree", f"GMNOptimizer, rule=\"{rule}\", lr_free=True")
    return ", ".join([base, *(f"{k}={v}" for k, v in options.items())])


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Optimizer step cost ({result['device']}, {result['threads']} threads)",
        "",
        "Amortised over blocks of `refresh_every` steps (one rule refresh + plain steps).",
        "",
        "| params | optimizer | ms/step (amortised) | x Adam | refresh step ms | plain step ms | state / param bytes | step peak / param bytes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size in result["sizes"]:
        for kind, row in size["rows"].items():
            peak = row["peak_step_over_params"]
            lines.append(
                f"| {size['params']:,} | {label(kind)} | {row['ms_per_step']:.3f} | {row['vs_adam']:.2f} | "
                f"{row['refresh_ms']:.2f} | {row['plain_step_ms']:.3f} | {row['state_over_params']:.2f} | "
                f"{'n/a' if peak is None else f'{peak:.2f}'} |"
            )
        if "gmn_over_mlp_rule" in size:
            lines.append(f"| {size['params']:,} | GMN rule / MLP rule (amortised step) | {size['gmn_over_mlp_rule']:.2f} | | | | | |")
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e5, 1e6, 1e7])
    ap.add_argument("--repeats", type=int, default=5, help="blocks of refresh_every steps timed per optimizer")
    ap.add_argument("--threads", type=int, default=1, help="1 by default: OpenMP threads on a loaded shared machine make timings erratic")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--kinds", nargs="+", default=CURRENT_KINDS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": args.threads,
        "command": "python -m benchmarks.bench_step " + " ".join(argv if argv is not None else sys.argv[1:]),
        "sizes": [],
    }
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **k: x  # noqa: E731
    for target in tqdm(args.sizes, desc="model sizes (time)"):
        result["sizes"].append(bench_size(target, args.kinds, args.repeats, device))
    # Peak memory in a fresh process per size: pinning glibc's mmap threshold (so that a step's
    # temporaries show in VmHWM) would slow timed steps 2-3x, and a heap the timed runs already
    # grew would hide them.
    for size in tqdm(result["sizes"], desc="model sizes (peak memory)"):
        for kind, peak in _peak_in_fresh_process(size["target"], args.kinds, str(device), args.threads).items():
            size["rows"][kind]["peak_step_bytes"] = peak
            size["rows"][kind]["peak_step_over_params"] = None if peak is None else peak / size["param_bytes"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_step.json").write_text(json.dumps(result, indent=2) + "\n")
    md = to_markdown(result)
    (args.out / "bench_step.md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
