"""Rules shipped in the package: "adam" is exactly Adam; the default and the other meta-trained rules
load, change the update and train."""

import torch
from torch import nn

from metaopt import GMNOptimizer
from metaopt.optim.rules import shipped_rules


def _train(opt_fn, steps=5):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    opt = opt_fn(model)  # may draw random numbers (rule init): after the data
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


def test_named_rules_are_listed():
    assert {"default", "adam", "mlp-cpu-v1", "gmn-cpu-v0", "mlp-cpu-v0"} <= set(shipped_rules())


def test_meta_trained_rules_load_and_change_the_update():
    adam, _ = _train(lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, foreach=True))
    exact, _ = _train(lambda m: GMNOptimizer(m, rule="adam", lr=1e-2))
    for a, b in zip(adam.parameters(), exact.parameters()):
        assert torch.equal(a, b), 'rule="adam" is exactly Adam'
    for name in ("default", "mlp-cpu-v1", "gmn-cpu-v0", "mlp-cpu-v0"):
        learned, losses = _train(lambda m: GMNOptimizer(m, rule=name, lr=1e-2))
        assert all(torch.isfinite(torch.tensor(losses)))
        assert losses[-1] < losses[0]
        diff = max((a - b).abs().max().item() for a, b in zip(adam.parameters(), learned.parameters()))
        assert diff > 1e-6, f"{name}: a meta-trained rule must differ from Adam"
