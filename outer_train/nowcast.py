"""Train a parameter nowcaster (metaopt.optim.nowcast) on stored Adam trajectories: supervised, no meta-gradients.

``python -m outer_train.nowcast --out runs/nowcast [--tasks 48] [--steps 1000] [--kind gmn|mlp]``

1. collect: ``--tasks`` tasks drawn from a meta-training distribution (``--collection``: meta_train or
   meta_train_large, never the held-out suite; tasks over ``--max-params`` are redrawn), each trained
   with Adam (or ``GMNOptimizer(rule=--rule)``: the trajectories the nowcaster will be used on) at an
   lr drawn log-uniformly from ``--lr-range`` for ``--steps`` steps; the parameters every
   ``interval`` steps go to ``trajectories/task_NNNN.safetensors`` (resumable: existing files are
   kept; a diverged run is recorded and skipped; the directory records its collection settings
   and refuses to be extended with others).
2. fit: examples are (task, newest stored state j, horizon k in 1..max_horizon): inputs from the
   ``context`` states ending at j, target the displacement to state j + k in the same per-tensor
   unit (`nowcast_inputs`); Huber loss, mean over each example's moving parameters. The last
   ``--val-fraction`` of the tasks are validation: the kept network is the one with the lowest
   validation loss, reported beside predicting no move and linear extrapolation of the context.
3. ``nowcaster/`` (``Nowcaster.save_pretrained``, with the command and figures) and ``fit.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from inner_tasks import TaskSpec, build_task
from inner_tasks.tasks.collections import COLLECTIONS
from metaopt.optim.nowcast import TARGET_CLIP, NowcastConfig, Nowcaster, nowcast_inputs, tensor_ids

from .tasks import first_within

SEED_OFFSET = 50_000  # task seeds far from the ones meta-training runs sample first
TRAJECTORY_COLLECTIONS = ("meta_train", "meta_train_large")  # meta-training distributions, never a fixed suite


def lr_for(k: int, lo: float, hi: float) -> float:
    return float(math.exp(random.Random(f"nowcast-lr:{k}").uniform(math.log(lo), math.log(hi))))


def task_spec(k: int, collection: str = "meta_train", max_params: int | None = None) -> TaskSpec:
    """Task k of ``collection``; a draw over ``max_params`` parameters is replaced by the next seed's."""
    dist = COLLECTIONS[collection]()
    spec = first_within((dist.sample(SEED_OFFSET + k + 1_000_003 * attempt) for attempt in range(100)), max_params)
    if spec is None:
        raise ValueError(f"no task of {collection!r} has <= {max_params} parameters in 100 draws; raise --max-params.")
    return spec


def collect_one(spec: TaskSpec, steps: int, interval: int, lr: float, rule: str | None = None) -> Tensor | None:
    """Adam (or GMNOptimizer with ``rule``) on ``spec``: [steps // interval + 1, E] states, None if it diverged."""
    task = build_task(spec)
    model = task.model
    with torch.no_grad():
        for p, v in zip(model.parameters(), task.init_params(spec.seed).values()):
            p.copy_(v)
    model.train()
    if rule is None:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        from metaopt.optim import GMNOptimizer

        opt = GMNOptimizer(model, rule=rule, lr=lr, graph=task.graph, lr_free=False)
    flat = lambda: torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()  # noqa: E731
    states = [flat()]
    for i, batch in enumerate(islice(task.train_batches(spec.seed), steps)):
        loss = task.loss(model(batch[0]), batch)
        if not torch.isfinite(loss):
            return None
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (i + 1) % interval == 0:
            states.append(flat())
    out = torch.stack(states)
    return out if torch.isfinite(out).all() else None


