"""Rules shipped in the package: "adam" is exactly Adam; "default" (GMN) and "mlp" (the per-parameter
baseline) are meta-trained lr-scale rules that load, change the update and train; the names of
earlier releases are gone."""

import pytest
import torch
from torch import nn

from metaopt import GMNOptimizer
from metaopt.optim import RuleCheckpointError, UpdateRule
from metaopt.optim.rules import PRETRAINED_DIR, shipped_rules
from training_loop import train_losses


def _train(opt_fn, steps=5):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    opt = opt_fn(model)  # may draw random numbers (rule init): after the data
    return model, train_losses(model, opt, nn.functional.cross_entropy, x, y, steps)


def test_named_rules_are_listed():
    assert set(shipped_rules()) == {"default", "adam", "mlp"}
    assert UpdateRule.from_pretrained(PRETRAINED_DIR / "mlp").config.kind == "mlp"


@pytest.mark.parametrize("name", ["gmn-cpu-v0", "mlp-cpu-v0", "mlp-cpu-v1"])
def test_removed_rule_names_are_refused(name):
    with pytest.raises(RuleCheckpointError, match="does not exist"):
        GMNOptimizer(nn.Linear(2, 2), rule=name)


def test_meta_trained_rules_load_and_change_the_update():
    adam, _ = _train(lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, foreach=True))
    exact, _ = _train(lambda m: GMNOptimizer(m, rule="adam", lr=1e-2))
    for a, b in zip(adam.parameters(), exact.parameters()):
        assert torch.equal(a, b), 'rule="adam" is exactly Adam'
    for name in ("default", "mlp"):
        opts = []
        learned, losses = _train(lambda m: opts.append(GMNOptimizer(m, rule=name, lr=1e-2)) or opts[-1])
        assert opts[0].rule_refreshes == 1 and opts[0].rule_fallbacks == 0  # refreshed on step 1 only (k = 100)
        assert all(torch.isfinite(torch.tensor(losses)))
        assert losses[-1] < losses[0]
        diff = max((a - b).abs().max().item() for a, b in zip(adam.parameters(), learned.parameters()))
        assert diff > 1e-6, f"{name}: a meta-trained rule must differ from Adam"
