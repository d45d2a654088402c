"""Schedule-free mode (GMNOptimizer(schedule_free=True); Defazio et al., NeurIPS 2024): the steps move a point
z with no momentum, the parameters hold y = (1 - beta1) z + beta1 x with x the average of the z's weighted by
the peak step size squared. At a fixed lr it is SF-AdamW step for step (a reference written out with x, y and
z below); lr-free, Prodigy's estimate reads x_0 - z (Defazio's SF-Prodigy; a reference below); the optimizer
and the functional core (meta-training's form) take the same steps; ``averaged()`` holds x; the state resumes
bit for bit; wrong combinations and states are refused."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from metaopt.optim import GMNOptimizer, GraphIndex, Hyper, OptState, core
from metaopt.optim.rules import RETIRED_RULES, resolve_rule
from metaopt.optim.optimizer import TENSOR_DISTANCES
from test_optim_common import flat_params
from test_outer_common import ModelTask, step_both
from training_loop import train_losses

BETAS, EPS, WD = (0.8, 0.95), 1e-6, 0.05  # none of them Adam's defaults


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    return x, torch.sin(x[:, :3]) + 0.1 * torch.randn(64, 3, generator=g)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


class _ReferenceSF:
    """SF-AdamW written as the paper states it, with x, y and z kept apart (Algorithm 1; weights lr_max^2,
    decay taken at y); ``prodigy=True`` sets lr = d from Prodigy's estimate on x_0 - z; a step moves by the
    estimate before its gradient, v kept in units of it (the project's Prodigy, `core.DistanceEstimate`)."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas, eps: float, wd: float, prodigy: bool = False,
                 d0: float = core.D0):
        self.x = [p.detach().clone() for p in params]
        self.z = [p.detach().clone() for p in params]
        self.x0 = [p.detach().clone() for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.s = [torch.zeros_like(p) for p in params]
        self.lr, self.b1, self.b2, self.eps, self.wd, self.prodigy = lr, *betas, eps, wd, prodigy
        self.t, self.wsum, self.peak, self.d, self.last, self.num, self.d0 = 0, 0.0, 0.0, d0, d0, 0.0, d0

    def y(self) -> list[torch.Tensor]:
        return [(1 - self.b1) * z + self.b1 * x for z, x in zip(self.z, self.x)]

    def step(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        y = self.y()
        d_step = self.d  # this step moves by the estimate before its gradient; v in units of it (Prodigy's m / d)
        self.v = [v * (self.last / d_step) ** 2 for v in self.v]
        self.last = d_step
        if self.prodigy:  # Prodigy's estimate, weights d^2 / d0 * sqrt(bc2) (no momentum: bc1 = 1)
            bc2 = 1 - self.b2 ** self.t
            w = self.d * self.d / self.d0 * self.lr * math.sqrt(bc2)
            self.num = math.sqrt(self.b2) * self.num + w * sum(float((g * (x0 - z)).sum())
                                                               for g, x0, z in zip(grads, self.x0, self.z))
            self.s = [math.sqrt(self.b2) * s + w * g for s, g in zip(self.s, grads)]
            norm = sum(float(s.abs().sum()) for s in self.s)
            if norm > 0:
                self.d = max(self.d, self.num / norm)
        lr = self.lr * (d_step if self.prodigy else 1.0)
        self.v = [self.b2 * v + (1 - self.b2) * g * g for v, g in zip(self.v, grads)]
        bc2 = 1 - self.b2 ** self.t
        u = [g / ((v / bc2).sqrt() + self.eps) + self.wd * yi for g, v, yi in zip(grads, self.v, y)]
        self.z = [z - lr * ui for z, ui in zip(self.z, u)]
        self.peak = max(self.peak, lr)
        self.wsum += self.peak ** 2
        c = self.peak ** 2 / self.wsum
        self.x = [(1 - c) * x + c * z for x, z in zip(self.x, self.z)]


@pytest.mark.parametrize("lr_free", [False, True])
def test_steps_are_the_papers_sf_adamw_and_sf_prodigy(lr_free: bool) -> None:
    """Twenty steps at non-default betas, eps and weight decay: the parameters are the reference's y, z
    its z, ``averaged()`` its x (the parameters come back to y after it); lr-free, d is the reference's
    (from d0 = 1e-4: steps of 1e-6 are a few float32 roundings of these weights, which the two orders of
    operations round apart, and the estimate reads those gaps)."""
    model = _model()
    x, y = _data()
    kw = dict(lr_free=True, d0=1e-4) if lr_free else dict(lr=3e-2)
    opt = GMNOptimizer(model, rule="adam", betas=BETAS, eps=EPS, weight_decay=WD, schedule_free=True, **kw)
    ref = _ReferenceSF(list(model.parameters()), 1.0 if lr_free else 3e-2, BETAS, EPS, WD, prodigy=lr_free, d0=1e-4)
    tol = dict(rtol=1e-4, atol=3e-5) if lr_free else dict(rtol=1e-5, atol=1e-6)  # d agrees to ~1e-5 relative
    for _ in range(20):
        grads = _grads(model, x, y)
        opt.step()
        ref.step(grads)
        for p, want in zip(model.parameters(), ref.y()):
            torch.testing.assert_close(p.detach(), want, **tol)
        for p, want in zip(model.parameters(), ref.z):
            torch.testing.assert_close(opt.state[p]["z"], want, **tol)
    if lr_free:
        assert opt.distance == pytest.approx(ref.d, rel=1e-4) and opt.distance > 10 * 1e-4
    before = [p.detach().clone() for p in model.parameters()]
    with opt.averaged():
        for p, want in zip(model.parameters(), ref.x):
            torch.testing.assert_close(p.detach(), want, **tol)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


@pytest.mark.parametrize("stride", [1, 3])
def test_core_step_equals_the_optimizer(stride: int) -> None:
    """Twenty steps lr-free, per-tensor estimates every second step after 3 warm-up steps, non-default
    betas, eps and weight decay: the functional core and the optimizer agree on the parameters, z, v, the
    sums and every estimate."""
    torch.manual_seed(0)
    make = lambda g: (torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g))  # noqa: E731
    task = ModelTask(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), torch.zeros(2, 6), make,
                     nn.functional.cross_entropy)
    model = copy.deepcopy(task.model)
    rule = resolve_rule("adam")
    share, lr = 0.6, 0.7
    opt = GMNOptimizer(model, rule=rule, lr=lr, betas=BETAS, eps=EPS, weight_decay=WD, graph=task.graph, lr_free=True,
                       estimate_every=2, estimate_warmup=3, per_tensor=share, estimate_stride=stride, schedule_free=True,
                       d0=1e-4)
    index = GraphIndex.from_graph(task.graph, "cpu")
    params = flat_params(model)
    sizes = tuple(p.numel() for p in model.parameters())
    state = OptState.zeros(index.num_edges, start=params, every=2, per_tensor=share, sizes=sizes, warmup=3,
                           stride=stride, schedule_free=params, d0=1e-4)
    h = Hyper(lr, *BETAS, EPS, WD, d0=1e-4)
    batches = task.batches(0)
    for _ in range(20):
        params, state = step_both(task, model, opt, rule, None, index, params, state, h, next(batches))
        torch.testing.assert_close(params, flat_params(model), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(state.exp_avg, opt._buffers["z"], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(state.exp_avg_sq, opt._buffers["exp_avg_sq"], rtol=1e-5, atol=1e-9)
        assert state.distance.d == pytest.approx(opt.distance, rel=1e-6)
        mine = [e.d for e in state.tensor_distances.estimates]
        assert mine == pytest.approx(opt.state[TENSOR_DISTANCES][:, 1].tolist(), rel=1e-6)
        assert state.averaging.weight() == pytest.approx(
            opt.state["average_peak"] ** 2 / opt.state["average_weight_sum"], rel=1e-6)
    assert opt.distance > 2e-4 and bool((opt.state[TENSOR_DISTANCES][:, 1] > 2e-4).all())  # all grew


def test_shipped_mode_trains_resumes_exactly_and_keeps_5x_state() -> None:
    """rule="lrfree_sf" (estimate every 10th step, 70% per tensor, schedule-free): the loss falls, at x
    too; the state is z, v, x_0 and two sums (5x, as the Adam-based mode); a saved state resumes bit for bit."""
    model = _model()
    opt = GMNOptimizer(model, rule="lrfree_sf")
    assert opt.schedule_free and opt.lr_free and opt.per_tensor == 0.7 and opt.estimate_every == 10
    losses = train_losses(model, opt, nn.functional.mse_loss, *_data(), 150)
    assert losses[-1] < 0.3 * losses[0]
    x, y = _data()
    with opt.averaged(), torch.no_grad():
        at_x = float(nn.functional.mse_loss(model(x), y))
    assert at_x < 0.3 * losses[0]
    numels = sum(p.numel() for p in model.parameters())
    assert sum(v.numel() for k, v in opt._buffers.items() if k != "step") == 5 * numels
    assert sorted(opt.state[model[0].weight]) == ["exp_avg_sq", "grad_sum", "start", "step", "tensor_grad_sum", "z"]
    clone = copy.deepcopy(model)
    opt2 = GMNOptimizer(clone, rule="lrfree_sf")
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    train_losses(model, opt, nn.functional.mse_loss, *_data(), 13), train_losses(clone, opt2, nn.functional.mse_loss, *_data(), 13)
    for pa, pb in zip(model.parameters(), clone.parameters()):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="schedule_free=True"):
        GMNOptimizer(_model(), **RETIRED_RULES["lrfree_base"].kwargs()).load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="schedule_free=False"):
        GMNOptimizer(_model(), rule="lrfree_sf").load_state_dict(_saved_plain_state())


