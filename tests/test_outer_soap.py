"""outer_train.soap: the SOAP baseline (Adam in Shampoo's eigenbasis on matrices, Adam on vectors)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from metaopt.optim.eigenbasis import _orthonormal, blocks, rotate, rotate_back, start_basis
from outer_train.soap import SOAP


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 7), nn.Tanh(), nn.Linear(7, 3))


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches cycling through four fixed ones (a set a network can fit)."""
    g = torch.Generator().manual_seed(1)
    pool = [(torch.randn(16, 2, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(4)]
    return [pool[i % 4] for i in range(n)]


def _train(model: nn.Module, opt: torch.optim.Optimizer, batches) -> list[float]:  # noqa: ANN001
    losses = []
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_unrotated_soap_is_adam() -> None:
    """With no side short enough to rotate, every parameter runs Adam (betas, bias correction) exactly."""
    a, b = _net(), _net()
    soap = SOAP(a.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-12, max_dim=1)
    adam = torch.optim.Adam(b.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-12)
    batches = _batches(25)
    _train(a, soap, batches)
    _train(b, adam, batches)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not any("q_left" in st or "q_right" in st for st in soap.state.values())


def test_first_basis_diagonalises_the_statistics_and_filters_are_matrices() -> None:
    net = _net()
    opt = SOAP(net.parameters(), lr=1e-3)
    _train(net, opt, _batches(1))
    conv = opt.state[net[0].weight]
    assert conv["q_left"].shape == (6, 6) and conv["q_right"].shape == (18, 18)  # out x (in * kernel)
    for side, stat in (("q_left", "left"), ("q_right", "right")):
        q = conv[side]
        torch.testing.assert_close(q.T @ q, torch.eye(q.shape[0]), atol=1e-5, rtol=0)
        rayleigh = q.T @ conv[stat] @ q
        off = rayleigh - torch.diag(torch.diag(rayleigh))
        assert off.abs().max() <= 1e-4 * rayleigh.abs().max()
        assert torch.all(torch.diag(rayleigh)[:-1] >= torch.diag(rayleigh)[1:] - 1e-6)  # largest first
    assert set(opt.state[net[0].bias]) == {"step", "exp_avg", "exp_avg_sq"}  # vectors: Adam


def test_refresh_carries_the_momentum_and_reorders_the_second_moment() -> None:
    net = _net()
    opt = SOAP(net.parameters(), lr=1e-3, precondition_every=5)
    batches = _batches(5)
    _train(net, opt, batches[:4])
    w = net[3].weight
    st = opt.state[w]
    before_q = st["q_left"].clone()
    # the refresh runs at the end of the 5th step; compare the momentum as a matrix of the parameter's coordinates
    snapshot = copy.deepcopy(st)
    _train(net, opt, batches[4:])
    assert not torch.allclose(st["q_left"], before_q)  # the basis moved
    # what the 5th step left: the momentum before the refresh, in the old basis
    g = w.grad.reshape(w.shape[0], -1)
    expected = rotate_back(snapshot, snapshot["exp_avg"] * 0.95 + 0.05 * (snapshot["q_left"].T @ g @ snapshot["q_right"]))
    torch.testing.assert_close(rotate_back(st, st["exp_avg"]), expected, atol=1e-6, rtol=1e-4)
    v_old = snapshot["exp_avg_sq"] * 0.95 + 0.05 * (snapshot["q_left"].T @ g @ snapshot["q_right"]) ** 2
    torch.testing.assert_close(st["exp_avg_sq"].flatten().sort().values, v_old.flatten().sort().values)


def test_max_dim_leaves_a_long_side_unrotated() -> None:
    lin = nn.Linear(40, 4)
    opt = SOAP(lin.parameters(), lr=1e-3, max_dim=10)
    lin(torch.randn(8, 40)).square().mean().backward()
    opt.step()
    assert {"left", "q_left"} <= set(opt.state[lin.weight]) and "q_right" not in opt.state[lin.weight]


@pytest.mark.parametrize("sides, kept", [
    ("shorter", {"conv": "left", "wide": "left", "out": "left", "square": "right"}),  # 6 x 18, 7 x 96, 3 x 7, 3 x 3
    ("columns", {"conv": "right", "wide": "right", "out": "right", "square": "right"}),
    ("rows", {"conv": "left", "wide": "left", "out": "left", "square": "left"})])
def test_one_side_keeps_that_sides_statistics_and_basis_only(sides: str, kept: dict) -> None:
    net = nn.Sequential(_net(), nn.Linear(3, 3))
    opt = SOAP(net.parameters(), lr=1e-3, sides=sides)
    net(torch.randn(4, 2, 6, 6)).square().mean().backward()
    opt.step()
    keys = {name: set(opt.state[p]) - {"step", "exp_avg", "exp_avg_sq"} for name, p in net.named_parameters()}
    names = {"conv": "0.0.weight", "wide": "0.3.weight", "out": "0.5.weight", "square": "1.weight"}
    assert {k: keys[n] for k, n in names.items()} == {k: {side, f"q_{side}"} for k, side in kept.items()}
    net(torch.randn(4, 2, 6, 6)).square().mean().backward()
    opt.step()  # the second step rotates by the kept side only
    assert set(opt.state[net[0][0].weight]) - {"step", "exp_avg", "exp_avg_sq"} == {kept["conv"], f"q_{kept['conv']}"}


def test_one_sided_undoes_a_rotation_on_its_side() -> None:
    """min ||W B - C||^2 (W 12 x 10) with B ill-conditioned in a rotated basis: one-sided SOAP on the shorter side
    rotates the 10 side, B's, and ends far below Adam, each at its best lr of the same grid."""
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(10, 10, generator=g))[0]
    b = q @ torch.diag(torch.logspace(0, -2, 10)) @ q.T
    c = torch.randn(12, 10, generator=g) @ b

    def final(make) -> float:  # noqa: ANN001
        w = nn.Parameter(torch.zeros(12, 10))
        opt = make([w])
        for _ in range(300):
            loss = (w @ b - c).square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float((w.detach() @ b - c).square().sum())

    grid = [3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
    one_sided = min(final(lambda p, lr=lr: SOAP(p, lr=lr, sides="shorter")) for lr in grid)
    adam = min(final(lambda p, lr=lr: torch.optim.Adam(p, lr=lr)) for lr in grid)
    assert one_sided < adam / 10, (one_sided, adam)


def test_the_refresh_orthonormalises_as_torch_qr_does() -> None:
    """The refresh's ``Q`` without ``R``: bit for bit ``torch.linalg.qr``'s, as a SOAP run's results depend on it."""
    g = torch.Generator().manual_seed(3)
    for n in (1, 7, 64):
        x = torch.randn(n, n, generator=g)
        x = x @ x.T @ torch.linalg.qr(torch.randn(n, n, generator=g))[0]
        assert torch.equal(_orthonormal(x), torch.linalg.qr(x)[0])


def test_soap_beats_adam_where_the_curvature_is_a_rotated_kronecker_product() -> None:
    """min ||A W B - C||^2 with A, B ill-conditioned in a rotated basis: Adam's diagonal preconditioner cannot
    undo the rotation, Shampoo's eigenbasis can. Each at its best lr of the same grid."""
    g = torch.Generator().manual_seed(0)
    def rotated(n: int) -> torch.Tensor:
        q = torch.linalg.qr(torch.randn(n, n, generator=g))[0]
        return q @ torch.diag(torch.logspace(0, -1.5, n)) @ q.T
    a, b = rotated(12), rotated(10)
    c = a @ torch.randn(12, 10, generator=g) @ b  # a solution of moderate size, loss 0 there

    def final(make) -> float:  # noqa: ANN001
        w = nn.Parameter(torch.zeros(12, 10))
        opt = make([w])
        for _ in range(300):
            loss = (a @ w @ b - c).square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float((a @ w.detach() @ b - c).square().sum())

    grid = [3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
    soap = min(final(lambda p, lr=lr: SOAP(p, lr=lr)) for lr in grid)
    adam = min(final(lambda p, lr=lr: torch.optim.Adam(p, lr=lr)) for lr in grid)
    assert soap < adam / 10, (soap, adam)


def test_training_lowers_the_loss_and_a_saved_state_resumes_bit_for_bit() -> None:
    net = _net()
    opt = SOAP(net.parameters(), lr=2e-2, precondition_every=4)
    batches = _batches(50)
    losses = _train(net, opt, batches[:40])
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4])
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain tensors and numbers: no pickled classes
    twin = _net()
    twin.load_state_dict(saved["model"])
    twin_opt = SOAP(twin.parameters(), lr=2e-2, precondition_every=4)
    twin_opt.load_state_dict(saved["opt"])
    assert _train(net, opt, batches[40:]) == _train(twin, twin_opt, batches[40:])
    for p, q in zip(net.parameters(), twin.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kwargs, match", [({"lr": 0.0}, "lr"), ({"betas": (0.9, 1.0)}, "betas"),
                                           ({"shampoo_beta": -0.1}, "shampoo_beta"),
                                           ({"precondition_every": 0}, "precondition_every"),
                                           ({"max_dim": 0}, "max_dim"), ({"sides": "diagonal"}, "sides"),
                                           ({"block": 1}, "block"), ({"block": True}, "block")])
