"""GMNOptimizer on wrapped models (torch.compile, DistributedDataParallel) and after a dtype move (bf16).

Each test takes a few seconds at most. For each: the lazily built graph is the inner module's `to_graph` (the wrapper is unwrapped),
GMNOptimizer(model) trains, and rule="adam" follows torch.optim.Adam's trajectory.
torch.compile uses backend="aot_eager": inductor works on this CPU but its first compile of even
a small CNN takes ~35 s; the optimizer-side behaviour does not depend on the backend.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from metaopt.optim import GMNOptimizer
from metaopt.optim.lazy_graph import unwrap
from test_optim_common import ResCNN, to_graph


# GMNOptimizer(model) runs lr-free: its estimate grows from d0 = 1e-6 at steps 11, 21, ... (estimate_every=10),
# so its first ~25 steps barely move; 60 steps halve this loss several times over (2.19 -> 0.49).
DEFAULT_STEPS = 60


def _data(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x).float(), y)


def _train(model: nn.Module, opt: torch.optim.Optimizer, x, y, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _same_graph(opt: GMNOptimizer, inner: nn.Module, x: torch.Tensor) -> None:
    ref = to_graph(copy.deepcopy(inner).float(), x.float(), strict=False)
    assert opt.graph is not None
    assert opt.graph.num_params == ref.num_params
    assert opt.graph.num_nodes == ref.num_nodes  # not the free-edge fallback of an unreadable wrapper
    assert torch.equal(opt.graph.edge_index, ref.edge_index)
    assert [tuple(s) for s in opt.graph.param_shapes] == [tuple(s) for s in ref.param_shapes]


def _close(a: nn.Module, b: nn.Module, **tol) -> None:
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, **tol, msg=lambda m, n=n: f"{n}: {m}")


# ---- torch.compile -------------------------------------------------------------------------
def _compiled(m: nn.Module) -> nn.Module:
    torch._dynamo.reset()
    return torch.compile(m, backend="aot_eager")


@pytest.mark.parametrize("rule", [None, "lrfree", "lrfree_sf"])  # GMNOptimizer(model), the GMN rule reading the graph, schedule-free
def test_compiled_module_trains_with_inner_graph(rule):
    torch.manual_seed(0)
    m = ResCNN()
    c = _compiled(m)
    assert unwrap(c) is m
    x, y = _data()
    opt = GMNOptimizer(c, rule=rule)
    assert opt.graph is None  # lazily built, from the first real call
    losses = _train(c, opt, x, y, DEFAULT_STEPS)
    _same_graph(opt, m, x)
    assert opt.rule_refreshes == 0 if rule != "lrfree" else opt.rule_refreshes > 0
    assert losses[-1] < 0.5 * losses[0]


def test_compiled_module_adam_rule_matches_adam():
    torch.manual_seed(0)
    a = ResCNN()
    b = copy.deepcopy(a)
    x, y = _data()
    c = _compiled(a)
    opt = GMNOptimizer(c, rule="adam", lr=1e-2)
    ref = torch.optim.Adam(b.parameters(), lr=1e-2, foreach=True)
    _train(c, opt, x, y, 10)
    _train(b, ref, x, y, 10)
    _close(a, b, rtol=1e-4, atol=1e-5)  # compiled vs eager forward/backward: float rounding only


@pytest.mark.slow
def test_compiled_module_inductor_trains_with_inner_graph():
    torch.manual_seed(0)
    m = ResCNN()
    torch._dynamo.reset()
    c = torch.compile(m)  # inductor: needs a C++ compiler; ~35 s cold, ~3 s with its cache warm
    x, y = _data()
    opt = GMNOptimizer(c)
    losses = _train(c, opt, x, y, DEFAULT_STEPS)
    _same_graph(opt, m, x)
    assert losses[-1] < 0.6 * losses[0]


# ---- DistributedDataParallel (one process, gloo) ---------------------------------------------
@pytest.fixture
def gloo(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'pg'}")
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_trains_with_inner_graph(gloo):
    torch.manual_seed(0)
    m = ResCNN()
    d = nn.parallel.DistributedDataParallel(m)
    assert unwrap(d) is m
    x, y = _data()
    opt = GMNOptimizer(d)
    assert opt.graph is None
    losses = _train(d, opt, x, y, DEFAULT_STEPS)
    _same_graph(opt, m, x)
    assert losses[-1] < 0.5 * losses[0]


def test_ddp_adam_rule_matches_adam(gloo):
    torch.manual_seed(0)
    a = ResCNN()
    b = copy.deepcopy(a)
    x, y = _data()
    d = nn.parallel.DistributedDataParallel(a)
    opt = GMNOptimizer(d, rule="adam", lr=1e-2)
    ref = torch.optim.Adam(b.parameters(), lr=1e-2, foreach=True)
    _train(d, opt, x, y, 10)
    _train(b, ref, x, y, 10)
    _close(a, b, rtol=1e-5, atol=1e-6)


def test_wrapper_with_foreign_parameter_order_is_rejected():
    class FakeDP(nn.DataParallel):
        def __init__(self, m):
            nn.Module.__init__(self)
            self.module = m
            self.extra = nn.Parameter(torch.zeros(1))  # registered after: not the inner's order

    with pytest.raises(ValueError, match="not those of the module it wraps"):
        GMNOptimizer(FakeDP(ResCNN()))


# ---- dtype move: model.to(bfloat16) after the optimizer was built ---------------------------
def test_bf16_model_trains_with_float32_state():
    torch.manual_seed(0)
    m = ResCNN()
    x, y = _data()
    opt = GMNOptimizer(m, lr=1e-3)  # the fixed-lr rule: lr-free on bf16 parameters warns (below)
    m.to(torch.bfloat16)
    losses = _train(m, opt, x.bfloat16(), y, 30)
    _same_graph(opt, m, x)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    assert all(b.dtype == torch.float32 for k, b in opt._buffers.items() if k != "step")
    assert opt.state[next(m.parameters())]["exp_avg"].dtype == torch.float32
    assert opt.rule_refreshes > 0
    assert losses[-1] < 0.5 * losses[0]


def test_lr_free_on_bf16_parameters_warns_once():
    """Lr-free, the estimate grows only as the parameters move, and steps of d0 = 1e-6 are lost in bf16's
    rounding: GMNOptimizer(model) on a bf16 model says so (once) and names the ways out."""
    torch.manual_seed(0)
    m = ResCNN()
    x, y = _data()
    opt = GMNOptimizer(m)
    m.to(torch.bfloat16)
    with pytest.warns(UserWarning, match="lr-free on bf16/fp16 parameters") as record:
        _train(m, opt, x.bfloat16(), y, 3)
    assert sum("bf16/fp16" in str(w.message) for w in record) == 1


def test_bf16_adam_rule_matches_float32_arithmetic_and_adam():
    torch.manual_seed(0)
    a = ResCNN()
    b = copy.deepcopy(a).to(torch.bfloat16)
    c = copy.deepcopy(b)
    x, y = _data()
    opt = GMNOptimizer(a, rule="adam", lr=1e-2, weight_decay=0.01)
    a.to(torch.bfloat16)
    xb = x.bfloat16()
    # Exact: torch AdamW on float32 master copies fed the bf16 model's gradients, rounded into
    # the bf16 parameters after each step, is the same float32 arithmetic with one rounding.
    master = [p.detach().float().clone().requires_grad_() for p in a.parameters()]
    ref32 = torch.optim.AdamW(master, lr=1e-2, weight_decay=0.01, foreach=True)
    for _ in range(10):
        opt.zero_grad()
        _loss(a, xb, y).backward()
        opt.step()
        c.zero_grad()
        _loss(c, xb, y).backward()
        for p, q in zip(master, c.parameters()):
            p.grad = q.grad.float()
            with torch.no_grad():
                p.copy_(q.float())  # the bf16 value, as GMNOptimizer's float32 copy
        ref32.step()
        with torch.no_grad():
            for p, q in zip(master, c.parameters()):
                q.copy_(p)
    _close(a, c, rtol=0, atol=0)
    # Against torch AdamW run directly on the bf16 model, whose state is bf16: the trajectories
    # agree up to bf16 rounding of the moments. Each of the 10 steps moves a weight by at most
    # ~lr = 1e-2; a few elements differ by up to a few steps' worth, the bulk by far less.
    start = [p.detach().float().clone() for p in b.parameters()]
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.01, foreach=True)
    _train(b, ref, xb, y, 10)
    _close(a, b, rtol=0, atol=6e-2)
    diff = torch.cat([(p.float() - q.float()).abs().flatten() for p, q in zip(a.parameters(), b.parameters())])
    moved = torch.cat([(q.float() - s).abs().flatten() for q, s in zip(b.parameters(), start)])
    print(f"mean |GMN - AdamW(bf16)| = {diff.mean():.2e}, mean movement = {moved.mean():.2e}")
    assert diff.mean() < 0.1 * moved.mean()


def test_accelerate_prepared_model_bf16_autocast_trains_with_inner_graph():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # Accelerate's state is process-global
    try:
        _accelerate_bf16(Accelerator(cpu=True, mixed_precision="bf16"))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def _accelerate_bf16(acc) -> None:
    torch.manual_seed(0)
    m = ResCNN()
    x, y = _data()
    p = acc.prepare(m)  # one process: the module itself, forward wrapped in bf16 autocast
    opt = acc.prepare(GMNOptimizer(p))
    losses = []
    for _ in range(DEFAULT_STEPS):
        opt.zero_grad()
        loss = _loss(p, x, y)
        acc.backward(loss)
        opt.step()
        losses.append(loss.item())
    _same_graph(opt.optimizer, unwrap(p), x)
    assert losses[-1] < 0.5 * losses[0]


def test_a_model_waiting_for_its_first_forward_can_be_deep_copied_and_pickled() -> None:
    """EMA copies and torch.save(model) happen before the first batch too; the copy's hook is inert."""
    import io

    torch.manual_seed(0)
    model = ResCNN()  # no input size to infer: the graph waits for the first batch
    opt = GMNOptimizer(model, rule="adam")
    assert opt.graph is None
    ema = copy.deepcopy(model)
    torch.save(model, io.BytesIO())
    ema(torch.randn(3, 1, 8, 8))  # the copy's forward does not build this optimizer's graph
    assert opt.graph is None
    model(torch.randn(3, 1, 8, 8)).sum().backward()
    opt.step()
    assert opt.graph is not None and opt.graph.num_params == sum(p.numel() for p in model.parameters())


def test_fsdp_models_are_refused_with_a_clear_error(gloo):
    """FSDP (flattened FlatParameter) and FSDP2 (sharded DTensor) parameters are not the model's own
    tensors: a clear TypeError naming DDP, not a free-edge graph or a foreach error on DTensors."""
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    m1 = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.warns(UserWarning):  # world size 1: FSDP switches to NO_SHARD
        wrapped = FullyShardedDataParallel(m1, device_id=torch.device("cpu"))
    with pytest.raises(TypeError, match="DistributedDataParallel"):
        GMNOptimizer(wrapped)
    m2 = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    fully_shard(m2)
    with pytest.raises(TypeError, match="DTensor"):
        GMNOptimizer(m2)
