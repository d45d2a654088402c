"""Meta-training distribution vs held-out suite (docs/benchmarks.md §1): disjoint, and held-out really
is wider/deeper, architecturally new, on other data, with a >= 5x longer horizon."""

from __future__ import annotations

import pytest

from inner_tasks.models import count_params
from inner_tasks.models import build_model
from inner_tasks.tasks import (
    FAMILY_BUILDERS,
    HELD_OUT_SEEDS,
    HELD_OUT_TASKS,
    FamilySampler,
    held_out_suite,
    make_task_spec,
    meta_train_distribution,
)

N_SAMPLES = 400


@pytest.fixture(scope="module")
def meta_samples():
    dist = meta_train_distribution()
    return [dist.sample(s) for s in range(N_SAMPLES)]


def test_collections_do_not_overlap(meta_samples) -> None:
    dist, suite = meta_train_distribution(), held_out_suite()
    # exact: no held-out task's knobs are within any meta-training family's choices
    assert not [s.name for s in suite if dist.contains(s)]
    # and by architecture + data: no sampled meta-training task builds a held-out model on held-out data
    held = {(s.architecture_key(), repr(sorted(s.data.items()))) for s in suite}
    assert not [m for m in meta_samples if (m.architecture_key(), repr(sorted(m.data.items()))) in held]
    # containment is not vacuous: every sample is recognised as a member
    assert all(dist.contains(m) for m in meta_samples)


def test_contains_rejects_out_of_range_knobs() -> None:
    sampler = meta_train_distribution().samplers[0]
    spec = sampler.sample(0)
    assert sampler.contains(spec)
    wider = make_task_spec(spec.family, {**spec.knobs, "width": 1024}, spec.seed, spec.horizon)
    assert not sampler.contains(wider)
    with pytest.raises(ValueError, match="unknown task family"):
        FamilySampler("nope", {})


def test_horizons(meta_samples) -> None:
    suite = held_out_suite()
    assert max(m.horizon for m in meta_samples) * 5 <= min(s.horizon for s in suite)


def test_meta_sampling_is_deterministic_and_covers_every_family(meta_samples) -> None:
    dist = meta_train_distribution()
    assert [dist.sample(s) for s in range(20)] == meta_samples[:20]
    assert {m.family for m in meta_samples} == {s.family for s in dist.samplers}
    assert len({m.to_json() for m in meta_samples}) > 0.9 * N_SAMPLES


def test_held_out_is_out_of_distribution_in_the_promised_ways(meta_samples) -> None:
    suite = held_out_suite()
    assert len(suite) == len(HELD_OUT_TASKS) * len(HELD_OUT_SEEDS) and len(HELD_OUT_SEEDS) >= 3
    assert len({s.name for s in suite}) == len(suite)
    meta_mlp = [m for m in meta_samples if m.family == "mlp_classification"]
    meta_cnn = [m for m in meta_samples if m.family == "cnn_classification"]
    k = {name: knobs for name, (_, knobs, _) in HELD_OUT_TASKS.items()}
    assert k["mlp_digits_wide"]["width"] >= 4 * max(m.knobs["width"] for m in meta_mlp)
    assert k["mlp_digits_deep"]["depth"] >= 2 * max(m.knobs["depth"] for m in meta_mlp)
    assert k["cnn_digits_wide"]["width"] >= 4 * max(m.knobs["width"] for m in meta_cnn)
    assert k["cnn_digits_deep"]["depth"] >= 2 * max(m.knobs["depth"] for m in meta_cnn)
    # unseen architectures: no residual/BatchNorm CNN and no Transformer in meta-training
    assert not any(m.knobs["residual"] or m.knobs["norm"] == "batch" for m in meta_cnn)
    assert not any(m.family == "transformer_lm" for m in meta_samples)
    assert k["rescnn_bn_digits"]["residual"] and k["rescnn_bn_digits"]["norm"] == "batch"
    # other data: shapes never appears in meta-training
    meta_data = {m.data.get("name") for m in meta_samples}
    assert "shapes" not in meta_data and {"shapes"} <= {s.data.get("name") for s in suite}


def test_every_family_builds_and_sizes_stay_cpu_friendly(meta_samples) -> None:
    assert {m.family for m in meta_samples} | {"transformer_lm"} == set(FAMILY_BUILDERS)
    sizes = [count_params(build_model(m.model)) for m in meta_samples[:60]]
    assert max(sizes) <= 100_000 and min(sizes) >= 100
    held = [count_params(build_model(s.model)) for s in held_out_suite(seeds=(0,))]
    assert max(held) <= 150_000


def test_every_held_out_task_builds_and_steps() -> None:
    import math

    import torch

    from inner_tasks.tasks import build_task, train_with_adam

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs are far faster on one thread on the shared cores
    try:
        for spec in held_out_suite(seeds=(0,)):
            losses = train_with_adam(build_task(spec), 3)
            assert len(losses) == 3 and all(math.isfinite(v) for v in losses), spec.name
    finally:
        torch.set_num_threads(before)


