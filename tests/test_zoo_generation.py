"""Zoo generation: stored models rebuild exactly, interrupted runs resume, corrupt shards are regenerated."""

from __future__ import annotations

import json

import pytest
import torch

from inner_tasks.models import build_model, spec_from_dict
from inner_tasks.zoo import generate, sample_config, zoo_data
from metaopt import to_graph
from metaopt.weightspace import ZooFormatError, load_zoo
from metaopt.weightspace.zoo_io import read_records

N, SHARD = 6, 4


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "diverse"
    report = generate(out, "diverse-archs", N, workers=1, tiny=True, shard_size=SHARD, progress=False)
    return out, report


def test_zoo_layout_and_records(tiny_zoo):
    out, report = tiny_zoo
    assert sorted(report.trained) == list(range(N))
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard_00000.safetensors", "shard_00001.safetensors"]
    assert not (out / "pending").exists()
    zoo = load_zoo(out)
    assert len(zoo) == N and [r["id"] for r in zoo.records] == list(range(N))
    for r in zoo.records:
        assert {"spec", "hparams", "seed", "train_acc", "test_acc", "train_loss", "test_loss", "arch_id", "sha256"} <= set(r)
        assert 0.0 <= r["test_acc"] <= 1.0
        assert r["spec"] == json.loads(json.dumps(r["spec"]))  # plain JSON


def test_stored_model_rebuilds_exactly(tiny_zoo):
    """Spec + stored weights (+ buffers) rebuild a model with the recorded test accuracy and the stored graph."""
    out, _ = tiny_zoo
    zoo = load_zoo(out)
    from safetensors.torch import load_file

    for i in range(N):
        rec = zoo.records[i]
        model = build_model(spec_from_dict(rec["spec"]), seed=0)
        graph = zoo.graph_of(i)
        params = graph.edges_to_params(zoo.weights[i])
        model.load_state_dict(params, strict=False)
        shard = load_file(str(out / "shards" / rec["shard"]))
        if f"{i}.buffers" in shard:
            bufs = [b for b in model.buffers() if b.is_floating_point()]
            torch.nn.utils.vector_to_parameters(shard[f"{i}.buffers"], bufs)
        model.eval()
        _, _, xte, yte = zoo_data(rec["layout"])
        with torch.no_grad():
            acc = (model(xte).argmax(-1) == yte).float().mean().item()
        assert acc == pytest.approx(rec["test_acc"], abs=1e-6)
        fresh = to_graph(model, zoo_data(rec["layout"])[0][:1])
        assert torch.equal(fresh.edge_index, graph.edge_index) and torch.equal(fresh.edge_attr, graph.edge_attr)
        assert torch.equal(fresh.x, graph.x) and torch.equal(fresh.aux_edge_index, graph.aux_edge_index)


def test_configs_are_deterministic_and_varied():
    a = [sample_config("diverse-archs", 0, i) for i in range(40)]
    b = [sample_config("diverse-archs", 0, i) for i in range(40)]
    assert a == b
    assert len({c.family for c in a}) == 6
    for key in ("lr", "epochs", "weight_decay", "dropout", "init_scale", "label_noise", "data_fraction"):
        assert len({c.hparams[key] for c in a}) > 3, key
    assert sample_config("varying-cnns", 1, 0) != sample_config("varying-cnns", 0, 0)


def test_resume_after_interruption_trains_nothing_twice(tmp_path):
    out = tmp_path / "z"
    first = generate(out, "varying-cnns", N, workers=1, tiny=True, shard_size=SHARD, progress=False, stop_after=3)
    assert first.trained == [0, 1, 2]
    assert not read_records(out / "models.jsonl")  # nothing consolidated: shard 0 needs ids 0..3
    assert len(list((out / "pending").glob("*.safetensors"))) == 3
    with open(out / "pending" / "99.safetensors.tmp123", "wb") as f:  # a torn temporary write
        f.write(b"partial")
    second = generate(out, "varying-cnns", N, workers=1, tiny=True, shard_size=SHARD, progress=False)
    assert second.resumed_pending == 3 and second.trained == [3, 4, 5]
    zoo = load_zoo(out)
    assert [r["id"] for r in zoo.records] == list(range(N))
    third = generate(out, "varying-cnns", N, workers=1, tiny=True, shard_size=SHARD, progress=False)
    assert third.trained == [] and third.already_done == N


def test_torn_record_line_is_recovered(tmp_path):
    out = tmp_path / "z"
    generate(out, "varying-cnns", 4, workers=1, tiny=True, shard_size=2, progress=False)
    lines = (out / "models.jsonl").read_text().splitlines()
    (out / "models.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    rep = generate(out, "varying-cnns", 4, workers=1, tiny=True, shard_size=2, progress=False)
    assert rep.trained == [3]
    assert [r["id"] for r in load_zoo(out).records] == [0, 1, 2, 3]


def test_corrupt_shard_is_detected_and_regenerated(tmp_path):
    out = tmp_path / "z"
    generate(out, "varying-cnns", N, workers=1, tiny=True, shard_size=SHARD, progress=False)
    before = {r["id"]: r["sha256"] for r in load_zoo(out).records}
    shard = out / "shards" / "shard_00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last tensor's data
    shard.write_bytes(bytes(data))
    with pytest.raises(ZooFormatError, match="shard_00000.*checksum"):
        load_zoo(out)
    rep = generate(out, "varying-cnns", N, workers=1, tiny=True, shard_size=SHARD, progress=False)
    assert rep.corrupt_shards == ["shard_00000.safetensors"]
    assert sorted(rep.trained) == [0, 1, 2, 3]  # only the corrupt shard's models
    after = {r["id"]: r["sha256"] for r in load_zoo(out).records}
    assert after == before  # training is deterministic: the regenerated models are bit-identical


def test_truncated_shard_is_regenerated(tmp_path):
    out = tmp_path / "z"
    generate(out, "varying-cnns", 4, workers=1, tiny=True, shard_size=2, progress=False)
    shard = out / "shards" / "shard_00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:40])
    rep = generate(out, "varying-cnns", 4, workers=1, tiny=True, shard_size=2, progress=False)
    assert rep.corrupt_shards == ["shard_00001.safetensors"] and sorted(rep.trained) == [2, 3]
    assert len(load_zoo(out)) == 4


def test_other_settings_in_same_folder_are_refused(tmp_path):
    out = tmp_path / "z"
    generate(out, "varying-cnns", 2, workers=1, tiny=True, shard_size=2, progress=False)
    with pytest.raises(ValueError, match="different settings"):
        generate(out, "diverse-archs", 2, workers=1, tiny=True, shard_size=2, progress=False)


@pytest.mark.slow
def test_two_worker_processes(tmp_path):
    rep = generate(tmp_path / "z", "diverse-archs", 6, workers=2, tiny=True, shard_size=4, progress=False)
    assert sorted(rep.trained) == list(range(6))
    single = generate(tmp_path / "z1", "diverse-archs", 6, workers=1, tiny=True, shard_size=4, progress=False)
    assert sorted(single.trained) == list(range(6))
    a = {r["id"]: r["sha256"] for r in load_zoo(tmp_path / "z").records}
    b = {r["id"]: r["sha256"] for r in load_zoo(tmp_path / "z1").records}
    assert a == b  # same models whatever the worker count
