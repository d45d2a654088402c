"""What the plateau decay reads and does: the gradient's squared norm along a run, and where the step is cut
or boosted.

    python -m benchmarks.trace_plateau --seed 0 --steps 5000 --out docs/figures/optim/boost_0.9/trace

Trains held-out tasks (all nine by default) with ``rule="lrfree_anchor"`` (``GMNOptimizer(model)`` of 0.11-0.15,
the lr-free step without 0.16's soap switch, which runs on with the same decay:
the plateau decay in blocks of 500 steps with its boost, one doubling of the step at its grant; 0.10's
``"lrfree_boost1"`` doubled whatever the estimate grew to, 0.9's default doubled twice), with 0.8's default (the decay without the boost) and with 0.7's (no decay), both
run by their options (`rules.RETIRED_RULES`, the rule names retired in 0.12), on the task's init and batches
for that seed (the evaluation's; its loop differs in details, so final losses can differ from
`outer_train.evaluate`'s in the later digits), recording on every step the training loss and the gradient's
squared norm, the steps at which the decay halved the step (`GMNOptimizer.plateau_cuts`) and those at which the
boost doubled it (`GMNOptimizer.plateau_boosts`; a negative step: a spike took the boosts back there).
Writes ``trace_s<seed>.json`` (the losses and norms every 10th step), ``trace_s<seed>.md`` (per task: the
norm's geometric mean per block under 0.7's default, the cuts and boosts, the final losses) and
``trace_s<seed>.png`` (per task the norm and the loss over steps, cuts and boosts marked) to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from benchmarks.common import held_out_model
from inner_tasks.tasks.collections import held_out_suite
from metaopt.optim import GMNOptimizer
from metaopt.optim.rules import RETIRED_RULES

BLOCK = 500  # the shipped mode's plateau_block, which the table's block means use
# GMNOptimizer(model, **kwargs): the default of 0.11-0.15, 0.8's and 0.7's
VARIANTS = {"boost": {"rule": "lrfree_anchor"}, **{name: RETIRED_RULES[f"lrfree_{name}"].kwargs() for name in ("plateau", "settled")}}
EVERY = 10  # what the JSON keeps


def trace(task_name: str, seed: int, steps: int, kwargs: dict[str, Any], variant: str = "boost") -> dict[str, Any]:
    """Per step the loss and the squared gradient norm of one run, the steps at which a cut came and those at
    which a boost came (negative: a spike took the boosts back)."""
    task, model = held_out_model(task_name, seed, steps, "trace_plateau")
    opt = GMNOptimizer(model, example_inputs=(task.example_inputs(),), **kwargs)
    losses, norms, cuts, boosts = [], [], [], []
    batches = list(islice(task.train_batches(seed), steps))
    for t, batch in enumerate(tqdm(batches, desc=f"{task_name} s{seed} {variant}", leave=False), 1):
        loss = task.loss(model(batch[0]), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norms.append(float(sum(n**2 for n in torch._foreach_norm(grads, dtype=torch.float32))))
        before, boosted = opt.plateau_cuts, opt.plateau_boosts
        opt.step()
        losses.append(float(loss))
        if opt.plateau_cuts > before:
            cuts.append(t)
        if opt.plateau_boosts != boosted:
            boosts.append(t if opt.plateau_boosts > boosted else -t)
    return {"losses": losses, "norms": norms, "cuts": cuts, "boosts": boosts}


def block_means(norms: list[float], block: int = BLOCK) -> list[float]:
    """The geometric mean of the squared norm over each block (every 10th step, as the decay samples)."""
    out = []
    for start in range(0, len(norms) - block + 1, block):
        sample = [v for v in norms[start:start + block:10] if v > 0 and math.isfinite(v)]
        out.append(math.exp(sum(math.log(v) for v in sample) / len(sample)) if sample else float("nan"))
    return out


def final(losses: list[float], window: int = 50) -> float:
    return sum(losses[-window:]) / len(losses[-window:])


def to_markdown(result: dict[str, Any]) -> str:
    lines = [f"Plateau decay traced on held-out seed {result['seed']}, {result['steps']} steps "
             f"(`{result['command']}`).", "",
             f"Per task: the gradient's squared norm under 0.7's default (`RETIRED_RULES[\"lrfree_settled\"]`), geometric "
             f"mean per block of {BLOCK} steps (every 10th step), first / largest / last block; the steps at which "
             "0.8's default (`RETIRED_RULES[\"lrfree_plateau\"]`) halved its step, and those at which `rule=\"lrfree_anchor\"` "
             "halved or doubled it (-t: a spike took the doublings back at step t); the final training loss "
             "(mean of the last 50 steps) of each.", "",
             "| task | norm^2: first / peak / last block | blocks where it rose | cuts (0.8) | cuts / boosts (default) "
             "| final loss 0.7 | final loss 0.8 | final loss (default) |",
             "|---|---|---:|---|---|---:|---:|---:|"]
    for task, runs in result["tasks"].items():
        means = block_means(runs["settled"]["norms"])
        rose = sum(b >= a for a, b in zip(means, means[1:]))
        lines.append(f"| {task} | {means[0]:.2g} / {max(means):.2g} / {means[-1]:.2g} | {rose} of {len(means) - 1} | "
                     f"{', '.join(map(str, runs['plateau']['cuts'])) or 'none'} | "
                     f"{', '.join(map(str, runs['boost']['cuts'])) or 'none'} / "
                     f"{', '.join(map(str, runs['boost']['boosts'])) or 'none'} | {final(runs['settled']['losses']):.4g} | "
                     f"{final(runs['plateau']['losses']):.4g} | {final(runs['boost']['losses']):.4g} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["tasks"])
    cols = 3
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, task in zip(axes.flat, names):
        runs = result["tasks"][task]
        lines = (("settled", "tab:blue", "0.7 (no decay)"), ("plateau", "tab:red", "0.8"), ("boost", "tab:green", "default"))
        for key, colour, label in lines:
            steps = range(1, len(runs[key]["norms"]) + 1)
            ax.plot(list(steps)[::EVERY], runs[key]["norms"][::EVERY], color=colour, lw=0.6, alpha=0.7,
                    label=f"|g|^2, {label}")
        twin = ax.twinx()
        for key, colour, _ in lines:
            loss = runs[key]["losses"]
            smooth = [sum(loss[max(0, i - 49):i + 1]) / len(loss[max(0, i - 49):i + 1]) for i in range(0, len(loss), EVERY)]
            twin.plot(range(1, len(loss) + 1, EVERY), smooth, color=colour, lw=1.4, ls="--")
        for t in runs["plateau"]["cuts"]:
            ax.axvline(t, color="tab:red", lw=0.8, ls=":")
        for t in runs["boost"]["boosts"]:
            ax.axvline(abs(t), color="tab:green", lw=0.8, ls=":" if t > 0 else "-.")
        ax.set_yscale("log")
        twin.set_yscale("log")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    axes.flat[0].legend(fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("gradient squared norm (solid, left axis) and training loss (dashed, right axis; mean of 50 steps); "
                 "dotted: 0.8's cuts (red), the default's boosts (green; dash-dot: taken back)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="*", default=None, help="held-out task names (default: all nine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    names = a.tasks or [s.name.split("/")[0] for s in held_out_suite((a.seed,), a.steps)]
    result: dict[str, Any] = {"seed": a.seed, "steps": a.steps, "block": BLOCK, "tasks": {},
                              "command": " ".join(["python -m benchmarks.trace_plateau", *(argv or sys.argv[1:])])}
    for task in tqdm(names, desc="tasks"):
        result["tasks"][task] = {key: trace(task, a.seed, a.steps, kw, key) for key, kw in VARIANTS.items()}
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"trace_s{a.seed}"
    kept = {**result, "tasks": {t: {k: {"losses": r["losses"][::EVERY], "norms": r["norms"][::EVERY], "cuts": r["cuts"],
                                         "boosts": r["boosts"]}
                                    for k, r in runs.items()} for t, runs in result["tasks"].items()}}
    stem.with_suffix(".json").write_text(json.dumps(kept) + "\n")
    stem.with_suffix(".md").write_text(to_markdown(result))
    plot(result, stem.with_suffix(".png"))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
