"""GMNOptimizer(model, soap_switch=...): the lr-free step until its estimate settles, then SOAP's step."""

from __future__ import annotations

import copy
import dataclasses
import json
import io
import math
from typing import Any, Callable

import pytest
import torch
from torch import nn

from metaopt.optim import GMNOptimizer, SoapSwitch, UpdateRule
from metaopt.optim.optimizer import SOAP_BASES
from outer_train.soap import SOAP


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 12), nn.Tanh(),
                         nn.Linear(12, 10))


# The test problem (64 random images) is fitted so fast that the gradient norm is 200x down when d settles, where the
# switch declines (SoapSwitch.decline_below); the tests of the switch itself turn that off.
ALWAYS = SoapSwitch(decline_below=0.0)
X = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(2))


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> float:
    loss = nn.functional.cross_entropy(model(X), Y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("sides, block", [("both", None), ("shorter", None), ("columns", 8)])
def test_the_switch_is_the_lr_free_default_then_soap_at_half_the_settled_step(sides: str, block: int | None) -> None:
    """Bit for bit: GMNOptimizer(model) until d has not moved for 100 steps (looked at every 10th step), then
    a fresh SOAP (betas 0.95 / 0.99; one-sided or not as the switch) at 0.5 x d, d frozen (before step 1,000,
    where no plateau cut can come)."""
    switched, plain = _net(), _net()
    opt = GMNOptimizer(switched, soap_switch=SoapSwitch(decline_below=0.0, sides=sides, block=block),
                       example_inputs=X[:2])
    ref = GMNOptimizer(plain, example_inputs=X[:2])
    second, history, moved_at = None, [ref.distance], 0
    for t in range(1, 701):
        _step(switched, opt)
        _step(plain, second or ref)
        if second is None:
            history.append(ref.distance)
            moved_at = t if history[-1] != history[-2] else moved_at
            assert torch.equal(_flat(switched), _flat(plain))
            if t > 100 and t % 10 == 0 and moved_at <= t - 100:
                second = SOAP(plain.parameters(), lr=0.5 * ref.distance, betas=(0.95, 0.99), sides=sides, block=block)
                assert opt.soap_switched_at == t and opt.distance == ref.distance
            else:
                assert opt.soap_switched_at == 0
    assert second is not None, "the estimate never settled: the test's problem no longer exercises the switch"
    assert opt.soap_switched_at < 600  # SOAP ran at least 100 steps
    assert torch.equal(_flat(switched), _flat(plain))
    assert opt.distance == ref.distance  # frozen at the switch
    assert set(opt.state[SOAP_BASES]) == {0, 2, 4}  # the conv filter and the two Linear weights
    rotated = {k: {n: tuple(v.shape) for n, v in b.items() if n.startswith("q_")}
               for k, b in opt.state[SOAP_BASES].items()}
    # the shorter side: the conv's 6 of 6 x 9, the Linears' 12 of 12 x 216 and 10 of 10 x 12; the columns in blocks of
    # 4 to 8: 216 in 27 of 8, 12 in two of 6, the conv's 9 whole (blocks of 3 would be under half of 8)
    assert rotated == {"shorter": {0: {"q_left": (6, 6)}, 2: {"q_left": (12, 12)}, 4: {"q_left": (10, 10)}},
                       "columns": {0: {"q_right": (9, 9)}, 2: {"q_right": (27, 8, 8)}, 4: {"q_right": (2, 6, 6)}},
                       "both": {0: {"q_left": (6, 6), "q_right": (9, 9)}, 2: {"q_left": (12, 12), "q_right": (216, 216)},
                                4: {"q_left": (10, 10), "q_right": (12, 12)}}}[sides]


def _rotated_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A, B, C of min ||A W B - C||^2 (W 12 x 10), A and B ill-conditioned (1 to 10^-1.5) in random rotated bases."""
    g = torch.Generator().manual_seed(0)

    def rotated(n: int) -> torch.Tensor:
        q = torch.linalg.qr(torch.randn(n, n, generator=g))[0]
        return q @ torch.diag(torch.logspace(0, -1.5, n)) @ q.T
    a, b = rotated(12), rotated(10)
    return a, b, a @ torch.randn(12, 10, generator=g) @ b


def _paused_fit(model: nn.Module, opt: GMNOptimizer, problem: tuple[torch.Tensor, ...], steps: range, pause: range,
                record: Callable[[], Any]) -> dict[int, Any]:
    """Steps on `_rotated_problem`'s fit of ``model.weight`` with zero gradients on the steps in ``pause`` (the
    estimate holds still there, as in a plateau); ``record()`` after each step, by step."""
    a, b, c = problem
    seen = {}
    for t in steps:
        loss = (0.0 if t in pause else 1.0) * (a @ model.weight @ b - c).square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen[t] = record()
    return seen


def test_the_switch_speeds_up_a_fit_whose_curvature_is_rotated() -> None:
    """min ||A W B - C||^2 with A, B ill-conditioned in a rotated basis: after the switch SOAP's eigenbasis undoes
    the rotation that Adam's diagonal cannot, so the same 600 steps end far lower than GMNOptimizer(model)."""
    a, b, c = _rotated_problem()

    def final(**kwargs) -> tuple[float, GMNOptimizer]:  # noqa: ANN003
        model = nn.Linear(10, 12, bias=False)  # its weight is W
        nn.init.zeros_(model.weight)
        opt = GMNOptimizer(model, example_inputs=torch.zeros(1, 10), **kwargs)
        for _ in range(600):
            loss = (a @ model.weight @ b - c).square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float((a @ model.weight.detach() @ b - c).square().sum()), opt
    soap, opt = final(soap_switch=ALWAYS)
    plain, _ = final()
    assert 0 < opt.soap_switched_at < 500
    assert soap < plain / 10, (soap, plain)
    _, declined = final(soap_switch=True)  # the gradient norm is 460x down when d settles: the default declines here
    assert declined.soap_declined_at == opt.soap_switched_at and declined.soap_switched_at == 0


