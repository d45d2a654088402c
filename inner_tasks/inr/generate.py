"""Build an INR set: fit one SIREN per image (K per image with different seeds), shard by shard, resumably."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from inner_tasks.models.specs import SIRENSpec, build_model

from .fit import FitConfig, fit_sirens, psnr
from .sources import load_source
from .store import done_shards, psnr_report, read_index, write_images, write_shard, write_structure


@dataclass(frozen=True)
class INRSetConfig:
    """Everything that determines an INR set's content (stored in structure.json; resume checks it)."""

    data: str = "digits"
    size: int | None = None  # image side; None = the source's default (16 for digits/shapes)
    n: int | None = None  # number of images (None = all)
    inrs_per_image: int = 1
    hidden: tuple[int, ...] = (16, 16)
    w0: float = 30.0
    steps: int = 300
    lr: float = 3e-3
    shard_size: int = 256
    seed: int = 0
    shared_init: bool = False  # every INR starts from the same init (per replicate): weights become comparable


def inr_seed(base: int, image_index: int, replicate: int, inrs_per_image: int, shared_init: bool = False) -> int:
    """Init seed of one INR: distinct for every (image, replicate), or per replicate only with shared_init."""
    if shared_init:
        return base * 1_000_003 + replicate
    return base * 1_000_003 + image_index * inrs_per_image + replicate


def generate_inr_set(cfg: INRSetConfig, out: str | Path, root: str | None = None, overwrite: bool = False,
                     progress: bool = True) -> dict[str, Any]:
    """Fit (or resume fitting) the INR set described by `cfg` into `out`; returns the PSNR report."""
    from metaopt import to_graph  # inner_tasks may import metaopt (never the reverse)

    out = Path(out)
    if overwrite and out.exists():
        shutil.rmtree(out)
    ds = load_source(cfg.data, size=cfg.size, root=root, n=cfg.n)
    images = torch.cat([ds.x_train, ds.x_test]).float()
    labels = torch.cat([ds.y_train, ds.y_test]).long()
    split = torch.cat([torch.zeros(len(ds.y_train)), torch.ones(len(ds.y_test))]).to(torch.uint8)
    channels, height, width = images.shape[1:]
    spec = SIRENSpec(in_features=2, out_features=channels, hidden=tuple(cfg.hidden), w0=cfg.w0, w0_first=cfg.w0)
    model = build_model(spec, seed=0)
    graph = to_graph(model, example_inputs=(torch.zeros(4, 2),))
    linear_names = [n[: -len(".weight")] for n in graph.param_names if n.endswith(".weight")]
    meta = {
        "config": {**asdict(cfg), "hidden": list(cfg.hidden)},
        "siren": {
            "in_features": 2, "out_features": channels, "hidden": list(cfg.hidden),
            # per linear layer: its weight/bias names and the sine frequency applied after it (None = output)
            "layers": [
                {"weight": f"{n}.weight", "bias": f"{n}.bias", "w0": (cfg.w0 if i < len(linear_names) - 1 else None)}
                for i, n in enumerate(linear_names)
            ],
        },
        "image": {"channels": channels, "height": height, "width": width},
        "coords": "x=column, y=row on linspace(-1,1); pixels row-major; value = output channels in [0,1]",
        "data": {"name": ds.name, "num_classes": ds.num_classes, "num_images": len(labels),
                 "num_train_images": len(ds.y_train), "num_test_images": len(ds.y_test)},
    }
    write_structure(out, graph, meta)
    write_images(out, images, labels, split)

    k = cfg.inrs_per_image
    jobs_img = torch.arange(len(labels)).repeat_interleave(k)  # image-major: replicates side by side
    jobs_rep = torch.arange(k).repeat(len(labels))
    n_shards = (len(jobs_img) + cfg.shard_size - 1) // cfg.shard_size
    done = done_shards(out)
    todo = [s for s in range(n_shards) if s not in done]
    fit_cfg = FitConfig(steps=cfg.steps, lr=cfg.lr)
    t0 = time.time()
    bar = tqdm(total=len(jobs_img), initial=len(jobs_img) - sum(
        min(cfg.shard_size, len(jobs_img) - s * cfg.shard_size) for s in todo), unit="inr", disable=not progress,
        desc=f"fitting SIRENs on {cfg.data}")
    for s in todo:
        sl = slice(s * cfg.shard_size, min((s + 1) * cfg.shard_size, len(jobs_img)))
        img_idx, rep = jobs_img[sl], jobs_rep[sl]
        seeds = [inr_seed(cfg.seed, int(i), int(r), k, cfg.shared_init) for i, r in zip(img_idx, rep)]
        params, mse = fit_sirens(spec, images[img_idx], seeds, fit_cfg)
        weights = torch.cat([params[n].reshape(len(seeds), -1) for n in graph.param_names], dim=1)
        p = psnr(mse)
        write_shard(out, s, weights, img_idx, torch.tensor(seeds), p, labels[img_idx], split[img_idx])
        bar.update(len(seeds))
        bar.set_postfix(psnr_median=f"{p.median():.1f}dB")
    bar.close()
    rows = read_index(out)
    report = {"num_inrs": len(rows), "seconds_this_run": round(time.time() - t0, 1), "psnr_db": psnr_report(rows)}
    (out / "psnr.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict[str, Any]) -> str:
    """The PSNR distribution as a small Markdown table (printed by the CLI)."""
    lines = ["| split | INRs | mean | std | min | p05 | median | p95 | >=30 dB | >=40 dB |", "|---|---:|" + "---:|" * 8]
    for split, s in report["psnr_db"].items():
        if s.get("count", 0) == 0:
            continue
        lines.append(
            f"| {split} | {s['count']} | {s['mean']:.2f} | {s['std']:.2f} | {s['min']:.2f} | {s['p05']:.2f} | "
            f"{s['median']:.2f} | {s['p95']:.2f} | {100 * s['frac_ge_30db']:.1f}% | {100 * s['frac_ge_40db']:.1f}% |"
        )
    return "\n".join(lines)
