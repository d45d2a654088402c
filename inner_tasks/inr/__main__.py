"""CLI: `python -m inner_tasks.inr --data digits --out DIR` fits one SIREN per image into an INR set."""

from __future__ import annotations

import argparse

import torch

from .generate import INRSetConfig, format_report, generate_inr_set
from .sources import SOURCES


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m inner_tasks.inr", description=__doc__)
    p.add_argument("--data", required=True, choices=sorted(SOURCES))
    p.add_argument("--root", default=None, help="folder of the *-dir data sets (default $METAOPT_DATA/<name>)")
    p.add_argument("--out", required=True, help="INR set folder (resumed if it exists with the same settings)")
    p.add_argument("--n", type=int, default=None, help="number of images (default: all)")
    p.add_argument("--inrs-per-image", type=int, default=1, help="INRs per image with different init seeds")
    p.add_argument("--size", type=int, default=None, help="image side (default: 16 digits/shapes, 28 MNIST, 32 CIFAR)")
    p.add_argument("--hidden", type=int, nargs="+", default=[16, 16], help="SIREN hidden widths")
    p.add_argument("--w0", type=float, default=30.0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--shard-size", type=int, default=256, help="INRs per shard (= per vmapped fitting batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shared-init", action="store_true", help="start every INR from one init (per replicate)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    p.add_argument("--overwrite", action="store_true", help="delete --out first instead of resuming")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = INRSetConfig(data=a.data, size=a.size, n=a.n, inrs_per_image=a.inrs_per_image, hidden=tuple(a.hidden),
                       w0=a.w0, steps=a.steps, lr=a.lr, shard_size=a.shard_size, seed=a.seed,
                       shared_init=a.shared_init)
    report = generate_inr_set(cfg, a.out, root=a.root, overwrite=a.overwrite)
    print(f"{report['num_inrs']} INRs in {a.out} ({report['seconds_this_run']} s this run); PSNR (dB):")
    print(format_report(report))


if __name__ == "__main__":
    main()
