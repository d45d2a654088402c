"""``python -m outer_train [--preset quick] [--config FILE] [--set section.key=value ...]``.

Also ``accelerate launch [--cpu --num_processes N] -m outer_train --config FILE``. The run
directory (``out_dir/name``) gets the resolved config, TensorBoard events (``tb/``), metrics,
checkpoints and the final rule (``rule/``, `UpdateRule.save_pretrained` format). Rerunning the
same command resumes from the newest checkpoint unless ``--fresh`` is given; rerunning a finished
run prints its final metrics and leaves the directory untouched (raise ``--steps`` to continue it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

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


def finished_run(run_dir: Path, steps: int) -> dict[str, Any] | None:
    """The final metrics of a run that already reached ``steps`` (final.json and the rule written), else None.

    Training such a run again would do no step: it would rewrite final.json without the last
    metrics and open a second TensorBoard events file, so the entry point stops before that.
    """
    final = run_dir / "final.json"
    if not (final.is_file() and (run_dir / "rule").is_dir()):
        return None
    try:
        result = json.loads(final.read_text())
    except json.JSONDecodeError:
        return None  # a torn write: train again from the checkpoints
    return result if int(result.get("step", -1)) >= steps else None


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

    main_process = int(os.environ.get("RANK", "0")) == 0
    if args.fresh and cfg.run_dir.exists():
        if main_process:
            shutil.rmtree(cfg.run_dir)
    elif (done := finished_run(cfg.run_dir, cfg.meta.steps)) is not None:
        if main_process:
            print(f"outer_train: {cfg.run_dir} already finished at step {done['step']} (--fresh to retrain, "
                  f"--steps N to continue); its final metrics:", file=sys.stderr)
            print(json.dumps(done, indent=2))
        return 0
    try:
        result = train(cfg)
    except MetaTrainingError as exc:
        print(f"outer_train: {exc}", file=sys.stderr)
        return 1
    if result.get("run_dir") and main_process:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