@pytest.mark.parametrize("save_at, block", [(150, None), (450, None), (450, 8)])
def test_a_saved_state_resumes_bit_for_bit_on_either_side_of_the_switch(save_at: int, block: int | None) -> None:
    switch = SoapSwitch(window=50, decline_below=0.0, block=block)
    net = _net()
    opt = GMNOptimizer(net, soap_switch=switch, example_inputs=X[:2])
    for _ in range(save_at):
        _step(net, opt)
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    twin = _net()
    twin.load_state_dict(saved["model"])
    twin_opt = GMNOptimizer(twin, soap_switch=switch, example_inputs=X[:2])
    twin_opt.load_state_dict(saved["opt"])
    assert block is None or saved["opt"]["state"][SOAP_BASES][2]["q_right"].shape == (27, 8, 8)  # blocks saved
    assert twin_opt.soap_switched_at == opt.soap_switched_at
    losses = [_step(net, opt) for _ in range(200)]
    assert losses == [_step(twin, twin_opt) for _ in range(200)]
    assert torch.equal(_flat(net), _flat(twin))
    assert 0 < opt.soap_switched_at < save_at + 200
    assert losses[-1] < 0.1 * float(nn.functional.cross_entropy(_net()(X), Y).detach())


def _switched() -> tuple[nn.Module, GMNOptimizer]:
    net = _net()
    opt = GMNOptimizer(net, soap_switch=SoapSwitch(window=20, decline_below=0.0), example_inputs=X[:2])
    while not opt.soap_switched_at:
        _step(net, opt)
    _step(net, opt)
    return net, opt


def test_a_switched_state_needs_the_switch_and_bases_that_fit() -> None:
    net, opt = _switched()
    state = opt.state_dict()
    with pytest.raises(ValueError, match="soap_switch=True"):
        GMNOptimizer(_net(), soap_switch=False, example_inputs=X[:2]).load_state_dict(state)
    for wrong in (torch.eye(3), torch.eye(2).expand(3, 2, 2), torch.ones(3, 3, 2)):  # the conv: 6 x 9
        bad = {**state, "state": {**state["state"], SOAP_BASES: {0: {"q_right": wrong}}}}
        with pytest.raises(ValueError, match="do not fit"):
            GMNOptimizer(_net(), soap_switch=ALWAYS, example_inputs=X[:2]).load_state_dict(bad)
    bad = {**state, "state": {**state["state"], SOAP_BASES: {1: {}}}}  # parameter 1 is a bias
    with pytest.raises(ValueError, match="no valid"):
        GMNOptimizer(_net(), soap_switch=ALWAYS, example_inputs=X[:2]).load_state_dict(bad)
    twin = GMNOptimizer(net, soap_switch=ALWAYS, example_inputs=X[:2])
    twin.load_state_dict(state)  # the bases are copied: stepping one optimizer leaves the saved state alone
    before = state["state"][SOAP_BASES][0]["right"].clone()
    _step(net, twin)
    assert torch.equal(state["state"][SOAP_BASES][0]["right"], before)


def test_the_switch_frees_the_frozen_estimates_buffers() -> None:
    """After the switch the estimate's x_0 and gradient sums are neither kept nor saved; a state saved before the
    switch, loaded into a switched optimizer, brings them back and runs on as it would have."""
    net = _net()
    opt = GMNOptimizer(net, soap_switch=SoapSwitch(window=20, decline_below=0.0), example_inputs=X[:2])
    _step(net, opt)
    early = {"model": {k: v.clone() for k, v in net.state_dict().items()}, "opt": copy.deepcopy(opt.state_dict())}
    assert {"start", "grad_sum"} <= set(opt.state[net[0].weight])
    kept = sum(t.numel() for t in opt._buffers.values())
    while not opt.soap_switched_at:
        _step(net, opt)
    assert set(opt._buffers) == {"exp_avg", "exp_avg_sq", "step"}
    assert sum(t.numel() for t in opt._buffers.values()) < kept
    assert not {"start", "grad_sum"} & set(opt.state_dict()["state"][0])
    net.load_state_dict(early["model"])
    opt.load_state_dict(early["opt"])  # back before the switch: the estimate's buffers return, as saved
    assert opt.soap_switched_at == 0 and torch.equal(opt.state[net[0].weight]["start"],
                                                      early["opt"]["state"][0]["start"])
    twin = _net()
    twin.load_state_dict(early["model"])
    twin_opt = GMNOptimizer(twin, soap_switch=SoapSwitch(window=20, decline_below=0.0), example_inputs=X[:2])
    twin_opt.load_state_dict(early["opt"])
    assert [_step(net, opt) for _ in range(150)] == [_step(twin, twin_opt) for _ in range(150)]
    assert opt.soap_switched_at == twin_opt.soap_switched_at > 0


