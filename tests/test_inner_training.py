"""Every task family trains with torch.optim.Adam: its loss falls well below where it started."""

from __future__ import annotations

import math

import pytest
import torch

from inner_tasks.tasks import build_task, make_task_spec, train_with_adam

_DIGITS = {"dataset": "digits", "image_size": 8}
_CNN = {**_DIGITS, "kernel_size": 3, "activation": "relu", "batch_size": 64}

# (family, knobs, steps, lr, max ratio of final loss (mean of last 20) to the first loss)
CASES = {
    "mlp_digits": ("mlp_classification", {**_DIGITS, "width": 32, "depth": 1, "activation": "relu", "norm": "none", "batch_size": 64}, 150, 3e-3, 0.25),
    "mlp_shapes_layernorm": ("mlp_classification", {"dataset": "shapes", "image_size": 16, "width": 64, "depth": 2, "activation": "gelu", "norm": "layernorm", "batch_size": 64}, 150, 3e-3, 0.7),
    "cnn_plain": ("cnn_classification", {**_CNN, "width": 16, "depth": 2, "norm": "none", "residual": False, "dim": 2}, 150, 1e-2, 0.75),
    "cnn_bn_residual": ("cnn_classification", {**_CNN, "width": 8, "depth": 2, "norm": "batch", "residual": True, "dim": 2}, 150, 3e-3, 0.2),
    "cnn1d_groupnorm": ("cnn_classification", {**_CNN, "width": 8, "depth": 2, "norm": "group", "residual": False, "dim": 1}, 150, 1e-2, 0.85),
    "transformer_lm": ("transformer_lm", {"width": 32, "depth": 1, "heads": 2, "context": 16, "activation": "gelu", "batch_size": 16}, 150, 3e-3, 0.6),
    "siren_digits": ("siren_inr", {**_DIGITS, "image_size": 16, "width": 32, "depth": 2, "w0": 30.0, "batch_size": 256}, 150, 1e-3, 0.05),
    "siren_shapes_minibatch": ("siren_inr", {"dataset": "shapes", "image_size": 16, "width": 32, "depth": 2, "w0": 30.0, "batch_size": 64}, 150, 1e-3, 0.3),
    "deepsets_sum": ("deepsets", {"target": "sum", "set_size": 8, "width": 32, "depth": 1, "pool": "mean", "activation": "relu", "batch_size": 64}, 150, 3e-3, 0.05),
    "deepsets_distribution": ("deepsets", {"target": "distribution", "set_size": 16, "width": 32, "depth": 2, "pool": "mean", "activation": "relu", "batch_size": 64}, 150, 3e-3, 0.7),
    "teacher_student": ("teacher_student", {"in_dim": 8, "width": 32, "depth": 2, "activation": "tanh", "norm": "none", "batch_size": 64}, 150, 3e-3, 0.2),
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convs run several times faster on one thread when the 2 shared cores are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("case", sorted(CASES))
def test_family_trains_with_adam(case: str) -> None:
    family, knobs, steps, lr, max_ratio = CASES[case]
    task = build_task(make_task_spec(family, knobs, seed=0, horizon=steps))
    losses = train_with_adam(task, steps, lr=lr)
    assert len(losses) == steps and all(math.isfinite(v) for v in losses), f"{case}: diverged"
    final = sum(losses[-20:]) / 20
    assert final < max_ratio * losses[0], f"{case}: loss {losses[0]:.4f} -> {final:.4f}, ratio {final / losses[0]:.3f} > {max_ratio}"
    # The held-out metric moves the right way too (trained model beats its initialisation).
    fresh = build_task(task.spec).evaluate()
    trained = task.evaluate()
    assert trained["loss"] < fresh["loss"], f"{case}: eval loss did not improve ({fresh} -> {trained})"


def test_train_task_steps_a_scheduler_returned_with_the_optimizer():
    """``make_opt`` may return (optimizer, scheduler): the scheduler steps after every optimizer step."""
    import torch

    from inner_tasks import build_task
    from inner_tasks.tasks import train_task
    from inner_tasks.tasks.collections import held_out_suite

    spec = next(s for s in held_out_suite((0,), 20) if s.name.startswith("mlp_shapes"))
    task = build_task(spec)
    seen = []

    def make(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: seen.append(t) or 1.0 / (1 + t))
        return opt, sched

    run = train_task(task, make, 5, seed=0, init_seed=0)
    assert len(run.losses) == 5 and seen == [0, 1, 2, 3, 4, 5]
