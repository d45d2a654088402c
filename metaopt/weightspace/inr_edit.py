"""INR editing: a GMN's equivariant edge head predicts weight deltas so the edited INR renders a
transformed image (default: 3x3 morphological dilation), trained with a rendering loss.

The edited weights w + delta are rendered with the functional SIREN (`inr_data.render`) at the
pixel grid and compared (MSE) with the transformed ground-truth image. Baselines: the same model
without message passing (PerParameterMLP edge head) and "no edit" (the INR as it is).

CLI: ``python -m metaopt.weightspace.inr_edit --inrs DIR --seeds 2 --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch
from tqdm import tqdm

from .inr_data import INRSet, augment, load_inr_set, pixel_coords, render

EDIT_METHODS = ("gmn", "mlp")  # mlp = PerParameterMLP edge head (no message passing)
TRANSFORMS = ("dilate", "erode", "invert")
METHOD_NAMES = {"gmn": "GMN edge head", "mlp": "PerParameterMLP edge head", "none": "no edit"}


def transform_images(images: Tensor, name: str) -> Tensor:
    """The edit target: 3x3 dilation (max-pool), 3x3 erosion (min-pool) or intensity inversion."""
    if name == "dilate":
        return F.max_pool2d(images, 3, stride=1, padding=1)
    if name == "erode":
        return -F.max_pool2d(-images, 3, stride=1, padding=1)
    if name == "invert":
        return 1.0 - images
    raise ValueError(f"unknown transform {name!r}; choose one of {TRANSFORMS}")


@dataclass(frozen=True)
class EditConfig:
    """Training settings of the editor."""

    transform: str = "dilate"
    hidden: int = 32
    layers: int = 4
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    augment: bool = True
    seed: int = 0


class WeightEditor(nn.Module):
    """``forward(weights [B, E]) -> deltas [B, E]`` from a GMN / PerParameterMLP edge head (starts at 0)."""

    def __init__(self, method: str, graph: Any, hidden: int = 32, layers: int = 4) -> None:
        super().__init__()
        from metaopt.nn import GMN, PerParameterMLP

        if method not in EDIT_METHODS:
            raise ValueError(f"unknown edit method {method!r}; choose one of {EDIT_METHODS}")
        cls = GMN if method == "gmn" else PerParameterMLP
        self.net = cls(hidden=hidden, layers=layers, edge_in=1, edge_out=1)
        self.net.reset_output_(0.0)  # untrained editor = no edit
        self.method, self.graph = method, graph
        self._cache: dict[tuple[int, str], Any] = {}

    def forward(self, weights: Tensor) -> Tensor:
        from metaopt.nn import prepare_graph

        b = weights.shape[0]
        key = (b, str(weights.device))
        if key not in self._cache:
            self._cache[key] = prepare_graph(Batch.from_data_list([self.graph] * b), weights.device)
        out = self.net(self._cache[key], edge_values=weights.reshape(-1, 1)).edge
        return out.reshape(b, -1)


def render_loss(inrs: INRSet, weights: Tensor, targets: Tensor, coords: Tensor) -> Tensor:
    """Per-INR pixel MSE of rendered ``weights [B, E]`` against ``targets [B, P, C]`` -> ``[B]``."""
    return ((render(inrs.graph, inrs.layers, weights, coords) - targets) ** 2).mean((1, 2))


def _targets(inrs: INRSet, idx: Tensor, transform: str) -> Tensor:
    imgs = transform_images(inrs.images[inrs.image_index[idx]], transform)
    b, c, h, w = imgs.shape
    return imgs.reshape(b, c, h * w).transpose(1, 2)


def train_editor(method: str, inrs: INRSet, cfg: EditConfig, progress: bool = False) -> tuple[WeightEditor, dict[str, Any]]:
    """Train an editor with the rendering loss; returns it with the test MSE (first INR per test image)."""
    torch.manual_seed(cfg.seed)
    model = WeightEditor(method, inrs.graph, cfg.hidden, cfg.layers)
    c, h, w = inrs.image_shape
    coords = pixel_coords(h, w)
    tr = inrs.split(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * max(1, math.ceil(len(tr) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed + 29)
    curve, t0 = [], time.time()
    for _ in tqdm(range(cfg.epochs), desc=f"edit {method} seed {cfg.seed}", disable=not progress, leave=False):
        model.train()
        perm = tr[torch.randperm(len(tr), generator=gen)]
        total = 0.0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            wb = inrs.weights[idx]
            if cfg.augment:
                wb = augment(inrs.graph, inrs.layers, wb, generator=gen)
            loss = render_loss(inrs, wb + model(wb), _targets(inrs, idx, cfg.transform), coords).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        curve.append(total / len(tr))
    res = evaluate_editor(model, inrs, cfg.transform)
    return model, {"method": method, "seed": cfg.seed, **res, "loss_curve": curve, "seconds": round(time.time() - t0, 1)}


@torch.no_grad()
def evaluate_editor(model: WeightEditor | None, inrs: INRSet, transform: str, batch: int = 128) -> dict[str, float]:
    """Test MSE / PSNR of edited INRs (model=None: no edit) against the transformed images."""
    c, h, w = inrs.image_shape
    coords = pixel_coords(h, w)
    te = inrs.first_replicate(True)
    losses = []
    if model is not None:
        model.eval()
    for i in range(0, len(te), batch):
        idx = te[i : i + batch]
        wb = inrs.weights[idx]
        edited = wb if model is None else wb + model(wb)
        losses.append(render_loss(inrs, edited, _targets(inrs, idx, transform), coords))
    mse = torch.cat(losses)
    return {"test_mse": float(mse.mean()), "test_psnr": float((10 * torch.log10(1 / mse.clamp(min=1e-12))).mean())}


def run_editing(inrs: INRSet, methods: list[str], seeds: int, cfg: EditConfig, progress: bool = True) -> dict[str, Any]:
    """'no edit' plus every method x seed; returns runs and per-method mean/std of the test MSE."""
    runs: list[dict[str, Any]] = [{"method": "none", "seed": 0, **evaluate_editor(None, inrs, cfg.transform)}]
    for method in methods:
        for s in range(seeds):
            _, res = train_editor(method, inrs, replace(cfg, seed=cfg.seed + s), progress=progress)
            runs.append(res)
            if progress:
                print(f"edit {method:>4} seed {cfg.seed + s}: test MSE {res['test_mse']:.5f} ({res['seconds']} s)")
    summary = {}
    for method in ["none", *methods]:
        mses = torch.tensor([r["test_mse"] for r in runs if r["method"] == method], dtype=torch.float64)
        psnrs = torch.tensor([r["test_psnr"] for r in runs if r["method"] == method], dtype=torch.float64)
        summary[method] = {"name": METHOD_NAMES[method], "test_mse_mean": float(mses.mean()),
                           "test_mse_std": float(mses.std()) if len(mses) > 1 else 0.0,
                           "test_psnr_mean": float(psnrs.mean()), "seeds": len(mses)}
    return {"config": asdict(cfg), "inrs": str(inrs.root), "summary": summary, "runs": runs}


def markdown_table(result: dict[str, Any]) -> str:
    """MSE table (mean +- std over seeds) as Markdown."""
    t = result["config"]["transform"]
    lines = [f"| method ({t}) | test MSE (mean +- std) | test PSNR (dB) | seeds |", "|---|---:|---:|---:|"]
    for s in result["summary"].values():
        lines.append(f"| {s['name']} | {s['test_mse_mean']:.5f} +- {s['test_mse_std']:.5f} | {s['test_psnr_mean']:.2f} | {s['seeds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m metaopt.weightspace.inr_edit", description=__doc__.split("\n")[0])
    p.add_argument("--inrs", required=True)
    p.add_argument("--method", default="all", help=f"one of {EDIT_METHODS}, comma-separated, or 'all'")
    p.add_argument("--transform", default="dilate", choices=TRANSFORMS)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--out", default=None, help="results folder (default: <inrs>/edit)")
    p.add_argument("--epochs", type=int, default=EditConfig.epochs)
    p.add_argument("--hidden", type=int, default=EditConfig.hidden)
    p.add_argument("--layers", type=int, default=EditConfig.layers)
    p.add_argument("--lr", type=float, default=EditConfig.lr)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    methods = list(EDIT_METHODS) if a.method == "all" else [m.strip() for m in a.method.split(",")]
    bad = [m for m in methods if m not in EDIT_METHODS]
    if bad:
        p.error(f"unknown method(s) {bad}; choose from {EDIT_METHODS} or 'all'")
    cfg = EditConfig(transform=a.transform, hidden=a.hidden, layers=a.layers, epochs=a.epochs, lr=a.lr, augment=not a.no_augment)
    inrs = load_inr_set(a.inrs)
    result = run_editing(inrs, methods, a.seeds, cfg)
    out = Path(a.out or Path(a.inrs) / "edit")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"edit_{a.transform}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown_table(result)
    (out / f"edit_{a.transform}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
