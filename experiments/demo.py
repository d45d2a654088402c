"""Convert a few models to parameter graphs, print their summaries and prove each graph is exact
(bitwise round trip; message-passing forward pass for the MLP).

CLI: ``python -m experiments.demo`` (console script ``metaopt-demo``).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from metaopt.graph import simulate, to_graph


class _ResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10)

    def example_inputs(self):
        return (torch.randn(2, 1, 8, 8),)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(x + self.bn2(self.conv(x)))
        return self.head(x.mean(dim=(2, 3)))


class _TinyLM(nn.Module):
    def __init__(self, vocab: int = 32, dim: int = 16, max_len: int = 16) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(max_len, dim))
        self.block = nn.TransformerEncoderLayer(dim, 4, 2 * dim, batch_first=True, norm_first=True)
        self.head = nn.Linear(dim, vocab)

    def example_inputs(self):
        return (torch.randint(0, 32, (2, 8)),)

    def forward(self, idx):
        return self.head(self.block(self.tok(idx) + self.pos[: idx.shape[1]]))


def demo_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "mlp": nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.LayerNorm(32), nn.GELU(),
                             nn.Linear(32, 10)),
        "residual_cnn": _ResidualCNN(),
        "transformer_lm": _TinyLM(),
    }


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    ok = True
    for name, model in demo_models().items():
        graph = to_graph(model)
        print(f"== {name}")
        print(graph.summary())
        values = graph.params_to_edges(model)
        back = graph.edges_to_params(values)
        exact = all(torch.equal(back[n], p) for n, p in model.named_parameters())
        print(f"round trip params -> edges -> params bitwise exact: {exact}")
        ok &= exact
        if name == "mlp":
            x = torch.randn(4, 64)
            err = (simulate(graph, values, x) - model(x)).abs().max().item()
            print(f"message-passing forward pass vs model(x): max |diff| = {err:.2e}")
            ok &= err < 1e-5
        print()
    print("all checks passed" if ok else "CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
