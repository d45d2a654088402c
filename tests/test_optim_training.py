"""The untrained rule (rule="adam", alpha = 0) trains real models exactly as Adam, and a random rule is
equivariant: permuting hidden units of the model permutes its updates the same way."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from metaopt.optim import GMNOptimizer, RuleConfig, UpdateRule
from test_optim_common import ResCNN, TinyLM, digits, lm_batch, lm_loss, mlp, to_graph


def _run_both(model, loss_fn, steps, lr):
    """Train copies with GMNOptimizer (rule="adam") and torch Adam; return both loss curves."""
    twin = copy.deepcopy(model)
    opt = GMNOptimizer(model, rule="adam", lr=lr)
    ref = torch.optim.Adam(twin.parameters(), lr=lr, foreach=True)
    curves = ([], [])
    for _ in range(steps):
        for m, o, curve in ((model, opt, curves[0]), (twin, ref, curves[1])):
            o.zero_grad()
            loss = loss_fn(m)
            loss.backward()
            o.step()
            curve.append(loss.item())
    return torch.tensor(curves[0]), torch.tensor(curves[1]), model, twin


def _check(ours, adam, model, twin, ratio):
    """Loss falls below ``ratio`` x its start, and the trajectory IS Adam's: the untrained rule's
    arithmetic mirrors torch.optim.Adam(foreach=True) op for op, so equality is exact (any
    plumbing error -- wrong order, state, bias correction, lr -- breaks it at once)."""
    assert ours[-1] < ratio * ours[0], f"loss {ours[0]:.3f} -> {ours[-1]:.3f}, wanted < {ratio} x start"
    assert torch.equal(ours, adam), (ours - adam).abs().max()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_untrained_rule_trains_mlp_on_digits_like_adam():
    torch.manual_seed(0)
    x, y = digits(256)
    model = mlp(64, 32, 10)
    ours, adam, model, twin = _run_both(model, lambda m: nn.functional.cross_entropy(m(x), y), 40, 1e-2)
    _check(ours, adam, model, twin, ratio=0.1)  # loss falls 10x in 40 full-batch steps


def test_untrained_rule_trains_residual_cnn_with_batchnorm_like_adam():
    torch.manual_seed(0)
    x, y = digits(128)
    x = x.view(-1, 1, 8, 8)
    model = ResCNN(c=8)
    ours, adam, model, twin = _run_both(model, lambda m: nn.functional.cross_entropy(m(x), y), 30, 2e-2)
    _check(ours, adam, model, twin, ratio=0.5)  # loss halves in 30 steps
    for a, b in zip(model.buffers(), twin.buffers()):  # BatchNorm running stats follow too
        assert torch.equal(a, b)


def test_untrained_rule_trains_transformer_lm_like_adam():
    torch.manual_seed(0)
    seqs = lm_batch(16)
    model = TinyLM()
    ours, adam, model, twin = _run_both(model, lambda m: lm_loss(m, seqs), 30, 1e-2)
    _check(ours, adam, model, twin, ratio=0.25)  # loss falls 4x in 30 steps


# ---- equivariance of a random rule (needs the GMN and the real converter) ---------------------
def _permute_hidden(model: nn.Sequential, perm: torch.Tensor) -> nn.Sequential:
    """The same function with the first hidden layer's units relabelled by ``perm``."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        out[0].weight.copy_(model[0].weight[perm])
        out[0].bias.copy_(model[0].bias[perm])
        out[2].weight.copy_(model[2].weight[:, perm])
    return out


@pytest.mark.parametrize("kind", ["gmn", "mlp"])
def test_random_rule_is_equivariant_to_hidden_unit_permutations(kind):
    torch.manual_seed(0)
    model = mlp(16, 12, 4)
    perm = torch.randperm(12)
    permuted = _permute_hidden(model, perm)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    rule = UpdateRule(RuleConfig(kind=kind, hidden=16, layers=2, alpha=1.0))
    baseline = UpdateRule(RuleConfig(kind="none"))
    deltas = {}
    for name, m in (("a", model), ("b", permuted), ("adam", copy.deepcopy(model))):
        opt = GMNOptimizer(m, rule=baseline if name == "adam" else copy.deepcopy(rule), lr=1e-2)
        before = [p.detach().clone() for p in m.parameters()]
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        deltas[name] = [p.detach() - q for p, q in zip(m.parameters(), before)]
    a, b = deltas["a"], deltas["b"]
    torch.testing.assert_close(b[0], a[0][perm], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(b[1], a[1][perm], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(b[2], a[2][:, perm], rtol=1e-4, atol=1e-7)
    for i in range(3, len(a)):
        torch.testing.assert_close(b[i], a[i], rtol=1e-4, atol=1e-7)
    # and the rule really changed the updates relative to Adam
    assert max((da - dd).abs().max() for da, dd in zip(a, deltas["adam"])) > 1e-4