def test_meta_validation_suite_is_disjoint_from_training_and_held_out(meta_samples) -> None:
    """The suite keep_best selects on: fixed tasks, none a meta-training member, none a held-out task
    (architecture + data), none on held-out-only data or families; larger than meta-training like the
    held-out suite, but not as large."""
    from inner_tasks.tasks import META_VALIDATION_TASKS, meta_validation_suite

    val, suite, dist = meta_validation_suite(), held_out_suite(), meta_train_distribution()
    assert len(val) == len(META_VALIDATION_TASKS) and val == meta_validation_suite()  # fixed
    assert not [s.name for s in val if dist.contains(s)]
    key = lambda s: (s.architecture_key(), repr(sorted(s.data.items())))  # noqa: E731
    assert not {key(s) for s in val} & {key(s) for s in suite}
    assert not {key(s) for s in val} & {key(m) for m in meta_samples}
    assert {s.data.get("name") for s in val} <= {m.data.get("name") for m in meta_samples}  # no shapes
    assert {s.family for s in val} <= {m.family for m in meta_samples}  # no Transformer
    assert not any(s.knobs.get("norm") == "batch" for s in val)
    meta_mlp = max(m.knobs["width"] for m in meta_samples if m.family == "mlp_classification")
    k = {name: knobs for name, (_, knobs, _) in META_VALIDATION_TASKS.items()}
    assert meta_mlp < k["mlp_digits_w128"]["width"] < HELD_OUT_TASKS["mlp_digits_wide"][1]["width"]
    for s in val:  # every task builds and is CPU-sized
        assert count_params(build_model(s.model)) < 40_000


def test_dev_suite_mirrors_each_held_out_task_without_being_one(meta_samples) -> None:
    """The dev suite (choosing optimizer settings): one sibling per held-out task, of its family and data set,
    never a held-out, meta-validation or meta-training task, with seeds of its own; reachable by name, never
    as a meta-training distribution."""
    from inner_tasks.tasks import DEV_TASKS, dev_suite, meta_validation_suite
    from inner_tasks.tasks.collections import COLLECTIONS, DEV_SEED, META_VALIDATION_SEED, SELECTION_SUITES
    from outer_train.config import TaskSection
    from outer_train.tasks import _distribution

    dev, held = dev_suite(), held_out_suite()
    assert dev == dev_suite() and COLLECTIONS["dev"]() == dev and SELECTION_SUITES["dev"][1] is dev_suite
    assert sorted(mirror for _, _, mirror in DEV_TASKS.values()) == sorted(HELD_OUT_TASKS)  # one sibling each
    held_by_name = {s.name.split("/")[0]: s for s in held}
    for spec in dev:
        twin = held_by_name[DEV_TASKS[spec.name.split("/")[0]][2]]
        assert spec.family == twin.family and spec.data.get("name") == twin.data.get("name")
        assert spec.knobs != twin.knobs
    key = lambda s: (s.architecture_key(), repr(sorted(s.data.items())))  # noqa: E731
    assert not {key(s) for s in dev} & {key(s) for s in held + meta_validation_suite()}
    assert not {key(s) for s in dev} & {key(m) for m in meta_samples}
    assert not [s.name for s in dev if meta_train_distribution().contains(s)]
    seeds = {DEV_SEED + k for k in range(5)}
    assert not seeds & (set(HELD_OUT_SEEDS) | {META_VALIDATION_SEED + k for k in range(5)})
    for s in dev:
        assert count_params(build_model(s.model)) < 150_000
    for name in ("dev", "meta_val", "held_out"):
        with pytest.raises(ValueError, match="meta-training distribution"):
            _distribution(TaskSection(distribution=name))


def test_large_meta_training_distribution_stays_out_of_held_out_and_meta_validation() -> None:
    """meta_train_large (held-out-shaped meta-training): larger than meta_train, yet no held-out or
    meta-validation task, no held-out data and no held-out-only architecture."""
    from inner_tasks.tasks import meta_train_large_distribution, meta_validation_suite
    from inner_tasks.tasks.collections import COLLECTIONS

    dist = meta_train_large_distribution()
    samples = [dist.sample(s) for s in range(200)]
    assert COLLECTIONS["meta_train_large"]().sample(3) == samples[3]  # deterministic, reachable by name
    assert all(dist.contains(m) for m in samples)
    fixed = held_out_suite() + meta_validation_suite()
    assert not [s.name for s in fixed if dist.contains(s)]
    key = lambda s: (s.architecture_key(), repr(sorted(s.data.items())))  # noqa: E731
    assert not {key(s) for s in fixed} & {key(m) for m in samples}
    assert {m.data.get("name") for m in samples} == {"digits"}
    assert not any(m.family == "transformer_lm" or m.knobs.get("norm") == "batch" for m in samples)
    small = meta_train_distribution()
    small_mlp = max(m.knobs["width"] for m in map(small.sample, range(400)) if m.family == "mlp_classification")
    assert max(m.knobs["width"] for m in samples if m.family == "mlp_classification") > 2 * small_mlp
