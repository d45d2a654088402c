"""Write the shipped exact-Adam rule: ``python -m metaopt.optim.make_default [--kind none]``.

``rule="adam"`` (``pretrained/adam``) is an UNTRAINED rule with alpha = 0: the learned residual is
identically zero, so `GMNOptimizer` computes exactly Adam (AdamW with weight decay), bit for bit.
Kind "none" needs no network; "gmn"/"mlp" store a randomly initialised network that alpha = 0
leaves unused (a starting point with the right architecture).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .rules import ADAM_RULE_DIR, RuleConfig, UpdateRule


def write_adam_rule(directory: Path = ADAM_RULE_DIR, kind: str = "none", seed: int = 0) -> Path:
    """Save an untrained (alpha = 0) rule of ``kind`` to ``directory``; returns the directory."""
    torch.manual_seed(seed)
    return UpdateRule(RuleConfig(kind=kind, alpha=0.0)).save_pretrained(directory)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", default="none", choices=["gmn", "mlp", "none"])
    ap.add_argument("--out", type=Path, default=ADAM_RULE_DIR)
    args = ap.parse_args(argv)
    print(f"wrote untrained {args.kind} rule (alpha = 0, i.e. Adam) to {write_adam_rule(args.out, args.kind)}")


if __name__ == "__main__":
    main()
