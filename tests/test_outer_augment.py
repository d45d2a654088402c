"""outer_train.augment: hidden-unit permutations change the parameters but not the function."""

from __future__ import annotations

import torch
from torch import nn

from metaopt import to_graph
from outer_train.augment import edge_permutation, hidden_unit_relabelling, permute_params


def test_mlp_permutation_preserves_function_and_moves_parameters() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3))
    graph = to_graph(model, torch.zeros(2, 5))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    x = torch.randn(32, 5)

    def out_of(f: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for name, p in model.named_parameters():
            params[name] = f[i : i + p.numel()].view_as(p)
            i += p.numel()
        return torch.func.functional_call(model, params, (x,))

    new, applied = permute_params(graph, flat, torch.Generator().manual_seed(1), lambda f: out_of(f).sum())
    assert applied
    assert not torch.equal(new, flat)
    assert torch.equal(torch.sort(new).values, torch.sort(flat).values)  # a permutation of the values
    torch.testing.assert_close(out_of(new), out_of(flat), rtol=1e-5, atol=1e-6)
    # Input and output neurons never move.
    sigma = hidden_unit_relabelling(graph, torch.Generator().manual_seed(1))
    ordered = graph.x[:, 2] >= 0
    assert torch.equal(sigma[ordered], torch.arange(graph.num_nodes)[ordered])


def test_a_relabelling_that_breaks_structure_is_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    graph = to_graph(model, torch.zeros(2, 3))
    bad = torch.arange(graph.num_nodes)
    hidden = (graph.x[:, 2] < 0).nonzero().squeeze(1)
    bad[hidden[0]] = 0  # map a hidden unit onto an input neuron: edges land nowhere
    assert edge_permutation(graph, bad) is None
