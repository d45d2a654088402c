"""The CKA study of "On the Internal Representations of Graph Metanetworks" on an INR set.

For each architecture (GMN on INR weights; MLP and CNN on the images) and each of `seeds` random
initialisations: train the classifier (`metaopt.weightspace.inr_classify`), then record its
per-layer representations and predictions on the test images (one INR per test image for the
GMN, the same images in the same order for the image networks). Then:

- within an architecture: CKA between layer l of seed i and layer a of seed j, averaged over all
  seed pairs i < j (heatmaps; curves CKA(3, a), CKA(4, a) as in the paper's Figs 2-3);
- across architectures: the same, averaged over all seed pairs (i, j) of the two architectures;
- sample analysis (Fig 4): test inputs every GMN seed classifies right while every image-network
  seed (MLP and CNN) gets them wrong, and the reverse.

Trained runs are cached under ``<out>/runs`` so a rerun only recomputes the analysis.
CKA itself and the plots are `metaopt.analysis`.

CLI: ``python -m experiments.cka --inrs DIR --out DIR`` (console script ``metaopt-cka``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from metaopt.analysis.cka import KERNELS, gram, hsic
from metaopt.analysis.plots import plot_curves, plot_heatmaps, plot_samples
from metaopt.weightspace.inr_classify import ClassifyConfig, method_inputs, train_classifier
from metaopt.weightspace.inr_data import INRSet, load_inr_set, render_images

ARCHS = {"GMN": "gmn", "MLP": "image_mlp", "CNN": "image_cnn"}
LAYER_LABELS = {
    "GMN": ["mp1", "mp2", "mp3", "mp4", "logits"],
    "MLP": ["fc1", "fc2", "fc3", "fc4", "logits"],
    "CNN": ["conv1", "conv2", "conv3", "fc", "logits"],
}


@dataclass(frozen=True)
class StudyConfig:
    """Sizes of the study (defaults fit in about 10-15 minutes on 2 shared CPU cores for digits)."""

    seeds: int = 5
    gmn_epochs: int = 20
    image_epochs: int = 30
    hidden: int = 32
    layers: int = 4
    unbiased: bool = False
    rbf_sigma_frac: float = 0.5
    # GMN training levers (the image networks keep the defaults), as in `experiments.inr_classify`.
    probes: int = 0
    input_rotate: float = 0.0
    input_scale: float = 0.0
    input_shift: float = 0.0
    dropout: float = 0.0
    weight_decay: float = ClassifyConfig.weight_decay


def classify_config(cfg: StudyConfig, method: str, seed: int) -> ClassifyConfig:
    """The training config of one run of the study (GMN levers apply to the GMN only)."""
    if method != "gmn":
        return ClassifyConfig(hidden=cfg.hidden, layers=cfg.layers, epochs=cfg.image_epochs, seed=seed)
    return ClassifyConfig(hidden=cfg.hidden, layers=cfg.layers, epochs=cfg.gmn_epochs, seed=seed, probes=cfg.probes,
                          input_rotate=cfg.input_rotate, input_scale=cfg.input_scale, input_shift=cfg.input_shift,
                          dropout=cfg.dropout, weight_decay=cfg.weight_decay)


def _labels(arch: str, n: int) -> list[str]:
    base = LAYER_LABELS.get(arch, [])
    return base if len(base) == n else [f"l{i + 1}" for i in range(n)]


@torch.no_grad()
def _representations(model: torch.nn.Module, x: Tensor, batch: int = 256) -> list[Tensor]:
    model.eval()
    chunks = [model.representations(x[i : i + batch]) for i in range(0, len(x), batch)]
    return [torch.cat([c[k] for c in chunks]).float() for k in range(len(chunks[0]))]


def train_or_load(inrs: INRSet, arch: str, seed: int, cfg: StudyConfig, runs_dir: Path) -> dict[str, Any]:
    """Train (or load from the cache) one seed of one architecture: test representations, logits, accuracy."""
    path = runs_dir / f"{arch}_seed{seed}.safetensors"
    meta_path = path.with_suffix(".json")
    method = ARCHS[arch]
    ccfg = classify_config(cfg, method, seed)
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        # a run cached with other training settings is retrained (runs cached before the config was recorded
        # carry none and are kept)
        if meta.get("train_config", asdict(ccfg)) == asdict(ccfg):
            t = load_file(str(path))
            reps = [t[f"layer{k}"] for k in range(sum(1 for key in t if key.startswith("layer")))]
            return {**meta, "reps": reps}
    model, res = train_classifier(method, inrs, ccfg, progress=True)
    x_te, y_te = method_inputs(method, inrs, test=True)
    reps = _representations(model, x_te)
    preds = reps[-1].argmax(1)
    meta = {"arch": arch, "seed": seed, "test_acc": res["test_acc"], "train_acc": res["train_acc"],
            "seconds": res["seconds"], "preds": preds.tolist(), "labels": y_te.tolist(), "train_config": asdict(ccfg)}
    runs_dir.mkdir(parents=True, exist_ok=True)
    save_file({f"layer{k}": r.contiguous() for k, r in enumerate(reps)}, str(path))
    meta_path.write_text(json.dumps(meta) + "\n")
    print(f"{arch} seed {seed}: test acc {res['test_acc']:.4f} ({res['seconds']} s)", flush=True)
    return {**meta, "reps": reps}


def _grams(reps: list[Tensor], kernel: str, sigma_frac: float) -> list[Tensor]:
    return [gram(r, kernel, sigma_frac) for r in reps]


def _pair_cka(ga: list[Tensor], gb: list[Tensor], unbiased: bool) -> Tensor:
    sa = [hsic(g, g, unbiased) for g in ga]
    sb = [hsic(g, g, unbiased) for g in gb]
    out = torch.empty(len(ga), len(gb), dtype=torch.float64)
    for i, j in itertools.product(range(len(ga)), range(len(gb))):
        out[i, j] = hsic(ga[i], gb[j], unbiased) / torch.sqrt(sa[i] * sb[j])
    return out


def cka_tables(runs: dict[str, list[dict[str, Any]]], kernel: str, cfg: StudyConfig) -> dict[str, dict[str, Tensor]]:
    """Mean and std over seed pairs of the layer x layer CKA, within (i < j) and across architectures."""
    grams = {a: [_grams(r["reps"], kernel, cfg.rbf_sigma_frac) for r in rs] for a, rs in runs.items()}
    out: dict[str, dict[str, Tensor]] = {}
    archs = list(runs)
    for a in archs:
        mats = [_pair_cka(grams[a][i], grams[a][j], cfg.unbiased) for i, j in itertools.combinations(range(len(grams[a])), 2)]
        if mats:
            st = torch.stack(mats)
            out[f"{a} vs {a}"] = {"mean": st.mean(0), "std": st.std(0) if len(mats) > 1 else torch.zeros_like(st[0]), "pairs": len(mats)}
    for a, b in itertools.combinations(archs, 2):
        mats = [_pair_cka(ga, gb, cfg.unbiased) for ga in grams[a] for gb in grams[b]]
        st = torch.stack(mats)
        out[f"{a} vs {b}"] = {"mean": st.mean(0), "std": st.std(0) if len(mats) > 1 else torch.zeros_like(st[0]), "pairs": len(mats)}
    return out


def sample_analysis(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Test inputs all GMN seeds get right and all image-network seeds get wrong (and the reverse)."""
    labels = torch.tensor(runs["GMN"][0]["labels"])
    correct = {a: torch.stack([torch.tensor(r["preds"]) == labels for r in rs]) for a, rs in runs.items()}
    gmn_all = correct["GMN"].all(0)
    img = torch.cat([correct[a] for a in runs if a != "GMN"])
    gmn_only = torch.nonzero(gmn_all & (~img).all(0)).flatten()
    img_only = torch.nonzero((~correct["GMN"]).all(0) & img.all(0)).flatten()
    return {"gmn_right_images_wrong": gmn_only.tolist(), "images_right_gmn_wrong": img_only.tolist(),
            "all_wrong": torch.nonzero((~correct["GMN"]).all(0) & (~img).all(0)).flatten().tolist(),
            "n_test": int(len(labels))}


