"""Small models covering every layer family the graph converter supports (shared by tests/benchmarks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(self, sizes=(6, 16, 12, 4), act=nn.Tanh, layernorm=False, residual=False):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.norms = nn.ModuleList(nn.LayerNorm(b) if layernorm else nn.Identity() for b in sizes[1:-1])
        self.act = act()
        # static per-layer flags: fx traces no control flow on tensor shapes
        self.skip = [residual and a == b for a, b in zip(sizes[:-2], sizes[1:-1])]

    def forward(self, x):
        for i, layer in enumerate(self.layers[:-1]):
            h = self.act(self.norms[i](layer(x)))
            x = x + h if self.skip[i] else h
        return self.layers[-1](x)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1, norm="bn"):
        super().__init__()
        Norm = (lambda c: nn.BatchNorm2d(c)) if norm == "bn" else (lambda c: nn.GroupNorm(2, c))
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = Norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = Norm(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), Norm(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, cout, stride=1):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.c2, self.b2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.c3, self.b3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = F.relu(self.b2(self.c2(h)))
        return F.relu(self.b3(self.c3(h)) + self.proj(x))


class ResNet(nn.Module):
    """ResNet-style CNN; widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2) is ResNet-18 (11M params)."""

    def __init__(self, widths=(8, 16), blocks=(1, 1), num_classes=10, in_ch=3, norm="bn"):
        super().__init__()
        self.stem = nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0]) if norm == "bn" else nn.GroupNorm(2, widths[0])
        layers, c = [], widths[0]
        for i, (w, b) in enumerate(zip(widths, blocks)):
            for j in range(b):
                layers.append(BasicBlock(c, w, 2 if (j == 0 and i > 0) else 1, norm))
                c = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class FlatCNN(nn.Module):
    """conv -> flatten -> linear: each dense weight is an edge channel -> neuron with its (h, w)."""

    def __init__(self, c=4, hw=6, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(2, c, 3, padding=1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)  # depthwise
        self.gc = nn.Conv2d(c, c, (3, 1), padding=(1, 0), groups=2, dilation=(1, 1))
        self.fc = nn.Linear(c * hw * hw, 5)
        self.hw = hw

    def example_inputs(self):
        return (torch.randn(2, 2, self.hw, self.hw),)

    def forward(self, x):
        x = F.gelu(self.conv(x))
        x = torch.relu(self.dw(x))
        x = self.gc(x)
        return self.fc(x.flatten(1))


class ViT(nn.Module):
    def __init__(self, img=8, patch=4, dim=16, depth=2, heads=4, classes=3, mlp_ratio=2):
        super().__init__()
        n = (img // patch) ** 2
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp_ratio * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.img = img

    def example_inputs(self):
        return (torch.randn(2, 3, self.img, self.img),)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.encoder(x)
        return self.head(self.norm(x[:, 0]))


class TinyLM(nn.Module):
    """Token + learned positional embedding (a bare nn.Parameter table), pre-norm blocks, tied head."""

    def __init__(self, vocab=17, dim=16, heads=2, depth=2, max_len=12, tie=False):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True,
                                       activation="gelu")
            for _ in range(depth)
        )
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tie:
            self.head.weight = self.tok.weight
        self.vocab = vocab

    def example_inputs(self):
        return (torch.randint(0, self.vocab, (2, 8)),)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.tok(idx) + self.pos[:T]
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


class MHANet(nn.Module):
    """Bare nn.MultiheadAttention with a residual, post-norm."""

    def __init__(self, dim=12, heads=3):
        super().__init__()
        self.inp = nn.Linear(5, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, 2)

    def example_inputs(self):
        return (torch.randn(2, 7, 5),)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.out(self.norm(h + a))


class EquivariantSetLayer(nn.Module):
    """DeepSets permutation-equivariant layer: y_i = Lambda x_i + Gamma mean_j x_j."""

    def __init__(self, din, dout):
        super().__init__()
        self.lam = nn.Linear(din, dout)
        self.gam = nn.Linear(din, dout, bias=False)

    def forward(self, x):  # [B, n, d]
        return self.lam(x) + self.gam(x.mean(dim=1, keepdim=True))


class DeepSets(nn.Module):
    def __init__(self, din=3, hidden=8, dout=2):
        super().__init__()
        self.eq1 = EquivariantSetLayer(din, hidden)
        self.eq2 = EquivariantSetLayer(hidden, hidden)
        self.rho = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dout))

    def example_inputs(self):
        return (torch.randn(2, 5, 3),)

    def forward(self, x):
        x = torch.relu(self.eq1(x))
        x = torch.relu(self.eq2(x))
        return self.rho(x.sum(dim=1))


class FunctionalNet(nn.Module):
    """A custom module that holds raw nn.Parameters and uses them functionally."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 5) * 0.3)
        self.b1 = nn.Parameter(torch.randn(8) * 0.1)
        self.w2 = nn.Parameter(torch.randn(8, 3) * 0.3)  # used as x @ w2
        self.scale = nn.Parameter(torch.ones(8))

    def example_inputs(self):
        return (torch.randn(2, 5),)

    def forward(self, x):
        h = torch.tanh(F.linear(x, self.w1, self.b1))
        h = h * self.scale
        return h @ self.w2


class SplitCatNet(nn.Module):
    """Concatenation, chunking and reshapes in a hand-written forward."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(4, 6)
        self.c = nn.Linear(12, 8)
        self.d = nn.Linear(4, 3)

    def example_inputs(self):
        return (torch.randn(2, 4),)

    def forward(self, x):
        h = torch.cat([torch.relu(self.a(x)), torch.sigmoid(self.b(x))], dim=-1)
        h = self.c(h)
        u, v = h.chunk(2, dim=-1)
        y = u * torch.sigmoid(v)  # gated unit
        return self.d(y.reshape(y.shape[0], -1))


def all_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "mlp": MLP(),
        "mlp_ln_res": MLP((6, 12, 12, 12, 3), act=nn.ReLU, layernorm=True, residual=True),
        "resnet": ResNet(),
        "resnet_gn": ResNet(norm="gn"),
        "bottleneck": nn.Sequential(Bottleneck(3, 4, 8, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)),
        "flatcnn": FlatCNN(),
        "vit": ViT(),
        "lm": TinyLM(),
        "lm_tied": TinyLM(tie=True),
        "mha": MHANet(),
        "deepsets": DeepSets(),
        "functional": FunctionalNet(),
        "splitcat": SplitCatNet(),
        "conv1d": nn.Sequential(nn.Conv1d(2, 4, 5, padding=2), nn.InstanceNorm1d(4, affine=True), nn.SiLU(),
                                nn.Conv1d(4, 4, 3, dilation=2, padding=2), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                                nn.Linear(4, 2)),
        "conv3d": nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.BatchNorm3d(3), nn.ReLU(),
                                nn.ConvTranspose3d(3, 2, 2, stride=2)),
        "decoder": nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
    }
