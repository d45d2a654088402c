"""Train a weight-space predictor (GMN or a baseline) on zoo models and score it on held-out ones."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau
from sklearn.metrics import r2_score
from torch import Tensor, nn
from torch_geometric.data import Batch

from ..zoo_io import Zoo
from .preprocess import TargetScaler, WeightNormalizer

METHODS: tuple[str, ...] = ("gmn", "deepsets", "dmc", "statnn")


@dataclass
class PredictorConfig:
    """Predictor size and training budget (the same for every method, so the comparison is fair)."""

    hidden: int = 32
    layers: int = 3  # GMN message-passing layers
    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    eval_batch_size: int = 64
    # Model selection: hold out this fraction of the training models (at least 2) as a validation set,
    # score it every `eval_every` steps and keep the checkpoint with the lowest validation MSE. With a few
    # hundred training models the predictors overfit long before a fixed budget ends (v0.0, 2026-11: 1500 steps
    # scored worse than 400), so the fixed-budget last checkpoint is a poor choice. 0 disables it.
    val_fraction: float = 0.2
    eval_every: int = 25

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_predictor(method: str, cfg: PredictorConfig) -> nn.Module:
    """The `method`'s network with one weight channel per edge and one graph-level output."""
    from ...nn import DMC, GMN, DeepSets, StatNN  # imported here: metaopt.nn is optional for zoo I/O

    if method == "gmn":
        return GMN(hidden=cfg.hidden, layers=cfg.layers, edge_in=1, node_in=0, graph_in=0,
                   edge_out=0, node_out=0, graph_out=1)
    if method == "deepsets":
        return DeepSets(hidden=cfg.hidden, edge_in=1, graph_out=1)
    if method == "dmc":
        return DMC(hidden=cfg.hidden, edge_in=1, graph_out=1)
    if method == "statnn":
        return StatNN(hidden=cfg.hidden, edge_in=1, graph_out=1)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def predict_batch(model: nn.Module, method: str, batch: Batch, values: Tensor) -> Tensor:
    """[B] predictions (standardised target units) for a PyG batch and its edge values [E, 1]."""
    if method == "gmn":
        return model(batch, edge_values=values).graph[:, 0]
    return model(batch, values)[:, 0]


class ZooBatches:
    """Normalised weights of a zoo subset and collation into PyG batches of parameter graphs."""

    def __init__(self, zoo: Zoo, idx: np.ndarray, normalizer: WeightNormalizer) -> None:
        self.zoo, self.idx = zoo, [int(i) for i in idx]
        self.values = [normalizer.transform(zoo, i) for i in self.idx]

    def collate(self, positions: list[int]) -> tuple[Batch, Tensor]:
        graphs = [self.zoo.graph_of(self.idx[p]) for p in positions]
        values = torch.cat([self.values[p] for p in positions])[:, None]
        return Batch.from_data_list(graphs), values


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """R^2 and Kendall's tau of predictions (nan-safe: a constant prediction has tau 0)."""
    tau = kendalltau(y_true, y_pred).statistic
    return {"r2": float(r2_score(y_true, y_pred)), "tau": float(0.0 if tau is None or math.isnan(tau) else tau),
            "mse": float(np.mean((y_true - y_pred) ** 2))}


def split_validation(train_idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, validation indices): a random `fraction` of `train_idx` (>= 2 models, <= half) held out.

    Returns the full set and an empty validation set when `fraction` is 0 or there are fewer than 4 models.
    """
    train_idx = np.asarray(train_idx)
    n_val = int(round(fraction * len(train_idx)))
    if fraction <= 0 or len(train_idx) < 4:
        return train_idx, train_idx[:0]
    n_val = min(max(2, n_val), len(train_idx) // 2)
    perm = np.random.default_rng(seed + 7919).permutation(len(train_idx))
    return np.sort(train_idx[perm[n_val:]]), np.sort(train_idx[perm[:n_val]])


class BestCheckpoint:
    """Keeps a copy of the parameters with the lowest validation loss seen so far (early stopping)."""

    def __init__(self) -> None:
        self.loss, self.step, self.state = math.inf, -1, None

    def update(self, model: nn.Module, loss: float, step: int) -> bool:
        """Record `model` if `loss` is the best so far (ties keep the earlier step); True if it was."""
        if not loss < self.loss:
            return False
        self.loss, self.step = loss, step
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


def fit_and_score(zoo: Zoo, train_idx: np.ndarray, test_idx: np.ndarray, method: str, cfg: PredictorConfig,
                  seed: int, target: str = "test_acc", progress: Any = None) -> dict[str, Any]:
    """Fit preprocessing on the training models, train `method`, score on the test models.

    With cfg.val_fraction > 0 a validation part of the training models is held out (preprocessing is
    still fitted on all training models; it uses no targets except the scaler's mean/std) and the
    checkpoint with the lowest validation MSE is the one scored. Returns scores, the training-loss curve
    (every 50 steps), the validation curve, the selected step and test predictions/targets.
    """
    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    y_all = zoo.targets(target)
    fit_idx, val_idx = split_validation(train_idx, cfg.val_fraction, seed)
    scaler = TargetScaler.fit(y_all[fit_idx])
    normalizer = WeightNormalizer.fit(zoo, train_idx)
    train = ZooBatches(zoo, fit_idx, normalizer)
    val = ZooBatches(zoo, val_idx, normalizer) if len(val_idx) else None
    test = ZooBatches(zoo, test_idx, normalizer)
    y_train = scaler.transform(y_all[fit_idx])
    y_val = scaler.transform(y_all[val_idx]) if val is not None else None
    model = build_predictor(method, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    n, bs = len(fit_idx), min(cfg.batch_size, len(fit_idx))
    order: list[int] = []
    curve, window, val_curve = [], [], []
    best = BestCheckpoint()
    model.train()
    for step in range(cfg.steps):
        if len(order) < bs:
            order += gen.permutation(n).tolist()
        pos, order = order[:bs], order[bs:]
        batch, values = train.collate(pos)
        loss = torch.nn.functional.mse_loss(predict_batch(model, method, batch, values), y_train[pos])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        window.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            curve.append(float(np.mean(window)))
            window = []
        if val is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            v = float(torch.mean((predict(model, method, val, cfg.eval_batch_size) - y_val) ** 2))
            val_curve.append(v)
            best.update(model, v, step + 1)
            model.train()
        if progress is not None:
            progress.update(1)
    best.restore(model)
    pred = predict(model, method, test, cfg.eval_batch_size)
    pred_acc = scaler.inverse(pred).numpy()
    true_acc = y_all[test_idx].numpy()
    out = scores(true_acc, pred_acc)
    out.update({"train_curve": curve, "val_curve": val_curve, "best_step": best.step if val is not None else cfg.steps,
                "pred": pred_acc.tolist(), "true": true_acc.tolist(),
                "n_train": int(len(train_idx)), "n_fit": int(len(fit_idx)), "n_val": int(len(val_idx)),
                "n_test": int(len(test_idx)),
                "predictor_params": int(sum(p.numel() for p in model.parameters()))})
    return out


@torch.no_grad()
def predict(model: nn.Module, method: str, data: ZooBatches, batch_size: int) -> Tensor:
    """Predictions (standardised units) for every model of `data`, in order."""
    model.eval()
    outs = []
    for s in range(0, len(data.idx), batch_size):
        batch, values = data.collate(list(range(s, min(s + batch_size, len(data.idx)))))
        outs.append(predict_batch(model, method, batch, values))
    return torch.cat(outs)
