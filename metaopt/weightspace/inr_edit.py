"""INR editing: a GMN's equivariant edge head predicts weight deltas so the edited INR renders a
transformed image (default: 3x3 morphological dilation), trained with a rendering loss.

The edited weights w + delta are rendered with the functional SIREN (`inr_data.render`) at the
pixel grid and compared (MSE) with the transformed ground-truth image. Baselines: the same model
without message passing (PerParameterMLP edge head) and "no edit" (the INR as it is).

The multi-seed experiment, its table and CLI are `experiments.inr_edit`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from einops import rearrange
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch

from .inr_data import INRSet, augment, pixel_coords, render
from .training import fit_epochs

EDIT_METHODS = ("gmn", "mlp")  # mlp = PerParameterMLP edge head (no message passing)
TRANSFORMS = ("dilate", "erode", "invert")


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
    return rearrange(imgs, "b c h w -> b (h w) c")  # pixel_coords order: row-major


def train_editor(method: str, inrs: INRSet, cfg: EditConfig, progress: bool = False) -> tuple[WeightEditor, dict[str, Any]]:
    """Train an editor with the rendering loss; returns it with the test MSE (first INR per test image)."""
    torch.manual_seed(cfg.seed)
    model = WeightEditor(method, inrs.graph, cfg.hidden, cfg.layers)
    c, h, w = inrs.image_shape
    coords = pixel_coords(h, w)
    gen = torch.Generator().manual_seed(cfg.seed + 29)

    def batch_loss(idx: Tensor) -> Tensor:
        wb = inrs.weights[idx]
        if cfg.augment:
            wb = augment(inrs.graph, inrs.layers, wb, generator=gen)
        return render_loss(inrs, wb + model(wb), _targets(inrs, idx, cfg.transform), coords).mean()

    t0 = time.time()
    curve = fit_epochs(model, inrs.split(False), batch_loss, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                       weight_decay=cfg.weight_decay, generator=gen, desc=f"edit {method} seed {cfg.seed}", progress=progress)
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
