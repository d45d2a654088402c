"""simulate() on conv nets: each feature in a small hand-written net, then torchvision definitions.

The oracle must reproduce `model.eval()(x)` from the graph (edges, layer records) and the values
alone, BatchNorm's running statistics passed as buffers: relative error <= 1e-4.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaopt.graph import simulate, to_graph
from metaopt.graph.simulate import unsupported_reasons

from torchvision_models import all_names, build, count_params, input_size, load_models, MAX_PARAMS

TOL = 1e-4


def randomize_norms(model: nn.Module, seed: int = 1, zeros: bool = False) -> nn.Module:
    """Non-trivial running statistics and affine entries (defaults would hide a missing rule).

    `zeros`: parameters initialised to all zeros (ViT's class token and classifier head) are drawn
    too, else the output is zero and a relative error says nothing.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if zeros:
            for p in model.parameters():
                if p.numel() and not bool(p.any()):
                    p.normal_(0, 0.2, generator=g)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
    return model.eval()


def assert_simulates(model: nn.Module, x: torch.Tensor, batch: int = 3) -> float:
    model = randomize_norms(model)
    g = to_graph(model, x[:1], cache=False)  # converted from one sample, run on a batch
    with torch.no_grad():
        ref = model(x)
        out = simulate(g, g.params_to_edges(model), x, buffers=model)
    err = float((out.reshape(ref.shape) - ref).norm() / ref.norm())
    assert err <= TOL, err
    return err


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class Block(nn.Module):
    """Residual block with a strided, dilated and grouped conv."""

    def __init__(self, c_in, c_out, stride, dilation, groups):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.dw = nn.Conv2d(c_out, c_out, 5, padding=2, groups=c_out)  # depthwise
        self.gn = nn.GroupNorm(4, c_out)
        self.se = SE(c_out)
        self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = F.relu6(self.bn1(self.conv1(x)))
        y = self.se(F.hardswish(self.gn(self.dw(y))))
        return F.leaky_relu(y + self.down(x), 0.2)


FEATURES = {
    "stride_padding": lambda: nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 6, 4, 3, 2),
                                            nn.Flatten(), nn.LazyLinear(5)),
    "dilation_groups_bias": lambda: nn.Sequential(nn.Conv2d(4, 8, 3, dilation=2, groups=2), nn.Tanh(),
                                                  nn.Conv2d(8, 8, 3, groups=8, padding="same"),
                                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)),
    "pooling": lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.GELU(), nn.MaxPool2d(3, 2, 1), nn.ReLU(),
                                     nn.Conv2d(6, 6, 3, padding=1, padding_mode="reflect"), nn.SiLU(),
                                     nn.AvgPool2d(2, ceil_mode=True),
                                     nn.AdaptiveMaxPool2d((2, 3)), nn.Flatten(), nn.Linear(36, 4)),
    "bn_eval_ln_head": lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ELU(),
                                             nn.Conv2d(8, 8, 1), nn.InstanceNorm2d(8, affine=True),
                                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(8),
                                             nn.Linear(8, 4)),
    "residual_se_groupnorm": lambda: nn.Sequential(Block(3, 8, 2, 2, 1), Block(8, 8, 1, 1, 4),
                                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)),
    "conv1d": lambda: nn.Sequential(nn.Conv1d(2, 6, 5, stride=2, padding=2), nn.BatchNorm1d(6), nn.ReLU(),
                                    nn.MaxPool1d(2), nn.Conv1d(6, 4, 3, groups=2), nn.Flatten(),
                                    nn.LazyLinear(3)),
}


@pytest.mark.parametrize("name", list(FEATURES))
def test_simulate_reproduces_small_conv_nets(name):
    torch.manual_seed(0)
    model = FEATURES[name]()
    x = torch.randn(3, 2, 20) if name == "conv1d" else torch.randn(3, 4 if "groups" in name else 3, 14, 14)
    model(x)  # materialise lazy layers
    assert_simulates(model, x)


class DenseCat(nn.Module):
    """DenseNet-style concatenation of a pooled input with new features, and constants."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(7, 5, 3, padding=1)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        p = F.avg_pool2d(x, 2)
        y = torch.cat([p, F.relu(self.a(p))], 1)
        z = torch.cat([y, self.b(y) / 6 + 0.5], 1)
        return self.head(torch.flatten(z.mean([2, 3]), 1))


def test_simulate_follows_concatenation_pooling_and_constants():
    torch.manual_seed(0)
    assert_simulates(DenseCat(), torch.randn(3, 3, 12, 12))


def test_activation_after_a_non_commuting_pool_is_refused():
    """The activation tag sits on the conv's neurons; after an average pool that is not the same."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AvgPool2d(2), nn.GELU())
    g = to_graph(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(NotImplementedError, match="does not commute"):
        simulate(g, g.params_to_edges(model), torch.randn(2, 3, 8, 8))


def test_simulate_needs_the_running_statistics():
    model = randomize_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    g = to_graph(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="buffers"):
        simulate(g, g.params_to_edges(model), torch.randn(2, 3, 8, 8))


def test_layer_records_survive_the_structure_round_trip():
    import json

    from metaopt.graph import ParameterGraph

    model = FEATURES["residual_se_groupnorm"]()
    x = torch.randn(2, 3, 14, 14)
    g = to_graph(randomize_norms(model), x, cache=False)
    meta = json.loads(json.dumps(g.structure_meta()))
    g2 = ParameterGraph.from_structure(g.structure_tensors(), meta)
    with torch.no_grad():
        assert torch.allclose(simulate(g2, g.params_to_edges(model), x, buffers=model), model(x), rtol=1e-4, atol=1e-5)


# ---- torchvision ---------------------------------------------------------------------------------

FAST = ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5", "mnasnet0_5"]


def _tv_case(tv_models, name):
    torch.manual_seed(0)
    model = build(tv_models, name)
    s = input_size(name)
    return assert_simulates(model, torch.randn(2, 3, s, s))


@pytest.mark.parametrize("name", FAST)
def test_simulate_reproduces_torchvision_models(tv_models, name):
    _tv_case(tv_models, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["densenet121", "efficientnet_b0", "regnet_y_400mf", "googlenet", "mobilenet_v2"])
def test_simulate_reproduces_larger_torchvision_models(tv_models, name):
    _tv_case(tv_models, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", all_names(load_models()) if load_models() is not None else [])
def test_simulate_over_the_zoo_is_exact_or_refuses(tv_models, name):
    """Every definition: simulate reproduces it, or says which edge type / layer / op it lacks."""
    if count_params(tv_models, name) > 60e6:
        pytest.skip("large definition")
    torch.manual_seed(0)
    model = build(tv_models, name)
    s = input_size(name)
    x = torch.randn(2, 3, s, s)
    g = to_graph(randomize_norms(model), x[:1], cache=False)
    if unsupported_reasons(g):
        with pytest.raises(NotImplementedError, match="simulate cannot run this graph"):
            simulate(g, g.params_to_edges(model), x, buffers=model)
        return
    assert_simulates(model, x)
