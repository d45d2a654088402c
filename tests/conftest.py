"""Shared pytest setup: deterministic seeds and one intra-op thread (tests use tiny models)."""

import pytest
import torch

torch.set_num_threads(1)  # tiny test models: threading overhead outweighs any gain


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tv_models():
    """torchvision.models (definitions only, see tests/torchvision_models.py); skips without it."""
    from torchvision_models import load_models

    models = load_models()
    if models is None:
        pytest.skip("torchvision is not installed (pip install -e '.[test]')")
    return models


@pytest.fixture
def optimizer_calls(monkeypatch):
    """The keyword arguments of every GMNOptimizer built during the test, in order (the optimizer
    still runs): what a command line or a comparison gave the optimizers it trained with."""
    from metaopt.optim import GMNOptimizer

    calls: list[dict] = []
    original = GMNOptimizer.__init__

    def record(self, *args, **kwargs):
        calls.append(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(GMNOptimizer, "__init__", record)
    return calls