def _saved_plain_state() -> dict:
    model = _model()
    opt = GMNOptimizer(model, **RETIRED_RULES["lrfree_base"].kwargs())
    train_losses(model, opt, nn.functional.mse_loss, *_data(), 2)
    return opt.state_dict()


def test_bad_combinations_are_refused() -> None:
    with pytest.raises(ValueError, match="no learned rule"):
        GMNOptimizer(_model(), rule="lrfree", schedule_free=True)
    with pytest.raises(ValueError, match="spike_guard or nowcast"):
        GMNOptimizer(_model(), rule="adam", lr=1e-3, schedule_free=True, spike_guard=3.0)
    with pytest.raises(TypeError, match="schedule_free is True, False or None"):
        GMNOptimizer(_model(), rule="adam", lr=1e-3, schedule_free=1)
    with pytest.raises(RuntimeError, match="only a schedule-free optimizer"):
        with GMNOptimizer(_model(), rule="adam", lr=1e-3).averaged():
            pass
    opt = GMNOptimizer(_model(), rule="adam", lr=1e-3, schedule_free=True)  # at a fixed lr: SF-AdamW
    assert opt.schedule_free and not opt.lr_free
    assert not GMNOptimizer(_model(), rule="lrfree_sf", schedule_free=False).schedule_free