def test_soap_rejects_bad_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SOAP(nn.Linear(2, 2).parameters(), **{"lr": 1e-3, **kwargs})


def test_tensors_at_different_steps_take_their_own_bias_correction() -> None:
    """A parameter without a gradient on some steps falls behind in steps; the step is grouped by step number, so
    each tensor moves as a SOAP of its own would move it."""
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(3, 2)
    a2, b2 = copy.deepcopy(a), copy.deepcopy(b)
    together = SOAP([*a.parameters(), *b.parameters()], lr=1e-2, precondition_every=3)
    apart = [SOAP(a2.parameters(), lr=1e-2, precondition_every=3), SOAP(b2.parameters(), lr=1e-2, precondition_every=3)]
    g = torch.Generator().manual_seed(5)
    for t in range(12):
        x = torch.randn(8, 4, generator=g)
        for first, second, opts in ((a, b, [together]), (a2, b2, apart)):
            for p in [*first.parameters(), *second.parameters()]:
                p.grad = None
            (second(first(x).tanh()).square().mean() if t % 3 else first(x).square().mean()).backward()
            for opt in opts:
                opt.step()
    assert together.state[b.weight]["step"] == 8 and together.state[a.weight]["step"] == 12
    for p, q in zip([*a.parameters(), *b.parameters()], [*a2.parameters(), *b2.parameters()]):
        assert torch.equal(p, q)


