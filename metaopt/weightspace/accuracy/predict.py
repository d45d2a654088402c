"""Train a weight-space predictor (GMN or a baseline) on zoo models and score it on held-out ones."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from collections.abc import Sequence
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
SCHEDULES: tuple[str, ...] = ("plateau", "onecycle")
SELECT_ON: tuple[str, ...] = ("mse", "tau")


@dataclass
class PredictorConfig:
    """Predictor size and training budget (the same for every method, so the comparison is fair)."""

    hidden: int = 32
    layers: int = 3  # GMN message-passing layers
    # Upper bound on optimizer steps; with `patience` > 0 training usually ends earlier (early stopping).
    # v0.1 (2026-11): 500 steps left the GMN's validation loss still falling, so the bound is long.
    steps: int = 4000
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
    # Early stopping: stop after `patience` validation evaluations without a new best (0 = run all steps).
    patience: int = 16
    # Learning-rate schedule: "plateau" = linear warm-up (5% of `steps`, at most 200 steps), then constant,
    # halved after every `patience // 3` evaluations without improvement (suits early stopping: the lr does
    # not depend on a step budget that is rarely reached); "onecycle" = OneCycle over `steps` (v0.1).
    schedule: str = "plateau"
    # Dropout in the GMN's graph head (GMN only; 0 = none). With probe features the predictor's validation
    # loss bottoms out after a few hundred steps (2026-12), i.e. it overfits the training models.
    dropout: float = 0.0
    # The GMN's graph head also reads the states of the first `output_nodes` output neurons in class order
    # (GMN only; 0 = off). With probe features they carry the network's logits on the probe digits, whose
    # agreement with the probes' labels alone explains most of the accuracy (docs/accuracy.md).
    output_nodes: int = 0
    # GMN with graph features only: predict a least-squares line from the graph features (fitted on the
    # training models) plus the GMN's output times a learned gate that starts at 0 (`ResidualOnBase`), so
    # training starts at the line and the GMN learns what the line misses (e.g. the order among models
    # with equal probe accuracy, which a line cannot rank).
    residual_base: bool = False
    # What model selection (the best checkpoint, early stopping) minimises on the validation models: "mse",
    # or "tau": minus Kendall's tau, when the ranking matters more than the values.
    select_on: str = "mse"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_predictor(method: str, cfg: PredictorConfig, node_in: int = 0, graph_in: int = 0) -> nn.Module:
    """The `method`'s network with one weight channel per edge and one graph-level output.

    ``node_in`` > 0 (GMN only): that many value channels per node, e.g. probe features; ``graph_in`` > 0
    (GMN only): that many values per model, e.g. its accuracy on the probe digits.
    """
    from ...nn import DMC, GMN, DeepSets, StatNN  # imported here: metaopt.nn is optional for zoo I/O

    if (cfg.dropout or cfg.output_nodes or cfg.residual_base) and method != "gmn":
        raise ValueError(f"dropout / output_nodes / residual_base act on the GMN only, not on {method!r}")
    if (node_in or graph_in) and method != "gmn":
        raise ValueError(f"node features (probe features) are read by the GMN only, not by {method!r}")
    if method == "gmn":
        return GMN(hidden=cfg.hidden, layers=cfg.layers, edge_in=1, node_in=node_in, graph_in=graph_in,
                   edge_out=0, node_out=0, graph_out=1, head_dropout=cfg.dropout,
                   head_output_nodes=cfg.output_nodes)
    if method == "deepsets":
        return DeepSets(hidden=cfg.hidden, edge_in=1, graph_out=1)
    if method == "dmc":
        return DMC(hidden=cfg.hidden, edge_in=1, graph_out=1)
    if method == "statnn":
        return StatNN(hidden=cfg.hidden, edge_in=1, graph_out=1)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


class ResidualOnBase(nn.Module):
    """``line(graph_values) + gate * net(...)``: a fixed least-squares line from the graph-level inputs
    plus a GMN's correction, gated by a scalar that starts at 0 (the untrained model is the line)."""

    def __init__(self, net: nn.Module, coef: Tensor, intercept: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("coef", coef.float())
        self.register_buffer("intercept", torch.tensor(float(intercept)))
        self.gate = nn.Parameter(torch.zeros(()))

    @classmethod
    def fit(cls, net: nn.Module, features: Tensor, targets: Tensor) -> "ResidualOnBase":
        """The line by least squares on ``features`` [n, G] -> ``targets`` [n] (the training models)."""
        x = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], 1)
        sol = torch.linalg.lstsq(x, targets.double()[:, None]).solution[:, 0]
        return cls(net, sol[:-1], float(sol[-1]))

    def forward(self, batch: Batch, edge_values: Tensor, node_values: Tensor | None, graph_values: Tensor) -> Tensor:
        base = graph_values.float() @ self.coef + self.intercept
        out = self.net(batch, edge_values=edge_values, node_values=node_values, graph_values=graph_values).graph[:, 0]
        return base + self.gate * out


