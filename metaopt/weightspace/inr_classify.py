"""INR classification from weights: GMN vs DeepSets, StatNN and the per-parameter MLP, plus image references.

Weight-space models read each INR's parameter graph (the SIREN structure, shared by all INRs) with
its weights as the edge values and predict the image's class. The models (`inr_models`) are
invariant to the SIREN's hidden symmetries by construction: permutations through the graph / set
structure and its group readout, sine sign flips through sign canonicalisation (every hidden
neuron's bias made >= 0, `inr_data.canonicalize_signs`); random permutation / sign-flip
augmentation stays available (`--augment`, useful with `--no-canonical`). The reference is an MLP
and a CNN trained on the raw images with the same train/test split.

CLI: ``python -m metaopt.weightspace.inr_classify --inrs DIR --method all --seeds 3 --out DIR``.
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

from .inr_data import INRSet, augment, load_inr_set
from .inr_models import PROBE_REFERENCE, WEIGHT_METHODS, WeightSpaceClassifier
IMAGE_METHODS = ("image_mlp", "image_cnn")
METHOD_NAMES = {
    "gmn": "GMN (group readout)", "deepsets": "DeepSets", "statnn": "StatNN", "mlp": "PerParameterMLP",
    PROBE_REFERENCE: "MLP on the INR's values at the probe points (reference)",
    "image_mlp": "MLP on images (reference)", "image_cnn": "CNN on images (reference)",
}


@dataclass(frozen=True)
class ClassifyConfig:
    """Training settings shared by every method (image references use the same epochs/lr/batch)."""

    hidden: int = 32
    layers: int = 4
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    # Permutations + sign flips of the hidden neurons, fresh every batch. Off by default: every weight-space
    # model here is permutation invariant by construction and, with `canonical`, sign-flip invariant too,
    # so augmented copies give the same features (they only matter with canonical=False).
    augment: bool = False
    dropout: float = 0.0  # in the shared readout head
    canonical: bool = True  # sign-canonicalise hidden neurons (bias >= 0): exact sign-flip invariance
    probes: int = 0  # GMN / PerParameterMLP: neuron activations at this many fixed probe points as node values
    seed: int = 0
    eval_batch: int = 256


# ---------------------------------------------------------------------------------------------
# Image references (same split): layers exposed for CKA
# ---------------------------------------------------------------------------------------------
class ImageMLP(nn.Module):
    """MLP on flattened images; `features` returns each hidden layer's activations."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, hidden: tuple[int, ...] = (128, 128, 128, 128)) -> None:
        super().__init__()
        dims = [math.prod(image_shape), *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], num_classes)

    def representations(self, x: Tensor) -> list[Tensor]:
        """Each hidden layer's activations, then the logits (for CKA)."""
        feats = self.features(x)
        return feats + [self.out(feats[-1])]

    def features(self, x: Tensor) -> list[Tensor]:
        h, feats = x.flatten(1), []
        for lin in self.hidden:
            h = F.relu(lin(h))
            feats.append(h)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.features(x)[-1])


class ImageCNN(nn.Module):
    """Small CNN: conv-ReLU blocks (2x2 max-pool after each but the first), global average pool, MLP head."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, channels: tuple[int, ...] = (16, 32, 64), fc: int = 64) -> None:
        super().__init__()
        c = [image_shape[0], *channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(c[:-1], c[1:]))
        self.fc = nn.Linear(c[-1], fc)
        self.out = nn.Linear(fc, num_classes)

    def representations(self, x: Tensor) -> list[Tensor]:
        """Each conv block's (flattened) feature map, the fc layer, then the logits (for CKA)."""
        feats = self.features(x)
        return feats + [self.out(feats[-1])]

    def features(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x if i == 0 else F.max_pool2d(x, 2)))
            feats.append(x.flatten(1))
        h = F.relu(self.fc(x.mean((2, 3))))
        feats.append(h)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.features(x)[-1])


