"""The Task protocol: determinism per seed, functional form, unrolls, vmap, evaluation, graph."""

from __future__ import annotations

from itertools import islice

import pytest
import torch
from torch.func import grad, vmap

from inner_tasks.tasks import LanguageModelTask, SupervisedTask, TaskSpec, build_task, make_task_spec, train_with_adam

MLP_KNOBS = {"dataset": "digits", "image_size": 8, "width": 16, "depth": 1, "activation": "tanh", "norm": "none", "batch_size": 32}
BN_KNOBS = {"dataset": "digits", "image_size": 8, "width": 4, "depth": 2, "kernel_size": 3, "norm": "batch", "residual": True,
            "activation": "relu", "dim": 2, "batch_size": 32}
LM_KNOBS = {"width": 16, "depth": 1, "heads": 2, "context": 8, "activation": "gelu", "batch_size": 4}
SETS_KNOBS = {"target": "max", "set_size": 8, "width": 8, "depth": 1, "pool": "sum", "activation": "relu", "batch_size": 16}
INR_KNOBS = {"dataset": "digits", "image_size": 8, "width": 8, "depth": 2, "w0": 30.0, "batch_size": 16}
TS_KNOBS = {"in_dim": 4, "width": 8, "depth": 1, "activation": "relu", "norm": "none", "batch_size": 16}
ALL = {
    "mlp_classification": MLP_KNOBS, "cnn_classification": BN_KNOBS, "transformer_lm": LM_KNOBS,
    "deepsets": SETS_KNOBS, "siren_inr": INR_KNOBS, "teacher_student": TS_KNOBS,
}


def _params_vector(task) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in task.model.parameters()])


@pytest.mark.parametrize("family", sorted(ALL))
def test_spec_json_round_trip(family: str) -> None:
    spec = make_task_spec(family, ALL[family], seed=3, horizon=77, name="x")
    again = TaskSpec.from_json(spec.to_json())
    assert again == spec and again.model == spec.model and again.horizon == 77 and again.name == "x"


