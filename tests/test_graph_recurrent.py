"""Recurrent layers as graphs: gate and state neurons, recurrent edges, exact parameter order."""

import torch
from torch import nn

from metaopt.graph import EdgeType, NodeType, to_graph
from metaopt.graph.schema import EDGE_K0, EDGE_K1, EDGE_TYPE, NODE_LAYER

from permutations import assert_isomorphic


def edges_of(g, name):
    i = g.param_names.index(name)
    lo, hi = g.param_offsets[i], g.param_offsets[i + 1]
    return g.edge_index[0, lo:hi].long(), g.edge_index[1, lo:hi].long(), g.edge_attr[lo:hi].long()


def exact(g, model):
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(g.params_to_edges(model), flat)
    assert not bool((g.edge_attr[:, EDGE_TYPE] == EdgeType.FREE).any())


class Seq(nn.Module):
    def __init__(self, rnn, use_h_n=False):
        super().__init__()
        self.rnn, self.use_h_n = rnn, use_h_n
        self.lstm = isinstance(rnn, nn.LSTM)  # fx cannot evaluate isinstance on traced values
        width = (rnn.proj_size or rnn.hidden_size) if isinstance(rnn, nn.LSTM) else rnn.hidden_size
        self.out = nn.Linear(width * (1 if use_h_n else 1 + rnn.bidirectional), 2)

    def forward(self, x):
        y, h = self.rnn(x)
        if self.use_h_n:
            h = h[0] if self.lstm else h
            return self.out(h[-1])  # the last layer's (last direction's) final state
        return self.out(y[:, -1])


def _gru_nodes(g, H=4):
    _, dst, _ = edges_of(g, "rnn.weight_ih_l0")
    gates = dst.view(3 * H, -1)[:, 0].view(3, H)
    src, _, _ = edges_of(g, "rnn.weight_hh_l0")
    state = src.view(3 * H, H)[0]
    return gates, state


def test_gru_gates_states_and_recurrent_edges():
    m = Seq(nn.GRU(3, 4, batch_first=True))
    g = to_graph(m, torch.randn(2, 6, 3))
    exact(g, m)
    gates, state = _gru_nodes(g)
    src, dst, attr = edges_of(g, "rnn.weight_ih_l0")  # [12, 3]: input i -> gate (t, j)
    assert bool((g.x[src, 0] == NodeType.INPUT).all())
    assert torch.equal(dst.view(12, 3), gates.reshape(12, 1).expand(12, 3))
    assert torch.equal(attr[:, EDGE_K1].view(12, 3)[:, 0], torch.arange(12) // 4)
    assert bool((attr[:, EDGE_K0] == 0).all())
    src, dst, attr = edges_of(g, "rnn.weight_hh_l0")  # [12, 4]: state k -> gate (t, j), recurrent
    assert torch.equal(src.view(12, 4), state.view(1, 4).expand(12, 4))
    assert bool((attr[:, EDGE_K0] == 1).all()) and bool((attr[:, EDGE_TYPE] == EdgeType.LINEAR).all())
    for name, k0 in (("rnn.bias_ih_l0", 0), ("rnn.bias_hh_l0", 1)):
        s, d, a = edges_of(g, name)
        assert torch.equal(d, gates.reshape(-1)) and bool((a[:, EDGE_K0] == k0).all())
        assert s.unique().numel() == 1 and int(g.x[s[0], 0]) == NodeType.BIAS
    sel = g.aux_edge_attr[:, EDGE_TYPE] == EdgeType.PRODUCT_IN
    asrc, adst = g.aux_edge_index[0, sel].long(), g.aux_edge_index[1, sel].long()
    assert torch.equal(asrc, gates.reshape(-1)) and torch.equal(adst, state.repeat(3))
    osrc, _, _ = edges_of(g, "out.weight")
    assert torch.equal(osrc.view(2, 4)[0], state), "the head reads the GRU's state neurons"


def test_stacked_bidirectional_lstm_and_final_states():
    x = torch.randn(2, 5, 3)
    m = Seq(nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True))
    g = to_graph(m, x)
    exact(g, m)
    states = {}
    for sfx in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        src, _, _ = edges_of(g, f"rnn.weight_hh{sfx}")
        states[sfx] = src.view(16, 4)[0]
    src, _, _ = edges_of(g, "rnn.weight_ih_l1")  # layer 1 reads [forward | backward] of layer 0
    assert torch.equal(src.view(16, 8)[0], torch.cat([states["_l0"], states["_l0_reverse"]]))
    osrc, _, _ = edges_of(g, "out.weight")
    assert torch.equal(osrc.view(2, 8)[0], torch.cat([states["_l1"], states["_l1_reverse"]]))
    h = Seq(nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True), use_h_n=True)
    gh = to_graph(h, x)
    exact(gh, h)
    src, _, _ = edges_of(gh, "rnn.weight_hh_l1_reverse")
    osrc, _, _ = edges_of(gh, "out.weight")
    assert torch.equal(osrc.view(2, 4)[0], src.view(16, 4)[0]), "h_n[-1] is the last layer's reverse state"


