"""Write the shipped default rule: ``python -m metaopt.optim.make_default [--kind gmn]``.

Until meta-training produces a rule, the default is the UNTRAINED Adam residual (alpha = 0):
with kind "gmn" it has the GMN architecture meta-training will fill in (randomly initialised,
unused while alpha = 0); kind "none" needs no network at all. Either way the optimizer is Adam.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .rules import DEFAULT_RULE_DIR, RuleConfig, UpdateRule


def write_default(directory: Path = DEFAULT_RULE_DIR, kind: str = "gmn", seed: int = 0) -> Path:
    """Save an untrained (alpha = 0) rule of ``kind`` to ``directory``; returns the directory."""
    torch.manual_seed(seed)
    return UpdateRule(RuleConfig(kind=kind, alpha=0.0)).save_pretrained(directory)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", default="gmn", choices=["gmn", "mlp", "none"])
    ap.add_argument("--out", type=Path, default=DEFAULT_RULE_DIR)
    args = ap.parse_args(argv)
    print(f"wrote untrained {args.kind} rule (alpha = 0, i.e. Adam) to {write_default(args.out, args.kind)}")


if __name__ == "__main__":
    main()