def collect(out: Path, n: int, steps: int, interval: int, lr_range: tuple[float, float], collection: str = "meta_train",
            max_params: int | None = None, rule: str | None = None) -> list[Path]:
    """Trajectories of tasks 0..n-1 under ``out`` (existing files kept, if collected with the same settings)."""
    out.mkdir(parents=True, exist_ok=True)
    settings = {"collection": collection, "max_params": max_params, "rule": rule, "steps": steps, "interval": interval,
                "lr_range": list(lr_range)}
    record = out / "collection.json"
    if record.exists():
        before = json.loads(record.read_text())
        if before != settings:
            raise SystemExit(f"outer_train.nowcast: {out} holds trajectories collected with {before}, not {settings}; "
                             "use another --out.")
    elif any(out.iterdir()) and (collection, max_params, rule) != ("meta_train", None, None):
        # directories from before the record held Adam trajectories of meta_train only
        raise SystemExit(f"outer_train.nowcast: {out} holds meta_train Adam trajectories (no collection.json); "
                         "use another --out.")
    else:
        record.write_text(json.dumps(settings))
    files = []
    for k in tqdm(range(n), desc="trajectories"):
        path = out / f"task_{k:04d}.safetensors"
        skip = out / f"task_{k:04d}.diverged"
        if not path.exists() and not skip.exists():
            lr = lr_for(k, *lr_range)
            spec = task_spec(k, collection, max_params)
            states = collect_one(spec, steps, interval, lr, rule)
            if states is None:
                skip.write_text(spec.to_json())
                continue
            save_file({"states": states}, str(path), metadata={"spec": spec.to_json(), "lr": str(lr),
                                                               "interval": str(interval)})
        if path.exists():
            files.append(path)
    return files


class Trajectory:
    """One stored trajectory with what fitting needs: the prepared graph and tensor ids."""

    def __init__(self, states: Tensor, graph: Any, numels: list[int], name: str = "") -> None:
        self.states, self.graph, self.name = states, graph, name
        self.num_tensors, self.tensor_id = len(numels), tensor_ids(numels)

    @classmethod
    def from_file(cls, path: Path, nowcaster: Nowcaster) -> "Trajectory":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            spec = TaskSpec.from_json(f.metadata()["spec"])
        task = build_task(spec)
        return cls(load_file(str(path))["states"], nowcaster.prepare(task.graph, "cpu"),
                   [p.numel() for p in task.model.parameters()], spec.family)

    def example(self, j: int, k: int, context: int) -> tuple[Tensor, Tensor, Tensor]:
        """(inputs [E, C], target [E] in context units, mask of moving parameters) for newest state j, horizon k."""
        x, unit = nowcast_inputs(self.states[j - context + 1 : j + 1], self.tensor_id, self.num_tensors, k)
        moving = unit > 0
        target = torch.where(moving, (self.states[j + k] - self.states[j]) / unit.clamp_min(1e-30), torch.zeros_like(unit))
        return x, target.clamp(-TARGET_CLIP, TARGET_CLIP), moving


def draw(trajs: list[Trajectory], cfg: NowcastConfig, rng: random.Random) -> tuple[Trajectory, int, int]:
    t = rng.choice(trajs)
    k = rng.randint(1, cfg.max_horizon)
    j = rng.randint(cfg.context - 1, len(t.states) - 1 - k)
    return t, j, k


def example_loss(nc: Nowcaster, t: Trajectory, j: int, k: int) -> dict[str, Tensor]:
    """Huber loss of the network, of predicting no move, and of linear extrapolation, on one example."""
    c = nc.config.context
    x, target, moving = t.example(j, k, c)
    m = moving.float()
    denom = m.sum().clamp_min(1)
    huber = lambda pred: (torch.nn.functional.huber_loss(pred, target, reduction="none") * m).sum() / denom  # noqa: E731
    linear = -x[:, 0] * k / (c - 1)  # the context's mean velocity, continued
    return {"net": huber(nc.displacement(t.graph, x)), "zero": huber(torch.zeros_like(target)),
            "linear": huber(linear.clamp(-TARGET_CLIP, TARGET_CLIP))}


