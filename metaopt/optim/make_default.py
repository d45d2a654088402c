"""Write the shipped rules that are made, not meta-trained, here: ``python -m metaopt.optim.make_default``.

``rule="adam"`` (``pretrained/adam``; ``--kind none``) is an UNTRAINED rule with alpha = 0: the learned
residual is identically zero, so `GMNOptimizer` computes exactly Adam (AdamW with weight decay), bit for
bit. Kind "none" needs no network; "gmn"/"mlp" store a randomly initialised network that alpha = 0 leaves
unused (a starting point with the right architecture).

``--lr-free-from DIR`` writes ``pretrained/lrfree`` (the lr-free GMN rule; ``pretrained/lrfree_sf`` is
``pretrained/adam`` with ``--estimate-every 10 --per-tensor 0.7 --schedule-free``, ``pretrained/lrfree_boost1``,
what ``GMNOptimizer(model)`` ran in 0.10, that with ``--estimate-every 10 --per-tensor 0.7 --estimate-stride 3
--shared-sums --settled-growth-rate 1.02 --plateau-block 500 --plateau-boost 1``, and ``pretrained/lrfree_anchor``,
what it ran in 0.11-0.15, that with ``--plateau-anchor``, ``pretrained/lrfree_soap``, what it ran in 0.16, that
with ``--soap-switch sides=columns block=64``, and ``pretrained/lrfree_soap_1e4``, what it runs since 0.17, that with
``--d0 1e-4`` and the switch's ``window=150``; the retired defaults of 0.5-0.9, `rules.RETIRED_RULES`,
are made the same way into docs/figures/optim/retired_rules/): the rule in DIR
(its weights untouched) recording the lr-free mode it was tuned in (`RuleConfig.lr_free`), e.g.::

    python -m metaopt.optim.make_default --lr-free-from docs/figures/optim/lr_free/full_es_global/rule_best \
        --estimate-every 10 --per-tensor 0.7 \
        --record docs/figures/optim/lr_free/rule_gmn_lrfree_e10_s200/train_config.json \
        --record docs/figures/optim/lr_free/rule_gmn_lrfree_e10_s200/train_metrics.jsonl \
        --record docs/figures/optim/lr_free/full_es_global/log.json:train_full_es.json
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from .eigenbasis import SoapSwitch
from .rules import ADAM_RULE_DIR, PRETRAINED_DIR, RuleConfig, UpdateRule

LR_FREE_RULE_DIR = PRETRAINED_DIR / "lrfree"


def write_adam_rule(directory: Path = ADAM_RULE_DIR, kind: str = "none", seed: int = 0) -> Path:
    """Save an untrained (alpha = 0) rule of ``kind`` to ``directory``; returns the directory."""
    torch.manual_seed(seed)
    return UpdateRule(RuleConfig(kind=kind, alpha=0.0)).save_pretrained(directory)


def write_lr_free_rule(source: Path, options: dict[str, float], directory: Path = LR_FREE_RULE_DIR,
                       records: dict[str, Path] | None = None, soap_switch: dict | None = None) -> Path:
    """Save the rule in ``source`` with ``options`` as its lr-free mode (and ``soap_switch``, `SoapSwitch`'s fields,
    as the switch that mode runs) to ``directory``, with the source's training records (``train_*``) and
    ``records`` (name in the directory -> file: how the rule was made) beside it; returns the directory."""
    if not options:
        raise ValueError("write_lr_free_rule: give the lr-free estimate's options the rule was tuned with "
                         "(e.g. estimate_every=10, per_tensor=0.7); an empty mode is plain Prodigy.")
    rule = UpdateRule.from_pretrained(source).with_lr_free(options, soap_switch)
    out = rule.save_pretrained(directory)
    copies = {f.name: f for f in sorted(Path(source).glob("train_*"))} | dict(records or {})
    for name, record in copies.items():
        shutil.copy2(record, out / name)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", default="none", choices=["gmn", "mlp", "none"], help="the untrained rule's kind")
    ap.add_argument("--lr-free-from", type=Path, metavar="DIR", help="write the lr-free rule from the rule in DIR")
    ap.add_argument("--estimate-every", type=int, help="with --lr-free-from: its mode's estimate_every")
    ap.add_argument("--estimate-stride", type=int, help="with --lr-free-from: its mode's estimate_stride")
    ap.add_argument("--per-tensor", type=float, help="with --lr-free-from: its mode's per_tensor")
    ap.add_argument("--settled-growth-rate", type=float, help="with --lr-free-from: its mode's settled_growth_rate")
    ap.add_argument("--d0", type=float, help="with --lr-free-from: its mode's d0 (the estimate before the first step)")
    ap.add_argument("--plateau-block", type=int, help="with --lr-free-from: its mode's plateau_block")
    ap.add_argument("--plateau-boost", type=int, nargs="?", const=True, default=None, metavar="N",
                    help="with --lr-free-from and --plateau-block: its plateau decay also boosts (at most N doublings; "
                         "without N: True, core.PLATEAU_BOOST_MAX)")
    ap.add_argument("--plateau-anchor", action="store_true",
                    help="with --plateau-boost: its doublings are of the step at their grant (plateau_anchor)")
    ap.add_argument("--schedule-free", action="store_true", help="with --lr-free-from: its mode is schedule-free")
    ap.add_argument("--shared-sums", action="store_true",
                    help="with --lr-free-from: its per-tensor estimates read the network's gradient sum")
    ap.add_argument("--soap-switch", nargs="*", metavar="KEY=VALUE",
                    help="with --lr-free-from: its mode switches to SOAP's step once the estimate has settled "
                         "(SoapSwitch's defaults, with these fields changed, e.g. sides=columns block=64; every field "
                         "is recorded)")
    ap.add_argument("--record", action="append", default=[], metavar="FILE[:NAME]",
                    help="with --lr-free-from: a file on how the rule was made, copied beside it (as NAME)")
    ap.add_argument("--out", type=Path, default=None, help="directory (default: the shipped one)")
    args = ap.parse_args(argv)
    if args.lr_free_from is not None:
        options = {k: v for k, v in (("estimate_every", args.estimate_every), ("estimate_stride", args.estimate_stride),
                                     ("per_tensor", args.per_tensor), ("settled_growth_rate", args.settled_growth_rate),
                                     ("d0", args.d0), ("plateau_block", args.plateau_block),
                                     ("plateau_boost", args.plateau_boost))
                   if v is not None}
        options.update({k: True for k, on in (("schedule_free", args.schedule_free), ("plateau_anchor", args.plateau_anchor),
                                              ("shared_sums", args.shared_sums)) if on})
        records = {}
        for item in args.record:
            path, _, name = item.partition(":")
            records[name or Path(path).name] = Path(path)
        try:
            switch = None if args.soap_switch is None else SoapSwitch.from_pairs(args.soap_switch).to_dict()
        except ValueError as err:
            raise SystemExit(f"make_default: --soap-switch: {err}") from None
        out = write_lr_free_rule(args.lr_free_from, options, args.out or LR_FREE_RULE_DIR, records, switch)
        print(f"wrote {args.lr_free_from} with the lr-free mode {options}"
              f"{'' if switch is None else f' and the soap switch {switch}'} to {out}")
        return
    print(f"wrote untrained {args.kind} rule (alpha = 0, i.e. Adam) to {write_adam_rule(args.out or ADAM_RULE_DIR, args.kind)}")


if __name__ == "__main__":
    main()
