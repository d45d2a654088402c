"""CLI: python -m inner_tasks.zoo --preset varying-cnns|diverse-archs --out DIR [--n N] [--workers 2]."""

from __future__ import annotations

import argparse
import time

from .generate import DEFAULT_N, generate
from .presets import PRESETS


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m inner_tasks.zoo", description=__doc__)
    ap.add_argument("--preset", required=True, choices=PRESETS)
    ap.add_argument("--out", required=True, help="zoo folder (created; an existing one is resumed)")
    ap.add_argument("--n", type=int, default=None, help=f"number of models (default {DEFAULT_N})")
    ap.add_argument("--workers", type=int, default=2, help="worker processes, one torch thread each")
    ap.add_argument("--seed", type=int, default=0, help="zoo seed (all configurations derive from it)")
    ap.add_argument("--tiny", action="store_true", help="tiny models and short training (tests, smoke runs)")
    ap.add_argument("--shard-size", type=int, default=64)
    args = ap.parse_args(argv)
    t0 = time.time()
    rep = generate(args.out, args.preset, args.n, args.workers, args.seed, args.tiny, args.shard_size)
    print(f"zoo {args.preset} in {args.out}: {rep.total} models; trained now {len(rep.trained)}, "
          f"already stored {rep.already_done}, resumed from pending {rep.resumed_pending}, "
          f"corrupt shards regenerated {rep.corrupt_shards}; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
