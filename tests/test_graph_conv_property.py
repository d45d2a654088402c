"""Property test: conv graphs against an independent per-element reference (groups, dilation, 1-3D)."""

import itertools

import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from metaopt.graph import EdgeType, to_graph
from metaopt.graph.schema import EDGE_K0, EDGE_TYPE

from permutations import layer_nodes


@settings(max_examples=30, deadline=None)
@given(
    dims=st.integers(1, 3),
    groups=st.integers(1, 3),
    per_in=st.integers(1, 3),
    per_out=st.integers(1, 3),
    k=st.integers(1, 4),
    transposed=st.booleans(),
    bias=st.booleans(),
)
def test_conv_edges_match_reference(dims, groups, per_in, per_out, k, transposed, bias):
    cin, cout = groups * per_in, groups * per_out
    Conv = {(1, False): nn.Conv1d, (2, False): nn.Conv2d, (3, False): nn.Conv3d,
            (1, True): nn.ConvTranspose1d, (2, True): nn.ConvTranspose2d, (3, True): nn.ConvTranspose3d}[dims, transposed]
    model = nn.Sequential(nn.Conv1d(1, cin, 1) if dims == 1 else (nn.Conv2d(1, cin, 1) if dims == 2 else nn.Conv3d(1, cin, 1)),
                          Conv(cin, cout, k, groups=groups, bias=bias, padding=0))
    x = torch.randn(2, 1, *([k + 2] * dims))
    g = to_graph(model, x)
    i = g.param_names.index("1.weight")
    lo = g.param_offsets[i]
    w = model[1].weight
    ins, outs = layer_nodes(g, "0"), layer_nodes(g, "1")
    assert g.num_params == sum(p.numel() for p in model.parameters())
    src, dst = g.edge_index[0].long(), g.edge_index[1].long()
    attr = g.edge_attr.long()
    for flat, idx in enumerate(itertools.product(*[range(s) for s in w.shape])):
        a, b, *taps = idx
        if transposed:  # weight [in, out/g, *k]
            ci, co = a, (a // per_in) * per_out + b
        else:  # weight [out, in/g, *k]
            co, ci = a, (a // per_out) * per_in + b
        e = lo + flat
        assert int(src[e]) == int(ins[ci]) and int(dst[e]) == int(outs[co])
        assert int(attr[e, EDGE_TYPE]) == EdgeType.CONV
        expect = [t - (k - 1) // 2 for t in taps]
        assert attr[e, EDGE_K0:EDGE_K0 + dims].tolist() == expect