def test_a_non_finite_gradient_after_the_switch_skips_the_step() -> None:
    net, opt = _switched()
    before, steps = _flat(net), opt.state["soap_steps"]
    opt.zero_grad()
    nn.functional.cross_entropy(net(X), Y).backward()
    net[0].weight.grad[0, 0, 0, 0] = float("nan")
    opt.step()
    assert opt.skipped_steps == 1 and opt.state["soap_steps"] == steps and torch.equal(_flat(net), before)


def test_the_plateau_decay_scales_soaps_step_after_the_switch() -> None:
    """A plateau cut in force halves SOAP's step (the decay runs on after the switch)."""
    net, opt = _switched()
    twin_net = _net()
    twin_net.load_state_dict(net.state_dict())
    twin = GMNOptimizer(twin_net, soap_switch=SoapSwitch(window=20, decline_below=0.0), example_inputs=X[:2])
    twin.load_state_dict(opt.state_dict())
    twin.state["plateau_cuts"] = 1
    start = _flat(net)
    _step(net, opt)
    _step(twin_net, twin)
    torch.testing.assert_close(_flat(twin_net) - start, 0.5 * (_flat(net) - start), rtol=1e-4, atol=3e-7)  # parameters ~1: ulps


@pytest.mark.parametrize("kwargs, match", [
    ({"lr_free": False}, "needs lr_free"), ({"lr": 1e-3, "lr_free": False}, "needs lr_free"),
    ({"rule": "default", "lr_free": True}, "learned rule"), ({"schedule_free": True}, "schedule-free"),
    ({"spike_guard": 4.0, "per_tensor": 0.0}, "spike_guard"),
    ({"soap_switch": SoapSwitch(scale=0.0)}, "scale"), ({"soap_switch": SoapSwitch(window=5)}, "window"),
    ({"soap_switch": SoapSwitch(betas=(0.9, 1.0))}, "betas"), ({"soap_switch": "soap"}, "SoapSwitch"),
    ({"soap_switch": SoapSwitch(decline_below=1.0)}, "decline_below"),
    ({"soap_switch": SoapSwitch(second_beta_rise=0.0)}, "second_beta_rise"),
    ({"soap_switch": SoapSwitch(second_beta_rise=True)}, "second_beta_rise"),
    ({"soap_switch": SoapSwitch(second_beta_rise="0.8")}, "second_beta_rise"),
    ({"soap_switch": SoapSwitch(spike_cut=1.0)}, "spike_cut"), ({"soap_switch": SoapSwitch(spike_cut=True)}, "spike_cut"),
    ({"soap_switch": SoapSwitch(settle_on="d_max")}, "settle_on"),
    ({"soap_switch": SoapSwitch(follow=1)}, "follow"),
    ({"soap_switch": SoapSwitch(follow_climb=1.0)}, "follow_climb"),
    ({"soap_switch": SoapSwitch(follow_climb=True)}, "follow_climb"),
    ({"soap_switch": SoapSwitch(follow=True, follow_climb=6.0)}, "set one of them"),
])
def test_the_switch_refuses_what_it_cannot_run(kwargs: dict, match: str) -> None:
    kwargs = {"soap_switch": True, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        GMNOptimizer(_net(), example_inputs=X[:2], **kwargs)


def test_statistics_every_k_steps_take_in_every_kth_gradient_at_the_kth_power_of_beta() -> None:
    from metaopt.optim.eigenbasis import SoapHyper, soap_step
    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(5, 4, generator=g) for _ in range(7)]
    basis: dict = {}
    p, m, v = torch.zeros(5, 4), torch.zeros(5, 4), torch.zeros(5, 4)
    h = SoapHyper(1e-2, (0.9, 0.99), statistics_every=3, precondition_every=100)
    for t, grad in enumerate(grads, 1):
        soap_step([p], [grad], [m], [v], [basis], t, h)
    left = grads[0] @ grads[0].T  # the first gradient starts them, then steps 3 and 6 at 0.99 ** 3
    for t in (3, 6):
        left = left.lerp(grads[t - 1] @ grads[t - 1].T, 1 - 0.99**3)
    torch.testing.assert_close(basis["left"], left)


def test_a_varying_second_beta_is_bias_corrected_by_the_product_of_its_betas() -> None:
    """Adam's property that a constant gradient moves every entry by lr a step holds for any sequence of second betas
    when the correction is 1 - prod(beta2_s) (`weight_after`); the closed form at the current beta, 1 - beta2_t^t,
    would not."""
    from metaopt.optim.eigenbasis import SoapHyper, soap_step, weight_after
    grad = torch.tensor([0.5, -2.0, 3e-3])
    p, m, v, weight = torch.zeros(3), torch.zeros(3), torch.zeros(3), 0.0
    for t, beta2 in enumerate((0.9, 0.99, 0.999, 0.9999, 0.99999), 1):
        weight = weight_after(weight, beta2)
        before = p.clone()
        soap_step([p], [grad], [m], [v], [None], t, SoapHyper(1e-2, (0.9, beta2), eps=1e-12), weight)
        torch.testing.assert_close(p - before, -1e-2 * grad.sign(), rtol=1e-5, atol=0)
    assert abs(weight - (1 - 0.9 * 0.99 * 0.999 * 0.9999 * 0.99999)) < 1e-15
    wrong = 1 - 0.99999**5  # what the closed form would take: the step would be ~11x too small
    assert math.sqrt(wrong / weight) < 0.1


