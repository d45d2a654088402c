"""outer_train.muon: the Muon baseline (orthogonalised momentum on hidden matrices, Adam on the rest)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from outer_train.muon import HybridMuon, hidden_matrices, orthogonalise


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.conv_in = nn.Conv1d(8, 12, 3)
        self.conv_mid = nn.Conv1d(12, 12, 3)
        self.hidden = nn.Linear(12, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).transpose(1, 2)
        x = torch.relu(self.conv_mid(torch.relu(self.conv_in(x)))).mean(-1)
        return self.head(self.norm(torch.relu(self.hidden(x))))


def test_hidden_matrices_leave_the_first_and_last_layer_embeddings_and_vectors_to_adam() -> None:
    net = _Net()
    assert [id(p) for p in hidden_matrices(net)] == [id(net.conv_mid.weight), id(net.hidden.weight)]
    assert hidden_matrices(nn.Sequential(nn.Linear(3, 2))) == []  # one layer: nothing hidden
    opt = HybridMuon(net, lr=0.01)
    adam = {id(p) for g in opt.adam.param_groups for p in g["params"]}
    muon = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not adam & muon and adam | muon == {id(p) for p in net.parameters()}


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (16, 16)])
def test_orthogonalise_brings_every_singular_value_near_one(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k))
    g = u @ torch.diag(torch.logspace(-1, 1, k)) @ v.T  # singular values 0.1 .. 10
    s = torch.linalg.svdvals(orthogonalise(g))
    assert s.min() > 0.5 and s.max() < 1.5  # the quintic iteration's band (torch.optim.Muon's docstring)
    with pytest.raises(ValueError, match="matrix"):
        orthogonalise(torch.randn(3))


def test_denormals_are_flushed_only_inside_the_iteration_and_change_nothing_visible() -> None:
    """Rows 1e-20 below the others (a fit's end) push the iteration's fifth powers below float32's normal
    range; flushing them to zero leaves the result as the plain iteration's, and the mode is off afterwards."""
    torch.manual_seed(0)
    g = torch.randn(48, 64)
    g[:16] *= 1e-20
    x = g / (g.norm() + 1e-7)
    a, b, c = 3.4445, -4.7750, 2.0315
    for _ in range(5):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    assert torch.allclose(orthogonalise(g), x, rtol=1e-5, atol=1e-30)
    assert torch.tensor(1e-40).mul(1.0).item() > 0  # denormals are kept again outside it


def test_a_linear_layer_steps_as_torch_optim_muon_does() -> None:
    """On a 2-D hidden weight the step is torch.optim.Muon's with adjust_lr_fn="match_rms_adamw" and no
    weight decay (torch's Newton-Schulz runs in bfloat16, this one in float32: equal to bfloat16's precision)."""
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon arrived in PyTorch 2.9")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 3))
    twin = copy.deepcopy(net)
    ours = HybridMuon(net, lr=0.01)
    theirs = torch.optim.Muon([twin[2].weight], lr=0.01, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
    start = twin[2].weight.detach().clone()
    for _ in range(4):
        g = torch.randn(24, 32)
        net[2].weight.grad, twin[2].weight.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    moved = (twin[2].weight - start).norm()
    assert (net[2].weight - twin[2].weight).norm() < 0.03 * moved


def test_a_convolution_moves_along_its_flattened_filters_orthogonal_factor() -> None:
    """The first step from zero momentum is along orthogonalise(grad as out x (in * kernel)), scaled to
    0.2 sqrt(max(rows, cols)) times the lr."""
    torch.manual_seed(0)
    net = _Net()
    opt = HybridMuon(net, lr=0.1)
    before = net.conv_mid.weight.detach().clone()
    g = torch.randn_like(before)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    net.conv_mid.weight.grad = g
    opt.step()
    rows = g.reshape(12, -1)
    want = before - 0.1 * 0.2 * math.sqrt(36) * orthogonalise(rows).reshape(before.shape)
    assert torch.allclose(net.conv_mid.weight, want, atol=1e-6)


def test_it_trains_follows_a_scheduler_and_its_state_round_trips() -> None:
    torch.manual_seed(0)
    net = _Net()
    tokens, labels = torch.randint(0, 11, (32, 9)), torch.randint(0, 5, (32,))

    def loss_of(model: nn.Module) -> torch.Tensor:
        return nn.functional.cross_entropy(model(tokens), labels)

    opt = HybridMuon(net, lr=1e-2)
    first = loss_of(net).item()
    for _ in range(40):
        opt.zero_grad()
        loss_of(net).backward()
        opt.step()
    assert loss_of(net).item() < 0.5 * first
    twin = copy.deepcopy(net)
    resumed = HybridMuon(twin, lr=1.0)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))  # lr, momentum buffers, Adam's moments (a saved copy)
    for model, o in ((net, opt), (twin, resumed)):
        o.zero_grad()
        loss_of(model).backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), twin.parameters()))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step()
    sched.step()
    opt.zero_grad()
    loss_of(net).backward()
    opt.step()
    assert opt.adam.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(5e-3)
    with pytest.raises(ValueError, match="lr"):
        HybridMuon(net, lr=0.0)
    with pytest.raises(TypeError, match="model"):
        HybridMuon(list(net.parameters()), lr=0.1)
    with pytest.raises(ValueError, match="other parameters"):
        HybridMuon(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), lr=0.1).load_state_dict(
            {**HybridMuon(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), lr=0.1).state_dict(), "adam": None})
