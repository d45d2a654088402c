"""Export the rule of a run's newest checkpoint: ``python -m outer_train.export RUN_DIR OUT_DIR``.

A meta-training run writes ``RUN_DIR/rule`` only when it ends; this takes the rule out of the
newest checkpoint while the run goes on (or after it was interrupted), in `save_pretrained`
format, with the run's config and metrics beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from metaopt.optim import RuleConfig, UpdateRule

from . import checkpoint as ckpt

WEIGHTS = ("auto", "last", "ema", "best")


def export_rule(run_dir: Path, out: Path, weights: str = "auto") -> Path:
    """Write the newest checkpoint's rule of ``run_dir`` to ``out``; returns ``out``.

    ``weights``: "last" (the rule at that step), "ema" (the run's moving average of the rule's
    weights, kept when ``meta.ema_decay > 0``), "best" (the weights that scored best on the
    comparison tasks up to that step, kept when ``meta.keep_best``), or "auto" (best if kept, else
    the average if kept, else last).
    """
    if weights not in WEIGHTS:
        raise ValueError(f"outer_train.export: weights must be one of {WEIGHTS}, got {weights!r}.")
    d = ckpt.latest(run_dir / "checkpoints")
    if d is None:
        raise SystemExit(f"outer_train.export: {run_dir / 'checkpoints'} holds no complete checkpoint.")
    import torch

    main = torch.load(d / "main.pt", weights_only=False)
    ema, best = main.get("rule_ema"), main.get("best")
    if weights == "ema" and ema is None:
        raise SystemExit(f"outer_train.export: {d} holds no weight average (the run had meta.ema_decay = 0).")
    if weights == "best" and best is None:
        raise SystemExit(f"outer_train.export: {d} holds no best rule (the run had meta.keep_best = false).")
    if weights == "auto":
        weights = "best" if best is not None else "ema" if ema is not None else "last"
    rule = UpdateRule(RuleConfig(**main["rule_config"]))
    if weights == "best":
        rule.load_state_dict(best["state"])
    elif weights == "ema":  # AveragedModel's state: the averaged module's entries under "module.", and n_averaged
        rule.load_state_dict({k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")})
    else:
        rule.load_state_dict(main["rule"])
    rule.save_pretrained(out)
    for name in ("config.json", "metrics.jsonl"):
        if (run_dir / name).is_file():
            shutil.copy(run_dir / name, out / ("train_" + name))
    record = {"checkpoint": d.name, "outer_step": int(main["step"]), "weights": weights}
    if weights == "best":
        record.update(best_step=best["step"], best_score=best["score"])
    (out / "train_step.json").write_text(json.dumps(record) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m outer_train.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--weights", choices=WEIGHTS, default="auto",
                   help="the rule at the checkpoint's step, the run's moving average of its weights, or the "
                        "weights that scored best on the comparison tasks (auto: best, else average, else last, "
                        "by what the run keeps)")
    a = p.parse_args(argv)
    print(f"wrote {export_rule(a.run_dir, a.out, a.weights)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