def build_model(method: str, inrs: INRSet, cfg: ClassifyConfig) -> nn.Module:
    """The classifier for `method` (weight-space or image reference), initialised from cfg.seed."""
    torch.manual_seed(cfg.seed)
    if method in WEIGHT_METHODS + (PROBE_REFERENCE,):
        probes = cfg.probes if method in ("gmn", "mlp", PROBE_REFERENCE) else 0
        return WeightSpaceClassifier(
            method, inrs.graph, inrs.num_classes, cfg.hidden, cfg.layers, cfg.dropout, probes=probes, siren_layers=inrs.layers, canonical=cfg.canonical,
        )
    if method == "image_mlp":
        return ImageMLP(inrs.image_shape, inrs.num_classes)
    if method == "image_cnn":
        return ImageCNN(inrs.image_shape, inrs.num_classes)
    raise ValueError(f"unknown method {method!r}; choose from {WEIGHT_METHODS + IMAGE_METHODS}")


def method_inputs(method: str, inrs: INRSet, test: bool) -> tuple[Tensor, Tensor]:
    """(inputs, labels) of a split: INR weights (every replicate when training, one per image for test)
    or the images themselves for the image references."""
    if method in IMAGE_METHODS:
        idx = torch.nonzero(inrs.image_is_test == test).flatten()
        return inrs.images[idx], inrs.image_labels[idx]
    idx = inrs.first_replicate(True) if test else inrs.split(False)
    return inrs.weights[idx], inrs.labels[idx]


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch: int = 256) -> Tensor:
    """Logits for every row of x, in eval mode and in chunks."""
    model.eval()
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, x: Tensor, batch: int = 256) -> None:
    """Recompute every BatchNorm's running statistics as exact averages over ``x`` with the final weights
    ("precise BN"): the running averages collected during training lag behind the changing features
    (measured: train accuracy 0.68 in eval mode at train loss 0.17), which would skew evaluation."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for i in range(0, len(x), batch):
        model(x[i : i + batch])
    for m, mom in zip(norms, momenta):
        m.momentum = mom
    model.eval()


def train_classifier(method: str, inrs: INRSet, cfg: ClassifyConfig, progress: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Train one classifier (AdamW, cosine lr, cross-entropy); returns it and train/test accuracy + curve."""
    model = build_model(method, inrs, cfg)
    x_tr, y_tr = method_inputs(method, inrs, test=False)
    if isinstance(model, WeightSpaceClassifier):
        model.fit_scale(x_tr)
    x_te, y_te = method_inputs(method, inrs, test=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(x_tr) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed + 17)
    use_aug = cfg.augment and method in WEIGHT_METHODS
    curve, t0 = [], time.time()
    for epoch in tqdm(range(cfg.epochs), desc=f"{method} seed {cfg.seed}", disable=not progress, leave=False):
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for i in range(0, len(x_tr), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            xb = x_tr[idx]
            if use_aug:
                xb = augment(inrs.graph, inrs.layers, xb, generator=gen)
            loss = F.cross_entropy(model(xb), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        curve.append(total / len(x_tr))
    recalibrate_batch_norm(model, x_tr, cfg.eval_batch)
    acc_tr = float((predict(model, x_tr, cfg.eval_batch).argmax(1) == y_tr).float().mean())
    acc_te = float((predict(model, x_te, cfg.eval_batch).argmax(1) == y_te).float().mean())
    return model, {
        "method": method, "seed": cfg.seed, "train_acc": acc_tr, "test_acc": acc_te, "loss_curve": curve,
        "seconds": round(time.time() - t0, 1), "params": sum(p.numel() for p in model.parameters()),
    }


def run_classification(inrs: INRSet, methods: list[str], seeds: int, cfg: ClassifyConfig, progress: bool = True) -> dict[str, Any]:
    """Every method x seed; returns per-run results and per-method mean/std of test accuracy."""
    runs = []
    for method in methods:
        for s in range(seeds):
            _, res = train_classifier(method, inrs, replace(cfg, seed=cfg.seed + s), progress=progress)
            runs.append(res)
            if progress:
                print(f"{method:>10} seed {cfg.seed + s}: test acc {res['test_acc']:.4f} (train {res['train_acc']:.4f}, {res['seconds']} s)")
    summary = {}
    for method in methods:
        accs = torch.tensor([r["test_acc"] for r in runs if r["method"] == method], dtype=torch.float64)
        summary[method] = {
            "name": METHOD_NAMES[method], "test_acc_mean": float(accs.mean()),
            "test_acc_std": float(accs.std()) if len(accs) > 1 else 0.0, "seeds": len(accs),
            "params": next(r["params"] for r in runs if r["method"] == method),
        }
    return {"config": asdict(cfg), "inrs": str(inrs.root), "num_train_inrs": int((~inrs.is_test).sum()),
            "num_test_images": int(inrs.image_is_test.sum()), "summary": summary, "runs": runs}


def markdown_table(result: dict[str, Any]) -> str:
    """Accuracy table (mean +- std over seeds) as Markdown."""
    lines = ["| method | params | test accuracy (mean +- std) | seeds |", "|---|---:|---:|---:|"]
    for s in result["summary"].values():
        lines.append(f"| {s['name']} | {s['params']:,} | {100 * s['test_acc_mean']:.2f} +- {100 * s['test_acc_std']:.2f} % | {s['seeds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m metaopt.weightspace.inr_classify", description=__doc__.split("\n")[0])
    p.add_argument("--inrs", required=True, help="INR set folder (python -m inner_tasks.inr)")
    p.add_argument("--method", default="all", help=f"one of {WEIGHT_METHODS + IMAGE_METHODS + (PROBE_REFERENCE,)}, "
                   "comma-separated, or 'all'")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=None, help="results folder (default: <inrs>/classify)")
    p.add_argument("--epochs", type=int, default=ClassifyConfig.epochs)
    p.add_argument("--hidden", type=int, default=ClassifyConfig.hidden)
    p.add_argument("--layers", type=int, default=ClassifyConfig.layers)
    p.add_argument("--lr", type=float, default=ClassifyConfig.lr)
    p.add_argument("--batch-size", type=int, default=ClassifyConfig.batch_size)
    p.add_argument("--augment", action="store_true", help="train with random permutation / sign-flip augmentation "
                   "(a no-op for the invariant models unless --no-canonical)")
    p.add_argument("--no-canonical", action="store_true", help="do not sign-canonicalise hidden neurons (bias >= 0)")
    p.add_argument("--probes", type=int, default=0, help="GMN / PerParameterMLP: neuron activations at this many "
                   "fixed probe points as node features (0 = weights only)")
    p.add_argument("--dropout", type=float, default=ClassifyConfig.dropout)
    p.add_argument("--no-references", action="store_true", help="with 'all': skip the image MLP/CNN references")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.method == "all":
        methods = list(WEIGHT_METHODS) + ([] if a.no_references else list(IMAGE_METHODS))
        if a.probes and not a.no_references:
            methods.append(PROBE_REFERENCE)
    else:
        methods = [m.strip() for m in a.method.split(",")]
        known = WEIGHT_METHODS + IMAGE_METHODS + (PROBE_REFERENCE,)
        bad = [m for m in methods if m not in known]
        if bad:
            p.error(f"unknown method(s) {bad}; choose from {known} or 'all'")
        if PROBE_REFERENCE in methods and a.probes <= 0:
            p.error(f"{PROBE_REFERENCE} needs --probes > 0")
    cfg = ClassifyConfig(hidden=a.hidden, layers=a.layers, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, augment=a.augment,
                         canonical=not a.no_canonical, probes=a.probes, dropout=a.dropout)
    inrs = load_inr_set(a.inrs)
    result = run_classification(inrs, methods, a.seeds, cfg)
    out = Path(a.out or Path(a.inrs) / "classify")
    out.mkdir(parents=True, exist_ok=True)
    (out / "classify.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown_table(result)
    (out / "classify.md").write_text(table + "\n")
    print(table)
    print(f"wrote {out / 'classify.json'} and {out / 'classify.md'}")


if __name__ == "__main__":
    main()