def test_a_rising_second_beta_runs_adafactors_schedule_after_the_switch_and_resumes() -> None:
    """second_beta_rise c: after the switch the second beta is max(0.99, 1 - t^-c) at the run's step t and the
    state's bias correction is 1 - the product of those betas; a state saved mid-run resumes bit for bit; a state
    saved by 0.16 (no such key, a constant beta) loads its closed form 1 - 0.99^k; with no rise the step is 0.16's."""
    from metaopt.optim.optimizer import SOAP_SECOND_WEIGHT, SOAP_STEPS
    switch = SoapSwitch(window=20, decline_below=0.0, second_beta_rise=0.8)
    assert switch.second_beta(100) == 0.99 and switch.second_beta(1000) == 1 - 1000**-0.8
    assert SoapSwitch().second_beta(5000) == 0.99
    assert SoapSwitch.from_dict({k: v for k, v in SoapSwitch().to_dict().items() if k != "second_beta_rise"}) \
        == SoapSwitch()  # a mode recorded by 0.16 runs 0.16's switch
    net = _net()
    opt = GMNOptimizer(net, soap_switch=switch, example_inputs=X[:2])
    for _ in range(400):
        _step(net, opt)
    start = opt.soap_switched_at
    assert 0 < start < 300
    product = math.prod(switch.second_beta(t) for t in range(start + 1, 401))
    assert abs(opt.state[SOAP_SECOND_WEIGHT] - (1 - product)) < 1e-12
    assert switch.second_beta(400) > 0.99  # the schedule has risen within the test
    state = copy.deepcopy(opt.state_dict())
    twin_net = _net()
    twin_net.load_state_dict(net.state_dict())
    twin = GMNOptimizer(twin_net, soap_switch=switch, example_inputs=X[:2])
    twin.load_state_dict(state)
    losses = [_step(net, opt) for _ in range(50)]
    assert losses == [_step(twin_net, twin) for _ in range(50)]
    assert torch.equal(_flat(net), _flat(twin_net))
    del state["state"][SOAP_SECOND_WEIGHT]
    old = GMNOptimizer(_net(), soap_switch=switch, example_inputs=X[:2])
    old.load_state_dict(state)
    assert old.state[SOAP_SECOND_WEIGHT] == 1 - 0.99 ** int(state["state"][SOAP_STEPS])
    # a rise whose schedule stays below the floor over these steps: 0.99 throughout, the correction by the product
    # equal to 0.16's closed form to rounding
    flat, plain = _net(), _net()
    opt = GMNOptimizer(flat, soap_switch=dataclasses.replace(switch, second_beta_rise=0.1), example_inputs=X[:2])
    ref = GMNOptimizer(plain, soap_switch=dataclasses.replace(switch, second_beta_rise=None), example_inputs=X[:2])
    for _ in range(300):
        _step(flat, opt), _step(plain, ref)
    assert opt.soap_switched_at == ref.soap_switched_at > 0
    torch.testing.assert_close(_flat(flat), _flat(plain), rtol=1e-4, atol=1e-5)


def test_the_spike_watch_cuts_on_a_sustained_rise_not_on_one_noisy_batch() -> None:
    from metaopt.optim.eigenbasis import spike_watch

    def cuts(log_sqs: list[float], ratio: float = 30.0, armed_from: int = 0) -> list[int]:
        short = long = None
        out = []
        for t, x in enumerate(log_sqs):
            short, long, cut = spike_watch(short, long, x, ratio, armed=t >= armed_from)
            out += [t] * cut
        return out
    flat = [math.log(1e-4) + 0.5 * math.sin(t) for t in range(300)]  # a noisy norm, 2.7x up and down
    assert cuts(flat) == []
    spikes = list(flat)
    for t in (100, 150, 200):
        spikes[t] += math.log(1e4)  # single batches 100x up in norm
    assert cuts(spikes) == []
    rise = flat[:100] + [x + math.log(1e3) for x in flat[100:]]  # up 30x in norm, and it stays
    first = cuts(rise)
    assert first and 100 < first[0] < 110 and len(first) == 1  # one cut: the long average restarts from the short
    twice = rise[:200] + [x + math.log(1e3) for x in rise[200:]]  # a second rise of the same size, a second cut
    second = cuts(twice)
    assert second[0] == first[0] and len(second) == 2 and 200 < second[1] < 210
    assert cuts(rise, armed_from=200) == []  # unarmed (the hold after the switch), the rise is taken in


