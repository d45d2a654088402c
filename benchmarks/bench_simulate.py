"""simulate coverage on torchvision definitions: relative error of simulate against model.eval().

Random init (BatchNorm running statistics and affine entries randomised so a missing rule shows;
all-zero parameters such as ViT's class token and classifier head drawn too, else the output is
zero), a batch of 2 random images at the side in tests/torchvision_models.py, converted from one
image; each definition in a fresh process, with the peak resident memory of the whole job (model,
graph, simulate). Usage: python -m benchmarks.bench_simulate [--max-params 30e6] [names ...]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

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
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return {"name": name, "rel_err": err, "seconds": time.time() - t, "peak_rss_gb": peak_kib / 2**20}


def _fresh(name: str) -> dict:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(measure, (name,))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--max-params", type=float, default=30e6)
    args = ap.parse_args()
    tv = load_models()
    names = args.names or [n for n in all_names(tv) if count_params(tv, n) <= args.max_params]
    exact = 0
    for name in names:
        r = _fresh(name)
        if "refused" in r:
            print(f"| {name} | refused: {r['refused']} |", flush=True)
            continue
        exact += r["rel_err"] <= 1e-4
        print(f"| {name} | rel err {r['rel_err']:.1e} ({r['seconds']:.1f} s, peak {r['peak_rss_gb']:.1f} GB) |",
              flush=True)
    print(f"{exact} of {len(names)} reproduced to <= 1e-4", flush=True)


if __name__ == "__main__":
    main()
