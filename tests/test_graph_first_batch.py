"""The parameter graph from the first real batch: GMNOptimizer(model) needs no example input.

Models here have no `example_inputs()` and custom forwards (an image-size assert, a set axis, an
RNN, keyword-only arguments), so the optimizer waits for the first forward, converts the model
from that call's args/kwargs, and removes its hook. The graph must equal an explicit
`to_graph(model, batch)`, and training must work with both the Adam-identical rule and the
shipped default rule.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaopt import GMNOptimizer
from metaopt.graph import ExampleInputError, ParameterGraph, to_graph
from metaopt.graph.schema import EDGE_TYPE, EdgeType


class PatchViT(nn.Module):
    """ViT on 16x16 images with torchvision's image-size assert: a guessed 32x32 input fails."""

    def __init__(self, img=16, patch=4, dim=16, heads=2, classes=3):
        super().__init__()
        self.img = img
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (img // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        torch._assert(x.shape[-1] == self.img, f"expected {self.img}x{self.img} images")
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.encoder(x)[:, 0])


class PointDeepSets(nn.Module):
    """phi per point, mean over the set axis, rho: a guessed [B, 3] input would pool the features."""

    def __init__(self, hidden=16, classes=3):
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.rho = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, points):  # [B, N, 3]
        return self.rho(self.phi(points).mean(dim=1))


class GRUClassifier(nn.Module):
    def __init__(self, din=4, hidden=12, classes=3):
        super().__init__()
        self.inp = nn.Linear(din, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, classes)

    def forward(self, seq):
        h, _ = self.gru(torch.tanh(self.inp(seq)))
        return self.out(h[:, -1])


class KeywordNet(nn.Module):
    """Keyword-only arguments: a mask tensor and Python values that change the dataflow."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 10)
        self.gate = nn.Linear(6, 10)
        self.b = nn.Linear(10, 3)

    def forward(self, x, *, mask=None, gated: bool = False, temperature: float = 1.0):
        h = torch.relu(self.a(x))
        if gated:
            h = h * torch.sigmoid(self.gate(x))
        if mask is not None:
            h = h * mask
        return self.b(h) / temperature


def _tasks():
    g = torch.Generator().manual_seed(1)
    imgs = torch.randn(16, 3, 16, 16, generator=g)
    pts = torch.randn(16, 10, 3, generator=g)
    seq = torch.randn(16, 7, 4, generator=g)
    x = torch.randn(16, 6, generator=g)
    mask = (torch.rand(16, 10, generator=g) > 0.2).float()
    y = torch.randint(0, 3, (16,), generator=g)
    return {
        "vit16": (PatchViT, (imgs,), {}),
        "deepsets_points": (PointDeepSets, (pts,), {}),
        "gru": (GRUClassifier, (seq,), {}),
        "keyword_only": (KeywordNet, (x,), {"mask": mask, "gated": True, "temperature": 2.0}),
    }, y


TASKS, LABELS = _tasks()


def _train(cls, args, kwargs, rule, steps=25):
    torch.manual_seed(0)
    model = cls()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = GMNOptimizer(model, rule=rule, lr=1e-2)
        assert opt.graph is None, "no input is known: the graph waits for the first forward"
        losses = []
        for _ in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(model(*args, **kwargs), LABELS)
            assert opt.graph is not None, "the graph exists before the first step"
            loss.backward()
            opt.step()
            losses.append(float(loss))
    return model, opt, losses


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("rule", ["adam", "default"])
def test_graph_from_first_batch_and_loss_goes_down(name, rule):
    cls, args, kwargs = TASKS[name]
    model, opt, losses = _train(cls, args, kwargs, rule)
    assert losses[-1] < 0.8 * losses[0], losses
    assert len(model._forward_pre_hooks) == 0, "the hook removes itself after the first call"
    assert isinstance(opt.graph, ParameterGraph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explicit = to_graph(model, args, example_kwargs=kwargs, strict=False)
    for key in ParameterGraph.STRUCTURE_KEYS:
        assert torch.equal(opt.graph[key], explicit[key]), key
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(opt.graph.params_to_edges(model), flat)


def test_first_batch_graph_is_connected_not_free():
    """Every model here gets real connectivity from the batch (the GRU too), and no warning."""
    for name, (cls, args, kwargs) in TASKS.items():
        model = cls()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt = GMNOptimizer(model, rule="adam")
            model(*args, **kwargs)
        assert not bool((opt.graph.edge_attr[:, EDGE_TYPE] == EdgeType.FREE).any()), name
        assert not [w for w in caught if "to_graph" in str(w.message)], name


def test_keyword_values_change_the_graph_like_the_call_does():
    _, args, kwargs = TASKS["keyword_only"]
    model = KeywordNet()
    gated = to_graph(model, args, example_kwargs=kwargs)
    with pytest.warns(UserWarning, match="gate.weight"):  # not gated: the gate is unused
        plain = to_graph(model, args, example_kwargs={"mask": kwargs["mask"]})
    assert gated.aux_edge_index.shape[1] > 0 and "product" in gated.summary()
    assert bool((plain.edge_attr[:, EDGE_TYPE] == EdgeType.FREE).any())


def test_step_before_any_forward_is_a_clear_error():
    model = PointDeepSets()
    opt = GMNOptimizer(model, rule="default")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.raises(RuntimeError, match="before the model's first forward call"):
        opt.step()


def test_declared_inputs_and_prebuilt_graphs_still_build_eagerly():
    cls, args, kwargs = TASKS["vit16"]
    model = cls()
    opt = GMNOptimizer(model, rule="adam", example_inputs=args)
    assert opt.graph is not None and len(model._forward_pre_hooks) == 0
    g = to_graph(model, args)
    opt2 = GMNOptimizer(model, rule="adam", graph=g)
    assert opt2.graph is g
    seq = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))  # a plain Sequential: input guessed
    assert GMNOptimizer(seq, rule="adam").graph is not None
    with pytest.raises(ValueError, match="parameter shapes"):
        GMNOptimizer(seq, rule="adam", graph=g)


def test_rejected_guess_waits_for_the_batch():
    """A Sequential whose guessed 32x32 input is wrong (flatten into a fixed Linear) goes lazy."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    opt = GMNOptimizer(model, rule="adam")
    assert opt.graph is None
    model(torch.randn(2, 1, 8, 8))
    assert opt.graph is not None and opt.graph.num_params == sum(p.numel() for p in model.parameters())


def test_to_graph_without_inputs_is_a_clear_error_not_an_fx_traceback():
    with pytest.raises(ExampleInputError, match="could not infer an example input for PatchViT") as info:
        to_graph(PatchViT())
    assert "example_inputs=" in str(info.value) and "16x16" in str(info.value)
    with pytest.raises(ExampleInputError, match="does not match KeywordNet.forward"):
        to_graph(KeywordNet(), (torch.randn(2, 6),), example_kwargs={"nonsense": 1})


def test_optimizer_does_not_keep_itself_alive_through_the_hook():
    import gc
    import weakref

    model = PointDeepSets()
    ref = weakref.ref(GMNOptimizer(model, rule="adam"))
    gc.collect()
    assert ref() is None
    model(torch.randn(2, 4, 3))  # the orphaned hook just removes itself
    assert len(model._forward_pre_hooks) == 0