def test_the_spike_cut_halves_soaps_step_where_the_gradient_rises_and_stays_up_and_resumes() -> None:
    """After the switch the loss is scaled up 1,000x (the gradient 1,000x, for good): with spike_cut the watch
    halves SOAP's step once the hold (50 steps after the switch) is over, not before; without it nothing changes;
    the counters survive a save and load bit for bit; a state of 0.16 (no watch) loads and starts the watch."""
    from metaopt.optim import eigenbasis
    from metaopt.optim.optimizer import SOAP_NORM_LONG, SOAP_NORM_SHORT, SOAP_SPIKE_CUTS, SOAP_SPIKE_SCALE

    def run(switch: SoapSwitch, steps: int, scale_after: int) -> tuple[nn.Module, GMNOptimizer, list[int]]:
        net = _net()
        opt = GMNOptimizer(net, soap_switch=switch, example_inputs=X[:2])
        cut_at = []
        for _ in range(steps):
            k = 1000.0 if opt.soap_switched_at and opt.state["soap_steps"] >= scale_after else 1.0
            loss = k * nn.functional.cross_entropy(net(X), Y)
            opt.zero_grad()
            loss.backward()
            cuts = opt.soap_spike_cuts
            opt.step()
            cut_at += [opt.state["soap_steps"]] * (opt.soap_spike_cuts - cuts)
        return net, opt, cut_at
    switch = SoapSwitch(window=20, decline_below=0.0, spike_cut=30.0)
    _, opt, cut_at = run(switch, 300, scale_after=80)
    assert 0 < opt.soap_switched_at < 150 and cut_at and cut_at[0] > 80
    assert opt.state[SOAP_SPIKE_SCALE] == eigenbasis.SPIKE_FACTOR ** len(cut_at) and opt.soap_spike_cuts == len(cut_at)
    _, early, early_at = run(switch, 300, scale_after=1)  # the rise comes within the hold: taken in, no cut
    assert early_at == [] or early_at[0] > 80
    _, off, off_at = run(dataclasses.replace(switch, spike_cut=None), 300, scale_after=80)
    assert off_at == [] and off.soap_spike_cuts == 0
    net, opt, _ = run(switch, 150, scale_after=10_000)
    state = copy.deepcopy(opt.state_dict())
    twin_net = _net()
    twin_net.load_state_dict(net.state_dict())
    twin = GMNOptimizer(twin_net, soap_switch=switch, example_inputs=X[:2])
    twin.load_state_dict(state)
    assert [_step(net, opt) for _ in range(30)] == [_step(twin_net, twin) for _ in range(30)]
    for key in (SOAP_NORM_SHORT, SOAP_NORM_LONG, SOAP_SPIKE_SCALE, SOAP_SPIKE_CUTS):
        del state["state"][key]
    old = GMNOptimizer(_net(), soap_switch=switch, example_inputs=X[:2])
    old.load_state_dict(state)
    assert old.soap_spike_cuts == 0
    _step(_net(), old)