def test_blocks_are_the_fewest_equal_ones_that_fit() -> None:
    assert [blocks(d, 64) for d in (10, 64, 96, 256, 288, 576, 1000, 1581)] == [1, 1, 2, 4, 6, 9, 20, 31]
    assert blocks(97, 64) == blocks(158, 64) == blocks(254, 64) == 1 and blocks(300, None) == 1  # none of 32-64 divide
    assert blocks(1009, 64) == blocks(262, 64) == 0 and blocks(1009, None) == 1  # longer than 4 blocks: not rotated


def test_a_side_no_blocks_divide_beyond_four_blocks_is_not_rotated() -> None:
    """A 1,009-row (prime) matrix keeps no left basis with blocks of 64 (a whole 1,009 x 1,009 eigendecomposition is
    what blocks cap): its rows take Adam's diagonal, its 128 columns two blocks of 64; whole sides keep both."""
    g = torch.randn(1009, 128, generator=torch.Generator().manual_seed(0))
    blocked: dict = {}
    start_basis(blocked, g, 10_000, "both", block=64)
    assert "q_left" not in blocked and "left" not in blocked and blocked["q_right"].shape == (2, 64, 64)
    x = torch.randn(1009, 128)
    torch.testing.assert_close(rotate_back(blocked, rotate(blocked, x)), x, atol=1e-4, rtol=1e-4)
    whole: dict = {}
    start_basis(whole, g, 10_000, "both", block=None)
    assert whole["q_left"].shape == (1009, 1009)


def test_a_blocked_basis_is_block_diagonal_and_orthogonal() -> None:
    g = torch.randn(256, 288, generator=torch.Generator().manual_seed(0))
    basis: dict = {}
    start_basis(basis, g, 10_000, "both", block=64)
    assert basis["q_left"].shape == (4, 64, 64) and basis["q_right"].shape == (6, 48, 48)
    dense = {side: torch.block_diag(*basis[side]) for side in ("q_left", "q_right")}
    x = torch.randn(256, 288)
    torch.testing.assert_close(rotate(basis, x), dense["q_left"].T @ x @ dense["q_right"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rotate_back(basis, rotate(basis, x)), x, atol=1e-4, rtol=1e-4)
    for side, stat, full in (("q_left", "left", g @ g.T), ("q_right", "right", g.T @ g)):
        size = basis[side].shape[1]
        mask = torch.block_diag(*[torch.ones(size, size)] * basis[side].shape[0])
        torch.testing.assert_close(torch.block_diag(*basis[stat]), full * mask)  # each block its own statistic
    lopsided: dict = {}
    start_basis(lopsided, torch.randn(97, 8), 10_000, "rows", block=64)
    assert lopsided["q_left"].shape == (97, 97)  # no blocks of 32-64 divide 97: the side stays whole


@pytest.mark.parametrize("sides", ["rows", "columns"])
def test_one_blocked_side_is_soap_on_each_block_by_itself(sides: str) -> None:
    """Rotating one side in diagonal blocks splits the matrix along that side into independent SOAPs: 60 steps
    (six refreshes) of SOAP(block=4) on a 12 x 12 weight equal three SOAPs on its 4-row (4-column) slices."""
    g = torch.Generator().manual_seed(5)
    a, c = torch.randn(12, 12, generator=g), torch.randn(12, 12, generator=g)
    w = nn.Parameter(torch.randn(12, 12, generator=g))
    parts = [nn.Parameter(w.detach()[4 * i:4 * i + 4].clone() if sides == "rows" else w.detach()[:, 4 * i:4 * i + 4].clone())
             for i in range(3)]
    blocked = SOAP([w], lr=1e-2, precondition_every=10, sides=sides, block=4)
    sliced = [SOAP([p], lr=1e-2, precondition_every=10, sides=sides) for p in parts]
    for _ in range(60):
        for params, opts in (([w], [blocked]), (parts, sliced)):
            whole = torch.cat(params, 0 if sides == "rows" else 1) if len(params) > 1 else params[0]
            loss = torch.tanh(a @ whole @ c).square().sum()
            for opt in opts:
                opt.zero_grad()
            loss.backward()
            for opt in opts:
                opt.step()
    torch.testing.assert_close(w.detach(), torch.cat([p.detach() for p in parts], 0 if sides == "rows" else 1),
                               atol=1e-5, rtol=1e-4)
    assert blocked.state[w][f"q_{'left' if sides == 'rows' else 'right'}"].shape == (3, 4, 4)
