"""GMNOptimizer as a torch.optim.Optimizer: loops, closures, schedulers, checkpoints, Accelerate, AMP."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as S

from metaopt.optim import GMNOptimizer
from test_optim_common import linear_rule, mlp, to_graph


def _data(n: int = 32, din: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, din, generator=g), torch.randint(0, 10, (n,), generator=g)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def _pair(**model_kw):
    torch.manual_seed(0)
    a = mlp(**model_kw)
    b = copy.deepcopy(a)
    return a, b


def _params_close(a: nn.Module, b: nn.Module, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=lambda m, n=n: f"{n}: {m}")


def test_plain_loop_matches_adam():
    a, b = _pair()
    x, y = _data()
    opt = GMNOptimizer(a, rule="adam", lr=1e-2)
    ref = torch.optim.Adam(b.parameters(), lr=1e-2, foreach=True)
    first = None
    for _ in range(30):
        for model, o in ((a, opt), (b, ref)):
            o.zero_grad()
            loss = _loss(model, x, y)
            loss.backward()
            o.step()
        first = first if first is not None else loss.item()
    _params_close(a, b)
    assert _loss(a, x, y).item() < 0.5 * first
    assert all(p.grad is None for p in a.parameters()) is False
    opt.zero_grad()
    assert all(p.grad is None for p in a.parameters())  # set_to_none default, as torch.optim


def test_step_with_closure_returns_loss_and_matches_adam():
    a, b = _pair()
    x, y = _data()
    opt = GMNOptimizer(a, rule="adam", lr=1e-2)
    ref = torch.optim.Adam(b.parameters(), lr=1e-2)
    for _ in range(10):
        def closure(model=a, o=opt):
            o.zero_grad()
            loss = _loss(model, x, y)
            loss.backward()
            return loss

        got = opt.step(closure)
        want = ref.step(lambda: (ref.zero_grad(), _loss(b, x, y).backward(), _loss(b, x, y))[-1])
        assert isinstance(got, torch.Tensor)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    _params_close(a, b)


SCHEDULERS = {
    "StepLR": lambda o: S.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[2, 5], gamma=0.3),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.8),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=6),
    "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3),
    "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=0.05, total_steps=12),  # cycles betas[0] too
    "CyclicLR": lambda o: S.CyclicLR(o, base_lr=1e-3, max_lr=0.05, step_size_up=3, cycle_momentum=True),
    "LambdaLR": lambda o: S.LambdaLR(o, lambda e: 1.0 / (1 + e)),
    "MultiplicativeLR": lambda o: S.MultiplicativeLR(o, lambda e: 0.9),
    "LinearLR": lambda o: S.LinearLR(o, start_factor=0.2, total_iters=5),
    "ConstantLR": lambda o: S.ConstantLR(o, factor=0.5, total_iters=4),
    "PolynomialLR": lambda o: S.PolynomialLR(o, total_iters=8, power=2.0),
    "SequentialLR": lambda o: S.SequentialLR(
        o, [S.ConstantLR(o, factor=0.3, total_iters=3), S.ExponentialLR(o, gamma=0.9)], milestones=[3]
    ),
    "ChainedScheduler": lambda o: S.ChainedScheduler([S.ConstantLR(o, factor=0.5, total_iters=4), S.ExponentialLR(o, gamma=0.9)]),
    "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=0, threshold=1e9),
}


def test_every_lr_scheduler_class_is_covered():
    """New schedulers in a future torch must be added above, not silently untested."""
    classes = {
        name
        for name, obj in vars(S).items()
        if isinstance(obj, type) and issubclass(obj, (S.LRScheduler, S.ReduceLROnPlateau))
        and obj not in (S.LRScheduler, S._LRScheduler) and not name.startswith("_")
    }
    assert classes <= set(SCHEDULERS), sorted(classes - set(SCHEDULERS))


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_lr_scheduler_drives_lr_like_adam(name):
    a, b = _pair()
    x, y = _data()
    opt = GMNOptimizer(a, rule="adam", lr=0.02)
    ref = torch.optim.Adam(b.parameters(), lr=0.02)
    sa, sb = SCHEDULERS[name](opt), SCHEDULERS[name](ref)
    lrs_a, lrs_b = [], []
    for _ in range(12):
        for model, o, s, lrs in ((a, opt, sa, lrs_a), (b, ref, sb, lrs_b)):
            o.zero_grad()
            loss = _loss(model, x, y)
            loss.backward()
            o.step()
            s.step(loss.item()) if isinstance(s, S.ReduceLROnPlateau) else s.step()
            lrs.append((o.param_groups[0]["lr"], o.param_groups[0]["betas"][0]))
    assert lrs_a == lrs_b
    assert len(set(lrs_a)) > 1  # the schedule really changed something
    _params_close(a, b, rtol=1e-4, atol=1e-5)


def _train(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()


@pytest.mark.parametrize("rule", ["adam", "lr_scale"])
@pytest.mark.parametrize("grouped", [False, True])
def test_state_dict_resume_is_bit_identical(grouped, rule):
    """Saved after step 5 and resumed: with a learned rule refreshed on steps 1, 4, 7, 10 the
    scale set at step 4 must travel in the state dict (steps 6) and the refresh count too."""
    torch.manual_seed(0)
    model = mlp()
    x, y = _data()
    g = to_graph(model)

    def make(m):
        r = "adam" if rule == "adam" else linear_rule(alpha=0.5, refresh_every=3)
        if not grouped:
            return GMNOptimizer(m, rule=r, lr=1e-2, weight_decay=0.01, graph=g)
        ps = list(m.parameters())
        groups = [{"params": ps[0::2], "lr": 2e-2}, {"params": ps[1::2], "weight_decay": 0.1}]
        return GMNOptimizer(m, rule=r, lr=1e-2, params=groups, graph=g)

    opt = make(model)
    _train(model, opt, x, y, 5)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    _train(model, opt, x, y, 5)

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed = mlp()
    resumed.load_state_dict(ckpt["model"])
    opt2 = make(resumed)
    opt2.load_state_dict(ckpt["opt"])
    _train(resumed, opt2, x, y, 5)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert opt2.state["steps_taken"] == opt.state["steps_taken"] == 10
    if rule != "adam":
        assert opt.rule_refreshes == opt2.rule_refreshes == 4
        assert not torch.equal(opt2._buffers["lr_scale"], torch.ones_like(opt2._buffers["lr_scale"]))
    sd1, sd2 = opt.state_dict(), opt2.state_dict()
    for i, st in sd1["state"].items():
        if isinstance(i, int):
            for k, v in st.items():
                assert torch.equal(v, sd2["state"][i][k]), (i, k)
    # per-parameter state entries are views into the flat buffers, after loading too
    p0 = next(resumed.parameters())
    assert opt2.state[p0]["exp_avg"].untyped_storage().data_ptr() == opt2._buffers["exp_avg"].untyped_storage().data_ptr()


def test_load_state_dict_rejects_foreign_state():
    a, b = _pair()
    x, y = _data()
    adam = torch.optim.Adam(b.parameters(), lr=1e-2)
    _train(b, adam, x, y, 1)
    opt = GMNOptimizer(a, rule="adam", lr=1e-2)
    with pytest.raises(ValueError, match="not saved by a GMNOptimizer"):
        opt.load_state_dict(adam.state_dict())


def test_param_groups_match_adamw_per_group():
    a, b = _pair()
    x, y = _data()
    pa, pb = list(a.parameters()), list(b.parameters())
    ga = [{"params": pa[:2], "lr": 3e-2, "weight_decay": 0.1}, {"params": pa[2:], "betas": (0.8, 0.99), "eps": 1e-6}]
    gb = [{"params": pb[:2], "lr": 3e-2, "weight_decay": 0.1}, {"params": pb[2:], "betas": (0.8, 0.99), "eps": 1e-6}]
    opt = GMNOptimizer(a, rule="adam", lr=1e-2, params=ga)
    ref = torch.optim.AdamW(gb, lr=1e-2, weight_decay=0.0)
    for _ in range(15):
        for model, o in ((a, opt), (b, ref)):
            o.zero_grad()
            _loss(model, x, y).backward()
            o.step()
    _params_close(a, b)


def test_weight_decay_is_decoupled_like_adamw():
    a, b = _pair()
    x, y = _data()
    opt = GMNOptimizer(a, rule="adam", lr=1e-2, weight_decay=0.5)
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.5)
    c = copy.deepcopy(b)
    coupled = torch.optim.Adam(c.parameters(), lr=1e-2, weight_decay=0.5)  # L2 in the gradient
    for _ in range(10):
        for model, o in ((a, opt), (b, ref), (c, coupled)):
            o.zero_grad()
            _loss(model, x, y).backward()
            o.step()
    _params_close(a, b)
    assert not torch.allclose(a[0].weight, c[0].weight, rtol=1e-3, atol=1e-4)


def test_params_without_grad_are_skipped_and_frozen_untouched():
    torch.manual_seed(0)
    model = mlp()
    x, y = _data()
    first, last = model[0], model[4]
    first.weight.requires_grad_(False)  # frozen
    opt = GMNOptimizer(model, rule="adam", lr=1e-2, weight_decay=0.1)
    frozen = first.weight.clone()
    _train(model, opt, x, y, 3)
    assert torch.equal(first.weight, frozen)
    assert float(opt.state[first.weight]["step"]) == 0.0
    # a parameter whose grad is None this step (not reached by the loss) keeps value and state
    before = last.bias.clone()
    state_before = {k: v.clone() for k, v in opt.state[last.bias].items()}
    opt.zero_grad()
    _loss(model, x, y).backward()
    last.bias.grad = None
    opt.step()
    assert torch.equal(last.bias, before)
    for k, v in opt.state[last.bias].items():
        assert torch.equal(v, state_before[k]), k
    assert float(opt.state[model[2].weight]["step"]) == 4.0


def test_params_outside_groups_are_untouched_and_foreign_params_rejected():
    torch.manual_seed(0)
    model = mlp()
    x, y = _data()
    ps = list(model.parameters())
    opt = GMNOptimizer(model, rule="adam", lr=1e-2, params=ps[2:])
    before = [p.clone() for p in ps]
    _train(model, opt, x, y, 3)
    assert torch.equal(ps[0], before[0]) and torch.equal(ps[1], before[1])
    assert all(not torch.equal(p, q) for p, q in zip(ps[2:], before[2:]))
    with pytest.raises(ValueError, match="not parameters of the model"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))]})
    with pytest.raises(TypeError, match="nn.Module"):
        GMNOptimizer(ps, rule="adam")  # type: ignore[arg-type]


def test_accelerate_prepare_and_gradient_accumulation():
    from accelerate import Accelerator

    a, b = _pair()
    x, y = _data(n=32)
    acc = Accelerator(cpu=True, gradient_accumulation_steps=4)
    opt = GMNOptimizer(a, rule="adam", lr=1e-2)
    a, opt = acc.prepare(a, opt)
    ref = torch.optim.Adam(b.parameters(), lr=1e-2)
    micro = list(zip(x.chunk(8), y.chunk(8)))
    for i, (xb, yb) in enumerate(micro):
        with acc.accumulate(a):
            acc.backward(_loss(a, xb, yb))
            opt.step()
            opt.zero_grad()
        (_loss(b, xb, yb) / 4).backward()
        if (i + 1) % 4 == 0:
            ref.step()
            ref.zero_grad()
    inner = opt.optimizer
    assert inner.state["steps_taken"] == 2  # 8 micro-batches / 4 = 2 real steps
    assert float(inner.state[next(a.parameters())]["step"]) == 2.0
    _params_close(a, b)


def test_grad_scaler_unscales_and_skips_inf_steps():
    a, b = _pair()
    x, y = _data()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt = GMNOptimizer(a, rule="adam", lr=1e-2)
    ref = torch.optim.Adam(b.parameters(), lr=1e-2)
    for step in range(6):
        opt.zero_grad()
        scaler.scale(_loss(a, x, y)).backward()
        if step == 3:
            next(a.parameters()).grad[0, 0] = float("inf")  # overflow: the scaler must skip
        scaler.unscale_(opt)
        before = [p.clone() for p in a.parameters()]
        scaler.step(opt)
        scaler.update()
        if step == 3:
            assert all(torch.equal(p, q) for p, q in zip(a.parameters(), before))
            assert scaler.get_scale() == 2.0**9
            continue
        ref.zero_grad()
        _loss(b, x, y).backward()
        ref.step()
    assert opt.state["steps_taken"] == 5
    _params_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_adam():
    a, b = _pair()
    a, b = a.cuda(), b.cuda()
    x, y = (t.cuda() for t in _data())
    opt = GMNOptimizer(a, rule="adam", lr=1e-2)
    ref = torch.optim.Adam(b.parameters(), lr=1e-2)
    for _ in range(10):
        for model, o in ((a, opt), (b, ref)):
            o.zero_grad()
            _loss(model, x, y).backward()
            o.step()
    _params_close(a, b)
    assert opt._buffers["exp_avg"].is_cuda
