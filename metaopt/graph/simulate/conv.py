"""CONV edges: the layer's kernel rebuilt from its tap edges, run with the recorded stride,
padding, dilation and groups (graph.layers[i]["op"]); transposed convolutions likewise (their
weight is [in, out / groups, *k], plus output_padding)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..schema import EdgeType

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def conv(state, lid, nodes, e, a):
    sel = e[state.etype[e] == EdgeType.CONV]
    if not sel.numel():
        return []
    rec = state.record(lid)
    kind, op = rec["kind"], rec.get("op")
    if op is None:
        raise NotImplementedError(f"simulate: {state.where(lid)}: no recorded stride/padding (a graph converted "
                                  f"before they were recorded)")
    transposed = "transpose" in kind
    k = int(kind[-2])
    src, dst = state.src[sel], state.dst[sel]
    taps = state.kpos[sel][:, :k]
    taps = taps - taps.min(0).values  # centred offsets -> kernel indices
    size = (taps.max(0).values + 1).tolist()
    # out channels in node order; group j's inputs: the distinct sources of its outputs, by node id
    udst, orow = torch.unique(dst, return_inverse=True)
    g = int(op["groups"])
    C_out = udst.numel()
    group = orow // (C_out // g)
    N = state.ntype.numel()
    ukey, icol = torch.unique(group * N + src, return_inverse=True)
    per_in = ukey.numel() // g
    if ukey.numel() % g or not torch.equal(torch.bincount(ukey // N, minlength=g), torch.full((g,), per_in)):
        raise NotImplementedError(f"simulate: {state.where(lid)}: its edges do not form {g} equal groups")
    X = state.read(lid, ukey % N)  # [C_in, B, *S], inputs grouped as the kernel expects
    if X.dim() != k + 2:
        raise NotImplementedError(f"simulate: {state.where(lid)} reads neurons of shape {tuple(X.shape[1:])}, "
                                  f"not [B, {k} spatial dims]")
    x = X.movedim(0, 1)
    if transposed:  # weight [C_in, C_out / g, *k]: input channel (by group) x output within its group
        if op.get("padding_mode", "zeros") != "zeros" or isinstance(op["padding"], str):
            raise NotImplementedError(f"simulate: {state.where(lid)}: transposed convolution with padding "
                                      f"{op['padding']!r} / mode {op.get('padding_mode')}")
        per_out = C_out // g
        W = X.new_zeros(ukey.numel(), per_out, *size)
        W.index_put_((icol, orow - group * per_out, *taps.t()), state.values[sel], accumulate=True)
        out = _CONV_T[k](x, W, None, op["stride"], _tuple(op["padding"], k), _tuple(op.get("output_padding", 0), k),
                         g, op["dilation"])
        return [(state.local[udst], out.movedim(1, 0))]
    W = X.new_zeros(C_out, per_in, *size)
    W.index_put_((orow, icol - (ukey // N)[icol] * per_in, *taps.t()), state.values[sel], accumulate=True)
    padding = op["padding"]
    if op.get("padding_mode", "zeros") != "zeros":
        if isinstance(padding, str):
            raise NotImplementedError(f"simulate: {state.where(lid)}: padding '{padding}' with mode {op['padding_mode']}")
        pads = [p for p in reversed(_tuple(padding, k)) for _ in range(2)]
        x, padding = F.pad(x, pads, mode=op["padding_mode"]), 0
    out = _CONV[k](x, W, None, op["stride"], padding if isinstance(padding, str) else _tuple(padding, k),
                   op["dilation"], g)
    return [(state.local[udst], out.movedim(1, 0))]


def _tuple(v, k):
    return list(v) if isinstance(v, (list, tuple)) else [v] * k
