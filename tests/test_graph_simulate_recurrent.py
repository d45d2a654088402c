"""simulate on recurrent layers: nn.GRU / nn.LSTM / nn.RNN (stacked, bidirectional, batch_first or
not, LSTM proj_size) run over the sequence from the gate / state neurons and their edges, read by a
Linear head at the last step (`out[:, -1]`) or through h_n; the cases it refuses, by name.
"""

import pytest
import torch
from torch import nn

from metaopt.graph import simulate, to_graph
from metaopt.graph.simulate import unsupported_reasons


class Seq(nn.Module):
    def __init__(self, rnn: nn.RNNBase, use_h_n: bool = False):
        super().__init__()
        self.rnn = rnn
        self.lstm = isinstance(rnn, nn.LSTM)  # fx cannot evaluate isinstance on traced values
        width = (rnn.proj_size or rnn.hidden_size) if self.lstm else rnn.hidden_size
        self.head = nn.Linear(width * (1 if use_h_n else 1 + rnn.bidirectional), 3)
        self.use_h_n, self.batch_first = use_h_n, rnn.batch_first

    def forward(self, x):
        out, h = self.rnn(x)
        if self.use_h_n:
            return self.head((h[0] if self.lstm else h)[-1])
        return self.head(out[:, -1] if self.batch_first else out[-1])


def _graph_and_err(model: nn.Module, x: torch.Tensor, convert: torch.Tensor):
    model.eval()
    g = to_graph(model, convert, cache=False)
    assert unsupported_reasons(g) == []
    with torch.no_grad():
        ref = model(x)
        out = simulate(g, g.params_to_edges(model), x)
    assert out.shape == ref.shape and float(ref.norm()) > 0.1
    return g, float((out - ref).norm() / ref.norm())


CASES = {
    "gru": lambda: Seq(nn.GRU(3, 5, batch_first=True)),
    "gru_2_layers_bidirectional": lambda: Seq(nn.GRU(3, 4, num_layers=2, batch_first=True, bidirectional=True)),
    "lstm_2_layers": lambda: Seq(nn.LSTM(3, 4, num_layers=2, batch_first=True)),
    "lstm_bidirectional": lambda: Seq(nn.LSTM(3, 4, batch_first=True, bidirectional=True)),
    "lstm_proj": lambda: Seq(nn.LSTM(3, 5, batch_first=True, proj_size=2)),
    "rnn_tanh_2_layers": lambda: Seq(nn.RNN(3, 4, num_layers=2, batch_first=True)),
    "rnn_relu_time_first": lambda: Seq(nn.RNN(3, 4, nonlinearity="relu")),
    "gru_no_bias_time_first": lambda: Seq(nn.GRU(3, 4, bias=False)),
    "gru_h_n": lambda: Seq(nn.GRU(3, 4, batch_first=True), use_h_n=True),
    "lstm_h_n": lambda: Seq(nn.LSTM(3, 4, batch_first=True), use_h_n=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_recurrent_layers_are_reproduced(name):
    torch.manual_seed(0)
    model = CASES[name]()
    x = torch.randn(5, 7, 3) if model.batch_first else torch.randn(7, 5, 3)
    convert = x[:2] if model.batch_first else x[:, :2]
    _, err = _graph_and_err(model, x, convert)
    assert err < 1e-5


def test_recurrent_replay_uses_the_values_and_the_whole_sequence():
    """Other values give the other model's output; the first step changes the last step's state."""
    torch.manual_seed(1)
    model, other = (Seq(nn.LSTM(3, 4, num_layers=2, batch_first=True)) for _ in range(2))
    x = torch.randn(4, 6, 3)
    g, _ = _graph_and_err(model, x, x[:2])
    with torch.no_grad():
        out, ref = simulate(g, g.params_to_edges(other), x), other.eval()(x)
        y = x.clone()
        y[:, 0] += 1.0
        moved = simulate(g, g.params_to_edges(model), y)
    assert float((out - ref).norm() / ref.norm()) < 1e-5
    assert not torch.allclose(moved, simulate(g, g.params_to_edges(model), x), atol=1e-4)


class Cells(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.zeros(x.shape[0], 4)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.head(h)


@pytest.mark.parametrize("model,why", [
    (Cells(), "a recurrent cell (nn.GRUCell & co.) unrolled in a loop"),
    (Seq(nn.GRU(3, 4, num_layers=2, batch_first=True), use_h_n=True), "h_n / c_n of a stacked or bidirectional"),
], ids=["unrolled_cell", "stacked_h_n"])
def test_unsupported_recurrent_uses_are_refused_by_name(model, why):
    x = torch.randn(2, 5, 3)
    g = to_graph(model.eval(), x, cache=False)
    reasons = " | ".join(unsupported_reasons(g))
    assert why in reasons
    with pytest.raises(NotImplementedError, match="simulate cannot run this graph"):
        simulate(g, g.params_to_edges(model), x)
