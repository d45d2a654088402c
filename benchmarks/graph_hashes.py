"""SHA-256 of the graph tensors a GMN reads (x, edge_index, edge_attr, aux edges), per model.

Converter changes that only add simulate records (graph.layers) must leave these unchanged;
tests/test_graph_simulate_attention.py pins them for the zoo models and small torchvision configs.
Usage: python -m benchmarks.graph_hashes [--torchvision name ...]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from metaopt.graph import to_graph  # noqa: E402


def graph_hash(g) -> str:
    h = hashlib.sha256()
    for t in (g.x, g.edge_index, g.edge_attr, g.aux_edge_index, g.aux_edge_attr):
        t = t.contiguous()
        h.update(f"{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def zoo_hashes() -> dict[str, str]:
    from model_zoo import all_models

    out = {}
    for name, m in all_models().items():
        ex = m.example_inputs() if hasattr(m, "example_inputs") else None
        if ex is None:
            ex = {"conv3d": (torch.randn(2, 1, 4, 4, 4),), "decoder": (torch.randn(2, 5, 8), torch.randn(2, 6, 8))}.get(name)
        out[name] = graph_hash(to_graph(m, ex, cache=False))
    return out


def torchvision_hashes(names: list[str]) -> dict[str, str]:
    from torchvision_models import build, input_size, load_models, small_configs

    tv = load_models()
    out = {}
    configs = small_configs(tv)
    for name in names:
        torch.manual_seed(0)
        if name in configs:
            m, s = configs[name]
        else:
            m, s = build(tv, name), input_size(name)
        out[name] = graph_hash(to_graph(m.eval(), torch.randn(2, 3, s, s), cache=False))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torchvision", nargs="*", default=[])
    args = ap.parse_args()
    torch.set_num_threads(1)
    for k, v in {**zoo_hashes(), **torchvision_hashes(args.torchvision)}.items():
        print(f'"{k}": "{v}",', flush=True)


if __name__ == "__main__":
    main()