def test_bf16_parameters_take_soaps_step_through_float32() -> None:
    """bf16 parameters: SOAP's step runs on float32 copies and float32 state (statistics and bases too), rounded
    once into the parameter. (Lr-free on bf16 warns that steps of d0's size are lost in the rounding.)"""
    net = _net().to(torch.bfloat16)
    opt = GMNOptimizer(net, soap_switch=SoapSwitch(window=20, decline_below=0.0), lr=1e3, lr_free=True,
                       example_inputs=X[:2].bfloat16())
    def step() -> None:
        loss = nn.functional.cross_entropy(net(X.bfloat16()).float(), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with pytest.warns(UserWarning, match="bf16"):
        while not opt.soap_switched_at:
            step()
    before = _flat(net).float()
    for _ in range(20):
        step()
    after = _flat(net).float()
    assert all(p.dtype == torch.bfloat16 for p in net.parameters()) and torch.isfinite(after).all()
    assert not torch.equal(before, after)
    assert all(v.dtype == torch.float32 for b in opt.state[SOAP_BASES].values() for v in b.values())


def test_it_declines_to_switch_deep_in_a_fit_adams_step_is_making() -> None:
    """Where the gradient norm has fallen 200x below its peak by the time d settles, no switch comes, for good; the
    run is then GMNOptimizer(model)'s, bit for bit. decline_below=0 switches at the same step regardless."""
    gate = SoapSwitch(decline_below=0.5)  # a fit 1.4x down in norm counts as deep here: the test's problem declines
    nets = [_net() for _ in range(3)]
    opts = [GMNOptimizer(nets[0], soap_switch=gate, example_inputs=X[:2]), GMNOptimizer(nets[1], example_inputs=X[:2]),
            GMNOptimizer(nets[2], soap_switch=SoapSwitch(decline_below=0.0), example_inputs=X[:2])]
    for _ in range(600):
        for net, opt in zip(nets, opts):
            _step(net, opt)
    assert opts[0].soap_declined_at > 0 and opts[0].soap_switched_at == 0
    assert opts[0].soap_declined_at == opts[2].soap_switched_at and opts[2].soap_declined_at == 0
    assert torch.equal(_flat(nets[0]), _flat(nets[1]))
    assert opts[0].state["soap_grad_last"] < 0.5 * opts[0].state["soap_grad_peak"]


def test_a_rules_mode_records_its_switch_and_the_optimizer_runs_it(tmp_path) -> None:
    """make_default --soap-switch records every SoapSwitch field beside the lr-free options; GMNOptimizer runs that
    switch with soap_switch left out, none with soap_switch=False, at a fixed lr or with schedule_free, and the one
    passed over the recorded one; a recorded switch without lr_free or with an unknown field is refused, and a learned
    rule recording one is refused by the optimizer, as a switch passed with it."""
    from metaopt.optim.make_default import main as make_default
    from metaopt.optim.rules import RuleConfig, UpdateRule

    make_default(["--lr-free-from", "metaopt/optim/pretrained/lrfree_anchor", "--estimate-every", "10",
                  "--soap-switch", "sides=columns", "block=32", "--out", str(tmp_path / "mode")])
    recorded = SoapSwitch(sides="columns", block=32)
    assert UpdateRule.from_pretrained(tmp_path / "mode").config.soap_switch == recorded.to_dict()
    assert SoapSwitch.from_dict(recorded.to_dict()) == recorded  # JSON's lists back to tuples
    model = _net()
    assert GMNOptimizer(model, rule=tmp_path / "mode").soap_switch == recorded
    assert GMNOptimizer(model, rule=tmp_path / "mode", soap_switch=False).soap_switch is None
    assert GMNOptimizer(model, rule=tmp_path / "mode", lr_free=False, lr=1e-3).soap_switch is None
    assert GMNOptimizer(model, rule=tmp_path / "mode", schedule_free=True).soap_switch is None
    assert GMNOptimizer(model, rule=tmp_path / "mode", soap_switch=ALWAYS).soap_switch == ALWAYS
    learned = UpdateRule.from_pretrained("metaopt/optim/pretrained/lrfree").with_lr_free(
        {"estimate_every": 10}, recorded.to_dict())  # a learned rule reads Adam's moments: no switch
    with pytest.raises(ValueError, match="learned rule"):
        GMNOptimizer(model, rule=learned)
    with pytest.raises(ValueError, match="record it with lr_free"):
        RuleConfig(kind="none", soap_switch={"sides": "columns"})
    with pytest.raises(ValueError, match="SoapSwitch's fields"):
        RuleConfig(kind="none", lr_free={"estimate_every": 10}, soap_switch={"sidez": "columns"})
    with pytest.raises(ValueError, match="SoapSwitch's fields"):
        RuleConfig(kind="none", lr_free={"estimate_every": 10}, soap_switch={"block": 1})


def test_the_default_is_the_anchored_lr_free_mode_from_1e4_then_soaps_step_on_the_input_side(tmp_path) -> None:
    """GMNOptimizer(model) (rule="lrfree_soap_1e4", 0.17): lrfree_anchor's lr-free options from d0=1e-4 and the switch
    SoapSwitch(window=150) (the input side in blocks of 64), i.e. GMNOptimizer(model, rule="lrfree_anchor", d0=1e-4,
    soap_switch=SoapSwitch(sides="columns", block=64, window=150)) bit for bit, through its switch on a noisy
    regression (fresh minibatches keep the gradient norm up, so it does not decline); rule="lrfree_soap" is 0.16's
    (d0 1e-6, window 100); soap_switch=False is lrfree_anchor from 1e-4 bit for bit; make_default's command lines
    reproduce both shipped modes."""
    from metaopt.optim import make_default
    from metaopt.optim.rules import PRETRAINED_DIR

    def run(**kwargs) -> tuple[nn.Module, GMNOptimizer]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
        opt = GMNOptimizer(model, **kwargs)
        data = torch.Generator().manual_seed(3)
        teacher = torch.randn(8, 4, generator=data)
        for _ in range(400):
            x = torch.randn(32, 8, generator=data)
            y = x @ teacher + 0.3 * torch.randn(32, 4, generator=data)
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        return model, opt

    default, opt = run()
    assert opt.soap_switch == SoapSwitch(window=150) == SoapSwitch(sides="columns", block=64, window=150)
    anchor_mode = UpdateRule.from_pretrained(PRETRAINED_DIR / "lrfree_anchor").config.lr_free
    assert opt.rule.config.lr_free == {**anchor_mode, "d0": 1e-4} and opt.d0 == 1e-4
    assert 150 < opt.soap_switched_at < 400 and not opt.soap_declined_at
    explicit, _ = run(rule="lrfree_anchor", d0=1e-4, soap_switch=SoapSwitch(sides="columns", block=64, window=150))
    off, off_opt = run(soap_switch=False)
    anchor, _ = run(rule="lrfree_anchor", d0=1e-4)
    assert off_opt.soap_switch is None
    for a, b, c, d in zip(default.parameters(), explicit.parameters(), off.parameters(), anchor.parameters()):
        assert torch.equal(a, b) and torch.equal(c, d)
    assert not all(torch.equal(a, c) for a, c in zip(default.parameters(), off.parameters()))
    old, old_opt = run(rule="lrfree_soap")
    old_explicit, _ = run(rule="lrfree_anchor", soap_switch=SoapSwitch())
    assert old_opt.d0 == 1e-6 and old_opt.soap_switch == SoapSwitch() and old_opt.soap_switched_at > 0
    assert all(torch.equal(a, b) for a, b in zip(old.parameters(), old_explicit.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(old.parameters(), default.parameters()))
    mode = ["--lr-free-from", str(PRETRAINED_DIR / "adam"), "--estimate-every", "10", "--per-tensor", "0.7",
            "--estimate-stride", "3", "--shared-sums", "--settled-growth-rate", "1.02",
            "--plateau-block", "500", "--plateau-boost", "1", "--plateau-anchor"]
    make_default.main([*mode, "--soap-switch", "sides=columns", "block=64", "--out", str(tmp_path / "soap")])
    make_default.main([*mode, "--d0", "1e-4", "--soap-switch", "sides=columns", "block=64", "window=150",
                       "--out", str(tmp_path / "soap_1e4")])
    for written_dir, shipped_dir in (("soap", "lrfree_soap"), ("soap_1e4", "lrfree_soap_1e4")):
        written, shipped = (json.loads((d / "config.json").read_text())
                            for d in (tmp_path / written_dir, PRETRAINED_DIR / shipped_dir))
        assert {**written, "metaopt_version": None} == {**shipped, "metaopt_version": None}


def test_settling_on_the_peak_switches_once_the_largest_estimate_has_held_at_scale_times_it_and_resumes() -> None:
    """A fit that settles early and then climbs (zero gradients on steps 12-40 hold d, so the estimate settles at
    8e-6; from then on d climbs 1.02x a step towards its largest estimate): with settle_on="peak" the switch comes
    once that largest estimate has not moved for the window (d still far below it), at scale x it; with "d" (0.16)
    once d has caught up and held, at the same lr, 150 steps later. The runs are the same step for step until the
    first switch; the peak's switch ends lower; a state saved mid-climb resumes bit for bit; a state of 0.16 (no peak
    step) loads with the peak taken to have moved when d last did."""
    from metaopt.optim.optimizer import DISTANCE_MOVED_AT, DISTANCE_PEAK, PEAK_MOVED_AT, SOAP_LR
    a, b, c = _rotated_problem()

    def start(settle_on: str) -> tuple[nn.Module, GMNOptimizer]:
        model = nn.Linear(10, 12, bias=False)  # its weight is W
        nn.init.zeros_(model.weight)
        return model, GMNOptimizer(model, example_inputs=torch.zeros(1, 10), d0=1e-6,  # 0.16's start
                                   soap_switch=SoapSwitch(decline_below=0.0, settle_on=settle_on))

    def run(model: nn.Module, opt: GMNOptimizer, steps: range) -> dict[int, tuple[int, float, float, torch.Tensor]]:
        return _paused_fit(model, opt, (a, b, c), steps, range(12, 41), lambda: (
            opt.soap_switched_at, opt.distance, float(opt.state[DISTANCE_PEAK]), model.weight.detach().clone()))
    (peak_net, peak), (d_net, on_d) = start("peak"), start("d")
    by_peak, by_d = run(peak_net, peak, range(1, 801)), run(d_net, on_d, range(1, 801))
    first = peak.soap_switched_at
    assert 0 < first < on_d.soap_switched_at - 100, (first, on_d.soap_switched_at)
    assert all(torch.equal(by_peak[t][3], by_d[t][3]) for t in range(1, first + 1))
    _, d_at_switch, peak_at_switch, _ = by_peak[first]
    assert d_at_switch < peak_at_switch / 2  # d was still climbing
    assert peak.state[PEAK_MOVED_AT] <= first - 100 < peak.state[PEAK_MOVED_AT] + 10
    assert peak.state[SOAP_LR] == 0.5 * peak_at_switch == on_d.state[SOAP_LR]
    fit = [float((a @ net.weight.detach() @ b - c).square().sum()) for net in (peak_net, d_net)]
    assert fit[0] < fit[1] / 10, fit

    model, opt = start("peak")
    run(model, opt, range(1, 301))
    state = copy.deepcopy(opt.state_dict())
    twin_model, twin = start("peak")
    twin_model.load_state_dict(model.state_dict())
    twin.load_state_dict(state)
    assert run(model, opt, range(301, 701)).keys() == run(twin_model, twin, range(301, 701)).keys()
    assert torch.equal(model.weight, twin_model.weight) and twin.soap_switched_at == first
    del state["state"][PEAK_MOVED_AT]
    old_model, old = start("peak")
    old.load_state_dict(state)
    assert old.state[PEAK_MOVED_AT] == state["state"][DISTANCE_MOVED_AT] == 291  # the climb's last estimate


def test_following_the_estimate_after_the_switch_lets_a_switch_made_in_a_plateau_climb_and_resumes() -> None:
    """A fit whose gradients are zero on steps 12-80 holds d still, so a switch with a 20-step window comes in that
    plateau, at half of d there (8e-6). Frozen (0.16), SOAP's step stays that small; with follow=True the estimate
    runs on after the switch (on its own steps, at the settled growth rate), SOAP's lr is half of it every step and
    the fit goes 10x lower. The two runs are the same step for step up to the switch; following keeps the estimate's
    buffers and saves them, and a state saved mid-climb resumes bit for bit. A following state loaded without follow,
    or a frozen one loaded with it, takes SOAP's step at the lr it was saved with, from then on frozen."""
    from metaopt.optim.optimizer import DISTANCE, SOAP_FOLLOWS, SOAP_LR
    a, b, c = _rotated_problem()

    def start(follow: bool) -> tuple[nn.Module, GMNOptimizer]:
        model = nn.Linear(10, 12, bias=False)
        nn.init.zeros_(model.weight)
        return model, GMNOptimizer(model, example_inputs=torch.zeros(1, 10), d0=1e-6,  # 0.16's start
                                   soap_switch=SoapSwitch(window=20, decline_below=0.0, follow=follow))

    def run(model: nn.Module, opt: GMNOptimizer, steps: range) -> dict[int, tuple[float, float, torch.Tensor]]:
        return _paused_fit(model, opt, (a, b, c), steps, range(12, 81), lambda: (
            float(opt.state[DISTANCE]), float(opt.state[SOAP_LR]), model.weight.detach().clone()))
    (frozen_net, frozen), (follow_net, follows) = start(False), start(True)
    by_frozen, by_follow = run(frozen_net, frozen, range(1, 601)), run(follow_net, follows, range(1, 601))
    switch = follows.soap_switched_at
    assert 40 <= switch <= 60 and frozen.soap_switched_at == switch
    assert all(torch.equal(by_frozen[t][2], by_follow[t][2]) for t in range(1, switch + 1))
    lr_at_switch = by_follow[switch][1]
    assert lr_at_switch == by_frozen[switch][1] == 0.5 * by_follow[switch][0] < 1e-5
    assert all(by_frozen[t][1] == lr_at_switch for t in range(switch, 601))
    assert all(lr == 0.5 * d for d, lr, _ in by_follow.values() if lr > 0)
    assert by_follow[600][1] > 100 * lr_at_switch  # d climbed after the switch
    fit = [float((a @ net.weight.detach() @ b - c).square().sum()) for net in (frozen_net, follow_net)]
    assert fit[1] < fit[0] / 10, fit
    assert {"start", "grad_sum"} <= set(follows.state_dict()["state"][0])
    assert not {"start", "grad_sum"} & set(frozen.state_dict()["state"][0])

    model, opt = start(True)
    run(model, opt, range(1, 201))
    state = copy.deepcopy(opt.state_dict())
    twin_model, twin = start(True)
    twin_model.load_state_dict(model.state_dict())
    twin.load_state_dict(state)
    assert twin.state[SOAP_FOLLOWS] == 1
    assert run(model, opt, range(201, 401)) .keys() == run(twin_model, twin, range(201, 401)).keys()
    assert torch.equal(model.weight, twin_model.weight) and float(twin.state[SOAP_LR]) == float(opt.state[SOAP_LR])
    for saved, follow in ((state, False), (frozen.state_dict(), True)):
        other_model, other = start(follow)
        other.load_state_dict(copy.deepcopy(saved))
        lr = float(other.state[SOAP_LR])
        assert other.state[SOAP_FOLLOWS] == 0 and "start" not in other.state_dict()["state"][0]
        run(other_model, other, range(1, 51))
        assert float(other.state[SOAP_LR]) == lr


def test_following_after_a_climb_keeps_the_frozen_lr_until_the_estimate_has_climbed_k_fold_then_follows_it() -> None:
    """The plateau fit of the follow test, with follow_climb=k: the estimate runs on after the switch, SOAP's lr stays
    at its value at the switch (the runs equal the frozen one step for step) until half of d first reaches k x it
    (opt.soap_climbed_at), and is half of d on every step from then on. A k the estimate never reaches is the frozen
    run to the end, bit for bit. A state saved while waiting resumes bit for bit, climb included; loaded with
    follow=True it follows from then on, loaded frozen it stays frozen."""
    from metaopt.optim.optimizer import DISTANCE, SOAP_FOLLOWS, SOAP_LR
    a, b, c = _rotated_problem()

    def start(**switch) -> tuple[nn.Module, GMNOptimizer]:
        model = nn.Linear(10, 12, bias=False)
        nn.init.zeros_(model.weight)
        return model, GMNOptimizer(model, example_inputs=torch.zeros(1, 10), d0=1e-6,  # 0.16's start
                                   soap_switch=SoapSwitch(window=20, decline_below=0.0, **switch))

    def run(model: nn.Module, opt: GMNOptimizer, steps: range) -> dict[int, tuple[float, float, torch.Tensor, int]]:
        return _paused_fit(model, opt, (a, b, c), steps, range(12, 81), lambda: (
            float(opt.state[DISTANCE]), float(opt.state[SOAP_LR]), model.weight.detach().clone(), opt.soap_climbed_at))
    runs = {k: start(**kw) for k, kw in (("frozen", {}), ("climb", {"follow_climb": 8.0}),
                                         ("never", {"follow_climb": 1e12}))}
    by = {k: run(net, opt, range(1, 601)) for k, (net, opt) in runs.items()}
    switch, climbed = runs["climb"][1].soap_switched_at, runs["climb"][1].soap_climbed_at
    assert 40 <= switch <= 60 and runs["frozen"][1].soap_switched_at == switch
    lr_at_switch = by["frozen"][switch][1]
    assert switch + 10 < climbed < 500, climbed
    assert all(torch.equal(by["climb"][t][2], by["frozen"][t][2]) for t in range(1, climbed))  # lr moves in climbed
    assert all(by["climb"][t][1] == lr_at_switch and by["climb"][t][3] == 0 for t in range(switch, climbed))
    assert 0.5 * by["climb"][climbed - 1][0] < 8 * lr_at_switch <= 0.5 * by["climb"][climbed][0]
    assert all(lr == 0.5 * d for d, lr, _, _ in list(by["climb"].values())[climbed - 1:])
    assert by["climb"][600][1] > 100 * lr_at_switch
    fit = [float((a @ net.weight.detach() @ b - c).square().sum()) for net, _ in runs.values()]
    assert fit[1] < fit[0] / 10, fit
    assert all(torch.equal(by["never"][t][2], by["frozen"][t][2]) for t in range(1, 601))
    assert runs["never"][1].soap_climbed_at == 0 and runs["never"][1].state[SOAP_FOLLOWS] == 2

    model, opt = start(follow_climb=8.0)
    run(model, opt, range(1, switch + 11))
    state = copy.deepcopy(opt.state_dict())
    twin_model, twin = start(follow_climb=8.0)
    twin_model.load_state_dict(model.state_dict())
    twin.load_state_dict(state)
    assert twin.state[SOAP_FOLLOWS] == 2
    run(model, opt, range(switch + 11, 401)), run(twin_model, twin, range(switch + 11, 401))
    assert torch.equal(model.weight, twin_model.weight) and twin.soap_climbed_at == opt.soap_climbed_at == climbed
    for switch, follows in (({"follow": True}, 1), ({}, 0)):  # waiting, loaded with follow: follows; frozen: frozen
        other_model, other = start(**switch)
        other.load_state_dict(copy.deepcopy(state))
        assert other.state[SOAP_FOLLOWS] == follows and ("start" in other.state_dict()["state"][0]) == bool(follows)
