"""How predictable is a zoo's accuracy at all? Reference regressors that need no metanetwork.

`python -m experiments.accuracy.diagnose --zoo DIR [--seeds 3]` prints, per split:
- the binomial noise ceiling of R² (test accuracy measured on a finite test set);
- gradient boosting on the *stored hyperparameters and architecture knobs* (not weights: an upper
  reference for what the training recipe alone explains with this many models);
- gradient boosting and ridge regression on simple weight statistics (StatNN-style features on raw
  weights: mean, std, mean |w|, quantiles of all weights, of the first and of the last weight matrix).
If these are far above the metanetworks, the predictors (not the zoo) are the problem.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np
from scipy.stats import kendalltau
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score

from metaopt.weightspace.accuracy import SPLITS, make_split
from metaopt.weightspace.zoo_io import Zoo

from .run import open_zoo

LOG_HPARAMS = ("lr", "weight_decay", "data_fraction")
HPARAMS = ("lr", "epochs", "weight_decay", "dropout", "init_scale", "label_noise", "data_fraction")


def noise_ceiling(y: np.ndarray, n_test_examples: int) -> float:
    """R² ceiling when each accuracy is a binomial estimate from `n_test_examples` examples."""
    return float(1 - np.mean(y * (1 - y) / n_test_examples) / np.var(y))


def _stats(w: np.ndarray) -> list[float]:
    return [w.mean(), w.std(), np.abs(w).mean(), *np.quantile(w, [0, 0.25, 0.5, 0.75, 1])]


def weight_features(zoo: Zoo) -> np.ndarray:
    """[N, 25] statistics of raw weights: all weights, the first and the last weight matrix, log #params."""
    rows = []
    for i in range(len(zoo)):
        g, w = zoo.graph_of(i), zoo.weights[i].double().numpy()
        offs = g.param_offsets
        mats = [w[offs[k]:offs[k + 1]] for k, s in enumerate(g.param_shapes) if len(s) > 1] or [w]
        rows.append(_stats(w) + _stats(mats[0]) + _stats(mats[-1]) + [math.log(w.size)])
    return np.array(rows)


def hparam_features(zoo: Zoo) -> np.ndarray:
    """[N, F] stored training hyperparameters (log scale where sampled log-uniformly) and architecture knobs."""
    fams = sorted({r.get("family", "") for r in zoo.records})
    acts = sorted({str(r.get("spec", {}).get("activation")) for r in zoo.records})
    norms = sorted({str(r.get("spec", {}).get("norm")) for r in zoo.records})
    rows = []
    for r in zoo.records:
        hp, spec = r.get("hparams", {}), r.get("spec", {})
        row = [math.log(hp[k] + 1e-6) if k in LOG_HPARAMS else float(hp[k]) for k in HPARAMS if k in hp]
        depth = len(spec.get("channels", spec.get("hidden", ())) or ())
        row += [math.log(zoo.graphs[r["arch_id"]].num_params), depth, fams.index(r.get("family", "")),
                acts.index(str(spec.get("activation"))), norms.index(str(spec.get("norm")))]
        rows.append(row)
    return np.array(rows, dtype=float)


