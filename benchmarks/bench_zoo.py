"""Coverage of the graph converter on every torchvision classification model definition.

    python -m benchmarks.bench_zoo --out docs/figures/graph_zoo --doc docs/layers.md

Per model (random init, no weights downloaded; definitions imported by tests/torchvision_models.py
without torchvision's native start-up): parameter count, whether strict conversion succeeds (else
the first line of its error), the FREE edges a strict=False conversion leaves, whether torch.fx
traced it, the conversion time (cold structure cache), and `simulate`'s relative error against the
model as measured by ``python -m benchmarks.bench_simulate`` (read from its bench_simulate.json in
--out: one protocol for simulate, measured in parts). Writes bench_zoo.json / .md to --out and,
with --doc, replaces the table between the bench_zoo markers of that Markdown file.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchmarks.bench_simulate import load_rows, simulate_cell  # noqa: E402
from benchmarks.common import machine, replace_block, write_results  # noqa: E402
from metaopt.graph import ConversionError, to_graph  # noqa: E402
from metaopt.graph.example_call import ExampleCall  # noqa: E402
from metaopt.graph.tracers import SymbolicTracer  # noqa: E402
from metaopt.graph.tracing import trace  # noqa: E402
from metaopt.graph.schema import EDGE_TYPE, EdgeType  # noqa: E402
from torchvision_models import MAX_PARAMS, all_names, build, count_params, input_size, load_models  # noqa: E402

COLUMNS = ["model", "params", "strict", "free_edges", "fx_trace", "simulate", "convert_s"]


def measure(models, name: str, simulated: dict[str, dict]) -> dict:
    torch.manual_seed(0)
    model = build(models, name).eval()
    s = input_size(name)
    x = torch.randn(1, 3, s, s)
    n = sum(p.numel() for p in model.parameters())
    row: dict = {"model": name, "params": n, "fx_trace": _tracer_used(model, x)}
    t = time.perf_counter()
    try:
        g = to_graph(model, x, cache=False)
        row["strict"], row["free_edges"] = "ok", 0
    except ConversionError as exc:
        first = str(exc).splitlines()[0]
        row["strict"] = "no: " + re.sub(r"\s+", " ", first.split(": ")[0])[:100]  # where it failed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = to_graph(model, x, strict=False, cache=False)
        free = int((g.edge_attr[:, EDGE_TYPE] == EdgeType.FREE).sum())
        row["free_edges"] = f"{free:,} ({100 * free / n:.1f}%)"
    row["convert_s"] = time.perf_counter() - t
    row["simulate"] = simulate_cell(simulated.get(name))
    del g, model
    return row


def _tracer_used(model, x) -> str:
    """'symbolic' (plain torch.fx), 'shape-concrete' (the MetaTracer fallback) or 'failed'."""
    try:
        SymbolicTracer().trace(model)
        return "symbolic"
    except Exception:
        try:
            trace(model, ExampleCall((x,)))
            return "shape-concrete"
        except ConversionError:
            return "failed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/bench")
    ap.add_argument("--doc", default=None, help="Markdown file whose bench_zoo block is replaced")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--max-params", type=float, default=MAX_PARAMS,
                    help="skip larger definitions (a 630M-parameter graph needs ~15 GB)")
    args = ap.parse_args()
    models = load_models()
    if models is None:
        raise SystemExit("torchvision is not installed: pip install -e '.[test]'")
    simulated = load_rows(Path(args.out) / "bench_simulate.json")
    rows = []
    for name in args.models or all_names(models):
        n = count_params(models, name)
        if n > args.max_params:
            rows.append({"model": name, "params": n, "strict": f"skipped (> {args.max_params / 1e6:.0f}M params)",
                         "simulate": simulate_cell(simulated.get(name))})
            continue
        rows.append(measure(models, name, simulated))
        r = rows[-1]
        print(f"{name:22s} {r['params']:>12,} {r.get('convert_s', 0):7.2f}s {r['strict'][:60]} | {r.get('free_edges')}",
              flush=True)
    md_path = write_results(args.out, "bench_zoo", rows, COLUMNS, "Graph converter coverage: torchvision models")
    ok = sum(r["strict"] == "ok" for r in rows)
    done = [r for r in rows if "convert_s" in r]
    symbolic = sum(r["fx_trace"] == "symbolic" for r in done)
    fallback = sum(r["fx_trace"] == "shape-concrete" for r in done)
    m = machine()
    summary = (f"{ok} of {len(done)} torchvision definitions convert with strict=True (no FREE edge); "
               f"plain symbolic torch.fx traces {symbolic} of {len(done)}, the shape-concrete fallback "
               f"{fallback} more; every one converts with "
               f"strict=False ({len(rows) - len(done)} larger than {args.max_params / 1e6:.0f}M "
               f"parameters skipped). torch {m['torch']}, {m['threads']} thread(s), {m['cpu']}; batch of 1 "
               f"random image at the side in tests/torchvision_models.py.")
    table = md_path.read_text().split("\n", 2)[2].lstrip("\n")
    if args.doc:
        replace_block(args.doc, "bench_zoo", f"{summary}\n\n{table}")
    print(summary)


if __name__ == "__main__":
    main()