def test_lstm_with_projection_and_plain_rnn_convert_exactly():
    for rnn in (nn.LSTM(3, 5, proj_size=2, batch_first=True), nn.RNN(3, 4, nonlinearity="relu"),
                nn.GRU(3, 4, bias=False)):
        m = Seq(rnn)
        x = torch.randn(2, 5, 3) if rnn.batch_first else torch.randn(5, 2, 3)
        exact(to_graph(m, x, cache=False), m)


@torch.no_grad()
def test_permuting_gru_hidden_units_is_a_graph_relabelling():
    torch.manual_seed(0)
    m = Seq(nn.GRU(3, 4, batch_first=True))
    p = torch.randperm(4)
    rows = torch.cat([p + 4 * t for t in range(3)])  # every gate block moves with its unit
    q = Seq(nn.GRU(3, 4, batch_first=True))
    q.load_state_dict(m.state_dict())
    q.rnn.weight_ih_l0.copy_(m.rnn.weight_ih_l0[rows])
    q.rnn.weight_hh_l0.copy_(m.rnn.weight_hh_l0[rows][:, p])
    q.rnn.bias_ih_l0.copy_(m.rnn.bias_ih_l0[rows])
    q.rnn.bias_hh_l0.copy_(m.rnn.bias_hh_l0[rows])
    q.out.weight.copy_(m.out.weight[:, p])
    x = torch.randn(2, 6, 3)
    assert torch.allclose(m(x), q(x), atol=1e-6)
    g = to_graph(m, x)
    gates, state = _gru_nodes(g)
    sigma = torch.arange(g.num_nodes)
    inv = torch.argsort(p)
    sigma[state] = state[inv]
    for t in range(3):
        sigma[gates[t]] = gates[t][inv]
    assert_isomorphic(g, g.params_to_edges(m), g.params_to_edges(q), sigma)
    assert int(g.x[state[0], NODE_LAYER]) == int(g.x[gates[0, 0], NODE_LAYER])


class Loop(nn.Module):
    """A cell unrolled over time in Python (range of a size: traced with the call's sizes)."""

    def __init__(self, cell):
        super().__init__()
        self.inp, self.cell, self.out = nn.Linear(3, 5), cell, nn.Linear(4, 2)
        self.lstm = isinstance(cell, nn.LSTMCell)

    def forward(self, x):
        e = self.inp(x)
        h = c = torch.zeros(x.shape[0], 4)
        for t in range(x.shape[1]):
            if self.lstm:
                h, c = self.cell(e[:, t], (h, c))
            else:
                h = self.cell(e[:, t], h)
        return self.out(h)


def test_cells_unrolled_in_a_loop_are_one_recurrent_layer():
    x = torch.randn(2, 6, 3)
    for cell, rnn in ((nn.GRUCell(5, 4), nn.GRU(5, 4, batch_first=True)),
                      (nn.LSTMCell(5, 4), nn.LSTM(5, 4, batch_first=True)),
                      (nn.RNNCell(5, 4), nn.RNN(5, 4, batch_first=True))):
        m = Loop(cell)
        g = to_graph(m, x, cache=False)
        exact(g, m)
        # the same structure as the module version: W_ih reads the input layer, the head reads h
        src, _, attr = edges_of(g, "cell.weight_hh")
        osrc, _, _ = edges_of(g, "out.weight")
        assert torch.equal(osrc.view(2, 4)[0], src.view(-1, 4)[0])
        assert bool((attr[:, EDGE_K0] == 1).all())
        seq = Seq(rnn)
        gs = to_graph(seq, torch.randn(2, 6, 5), cache=False)
        n_gate_state = int((g.x[:, 0] == NodeType.HIDDEN).sum()) - 5  # minus the inp layer
        assert n_gate_state == int((gs.x[:, 0] == NodeType.HIDDEN).sum())