def _fit_predict(kind: str, x: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
    if kind == "ridge":
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-9
        return RidgeCV(alphas=np.logspace(-3, 3, 13)).fit((x[tr] - mu) / sd, y[tr]).predict((x[te] - mu) / sd)
    gb = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, min_samples_leaf=max(2, min(10, len(tr) // 3)),
                                       random_state=0)
    return gb.fit(x[tr], y[tr]).predict(x[te])


def reference_fit_and_score(zoo: Zoo, train_idx: np.ndarray, test_idx: np.ndarray, method: str = "hparams_gb",
                            target: str = "test_acc", probe_acc: np.ndarray | None = None) -> dict[str, Any]:
    """A reference regressor as one run of the accuracy grid (same result keys as `fit_and_score`).

    ``hparams_gb``: gradient boosting on `hparam_features` (the diagnosis' ``hparams+arch GB``), fitted
    on all training models (no validation hold-out: boosting has no checkpoint to select).
    ``probe_acc``: a least-squares line from each model's accuracy on the probe digits (``probe_acc``,
    `inner_tasks.zoo.probes.probe_accuracy`) to its test accuracy, fitted on the training models.
    """
    from metaopt.weightspace.accuracy import scores

    if method not in ("hparams_gb", "probe_acc"):
        raise ValueError(f"unknown reference method {method!r}; choose hparams_gb or probe_acc")
    y = zoo.targets(target).numpy().astype(float)
    tr, te = np.asarray(train_idx), np.asarray(test_idx)
    if method == "probe_acc":
        if probe_acc is None:
            raise ValueError("probe_acc needs the models' probe accuracies (--probes P)")
        x = np.asarray(probe_acc, dtype=float)[:, None]
        xt, yt = x[tr, 0], y[tr]
        var = float(np.var(xt))  # every training model equally right on the probes: predict the mean
        slope = float(np.mean((xt - xt.mean()) * (yt - yt.mean())) / var) if var > 0 else 0.0
        pred = yt.mean() + slope * (x[te, 0] - xt.mean())
    else:
        x = hparam_features(zoo)
        pred = _fit_predict("gb", x, y, tr, te)
    out = scores(y[test_idx], pred)
    out.update({"pred": pred.tolist(), "true": y[test_idx].tolist(), "n_train": int(len(train_idx)),
                "n_fit": int(len(train_idx)), "n_val": 0, "n_test": int(len(test_idx)), "features": int(x.shape[1])})
    return out


CHANCE_ACC = 0.15  # "at chance": 10 classes, below 0.15 test accuracy (noise around 0.10)


def family_table(zoo: Zoo, chance: float = CHANCE_ACC) -> dict[str, dict[str, float]]:
    """Per model family (and "all"): models, mean / std of test accuracy and the share at chance. A
    zoo whose models sit at chance holds pairs no predictor can order (docs/accuracy.md)."""
    y = zoo.targets().numpy()
    fam = np.array([r.get("family", "?") for r in zoo.records])
    out = {}
    for name in sorted(set(fam.tolist())) + ["all"]:
        v = y if name == "all" else y[fam == name]
        out[name] = {"n": int(len(v)), "mean": float(v.mean()), "std": float(v.std()),
                     "share_at_chance": float((v < chance).mean())}
    return out


def diagnose(zoo: Zoo, seeds: int = 3, splits: tuple[str, ...] = SPLITS) -> dict[str, Any]:
    """Scores (mean, std over seeds of R² and tau) of the reference regressors on each split."""
    y = zoo.targets().numpy()
    feats = {"hparams+arch GB": ("gb", hparam_features(zoo)), "weight stats GB": ("gb", weight_features(zoo)),
             "weight stats ridge": ("ridge", weight_features(zoo))}
    out: dict[str, Any] = {"n": len(y), "architectures": len(zoo.graphs), "mean": float(y.mean()),
                           "std": float(y.std()), "families": family_table(zoo), "splits": {}}
    for split in splits:
        out["splits"][split] = {}
        for name, (kind, x) in feats.items():
            r2, tau = [], []
            for seed in range(seeds):
                tr, te = make_split(zoo, split, seed)
                p = _fit_predict(kind, x, y, tr, te)
                r2.append(r2_score(y[te], p))
                tau.append(kendalltau(y[te], p).statistic)
            out["splits"][split][name] = {"r2": float(np.mean(r2)), "r2_std": float(np.std(r2)),
                                          "tau": float(np.mean(tau))}
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the zoo's reference-regressor table; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m experiments.accuracy.diagnose", description=__doc__)
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--test-examples", type=int, default=450, help="examples behind each test accuracy")
    args = ap.parse_args(argv)
    zoo = open_zoo(args.zoo)
    res = diagnose(zoo, args.seeds)
    y = zoo.targets().numpy()
    res["noise_ceiling_r2"] = noise_ceiling(y, args.test_examples)
    print(f"{zoo.name}: {res['n']} models, {res['architectures']} architectures, accuracy mean {res['mean']:.3f} "
          f"std {res['std']:.3f}, binomial-noise R² ceiling {res['noise_ceiling_r2']:.3f}")
    print(f"| family | models | test accuracy mean ± std | share below {CHANCE_ACC} (chance) |\n|---|---:|---:|---:|")
    for name, f in res["families"].items():
        print(f"| {name} | {f['n']} | {f['mean']:.3f} ± {f['std']:.3f} | {100 * f['share_at_chance']:.0f}% |")
    print()
    print("| split | reference | R² | τ |\n|---|---|---:|---:|")
    for split, rows in res["splits"].items():
        for name, s in rows.items():
            print(f"| {split} | {name} | {s['r2']:.3f} ± {s['r2_std']:.3f} | {s['tau']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