def test_bf16_parameters_step_through_float32() -> None:
    """bf16 parameters: z and v stay float32, the step is computed in float32 and rounded once."""
    model = _model().to(torch.bfloat16)
    opt = GMNOptimizer(model, rule="adam", lr=1e-2, schedule_free=True)
    x, y = _data()
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x.bfloat16()).float(), y)
        loss.backward()
        opt.step()
        first = float(loss) if first is None else first
    assert opt.state[model[0].weight]["z"].dtype == torch.float32
    assert float(loss) < first
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_averaged_leaves_parameters_that_took_no_step_alone() -> None:
    """A parameter outside the param groups (never stepped) keeps its value inside ``averaged()`` even if it
    was changed after the state was allocated; the stepped ones move to x and back."""
    model = _model()
    opt = GMNOptimizer(model, rule="adam", lr=1e-2, schedule_free=True, params=[model[0].weight, model[0].bias])
    train_losses(model, opt, nn.functional.mse_loss, *_data(), 5)
    with torch.no_grad():
        model[2].weight.add_(1.0)  # changed after allocation, not optimized
    frozen, stepped = model[2].weight.detach().clone(), model[0].weight.detach().clone()
    with opt.averaged():
        assert torch.equal(model[2].weight, frozen)
        assert not torch.equal(model[0].weight, stepped)
    assert torch.equal(model[0].weight, stepped) and torch.equal(model[2].weight, frozen)
