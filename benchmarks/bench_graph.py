"""Graph conversion cost (docs/benchmarks.md §3): time and index memory for ResNet-18 and ViT-small.

    python -m benchmarks.bench_graph --out out/bench

Reports, per model: the first conversion in this process ("cold", includes one-time library
warm-up), a first conversion with a cleared cache ("warm"), a same-architecture conversion that
reuses the cached structure, and index bytes relative to the float32 parameter bytes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchmarks.common import timed, write_results  # noqa: E402
from metaopt.graph import clear_structure_cache, to_graph  # noqa: E402
from model_zoo import ResNet, ViT  # noqa: E402


def vit_small() -> nn.Module:
    """ViT-S/16 shape: 224px, patch 16, dim 384, depth 12, 6 heads (about 22M parameters)."""
    return ViT(img=224, patch=16, dim=384, depth=12, heads=6, classes=1000, mlp_ratio=4)


def resnet18() -> nn.Module:
    """ResNet-18 shape (CIFAR stem): widths 64..512, two blocks per stage (about 11M parameters)."""
    return ResNet(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), num_classes=10)


def measure(name: str, build) -> dict:
    model = build()
    n = sum(p.numel() for p in model.parameters())
    clear_structure_cache()
    t = time.perf_counter()
    g = to_graph(model)
    cold = time.perf_counter() - t

    def fresh():
        clear_structure_cache()
        return to_graph(model)

    warm, g = timed(fresh, repeats=3)
    other = build()  # same architecture, new weights
    cached, g2 = timed(lambda: to_graph(other), repeats=5)
    values, _ = timed(lambda: g2.params_to_edges(other), repeats=5)
    ib = g.index_bytes()
    pbytes = 4 * n
    return {
        "model": name, "params": n, "nodes": int(g.num_nodes), "aux_edges": int(g.aux_edge_index.shape[1]),
        "first_s_cold": cold, "first_s": warm, "cached_ms": cached * 1e3, "values_ms": values * 1e3,
        "edge_index_x_param_bytes": ib["edge_index"] / pbytes,
        "all_index_x_param_bytes": ib["total"] / pbytes,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/bench")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (conversion is memory-bound)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure("resnet18", resnet18), measure("vit_small", vit_small)]
    cols = ["model", "params", "nodes", "aux_edges", "first_s_cold", "first_s", "cached_ms", "values_ms",
            "edge_index_x_param_bytes", "all_index_x_param_bytes"]
    write_results(args.out, "graph_conversion", rows, cols,
                  "Graph conversion (targets: first <= 2 s, cached <= 50 ms, index <= 2x param bytes)")


if __name__ == "__main__":
    main()
