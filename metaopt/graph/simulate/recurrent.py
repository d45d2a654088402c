"""Recurrent layers: nn.GRU / nn.LSTM / nn.RNN, one layer and direction at a time, from the graph.

The layer's neurons, in node order (converters/recurrent.py): G x H gate neurons (gate t of unit
j at t*H + j: GRU r, z, n; LSTM i, f, g, o; RNN one), H state neurons, H cell neurons (LSTM),
P projection neurons (LSTM proj_size). The weights come from the layer's edges: LINEAR with K0 = 0
(input neuron -> gate: W_ih), K0 = 1 (output neuron -> gate: W_hh), K0 = 2 (state -> projection:
W_hr); BIAS with K0 = 0 / 1 (b_ih / b_hh). The record (``op``) gives the mode, the time dim of a
neuron's value (the input's per-neuron shape: [B, T], [T, B] or [T]) and the direction.

The whole sequence is run at once (a layer rule, rules.LAYER_RULES): a state / cell / projection
neuron's value is its sequence (as the layer's output), a gate neuron's value its pre-activation
sequence (the engine applies the neuron's recorded activation, as for any neuron); readers of
h_n / c_n read the state neurons through a ``last_step`` op (chain.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..schema import EdgeType

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
KINDS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def _matrix(state, sel: Tensor, rows: int, cols: int, col_of: Tensor, row_start: int = 0) -> Tensor:
    """[rows, cols] weights of edges ``sel``: row = the destination's local index - ``row_start``."""
    W = state.values.new_zeros(rows, cols)
    W.index_put_((state.local[state.dst[sel]] - row_start, col_of), state.values[sel], accumulate=True)
    return W


def layer(state, lid, nodes, e, a) -> Tensor:
    op = state.record(lid).get("op") or {}
    mode, H, P = op["mode"], int(op["hidden"]), int(op.get("proj") or 0)
    G = _GATES[mode]
    n_expected = G * H + H + (H if mode == "LSTM" else 0) + P
    if nodes.numel() != n_expected:
        raise NotImplementedError(f"simulate: {state.where(lid)} has {nodes.numel()} neurons, not the "
                                  f"{n_expected} of a {mode} layer of {H} units")
    lin = e[state.etype[e] == EdgeType.LINEAR]
    k0 = state.kpos[lin][:, 0]
    e_ih, e_hh, e_hr = lin[k0 == 0], lin[k0 == 1], lin[k0 == 2]
    GH, Hout = G * H, P or H
    # W_ih over the distinct input neurons; W_hh / W_hr over this layer's own neurons (local index)
    usrc, col = torch.unique(state.src[e_ih], return_inverse=True)
    W_ih = _matrix(state, e_ih, GH, usrc.numel(), col)
    out0 = GH + H + (H if mode == "LSTM" else 0)  # local index of the first output (projection) neuron
    out_start = out0 if P else GH
    W_hh = _matrix(state, e_hh, GH, Hout, state.local[state.src[e_hh]] - out_start)
    bias = e[state.etype[e] == EdgeType.BIAS]
    b_ih, b_hh = (_matrix(state, sel, GH, 1, torch.zeros_like(sel))
                  for sel in (bias[state.kpos[bias][:, 0] == k] for k in (0, 1)))
    W_hr = _matrix(state, e_hr, P, H, state.local[state.src[e_hr]] - GH, row_start=out0) if P else None

    X = state.read(lid, usrc)  # [I, *per]: the per-neuron value of the input, time on dim t + 1
    t = int(op["time_dim"]) + 1
    per = X.shape[1:]
    Xt = X.movedim(t, 1)
    T = Xt.shape[1]
    Xt = Xt.reshape(usrc.numel(), T, -1)  # [I, T, M]
    M = Xt.shape[2]
    gx = (W_ih @ Xt.reshape(usrc.numel(), -1)).reshape(GH, T, M) + b_ih[:, :, None]
    pre = gx.new_zeros(GH, T, M)
    hs = gx.new_zeros(H, T, M)  # state neurons (RNN: their pre-activation)
    cs = gx.new_zeros(H, T, M) if mode == "LSTM" else None
    outs = gx.new_zeros(P, T, M) if P else None
    h = gx.new_zeros(Hout, M)
    c = gx.new_zeros(H, M)
    steps = range(T - 1, -1, -1) if op.get("reverse") else range(T)
    for s in steps:
        gh = W_hh @ h + b_hh
        g = gx[:, s] + gh
        if mode == "GRU":  # r and z read gx + gh; n reads gx + r * gh
            r, z = torch.sigmoid(g[:H]), torch.sigmoid(g[H:2 * H])
            n_pre = gx[2 * H:, s] + r * gh[2 * H:]
            pre[:2 * H, s], pre[2 * H:, s] = g[:2 * H], n_pre
            h = (1 - z) * torch.tanh(n_pre) + z * h
            hs[:, s] = h
        elif mode == "LSTM":
            pre[:, s] = g
            i, f = torch.sigmoid(g[:H]), torch.sigmoid(g[H:2 * H])
            gg, o = torch.tanh(g[2 * H:3 * H]), torch.sigmoid(g[3 * H:])
            c = f * c + i * gg
            hh = o * torch.tanh(c)
            cs[:, s], hs[:, s] = c, hh
            h = W_hr @ hh if W_hr is not None else hh
            if outs is not None:
                outs[:, s] = h
        else:
            pre[:, s] = g
            hs[:, s] = g  # the state neurons' activation (tanh / relu) is applied by the engine
            h = torch.tanh(g) if mode == "RNN_TANH" else torch.relu(g)
    parts = [pre, hs] + ([cs] if cs is not None else []) + ([outs] if outs is not None else [])
    full = torch.cat(parts, 0)  # [n, T, M] in node order
    return full.reshape(full.shape[0], T, *_rest(per, t)).movedim(1, t)


def _rest(per: torch.Size, t: int) -> list[int]:
    """The per-neuron dims other than time, in order (`t`: the time dim counting the neuron dim)."""
    rest = list(per)
    del rest[t - 1]
    return rest


def last_step(v: Tensor, op: dict) -> Tensor:
    """h_n / c_n: a state neuron's value at the last step its direction ran (index -1, or 0 reversed)."""
    return v.select(int(op["dim"]) + 1, 0 if op.get("reverse") else -1)