@pytest.mark.parametrize("family", sorted(ALL))
def test_deterministic_per_seed(family: str) -> None:
    a, b = (build_task(make_task_spec(family, ALL[family], seed=1)) for _ in range(2))
    c = build_task(make_task_spec(family, ALL[family], seed=2))
    assert torch.equal(_params_vector(a), _params_vector(b))
    assert not torch.equal(_params_vector(a), _params_vector(c))
    for (xa, ya), (xb, yb) in zip(islice(a.train_batches(), 3), islice(b.train_batches(), 3)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xa, _ = next(a.train_batches())
    xc, _ = next(a.train_batches(seed=99))
    assert not torch.equal(xa, xc)  # another order seed gives other batches
    ea, eb = a.evaluate(), b.evaluate()
    assert ea == eb


@pytest.mark.parametrize("family", sorted(ALL))
def test_functional_loss_matches_module_and_differentiates(family: str) -> None:
    task = build_task(make_task_spec(family, ALL[family], seed=0))
    batch = next(task.train_batches())
    params = task.init_params()
    expected = task.loss(task.model(batch[0]), batch)
    got = task.functional_loss(params, batch)
    torch.testing.assert_close(got, expected)
    g = grad(task.functional_loss)(params, batch)
    expected.backward()
    for name, p in task.model.named_parameters():
        torch.testing.assert_close(g[name], p.grad, rtol=1e-4, atol=1e-6)


def test_init_params_fresh_and_seeded() -> None:
    task = build_task(make_task_spec("mlp_classification", MLP_KNOBS, seed=0))
    before = task.init_params()
    train_with_adam(task, 5)
    after = task.init_params()  # training the module does not change what init_params returns
    assert all(torch.equal(before[k], after[k]) for k in before)
    other = task.init_params(seed=1)
    assert not torch.equal(before["net.1.weight"], other["net.1.weight"])
    assert all(not v.requires_grad for v in before.values())


def test_differentiate_through_unrolled_inner_steps() -> None:
    """Meta-gradient of the post-unroll loss w.r.t. a learning rate equals a finite difference."""
    task = build_task(make_task_spec("mlp_classification", MLP_KNOBS, seed=0))
    batches = list(islice(task.train_batches(), 4))
    params0 = task.init_params()

    def unrolled(log_lr: torch.Tensor) -> torch.Tensor:
        params = {k: v.clone().requires_grad_(True) for k, v in params0.items()}
        for b in batches[:3]:
            grads = torch.autograd.grad(task.functional_loss(params, b), list(params.values()), create_graph=True)
            params = {k: v - log_lr.exp() * g for (k, v), g in zip(params.items(), grads)}
        return task.functional_loss(params, batches[3])

    log_lr = torch.tensor(-2.0, requires_grad=True)
    meta_grad = float(torch.autograd.grad(unrolled(log_lr), log_lr)[0])
    eps = 1e-2
    fd = float((unrolled(torch.tensor(-2.0 + eps)) - unrolled(torch.tensor(-2.0 - eps))).detach()) / (2 * eps)
    assert abs(fd) > 1e-3  # the lr matters, so the comparison is not 0 == 0
    assert abs(meta_grad - fd) < 0.05 * abs(fd)


def test_vmap_over_tasks_sharing_an_architecture() -> None:
    tasks = [build_task(make_task_spec("mlp_classification", MLP_KNOBS, seed=s)) for s in (0, 1, 2)]
    assert len({t.spec.architecture_key() for t in tasks}) == 1
    stacked = {k: torch.stack([t.init_params()[k] for t in tasks]) for k in tasks[0].init_params()}
    xs, ys = zip(*(next(t.train_batches()) for t in tasks))
    batch = (torch.stack(xs), torch.stack(ys))
    losses = vmap(tasks[0].functional_loss)(stacked, batch)
    for i, t in enumerate(tasks):
        torch.testing.assert_close(losses[i], t.functional_loss(t.init_params(), (xs[i], ys[i])))
    grads = vmap(grad(tasks[0].functional_loss))(stacked, batch)
    assert grads["net.1.weight"].shape == (3, 16, 64)


def test_batchnorm_buffers_are_carried_when_passed() -> None:
    task = build_task(make_task_spec("cnn_classification", BN_KNOBS, seed=0))
    buffers = task.init_buffers()
    assert any("running_mean" in k for k in buffers)
    name = next(k for k in buffers if k.endswith("running_mean"))
    start = buffers[name].clone()
    task.functional_loss(task.init_params(), next(task.train_batches()), buffers)
    assert not torch.equal(buffers[name], start)  # running stats tracked in the caller's dict
    untouched = task.init_buffers()
    assert torch.equal(untouched[name], start)  # the default (no buffers passed) stays pure
    ev = task.evaluate(task.init_params(), buffers)
    assert set(ev) == {"loss", "accuracy"}


def test_evaluate_params_matches_model_and_metric_semantics() -> None:
    task = build_task(make_task_spec("mlp_classification", MLP_KNOBS, seed=0))
    assert isinstance(task, SupervisedTask) and task.metric_name == "accuracy" and task.higher_is_better
    assert task.evaluate(task.init_params()) == task.evaluate()
    assert 0.0 <= task.evaluate()["accuracy"] <= 0.3  # untrained: near chance on 10 classes
    lm = build_task(make_task_spec("transformer_lm", LM_KNOBS, seed=0))
    assert isinstance(lm, LanguageModelTask) and not lm.higher_is_better
    ev = lm.evaluate()
    assert ev["bits_per_byte"] == pytest.approx(ev["loss"] / 0.6931471805599453, rel=1e-6)
    inr = build_task(make_task_spec("siren_inr", INR_KNOBS, seed=4))
    assert inr.metric_name == "psnr" and inr.data.x_train.shape == (64, 2) and inr.data.y_train.shape == (64, 1)


def test_lm_context_longer_than_model_raises() -> None:
    spec = make_task_spec("transformer_lm", LM_KNOBS)
    bad = TaskSpec.from_dict({**spec.to_dict(), "data": {**spec.data, "context": 64}})
    with pytest.raises(ValueError, match="exceeds the model's positional table"):
        build_task(bad)


def test_graph_matches_parameters() -> None:
    for family, knobs in ALL.items():
        task = build_task(make_task_spec(family, knobs, seed=0))
        graph = task.graph
        assert graph.num_params == task.num_params, family
        assert task.graph is graph  # cached
