"""``python -m outer_train [--preset quick] [--config FILE] [--set section.key=value ...]``.

Also ``accelerate launch [--cpu --num_processes N] -m outer_train --config FILE``. The run
directory (``out_dir/name``) gets the resolved config, TensorBoard events (``tb/``), metrics,
checkpoints and the final rule (``rule/``, `UpdateRule.save_pretrained` format). Rerunning the
same command resumes from the newest checkpoint unless ``--fresh`` is given.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from .config import ConfigError, resolve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m outer_train", description="Meta-train a GMNOptimizer update rule.")
    p.add_argument("--preset", choices=["quick", "gpu", "multi"], help="named starting config")
    p.add_argument("--config", help="JSON or TOML file layered over the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set tasks.truncation=20 (repeatable)")
    p.add_argument("--rule-arch", choices=["gmn", "mlp"], help="shortcut for --set rule.arch=...")
    p.add_argument("--estimator", choices=["tbptt", "pes"], help="shortcut for --set estimator.kind=...")
    p.add_argument("--steps", type=int, help="shortcut for --set meta.steps=...")
    p.add_argument("--name", help="run name (directory under out_dir)")
    p.add_argument("--out", help="output root (out_dir)")
    p.add_argument("--seed", type=int)
    p.add_argument("--fresh", action="store_true", help="delete an existing run directory instead of resuming it")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    for flag, key in (("rule_arch", "rule.arch"), ("estimator", "estimator.kind"), ("steps", "meta.steps"),
                      ("name", "name"), ("out", "out_dir"), ("seed", "seed")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    try:
        cfg = resolve(args.preset, args.config, overrides)
    except ConfigError as exc:
        print(f"outer_train: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        return 0
    from .train import MetaTrainingError, train

    if args.fresh and cfg.run_dir.exists():
        import os

        if int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(cfg.run_dir)
    try:
        result = train(cfg)
    except MetaTrainingError as exc:
        print(f"outer_train: {exc}", file=sys.stderr)
        return 1
    if result.get("run_dir") and int(__import__("os").environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
