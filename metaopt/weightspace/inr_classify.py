"""INR classification from weights: GMN vs DeepSets, StatNN and the per-parameter MLP, plus image references.

Weight-space models read each INR's parameter graph (the SIREN structure, shared by all INRs) with
its weights as the edge values and predict the image's class. The models (`inr_models`) are
invariant to the SIREN's hidden symmetries by construction: permutations through the graph / set
structure and its group readout, sine sign flips through sign canonicalisation (every hidden
neuron's bias made >= 0, `inr_data.canonicalize_signs`); random permutation / sign-flip
augmentation stays available (`--augment`, useful with `--no-canonical`). The reference is an MLP
and a CNN trained on the raw images with the same train/test split.

The multi-seed experiment, its table and CLI are `experiments.inr_classify`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .inr_data import INRSet, augment, random_affine, transform_inputs
from .inr_models import PROBE_REFERENCE, WEIGHT_METHODS, WeightSpaceClassifier
from .training import fit_epochs

IMAGE_METHODS = ("image_mlp", "image_cnn")


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
    # Image-space augmentation done exactly in weight space (`inr_data.transform_inputs`), fresh every batch,
    # weight-space methods only: rotation in +-input_rotate degrees, scale 1 +- input_scale, shift
    # +-input_shift (coordinates span [-1, 1]). 0 = off. Unlike the hidden symmetries these change the image.
    input_rotate: float = 0.0
    input_scale: float = 0.0
    input_shift: float = 0.0
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
    gen = torch.Generator().manual_seed(cfg.seed + 17)
    use_aug = cfg.augment and method in WEIGHT_METHODS
    use_input_aug = method in WEIGHT_METHODS and max(cfg.input_rotate, cfg.input_scale, cfg.input_shift) > 0

    def batch_loss(idx: Tensor) -> Tensor:
        xb = x_tr[idx]
        if use_input_aug:
            a, t = random_affine(len(idx), cfg.input_rotate, cfg.input_scale, cfg.input_shift, generator=gen, dtype=xb.dtype)
            xb = transform_inputs(inrs.graph, inrs.layers, xb, a, t)
        if use_aug:
            xb = augment(inrs.graph, inrs.layers, xb, generator=gen)
        return F.cross_entropy(model(xb), y_tr[idx])

    t0 = time.time()
    curve = fit_epochs(model, torch.arange(len(x_tr)), batch_loss, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                       weight_decay=cfg.weight_decay, generator=gen, desc=f"{method} seed {cfg.seed}", progress=progress)
    recalibrate_batch_norm(model, x_tr, cfg.eval_batch)
    acc_tr = float((predict(model, x_tr, cfg.eval_batch).argmax(1) == y_tr).float().mean())
    acc_te = float((predict(model, x_te, cfg.eval_batch).argmax(1) == y_te).float().mean())
    return model, {
        "method": method, "seed": cfg.seed, "train_acc": acc_tr, "test_acc": acc_te, "loss_curve": curve,
        "seconds": round(time.time() - t0, 1), "params": sum(p.numel() for p in model.parameters()),
    }
