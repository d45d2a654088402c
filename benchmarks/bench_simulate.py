"""simulate coverage on torchvision definitions: relative error of simulate against model.eval().

Random init (BatchNorm running statistics and affine entries randomised so a missing rule shows;
all-zero parameters such as ViT's class token and classifier head drawn too, else the output is
zero), a batch of 2 random images at the side in tests/torchvision_models.py, converted from one
image; each definition in a fresh process, with the peak resident memory of the whole job (model,
graph, simulate). Usage: python -m benchmarks.bench_simulate [--max-params 30e6] [names ...]
[--out docs/figures/graph_zoo] [--doc docs/layers.md]: results accumulate in bench_simulate.json
(each run replaces the rows of the models it measured), so the zoo can be covered in parts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchmarks.common import machine, proc_status_bytes, replace_block  # noqa: E402
from metaopt.graph import simulate, to_graph  # noqa: E402
from metaopt.graph.simulate import unsupported_reasons  # noqa: E402
from test_graph_simulate_conv import randomize_norms  # noqa: E402
from torchvision_models import all_names, build, count_params, input_size, load_models  # noqa: E402


def measure(name: str) -> dict:
    """One definition: relative error and seconds of simulate (conversion included), and the peak
    resident memory of the whole job (model, graph, simulate). Run in a fresh process (`_fresh`),
    so the peak is this model's alone."""
    torch.set_num_threads(1)
    tv = load_models()
    t = time.time()
    torch.manual_seed(0)
    model = randomize_norms(build(tv, name), zeros=True)
    s = input_size(name)
    x = torch.randn(2, 3, s, s)
    g = to_graph(model, x[:1], cache=False)
    why = unsupported_reasons(g)
    if why:
        return {"name": name, "refused": why[0]}
    with torch.no_grad():
        ref, out = model(x), simulate(g, g.params_to_edges(model), x, buffers=model)
    err = float((out.reshape(ref.shape) - ref).norm() / ref.norm())
    return {"name": name, "rel_err": err, "seconds": time.time() - t, "peak_rss_gb": proc_status_bytes("VmHWM") / 2**30}


def _fresh(name: str) -> dict:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(measure, (name,))


def simulate_cell(row: dict | None) -> str:
    """A result as one table cell (also bench_zoo's simulate column)."""
    if row is None:
        return "not measured"
    if "refused" in row:
        return "refused: " + row["refused"][:80]
    return f"rel err {row['rel_err']:.1e} ({row['seconds']:.1f} s, {row['peak_rss_gb']:.1f} GB)"


def load_rows(path: Path) -> dict[str, dict]:
    """The measured rows of a results file by model name (empty if there is none)."""
    return {r["model"]: r for r in json.loads(path.read_text())["rows"]} if path.is_file() else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--max-params", type=float, default=30e6)
    ap.add_argument("--out", type=Path, default=Path("docs/figures/graph_zoo"),
                    help="bench_simulate.json / .md here; rows of earlier runs are kept (a run measures some models)")
    ap.add_argument("--doc", type=Path, default=None, help="Markdown file whose bench_simulate block is replaced")
    args = ap.parse_args()
    tv = load_models()
    every = all_names(tv)
    names = args.names or [n for n in every if count_params(tv, n) <= args.max_params]
    path = args.out / "bench_simulate.json"
    rows = load_rows(path)
    for name in names:
        r = {"model": name, "params": count_params(tv, name), **_fresh(name), "torch": torch.__version__}
        rows[name] = r
        print(f"| {name} | {simulate_cell(r)} |", flush=True)
        _write(args, path, rows, every)


def _write(args, path: Path, rows: dict[str, dict], every: list[str]) -> None:
    ordered = [rows[n] for n in sorted(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), "rows": ordered}, indent=2) + "\n")
    lines = ["| model | params | simulate |", "|---|---:|---|"]
    lines += [f"| {r['model']} | {r['params']:,} | {simulate_cell(r)} |" for r in ordered]
    exact = sum(r.get("rel_err", 1.0) <= 1e-4 for r in ordered)
    missing = [n for n in every if n not in rows]
    summary = (f"{exact} of {len(ordered)} measured torchvision definitions reproduced to <= 1e-4 "
               f"({len(every)} definitions; not measured: {', '.join(missing) or 'none'}). Relative error "
               f"||simulate - model|| / ||model|| in float32; seconds include conversion; GB = the peak resident "
               f"memory of the whole job (model, graph, simulate) in a fresh process; torch "
               f"{torch.__version__}, 1 thread, on the shared 2-core machine, so times are indicative.")
    table = "\n".join(lines) + "\n"
    path.with_suffix(".md").write_text(f"# simulate over torchvision definitions\n\n{summary}\n\n{table}")
    if args.doc:
        replace_block(args.doc, "bench_simulate", f"{summary}\n\n{table}")


if __name__ == "__main__":
    main()
