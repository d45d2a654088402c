"""NORM_IN edges: normalisation layers (LayerNorm, RMSNorm, BatchNorm in eval mode with running
statistics passed as buffers, InstanceNorm, GroupNorm, a bare parameter scale), then gamma
(NORM_WEIGHT) and beta (NORM_BIAS)."""

from __future__ import annotations

import torch

from ..schema import EdgeType


def normalise(state, lid, nodes, e, a):
    sel = a[state.aux_type[a] == EdgeType.NORM_IN]
    if not sel.numel():
        return []
    rec = state.record(lid)
    kind, op = rec["kind"], rec.get("op") or {}
    n = nodes.numel()
    rows = state.local[state.adst[sel]]
    zr = state.read(lid, state.asrc[sel])
    z = zr.new_zeros(n, *zr.shape[1:])
    z[rows] = zr
    copies = op.get("copies")  # each neuron's value carries its n copies on a last dim (patch merging)
    channels = torch.tensor(op["channels"]) if "channels" in op and not copies else torch.arange(n)
    if torch.unique(channels).numel() != channels.numel():
        raise NotImplementedError(f"simulate: {state.where(lid)} normalises a neuron at several features")
    eps = op.get("eps", state.eps)
    zc = z[channels]  # channel order of the norm's input
    sp = tuple(range(2, z.dim()))  # each neuron's spatial dims
    if kind == "param_scale":
        out = zc
    elif kind in ("layernorm", "rmsnorm"):
        t = 1 if copies else op.get("normalized_dims", 1) - 1  # also normalised: the last t dims
        if t > z.dim() - 2:
            raise NotImplementedError(f"simulate: {state.where(lid)}: normalises more dims than its neurons hold")
        dims = (0,) + tuple(range(z.dim() - t, z.dim()))
        if kind == "layernorm":
            out = (zc - zc.mean(dims, keepdim=True)) / torch.sqrt(zc.var(dims, unbiased=False, keepdim=True) + eps)
        else:
            eps = torch.finfo(z.dtype).eps if eps is None else eps
            out = zc / torch.sqrt(zc.pow(2).mean(dims, keepdim=True) + eps)
    elif "batchnorm" in kind or "instancenorm" in kind:
        if op.get("running_mean"):
            mean, var = (_buffer(state, lid, op[k], zc) for k in ("running_mean", "running_var"))
        else:  # the input's own statistics: over batch and space (BatchNorm), over space (InstanceNorm)
            dims = ((1,) if "batchnorm" in kind else ()) + sp
            mean, var = zc.mean(dims, keepdim=True), zc.var(dims, unbiased=False, keepdim=True)
        out = (zc - mean) / torch.sqrt(var + eps)
    elif kind == "groupnorm":
        G = op["num_groups"]
        zg = zc.reshape(G, -1, *zc.shape[1:])
        dims = (1,) + tuple(d + 1 for d in sp)
        out = ((zg - zg.mean(dims, keepdim=True)) / torch.sqrt(zg.var(dims, unbiased=False, keepdim=True) + eps)
               ).reshape(zc.shape)
    else:
        raise NotImplementedError(f"simulate: {state.where(lid)}: normalisation '{kind}' has no rule")
    normed = torch.empty_like(out)
    normed[channels] = out
    t = (1 if copies else op.get("normalized_dims", 1) - 1) if kind in ("layernorm", "rmsnorm") else 0
    trailing = tuple(z.shape[z.dim() - t:]) if t else ()
    cols = slice(0, 1) if copies else slice(3 - t, 3)  # K0: the copy index; else the (.., h, w) position
    view = (n,) + (1,) * (z.dim() - 1 - t) + trailing
    scale, shift = z.new_ones(n, *trailing), z.new_zeros(n, *trailing)
    for etype, target in ((EdgeType.NORM_WEIGHT, scale), (EdgeType.NORM_BIAS, shift)):
        s = e[state.etype[e] == etype]
        if t:  # a multi-dim LayerNorm's entries carry their (.., h, w) position in K
            target[(state.local[state.dst[s]], *state.kpos[s][:, cols].t())] = state.values[s]
            continue
        if bool(state.kpos[s].any()):
            raise NotImplementedError(f"simulate: {state.where(lid)}: position-dependent affine entries")
        target[state.local[state.dst[s]]] = state.values[s]
    return [(torch.arange(n), normed * scale.view(view) + shift.view(view))]


def _buffer(state, lid, name, zc):
    if name not in state.buffers:
        raise ValueError(f"simulate: {state.where(lid)} normalises with running statistics '{name}': pass "
                         f"buffers=model (or dict(model.named_buffers()))")
    t = state.buffers[name].to(zc.dtype)
    return t.view(-1, *([1] * (zc.dim() - 1)))
