"""Parameter nowcasting: inputs, the jump inside GMNOptimizer, equivariance, checkpoints, the trainer."""

import copy
import math

import pytest
import torch
from torch import nn

from metaopt import GMNOptimizer, to_graph
from metaopt.optim.nowcast import (NowcastCheckpointError, NowcastConfig, Nowcaster, nowcast_inputs,
                                   resolve_nowcaster, tensor_ids)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def _batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=g), torch.randn(8, 3, generator=g)) for _ in range(n)]


def _train(model: nn.Module, opt: torch.optim.Optimizer, batches) -> None:
    for x, y in batches:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def test_inputs_are_per_tensor_scale_free_and_a_still_tensor_stays():
    numels = [3, 2]
    tid = tensor_ids(numels)
    states = torch.tensor([[0.0, 1.0, 2.0, 5.0, 5.0], [1.0, 1.0, 4.0, 5.0, 5.0], [2.0, 3.0, 6.0, 5.0, 5.0]])
    x, unit = nowcast_inputs(states, tid, 2, horizon=4)
    disp0 = states[0, :3] - states[-1, :3]
    assert torch.allclose(unit[:3], disp0.pow(2).mean().sqrt().expand(3))
    assert torch.equal(unit[3:], torch.zeros(2)) and torch.equal(x[3:, :2], torch.zeros(2, 2))  # did not move
    assert torch.allclose(x[:3, 0], disp0 / unit[:3]) and torch.allclose(x[:, 2], torch.full((5,), math.log(4)))
    x10, unit10 = nowcast_inputs(10 * states, tid, 2, horizon=4)  # scale-free: same inputs, 10x unit
    assert torch.allclose(x10, x) and torch.allclose(unit10, 10 * unit)


@pytest.mark.parametrize("kind", ["gmn", "mlp"])
def test_untrained_nowcaster_is_adam_bit_for_bit(kind):
    model, ref = _mlp(), _mlp()
    nc = Nowcaster(kind=kind, context=3, interval=2, hidden=8)
    opt = GMNOptimizer(model, rule="adam", lr=1e-2, nowcast=nc, example_inputs=torch.randn(2, 4))
    adam = torch.optim.Adam(ref.parameters(), lr=1e-2)
    batches = _batches(25)
    _train(model, opt, batches)
    _train(ref, adam, batches)
    assert opt.nowcast_jumps == 0 and opt.nowcast_fallbacks == 0 and opt.nowcast_reverts == 0  # nothing moved
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_jump_lands_where_the_network_says():
    nc = Nowcaster(kind="mlp", context=3, interval=2, hidden=8)
    with torch.no_grad():
        nc.net.out.bias.fill_(2.0)  # predict +2 units for every moving parameter
    model, ref = _mlp(), _mlp()
    opt = GMNOptimizer(model, rule="adam", lr=1e-2, nowcast=nc, example_inputs=torch.randn(2, 4))
    adam = torch.optim.Adam(ref.parameters(), lr=1e-2)
    batches = _batches(6)
    states = []
    for i, (x, y) in enumerate(batches):
        adam.zero_grad()
        nn.functional.mse_loss(ref(x), y).backward()
        adam.step()
        if (i + 1) % 2 == 0:
            states.append(torch.cat([p.detach().reshape(-1) for p in ref.parameters()]))
    _train(model, opt, batches)
    numels = [p.numel() for p in ref.parameters()]
    _, unit = nowcast_inputs(torch.stack(states), tensor_ids(numels), len(numels), nc.config.horizon)
    expected = states[-1] + 2.0 * unit
    got = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert opt.nowcast_jumps == 1 and torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, states[-1])


def test_guard_undoes_a_jump_that_blows_the_gradient_up_and_shortens_the_next():
    nc = Nowcaster(kind="mlp", context=3, interval=2, hidden=8, horizon=4)
    with torch.no_grad():
        nc.net.out.bias.fill_(40.0)  # far past anything the context supports
    model, ref = _mlp(), _mlp()
    opt = GMNOptimizer(model, rule="adam", lr=1e-2, nowcast=nc, example_inputs=torch.randn(2, 4))
    adam = torch.optim.Adam(ref.parameters(), lr=1e-2)
    batches = _batches(7)
    _train(model, opt, batches[:6])
    _train(ref, adam, batches[:6])
    assert opt.nowcast_jumps == 1 and not torch.allclose(model[0].weight, ref[0].weight)
    _train(model, opt, batches[6:])  # the gradient at the jumped point is far larger: undone, step not taken
    assert opt.nowcast_reverts == 1 and opt.state["nowcast_horizon"] == 2
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)  # back where Adam was before the jump


