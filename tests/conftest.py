"""Shared pytest setup: deterministic seeds and one intra-op thread (tests use tiny models)."""

import pytest
import torch

torch.set_num_threads(1)  # tiny test models: threading overhead outweighs any gain


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