def fit(trajs: list[Trajectory], val: list[Trajectory], cfg: NowcastConfig, steps: int, batch: int, lr: float,
        seed: int, eval_every: int = 250) -> tuple[Nowcaster, dict[str, Any]]:
    torch.manual_seed(seed)
    nc = Nowcaster(cfg)
    opt = torch.optim.Adam(nc.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rng, vrng = random.Random(seed), random.Random(seed + 1)
    val_set = [draw(val, cfg, vrng) for _ in range(64)]

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            rows = [example_loss(nc, *e) for e in val_set]
        return {key: float(np.mean([r[key].item() for r in rows])) for key in ("net", "zero", "linear")}

    best, best_state, history = math.inf, None, []
    bar = tqdm(range(1, steps + 1), desc=f"fit {cfg.kind}")
    for step in bar:
        loss = torch.stack([example_loss(nc, *draw(trajs, cfg, rng))["net"] for _ in range(batch)]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(nc.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            v = evaluate()
            history.append({"step": step, "train": loss.item(), **{f"val_{k}": x for k, x in v.items()}})
            bar.set_postfix(val=f"{v['net']:.3f}", zero=f"{v['zero']:.3f}", linear=f"{v['linear']:.3f}")
            if v["net"] < best:
                best, best_state = v["net"], {k: x.clone() for k, x in nc.state_dict().items()}
    assert best_state is not None
    nc.load_state_dict(best_state)
    return nc.eval(), {"best_val": best, "history": history}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/nowcast"))
    p.add_argument("--tasks", type=int, default=48)
    p.add_argument("--steps", type=int, default=1000, help="Adam steps per stored trajectory")
    p.add_argument("--lr-range", type=float, nargs=2, default=(1e-3, 3e-2))
    p.add_argument("--collection", choices=TRAJECTORY_COLLECTIONS, default="meta_train",
                   help="where the trajectories' tasks come from (never the held-out suite)")
    p.add_argument("--max-params", type=int, default=None, help="redraw tasks with more parameters than this")
    p.add_argument("--rule", default=None,
                   help="collect GMNOptimizer(rule=RULE) trajectories instead of Adam's (a shipped name or a directory)")
    p.add_argument("--kind", choices=("gmn", "mlp"), default="gmn")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--context", type=int, default=5)
    p.add_argument("--interval", type=int, default=20)
    p.add_argument("--horizon", type=int, default=5, help="intervals ahead a jump goes (GMNOptimizer)")
    p.add_argument("--max-horizon", type=int, default=10, help="horizons 1..this are trained on")
    p.add_argument("--fit-steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=4, help="examples per fitting step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--eval-every", type=int, default=250, help="fitting steps between validation checks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.steps < a.interval * (a.context - 1 + a.max_horizon):
        p.error(f"--steps must cover a context and the longest horizon: >= interval x (context - 1 + max_horizon) = "
                f"{a.interval * (a.context - 1 + a.max_horizon)}")
    t0 = time.time()
    cfg = NowcastConfig(kind=a.kind, hidden=a.hidden, context=a.context, interval=a.interval, horizon=a.horizon,
                        max_horizon=a.max_horizon)
    files = collect(a.out / "trajectories", a.tasks, a.steps, a.interval, tuple(a.lr_range), a.collection,
                    a.max_params, a.rule)
    collected = time.time() - t0
    if len(files) < 2:
        raise SystemExit(f"outer_train.nowcast: only {len(files)} trajectories did not diverge; need at least 2.")
    probe = Nowcaster(cfg)
    trajs = [Trajectory.from_file(f, probe) for f in files]
    n_val = max(1, round(a.val_fraction * len(trajs)))
    nc, report = fit(trajs[:-n_val], trajs[-n_val:], cfg, a.fit_steps, a.batch, a.lr, a.seed, a.eval_every)
    v = report["history"][-1]
    if not report["best_val"] < min(v["val_zero"], v["val_linear"]):
        print(f"outer_train.nowcast: the network ({report['best_val']:.4f}) is not better than predicting no move "
              f"({v['val_zero']:.4f}) or linear extrapolation ({v['val_linear']:.4f}) on validation; not saved.",
              file=sys.stderr)
        return 1
    command = "python -m outer_train.nowcast " + shlex.join(sys.argv[1:] if argv is None else argv)
    info = {"command": command, "trajectories": len(files), "train_tasks": len(trajs) - n_val, "val_tasks": n_val,
            "steps_per_trajectory": a.steps, "collect_seconds": round(collected), "total_seconds": round(time.time() - t0),
            "val_loss": report["best_val"], "val_loss_zero": v["val_zero"], "val_loss_linear": v["val_linear"]}
    nc.save_pretrained(a.out / "nowcaster", **info)
    (a.out / "fit.json").write_text(json.dumps({**info, "config": cfg.__dict__, **report}, indent=1))
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
