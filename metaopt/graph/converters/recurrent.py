"""Recurrent layers (nn.RNN/GRU/LSTM and their cells): gate neurons, state neurons, recurrent edges.

Per layer and direction: G x H gate neurons (GRU: r, z, n; LSTM: i, f, g, o; RNN: one) and H state
neurons, the layer's output h_t (LSTM: also H cell neurons c_t, and P projection neurons with
`proj_size`). One edge per parameter element:

- W_ih[t*H + j, i]: input neuron i -> gate (t, j)          LINEAR, K0 = 0, K1 = t
- W_hh[t*H + j, k]: state neuron k -> gate (t, j)          LINEAR, K0 = 1 (recurrent), K1 = t
- b_ih / b_hh[t*H + j]: the layer's two bias nodes -> gate  BIAS, K0 = 0 / 1, K1 = t
- W_hr[p, j] (LSTM proj_size): state j -> projection p     LINEAR, K0 = 2

Gates feed their unit through structural PRODUCT_IN edges (GRU: r, z, n -> h_j; LSTM: i, f, g ->
c_j, then c_j and o -> h_j; RNN: ACT_IN pre-activation -> h_j), so permuting hidden units (every
gate block's rows, W_hh's columns and the next layer's inputs together) is a node relabelling,
and K1 keeps the gates apart. `h_n` / `c_n` ([layers * directions, B, H]) carry the state neurons
of every layer and direction (indexing `h_n[-1]` reads the last layer's).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..builder import NeuronMap
from ..registry import ConversionContext, register_converter
from ..schema import Activation, EdgeType, NodeType
from ..split_map import SplitMap

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_GATE_ACTS = {
    "LSTM": [Activation.SIGMOID, Activation.SIGMOID, Activation.TANH, Activation.SIGMOID],
    "GRU": [Activation.SIGMOID, Activation.SIGMOID, Activation.TANH],
    "RNN_TANH": [Activation.NONE],
    "RNN_RELU": [Activation.NONE],
}


def _kpos(rows: int, H: int, k0: int) -> Tensor:
    """K = (k0, gate index, 0) per row of a [G*H, ...] weight, broadcastable over its columns."""
    k = torch.zeros(rows, 1, 3, dtype=torch.long)
    k[:, 0, 0] = k0
    k[:, 0, 1] = torch.arange(rows) // H
    return k


def _direction(ctx: ConversionContext, m: nn.Module, mode: str, name: str, sfx: str, x: NeuronMap
               ) -> tuple[Tensor, Tensor | None]:
    """Nodes and edges of one layer and direction; returns (output neurons, cell neurons)."""
    H = m.hidden_size
    G, P = _GATES[mode], getattr(m, "proj_size", 0)
    layer = ctx.new_layer(f"{name}{sfx}", mode.lower())
    gates = ctx.add_nodes(G * H, NodeType.HIDDEN, layer)
    state = ctx.add_nodes(H, NodeType.HIDDEN, layer)
    cell = ctx.add_nodes(H, NodeType.HIDDEN, layer) if mode == "LSTM" else None
    out = ctx.add_nodes(P, NodeType.HIDDEN, layer) if P else state
    for t, act in enumerate(_GATE_ACTS[mode]):
        if act != Activation.NONE:
            ctx.builder.set_activation(gates[t * H:(t + 1) * H], act, layer)
    w_ih, w_hh = getattr(m, f"weight_ih{sfx}"), getattr(m, f"weight_hh{sfx}")
    ctx.add_param_edges(w_ih, x.nodes.view(1, -1), gates.view(-1, 1), EdgeType.LINEAR, layer, _kpos(G * H, H, 0))
    ctx.add_param_edges(w_hh, out.view(1, -1), gates.view(-1, 1), EdgeType.LINEAR, layer, _kpos(G * H, H, 1))
    if m.bias:
        for k0, b in enumerate((getattr(m, f"bias_ih{sfx}"), getattr(m, f"bias_hh{sfx}"))):
            src = ctx.add_nodes(1, NodeType.BIAS, layer).expand(G * H)
            ctx.add_param_edges(b, src, gates, EdgeType.BIAS, layer, _kpos(G * H, H, k0).view(G * H, 3))
    unit = torch.arange(G * H) % H
    if mode == "LSTM":
        assert cell is not None
        i_f_g = torch.arange(3 * H)
        ctx.add_aux_edges(gates[i_f_g], cell[unit[i_f_g]], EdgeType.PRODUCT_IN, layer)
        ctx.add_aux_edges(torch.cat([cell, gates[3 * H:]]), state.repeat(2), EdgeType.PRODUCT_IN, layer)
    elif mode == "GRU":
        ctx.add_aux_edges(gates, state[unit], EdgeType.PRODUCT_IN, layer)
    else:
        ctx.add_aux_edges(gates, state, EdgeType.ACT_IN, layer)
        ctx.builder.set_activation(state, Activation.TANH if mode == "RNN_TANH" else Activation.RELU, layer)
    if P:
        w_hr = getattr(m, f"weight_hr{sfx}")
        kpos = torch.tensor([2, 0, 0]).view(1, 1, 3)
        ctx.add_param_edges(w_hr, state.view(1, -1), out.view(-1, 1), EdgeType.LINEAR, layer, kpos)
    return out, cell


def _final_states(nodes: list[Tensor], real: Tensor, last: dict | None = None) -> SplitMap:
    """h_n / c_n [layers * directions, (B,) H]: neuron (ld, j) is state j of layer-direction ld.

    `last`: per layer(-direction) id, the ``last_step`` op (op_records.py) that takes a state
    neuron's value over the sequence to its final state, so readers of h_n record it."""
    src = torch.cat(nodes)
    shape = real.shape
    per = nodes[0].numel()
    view = [len(nodes)] + [1] * (len(shape) - 2) + [per]
    feat = torch.arange(src.numel()).view(view).expand(shape)
    rest_shape = [1] + list(shape[1:-1]) + [1]
    rest = torch.arange(max(1, int(torch.tensor(shape[1:-1]).prod()))).view(rest_shape).expand(shape)
    ops = {lid: (op,) for lid, op in last.items()} if last else None
    return SplitMap(NeuronMap(src, len(shape) - 1, None, len(shape), ops), shape, feat, rest)