def predict_batch(model: nn.Module, method: str, batch: Batch, values: Tensor, node_values: Tensor | None = None,
                  graph_values: Tensor | None = None) -> Tensor:
    """[B] predictions (standardised target units) for a PyG batch, its edge values [E, 1] and, for the
    GMN, optional node values [N, C]."""
    if isinstance(model, ResidualOnBase):
        return model(batch, values, node_values, graph_values)
    if method == "gmn":
        return model(batch, edge_values=values, node_values=node_values, graph_values=graph_values).graph[:, 0]
    return model(batch, values)[:, 0]


class ZooBatches:
    """Normalised weights (and optional node features) of a zoo subset; collation into PyG batches."""

    def __init__(self, zoo: Zoo, idx: np.ndarray, normalizer: WeightNormalizer,
                 node_features: Sequence[Tensor] | None = None, graph_features: Tensor | None = None) -> None:
        self.zoo, self.idx = zoo, [int(i) for i in idx]
        self.values = [normalizer.transform(zoo, i) for i in self.idx]
        self.node_features = None if node_features is None else [node_features[i].float() for i in self.idx]
        self.graph_features = None if graph_features is None else graph_features[self.idx].float()

    def collate(self, positions: list[int]) -> tuple[Batch, Tensor, Tensor | None, Tensor | None]:
        graphs = [self.zoo.graph_of(self.idx[p]) for p in positions]
        values = torch.cat([self.values[p] for p in positions])[:, None]
        nodes = None if self.node_features is None else torch.cat([self.node_features[p] for p in positions])
        graph = None if self.graph_features is None else self.graph_features[positions]
        return Batch.from_data_list(graphs), values, nodes, graph


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


class PlateauSchedule:
    """Linear warm-up to ``lr``, then constant; `report` halves the lr after ``lr_patience`` evaluations
    in a row without a new best validation loss."""

    def __init__(self, opt: torch.optim.Optimizer, lr: float, warmup: int, lr_patience: int, factor: float = 0.5) -> None:
        self.opt, self.lr, self.warmup = opt, lr, max(1, warmup)
        self.lr_patience, self.factor, self.scale, self.bad, self.t = max(1, lr_patience), factor, 1.0, 0, 0
        self._set()

    def _set(self) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.lr * self.scale * min(1.0, (self.t + 1) / self.warmup)

    def step(self) -> None:
        self.t += 1
        self._set()

    def report(self, improved: bool) -> None:
        self.bad = 0 if improved else self.bad + 1
        if self.bad >= self.lr_patience:
            self.scale *= self.factor
            self.bad = 0
            self._set()