def _markdown(summary: dict[str, Any]) -> str:
    lines = ["| architecture | test accuracy (mean +- std over seeds) |", "|---|---:|"]
    for a, s in summary["accuracy"].items():
        lines.append(f"| {a} | {100 * s['mean']:.2f} +- {100 * s['std']:.2f} % |")
    for kernel, tabs in summary["cka"].items():
        lines += ["", f"**{kernel} CKA** (mean over seed pairs; diagonal = same layer index; last column: logits)", "",
                  "| pair | per-layer diagonal | mean of matrix |", "|---|---|---:|"]
        for name, t in tabs.items():
            diag = " / ".join(f"{v:.2f}" for v in t["diagonal"])
            lines.append(f"| {name} | {diag} | {t['matrix_mean']:.3f} |")
    s = summary["samples"]
    lines += ["", f"Sample analysis on {s['n_test']} test inputs: {len(s['gmn_right_images_wrong'])} right for every GMN seed "
              f"and wrong for every MLP and CNN seed; {len(s['images_right_gmn_wrong'])} the reverse; "
              f"{len(s['all_wrong'])} wrong for all."]
    return "\n".join(lines)


def run_study(inrs: INRSet, out: Path, cfg: StudyConfig, kernels: tuple[str, ...] = KERNELS,
              command: str | None = None) -> dict[str, Any]:
    """Train/load every run, compute the CKA tables and write JSON, Markdown and PNG figures to `out`."""
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    runs = {a: [train_or_load(inrs, a, s, cfg, out / "runs") for s in range(cfg.seeds)] for a in ARCHS}
    n_layers = {a: len(rs[0]["reps"]) for a, rs in runs.items()}
    summary: dict[str, Any] = {
        "command": command, "config": asdict(cfg), "inrs": str(inrs.root),
        "accuracy": {a: {"mean": float(torch.tensor([r["test_acc"] for r in rs]).mean()),
                         "std": float(torch.tensor([r["test_acc"] for r in rs]).std()) if len(rs) > 1 else 0.0,
                         "per_seed": [r["test_acc"] for r in rs]} for a, rs in runs.items()},
        "cka": {}, "figures": {},
    }
    tag = "unbiased" if cfg.unbiased else "biased"
    for kernel in kernels:
        tabs = cka_tables(runs, kernel, cfg)
        summary["cka"][kernel] = {
            name: {"mean": t["mean"].tolist(), "std": t["std"].tolist(), "pairs": t["pairs"],
                   "diagonal": torch.diagonal(t["mean"]).tolist() if t["mean"].shape[0] == t["mean"].shape[1] else [],
                   "matrix_mean": float(t["mean"].mean())}
            for name, t in tabs.items()
        }
        panels = []
        for name, t in tabs.items():
            a, b = name.split(" vs ")
            panels.append((f"{name} ({t['pairs']} pairs)", t["mean"].float(), _labels(a, n_layers[a]), _labels(b, n_layers[b])))
        heat = out / f"cka_heatmaps_{kernel}.png"
        plot_heatmaps(panels, heat, f"{kernel} CKA ({tag} HSIC) on {inrs.meta['data']['name']} test inputs, rows: first net")
        curves = {}
        for a in ARCHS:
            t = tabs.get(f"{a} vs {a}")
            if t is None:
                continue
            rows = [l for l in (2, 3) if l < t["mean"].shape[0]]  # CKA(3, a) and CKA(4, a) as in the paper
            curves[a] = {l: (t["mean"][l].float(), t["std"][l].float()) for l in rows}
        curve_path = out / f"cka_curves_{kernel}.png"
        plot_curves(curves, {a: _labels(a, n_layers[a]) for a in ARCHS}, curve_path,
                    f"averaged {kernel} CKA across random initialisations ({cfg.seeds} seeds)")
        summary["figures"][kernel] = {"heatmaps": str(heat), "curves": str(curve_path)}
    samples = sample_analysis(runs)
    summary["samples"] = samples
    test_inrs = inrs.first_replicate(True)
    for key, title in (("gmn_right_images_wrong", "right for every GMN seed, wrong for every MLP and CNN seed"),
                       ("images_right_gmn_wrong", "right for every MLP and CNN seed, wrong for every GMN seed")):
        idx = torch.tensor(samples[key][:12], dtype=torch.long)
        inr_rows = test_inrs[idx]
        images = inrs.images[inrs.image_index[inr_rows]]
        renders = render_images(inrs, inrs.weights[inr_rows]) if len(idx) else images
        captions = []
        for i in idx.tolist():
            preds = {a: torch.mode(torch.tensor([r["preds"][i] for r in rs])).values.item() for a, rs in runs.items()}
            captions.append(f"y={runs['GMN'][0]['labels'][i]} " + " ".join(f"{a}:{p}" for a, p in preds.items()))
        path = out / f"samples_{key}.png"
        plot_samples(images, renders, captions, path, f"{title} ({len(samples[key])} of {samples['n_test']})")
        summary["figures"][key] = str(path)
    summary["seconds"] = round(time.time() - t0, 1)
    (out / "cka_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "cka_summary.md").write_text(_markdown(summary) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.cka", description="CKA study of GMN vs MLP/CNN representations")
    p.add_argument("--inrs", required=True, help="INR set folder (python -m inner_tasks.inr --data digits --out DIR)")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, default=StudyConfig.seeds)
    p.add_argument("--gmn-epochs", type=int, default=StudyConfig.gmn_epochs)
    p.add_argument("--image-epochs", type=int, default=StudyConfig.image_epochs)
    p.add_argument("--hidden", type=int, default=StudyConfig.hidden)
    p.add_argument("--layers", type=int, default=StudyConfig.layers)
    p.add_argument("--kernel", choices=[*KERNELS, "both"], default="both")
    p.add_argument("--unbiased", action="store_true", help="use the unbiased HSIC estimator (Song et al. 2012)")
    p.add_argument("--probes", type=int, default=0, help="GMN: probe features at this many fixed points")
    p.add_argument("--input-rotate", type=float, default=0.0, help="GMN: weight-space image rotations +-DEG")
    p.add_argument("--input-scale", type=float, default=0.0, help="GMN: weight-space image scalings 1 +- S")
    p.add_argument("--input-shift", type=float, default=0.0, help="GMN: weight-space image shifts +-T")
    p.add_argument("--dropout", type=float, default=0.0, help="GMN: dropout in the readout head")
    p.add_argument("--weight-decay", type=float, default=StudyConfig.weight_decay, help="GMN: AdamW weight decay")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = StudyConfig(seeds=a.seeds, gmn_epochs=a.gmn_epochs, image_epochs=a.image_epochs, hidden=a.hidden,
                      layers=a.layers, unbiased=a.unbiased, probes=a.probes, input_rotate=a.input_rotate,
                      input_scale=a.input_scale, input_shift=a.input_shift, dropout=a.dropout, weight_decay=a.weight_decay)
    kernels = KERNELS if a.kernel == "both" else (a.kernel,)
    from experiments.results import command_line

    summary = run_study(load_inr_set(a.inrs), Path(a.out), cfg, kernels, command=command_line("python -m experiments.cka", argv))
    print(_markdown(summary))
    print(f"figures and tables in {a.out} ({summary['seconds']} s)")


if __name__ == "__main__":
    main()
