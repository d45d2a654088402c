"""GMNOptimizer under DistributedDataParallel with two real processes (gloo on CPU).

DDP all-reduces the gradients, so both ranks hand the rule the same inputs: their parameters and
optimizer state (the rule's lr scale included) must stay bit-identical, and equal to one process
training on the whole batch (the mean of two half-batch means is the whole batch's mean).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from metaopt.optim import GMNOptimizer

STEPS, LR = 6, 3e-3


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 12, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(STEPS)]


def _state(model: nn.Module, opt: GMNOptimizer) -> dict[str, torch.Tensor]:
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return {"params": flat, **{k: v.clone() for k, v in opt._buffers.items()}}


def _rank(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    # A timeout turns a stuck collective into an error instead of a hung test run.
    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=init, timeout=timedelta(seconds=120))
    try:
        model = _model()
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = GMNOptimizer(ddp, lr=LR)
        for x, y in _batches():
            half = slice(rank * 4, rank * 4 + 4)
            opt.zero_grad()
            nn.functional.cross_entropy(ddp(x[half]), y[half]).backward()
            opt.step()
        torch.save({**_state(model, opt), "refreshes": opt.rule_refreshes}, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()  # leave together: a rank tearing gloo down while its peer is mid-collective can hang it
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_ranks_stay_identical_and_match_one_process(tmp_path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_rank, args=(2, f"file://{tmp_path / 'pg'}", str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["refreshes"] == r1["refreshes"] == 1  # the rule ran (step 1), on both ranks
    assert (r0["lr_scale"] - 1).abs().max() > 1e-3  # the shipped rule is not Adam
    for key in ("params", "exp_avg", "exp_avg_sq", "lr_scale", "step"):
        assert torch.equal(r0[key], r1[key]), key

    model = _model()
    opt = GMNOptimizer(model, lr=LR)
    for x, y in _batches():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    one = _state(model, opt)
    for key in ("params", "exp_avg", "exp_avg_sq", "lr_scale"):
        torch.testing.assert_close(r0[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