def _rnn(ctx: ConversionContext, m: nn.RNNBase, inputs: list, name: str):
    real = ctx.args[0]
    if not isinstance(real, Tensor):
        ctx.fail("packed sequences are not read; convert with a padded tensor input.")
    ndim = real.ndim
    x = ctx.input_map(inputs[0], -1, m.input_size, ndim)
    if x.pos is not None:
        ctx.fail("a recurrent layer over a flattened feature map is not supported.")
    states: list[Tensor] = []
    cells: list[Tensor] = []
    last: dict[int, dict] = {}  # layer id -> its final-state op (h_n / c_n readers)
    batch_first = bool(m.batch_first) and ndim == 3
    for layer in range(m.num_layers):
        outs = []
        for d in range(2 if m.bidirectional else 1):
            out, cell = _direction(ctx, m, m.mode, name, f"_l{layer}{'_reverse' if d else ''}", x)
            lid = ctx.builder.layers[-1].layer
            # the per-neuron value of the layer's neurons is the input's without its feature dim:
            # [B, T] (batch_first), [T, B], or [T] unbatched; time is its dim `time_dim` (0 = first)
            time_dim = 1 if batch_first else 0
            ctx.set_layer_op(lid, {"mode": m.mode, "time_dim": time_dim, "reverse": bool(d),
                                   "hidden": m.hidden_size, "proj": getattr(m, "proj_size", 0)})
            last[lid] = {"op": "last_step", "dim": time_dim, "reverse": bool(d)}
            outs.append(out)
            if cell is not None:
                cells.append(cell)
        states.extend(outs)
        x = NeuronMap(torch.cat(outs), ndim - 1, None, ndim)
    result = ctx.result
    if m.mode == "LSTM":
        h_n, c_n = result[1]
        return x, (_final_states(states, h_n, last), _final_states(cells, c_n, last))
    return x, _final_states(states, result[1], last)


for _cls in (nn.RNN, nn.GRU, nn.LSTM):
    register_converter(_cls, _rnn)


def _cell_mode(m: nn.RNNCellBase) -> str:
    if isinstance(m, nn.LSTMCell):
        return "LSTM"
    if isinstance(m, nn.GRUCell):
        return "GRU"
    return "RNN_TANH" if m.nonlinearity == "tanh" else "RNN_RELU"


def _cell(ctx: ConversionContext, m: nn.RNNCellBase, inputs: list, name: str):
    """nn.RNNCell / GRUCell / LSTMCell, usually called once per time step in a Python loop.

    The first call builds the same gate/state neurons as one layer of nn.GRU & co.; every later
    call of the same cell returns those state neurons (the recurrence is the W_hh edges), so an
    unrolled loop is one recurrent layer, not T copies. The state argument (h, or (h, c)) is the
    previous step's output and adds nothing; a later call on *other* input neurons cannot be
    read (its W_ih edges would need a second source) and is an error.
    """
    ndim = ctx.args[0].ndim
    key = ("recurrent_cell", id(m))
    if key in ctx.builder.memo:
        src, out = ctx.builder.memo[key]
        x = inputs[0]
        if isinstance(x, NeuronMap) and not torch.equal(x.nodes, src):
            ctx.fail("a recurrent cell is called on different input neurons at different steps; "
                     "only a cell reading the same input features every step is read.")
    else:
        x = ctx.input_map(inputs[0], -1, m.input_size, ndim)
        state, cell = _direction(ctx, m, _cell_mode(m), name, "", x)
        out = (state, cell)
        ctx.builder.memo[key] = (x.nodes, out)
    state, cell = out
    h = NeuronMap(state, ndim - 1, None, ndim)
    return (h, NeuronMap(cell, ndim - 1, None, ndim)) if cell is not None else h


for _cls in (nn.RNNCell, nn.GRUCell, nn.LSTMCell):
    register_converter(_cls, _cell)
