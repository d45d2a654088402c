"""The shared weight-space epoch loop: it fits, is reproducible from its generator, and rejects empty runs."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from metaopt.weightspace.training import fit_epochs


def _problem() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3


def _fit(seed: int, index: Tensor | None = None) -> tuple[nn.Module, list[float], list[Tensor]]:
    x, y = _problem()
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    seen: list[Tensor] = []

    def batch_loss(ids: Tensor) -> Tensor:
        seen.append(ids)
        return ((model(x[ids]).squeeze(1) - y[ids]) ** 2).mean()

    curve = fit_epochs(model, torch.arange(64) if index is None else index, batch_loss, epochs=30, batch_size=16,
                       lr=0.1, weight_decay=0.0, generator=torch.Generator().manual_seed(seed))
    return model, curve, seen


def test_loss_falls_and_every_sample_is_seen_once_per_epoch() -> None:
    _, curve, seen = _fit(0)
    assert len(curve) == 30 and curve[-1] < 0.01 * curve[0]
    first_epoch = torch.cat(seen[:4])
    assert sorted(first_epoch.tolist()) == list(range(64))


def test_same_generator_seed_same_run_other_seed_other_order() -> None:
    _, a, seen_a = _fit(1)
    _, b, seen_b = _fit(1)
    _, _, seen_c = _fit(2)
    assert a == b and all(torch.equal(p, q) for p, q in zip(seen_a, seen_b))
    assert not torch.equal(seen_a[0], seen_c[0])


def test_only_the_given_sample_ids_are_used() -> None:
    index = torch.arange(0, 64, 2)
    _, _, seen = _fit(0, index)
    assert set(torch.cat(seen).tolist()) == set(index.tolist())


def test_empty_index_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="fit_epochs"):
        fit_epochs(nn.Linear(1, 1), torch.arange(0), lambda ids: torch.zeros(()), epochs=1, batch_size=4, lr=1e-3,
                   weight_decay=0.0, generator=torch.Generator())


def test_a_last_batch_of_one_sample_joins_the_previous_batch() -> None:
    from metaopt.weightspace.training import fit_epochs

    model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    x, sizes = torch.randn(9, 2), []

    def loss(ids: torch.Tensor) -> torch.Tensor:
        sizes.append(len(ids))
        return model(x[ids]).pow(2).mean()

    fit_epochs(model, torch.arange(9), loss, epochs=2, batch_size=4, lr=1e-2, weight_decay=0.0,
               generator=torch.Generator().manual_seed(0))
    assert sizes == [4, 5, 4, 5]