def fit_and_score(zoo: Zoo, train_idx: np.ndarray, test_idx: np.ndarray, method: str, cfg: PredictorConfig,
                  seed: int, target: str = "test_acc", progress: Any = None,
                  node_features: Sequence[Tensor] | None = None, graph_features: Tensor | None = None) -> dict[str, Any]:
    """Fit preprocessing on the training models, train `method`, score on the test models.

    With cfg.val_fraction > 0 a validation part of the training models is held out (preprocessing is
    still fitted on all training models; it uses no targets except the scaler's mean/std) and the
    checkpoint with the lowest validation MSE is the one scored; with cfg.patience > 0 training stops
    after that many evaluations without a new best. ``node_features`` (GMN only): one float tensor
    [num_nodes, C] per zoo model (indexed like the zoo), e.g. probe features, passed as node values.
    Returns scores, the training-loss curve (every 50 steps), the validation curve, the selected step,
    the number of steps run and test predictions/targets.
    """
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose one of {SCHEDULES}")
    if cfg.select_on not in SELECT_ON:
        raise ValueError(f"unknown select_on {cfg.select_on!r}; choose one of {SELECT_ON}")
    if graph_features is not None and (graph_features.dim() != 2 or len(graph_features) != len(zoo)):
        raise ValueError(f"graph_features: need [{len(zoo)}, G] (one row per zoo model), got {tuple(graph_features.shape)}")
    if node_features is not None and len(node_features) != len(zoo):
        raise ValueError(f"node_features: {len(node_features)} entries for a zoo of {len(zoo)} models")
    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    y_all = zoo.targets(target)
    fit_idx, val_idx = split_validation(train_idx, cfg.val_fraction, seed)
    scaler = TargetScaler.fit(y_all[fit_idx])
    normalizer = WeightNormalizer.fit(zoo, train_idx)
    train = ZooBatches(zoo, fit_idx, normalizer, node_features, graph_features)
    val = ZooBatches(zoo, val_idx, normalizer, node_features, graph_features) if len(val_idx) else None
    test = ZooBatches(zoo, test_idx, normalizer, node_features, graph_features)
    y_train = scaler.transform(y_all[fit_idx])
    y_val = scaler.transform(y_all[val_idx]) if val is not None else None
    node_in = 0 if node_features is None else int(node_features[0].shape[1])
    graph_in = 0 if graph_features is None else int(graph_features.shape[1])
    model = build_predictor(method, cfg, node_in=node_in, graph_in=graph_in)
    if cfg.residual_base:
        if graph_features is None:
            raise ValueError("residual_base: needs graph_features (the line's inputs), e.g. the probe accuracy")
        model = ResidualOnBase.fit(model, train.graph_features, y_train)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "onecycle":
        sched: Any = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    else:
        sched = PlateauSchedule(opt, cfg.lr, warmup=min(200, cfg.steps // 20), lr_patience=max(1, cfg.patience // 3)
                                if cfg.patience > 0 else 4)
    n, bs = len(fit_idx), min(cfg.batch_size, len(fit_idx))
    order: list[int] = []
    curve, window, val_curve = [], [], []
    best = BestCheckpoint()
    since_best, steps_run = 0, 0
    model.train()
    for step in range(cfg.steps):
        if len(order) < bs:
            order += gen.permutation(n).tolist()
        pos, order = order[:bs], order[bs:]
        batch, values, nodes, gvals = train.collate(pos)
        loss = torch.nn.functional.mse_loss(predict_batch(model, method, batch, values, nodes, gvals), y_train[pos])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        steps_run = step + 1
        window.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            curve.append(float(np.mean(window)))
            window = []
        if progress is not None:
            progress.update(1)
        if val is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            pred_val = predict(model, method, val, cfg.eval_batch_size)
            if cfg.select_on == "tau":
                v = -scores(y_val.numpy(), pred_val.numpy())["tau"]
            else:
                v = float(torch.mean((pred_val - y_val) ** 2))
            val_curve.append(v)
            improved = best.update(model, v, step + 1)
            since_best = 0 if improved else since_best + 1
            if isinstance(sched, PlateauSchedule):
                sched.report(improved)
            model.train()
            if cfg.patience > 0 and since_best >= cfg.patience:
                break
    if window:
        curve.append(float(np.mean(window)))
    best.restore(model)
    pred = predict(model, method, test, cfg.eval_batch_size)
    pred_acc = scaler.inverse(pred).numpy()
    true_acc = y_all[test_idx].numpy()
    out = scores(true_acc, pred_acc)
    out.update({"train_curve": curve, "val_curve": val_curve, "best_step": best.step if val is not None else steps_run,
                "steps_run": steps_run, "node_in": node_in, "graph_in": graph_in,
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
        batch, values, nodes, gvals = data.collate(list(range(s, min(s + batch_size, len(data.idx)))))
        outs.append(predict_batch(model, method, batch, values, nodes, gvals))
    return torch.cat(outs)