def test_guard_keeps_a_jump_that_helps():
    nc = Nowcaster(kind="mlp", context=3, interval=2, hidden=8, horizon=4)
    with torch.no_grad():
        nc.net.out.bias.fill_(0.05)  # a small step along nothing in particular
    model = _mlp()
    opt = GMNOptimizer(model, rule="adam", lr=1e-3, nowcast=nc, example_inputs=torch.randn(2, 4))
    _train(model, opt, _batches(7))
    assert opt.nowcast_jumps == 1 and opt.nowcast_reverts == 0 and opt.state["nowcast_horizon"] == 4


def test_gmn_nowcast_is_equivariant_to_hidden_permutations():
    torch.manual_seed(0)
    nc = Nowcaster(kind="gmn", context=3, hidden=8)
    for p in nc.parameters():
        nn.init.normal_(p, std=0.3)
    model = _mlp()
    graph = nc.prepare(to_graph(model, (torch.randn(2, 4),)), "cpu")
    numels = [p.numel() for p in model.parameters()]
    tid = tensor_ids(numels)
    states = torch.randn(3, sum(numels))
    perm = torch.randperm(6)

    def permuted(flat: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = flat.split(numels)
        return torch.cat([w1.view(6, 4)[perm].reshape(-1), b1[perm], w2.view(3, 6)[:, perm].reshape(-1), b2])

    with torch.no_grad():
        out = nc(graph, states, tid, len(numels))
        out_p = nc(graph, torch.stack([permuted(s) for s in states]), tid, len(numels))
    assert torch.allclose(out_p, permuted(out), atol=1e-5)


def test_resume_in_the_middle_of_a_context_matches_an_uninterrupted_run():
    nc = Nowcaster(kind="mlp", context=3, interval=2, hidden=8)
    with torch.no_grad():
        nc.net.out.bias.fill_(0.5)
    batches = _batches(14)
    model_a = _mlp()
    opt_a = GMNOptimizer(model_a, rule="adam", lr=1e-2, nowcast=nc, example_inputs=torch.randn(2, 4))
    _train(model_a, opt_a, batches)
    model_b = _mlp()
    opt_b = GMNOptimizer(model_b, rule="adam", lr=1e-2, nowcast=nc, example_inputs=torch.randn(2, 4))
    _train(model_b, opt_b, batches[:9])  # 4 states stored: one jump done, one state into the next context
    saved, weights = copy.deepcopy(opt_b.state_dict()), copy.deepcopy(model_b.state_dict())
    model_c = _mlp(1)
    model_c.load_state_dict(weights)
    opt_c = GMNOptimizer(model_c, rule="adam", lr=1e-2, nowcast=nc, example_inputs=torch.randn(2, 4))
    opt_c.load_state_dict(saved)
    _train(model_c, opt_c, batches[9:])
    assert opt_c.nowcast_jumps == opt_a.nowcast_jumps == 2
    for p, q in zip(model_a.parameters(), model_c.parameters()):
        assert torch.allclose(p, q, atol=1e-7)


def test_non_finite_nowcast_is_discarded_and_counted():
    nc = Nowcaster(kind="mlp", context=2, interval=1, hidden=4)
    with torch.no_grad():
        nc.net.out.bias.fill_(float("nan"))
    model = _mlp()
    opt = GMNOptimizer(model, rule="adam", lr=1e-2, nowcast=nc, example_inputs=torch.randn(2, 4))
    _train(model, opt, _batches(4))
    assert opt.nowcast_fallbacks == 2 and opt.nowcast_jumps == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoint_round_trip_and_refusals(tmp_path):
    nc = Nowcaster(kind="gmn", hidden=8)
    for p in nc.parameters():
        nn.init.normal_(p)
    nc.save_pretrained(tmp_path / "nc", command="test")
    back = resolve_nowcaster(tmp_path / "nc")
    assert back.config == nc.config
    for (k, a), (_, b) in zip(nc.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    data = bytearray((tmp_path / "nc" / "nowcaster.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "nc" / "nowcaster.safetensors").write_bytes(bytes(data))
    with pytest.raises(NowcastCheckpointError, match="checksum"):
        Nowcaster.from_pretrained(tmp_path / "nc")
    with pytest.raises(NowcastCheckpointError, match="lacks"):
        Nowcaster.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="horizon"):
        NowcastConfig(horizon=20, max_horizon=10)


def _decaying_trajectories(n: int, seed: int) -> list:
    """Parameters relaxing exponentially to a fixed point (Adam's late phase, schematically): linear
    extrapolation of the context overshoots, the network can learn the deceleration."""
    from outer_train.nowcast import Trajectory

    model = _mlp()
    numels = [p.numel() for p in model.parameters()]
    graph = Nowcaster(kind="mlp").prepare(to_graph(model, (torch.randn(2, 4),)), "cpu")
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(30.0)[:, None]
    out = []
    for _ in range(n):
        end, start = torch.randn(sum(numels), generator=g), torch.randn(sum(numels), generator=g)
        tau = 4 + 8 * torch.rand(sum(numels), generator=g)
        out.append(Trajectory(end + (start - end) * torch.exp(-t / tau), graph, numels))
    return out


def test_fit_learns_the_curvature_linear_extrapolation_misses():
    from outer_train.nowcast import fit

    cfg = NowcastConfig(kind="mlp", hidden=16, context=4, horizon=3, max_horizon=6)
    nc, report = fit(_decaying_trajectories(6, 0), _decaying_trajectories(2, 1), cfg, steps=400, batch=4, lr=1e-2,
                     seed=0, eval_every=100)
    last = report["history"][-1]
    assert report["best_val"] < 0.5 * last["val_linear"] and report["best_val"] < 0.5 * last["val_zero"]


def test_trainer_collects_resumably_and_refuses_to_ship_what_learned_nothing(tmp_path):
    from outer_train.nowcast import main

    out = tmp_path / "run"
    args = ["--out", str(out), "--tasks", "3", "--steps", "300", "--context", "3", "--max-horizon", "4",
            "--horizon", "2", "--batch", "2", "--kind", "mlp", "--fit-steps", "2", "--eval-every", "1", "--lr", "0"]
    assert main(args) == 1  # lr 0 learns nothing (= predicting no move): not saved, non-zero exit
    assert not (out / "nowcaster").exists()
    files = sorted((out / "trajectories").glob("task_*"))
    assert len(files) == 3
    stamps = [f.stat().st_mtime_ns for f in files]
    assert main(args) == 1
    assert [f.stat().st_mtime_ns for f in sorted((out / "trajectories").glob("task_*"))] == stamps  # reused, not redone
    with pytest.raises(SystemExit):  # too short for a context plus the longest horizon
        main(["--out", str(out), "--steps", "50"])


def test_collect_draws_large_tasks_under_the_cap_and_rule_trajectories(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from inner_tasks import TaskSpec
    from inner_tasks.models import build_model, count_params
    from inner_tasks.tasks.collections import meta_train_large_distribution
    from outer_train.nowcast import collect

    kw = dict(n=2, steps=40, interval=20, lr_range=(1e-3, 1e-3), collection="meta_train_large", max_params=20_000)
    adam = collect(tmp_path / "adam", **kw)
    rule = collect(tmp_path / "rule", **kw, rule="adam")  # GMNOptimizer(rule="adam") is Adam: the same trajectories
    assert len(adam) == len(rule) == 2
    for a, r in zip(adam, rule):
        with safe_open(str(a), "pt") as f:
            spec = TaskSpec.from_json(f.metadata()["spec"])
        assert meta_train_large_distribution().contains(spec)
        assert count_params(build_model(spec.model, seed=0)) <= 20_000
        sa, sr = load_file(str(a))["states"], load_file(str(r))["states"]
        assert sa.shape[0] == 3 and not torch.equal(sa[0], sa[-1])
        torch.testing.assert_close(sr, sa, rtol=1e-5, atol=1e-6)
    with pytest.raises(SystemExit, match="collected with"):  # a directory is never extended with other settings
        collect(tmp_path / "adam", **{**kw, "max_params": 10_000})
