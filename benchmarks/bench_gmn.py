"""Benchmark: GMN forward+backward time and edges/s vs the per-parameter MLP at equal width.

Workloads: a batch of ResNet-style graphs of different widths (BatchNorm, residuals) and one
~1M-edge MLP graph. Each model gets ``edge_in`` value channels per edge (as a learned optimizer
would: weight, gradient, moments) and an ``edge_out`` head; the loss is the mean square of the edge
outputs. Timings are medians over repeats, with the models interleaved so machine noise hits
both alike; on a shared CPU read the GMN / per-parameter ratio, not the absolute times.

    python -m benchmarks.bench_gmn --out results/bench_gmn [--hidden 32 --layers 4 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch
from tqdm import tqdm

from metaopt import to_graph
from metaopt.nn import GMN, PerParameterMLP, prepare_graph


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.short(x))


class ResNetStyle(nn.Module):
    """CIFAR-style ResNet: stem, one BasicBlock per stage (widths w, 2w, 4w), pooling, classifier."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        ws = [width, 2 * width, 4 * width]
        self.blocks = nn.Sequential(*[_Block(a, b, 1 if i == 0 else 2) for i, (a, b) in enumerate(zip([width] + ws[:-1], ws))])
        self.fc = nn.Linear(ws[-1], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def workloads() -> dict[str, Batch]:
    """Graph batches to time: 4 ResNet-style graphs of widths 8..20 and one ~1M-edge MLP."""
    resnets = [to_graph(ResNetStyle(w), (torch.randn(2, 3, 16, 16),)) for w in (8, 12, 16, 20)]
    mlp = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, 10))
    return {
        "resnet_batch4": Batch.from_data_list(resnets),
        "mlp_1M": Batch.from_data_list([to_graph(mlp)]),
    }


def time_step(net: nn.Module, inputs, values: torch.Tensor) -> float:
    """Seconds for one forward + backward of the edge head's mean-square loss."""
    net.zero_grad(set_to_none=True)
    sync = torch.cuda.synchronize if values.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = net(inputs, values)
    out.edge.float().square().mean().backward()
    sync()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="directory for bench_gmn.json / .md")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--edge-in", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    kw = dict(hidden=args.hidden, layers=args.layers, edge_in=args.edge_in, edge_out=2)
    nets = {
        "gmn": GMN(**kw),
        "gmn_checkpoint": GMN(**kw, checkpoint=True),
        "per_param_mlp": PerParameterMLP(**kw),
    }
    for net in nets.values():
        net.to(args.device)
    results = []
    for wname, batch in workloads().items():
        inputs = prepare_graph(batch, args.device)  # prepared once, as a learned optimizer would
        e = inputs.num_param_edges
        values = torch.randn(e, args.edge_in, device=args.device)
        times: dict[str, list[float]] = {n: [] for n in nets}
        for n, net in nets.items():  # warm-up (allocator, first-call overheads)
            time_step(net, inputs, values)
        for _ in tqdm(range(args.repeats), desc=wname):
            for n, net in nets.items():
                times[n].append(time_step(net, inputs, values))
        med = {n: statistics.median(t) for n, t in times.items()}
        row = {
            "workload": wname,
            "graphs": inputs.num_graphs,
            "edges": e,
            "aux_edges": int(inputs.edge_index.shape[1] - e),
            "nodes": inputs.num_nodes,
        }
        for n in nets:
            row[f"{n}_s"] = med[n]
            row[f"{n}_edges_per_s"] = e / med[n]
        row["gmn_over_per_param_mlp"] = med["gmn"] / med["per_param_mlp"]
        results.append(row)
        print(json.dumps(row))
    meta = {
        "hidden": args.hidden,
        "layers": args.layers,
        "edge_in": args.edge_in,
        "repeats": args.repeats,
        "threads": args.threads,
        "device": args.device,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "processor": platform.processor(),
    }
    (args.out / "bench_gmn.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [
        "# GMN forward+backward vs per-parameter MLP",
        "",
        f"hidden={args.hidden}, layers={args.layers}, edge_in={args.edge_in}, device={args.device}, threads={args.threads}, "
        f"median of {args.repeats}; torch {torch.__version__}, {platform.processor() or platform.machine()}",
        "",
        "| workload | graphs | edges | aux edges | GMN s | GMN edges/s | GMN+ckpt s | per-param MLP s | "
        "per-param edges/s | GMN / per-param |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['workload']} | {r['graphs']} | {r['edges']:,} | {r['aux_edges']:,} | {r['gmn_s']:.3f} | "
            f"{r['gmn_edges_per_s']:,.0f} | {r['gmn_checkpoint_s']:.3f} | {r['per_param_mlp_s']:.3f} | "
            f"{r['per_param_mlp_edges_per_s']:,.0f} | {r['gmn_over_per_param_mlp']:.2f}x |"
        )
    md = "\n".join(lines) + "\n"
    (args.out / "bench_gmn.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
