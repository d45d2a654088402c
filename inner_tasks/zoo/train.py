"""Train one zoo member on digits with its sampled hyperparameters and measure train/test accuracy."""

from __future__ import annotations

import copy
import math
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import load_digits_split
from ..models import ACTIVATIONS, build_model
from ..tasks.sources import pixel_grid
from .presets import IMAGE_SIZE, NUM_CLASSES, ModelConfig


@lru_cache(maxsize=4)
def zoo_data(layout: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits (8x8, fixed stratified split) shaped for `layout`: image, sequence or set of (y, x, intensity)."""
    ds = load_digits_split(size=IMAGE_SIZE)
    return layout_inputs(ds.x_train, layout), ds.y_train, layout_inputs(ds.x_test, layout), ds.y_test


def layout_inputs(images: Tensor, layout: str) -> Tensor:
    """[N, 1, 8, 8] images as the model family expects them."""
    if layout == "image":
        return images
    if layout == "sequence":
        return images.flatten(2)  # [N, 1, 64]
    if layout == "set":
        coords = pixel_grid(images.shape[-1]).expand(images.shape[0], -1, -1)  # [N, 64, 2]
        return torch.cat([coords, images.flatten(1).unsqueeze(-1)], dim=-1)  # [N, 64, 3]
    raise ValueError(f"unknown input layout {layout!r}; expected image, sequence or set")


def example_input(layout: str) -> Tensor:
    """One input of the layout (for graph conversion)."""
    return zoo_data(layout)[0][:1]


def _add_dropout(model: nn.Module, p: float) -> None:
    """Dropout after every activation module via forward hooks: no new parameters, graph unchanged."""
    if p <= 0:
        return
    act_types = tuple(ACTIVATIONS.values())
    for m in model.modules():
        if isinstance(m, act_types):
            m.register_forward_hook(lambda mod, inp, out: F.dropout(out, p, mod.training))


@torch.no_grad()
def _evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(-1) == y).float().mean().item()
    return acc, loss if math.isfinite(loss) else 1e6


def train_config(cfg: ModelConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Train cfg's model; returns it (eval mode, no hooks) and its metrics.

    Everything random (init, label noise, data subset, batch order, dropout masks) derives from
    cfg.seed, so a regenerated model is bit-identical; the global RNG is left untouched. On a
    non-finite loss training stops and the weights of the start of that epoch are kept (no NaNs).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # dropout draws from the global generator
        return _train(cfg)


def _train(cfg: ModelConfig) -> tuple[nn.Module, dict[str, Any]]:
    hp = cfg.hparams
    g = torch.Generator().manual_seed(cfg.seed)
    xtr, ytr, xte, yte = zoo_data(cfg.layout)
    n_sub = max(hp["batch_size"], int(round(hp["data_fraction"] * len(xtr))))
    idx = torch.randperm(len(xtr), generator=g)[:n_sub]
    x, y = xtr[idx], ytr[idx].clone()
    noisy = torch.rand(n_sub, generator=g) < hp["label_noise"]
    y[noisy] = torch.randint(0, NUM_CLASSES, (int(noisy.sum()),), generator=g)

    model = build_model(cfg.spec, seed=cfg.seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(hp["init_scale"])
    trained = copy.deepcopy(model)  # hooks go on a copy so the returned model is plain
    _add_dropout(trained, hp["dropout"])
    opt = torch.optim.AdamW(trained.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    bs = hp["batch_size"]
    # An "epoch" is a full training set's worth of steps (len(xtr) // bs), whatever the subset size, so
    # data_fraction changes how much distinct data a model sees, not how long it trains.
    steps_per_epoch = len(xtr) // bs
    order = torch.cat([torch.randperm(n_sub, generator=g)[: n_sub - n_sub % bs]
                       for _ in range(hp["epochs"] * steps_per_epoch * bs // max(n_sub - n_sub % bs, bs) + 1)])
    diverged = False
    for epoch in range(hp["epochs"]):
        snapshot = copy.deepcopy(trained.state_dict())
        trained.train()
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            b = order[step * bs : (step + 1) * bs]
            loss = F.cross_entropy(trained(x[b]), y[b])
            if not torch.isfinite(loss):
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if diverged or not all(torch.isfinite(p).all() for p in trained.parameters()):
            diverged = True
            trained.load_state_dict(snapshot)
            break
    model.load_state_dict(trained.state_dict())
    train_acc, train_loss = _evaluate(model, x, y)
    test_acc, test_loss = _evaluate(model, xte, yte)
    metrics = {"train_acc": train_acc, "train_loss": train_loss, "test_acc": test_acc, "test_loss": test_loss,
               "train_size": n_sub, "diverged": diverged}
    return model, metrics
