"""INR sets: vmapped fitting reaches a PSNR bound, resume skips done shards, the metaopt reader renders
the stored INRs exactly, and the augmentations preserve the rendered image."""

import json
from pathlib import Path

import pytest
import torch

from inner_tasks.inr import FitConfig, INRSetConfig, fit_sirens, generate_inr_set, read_index
from inner_tasks.models.specs import SIRENSpec, build_model
from metaopt.weightspace.inr_data import (
    activations, augment, canonicalize_signs, load_inr_set, neuron_nodes, pixel_coords, random_affine, render, render_images,
    transform_inputs,
)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inrs") / "digits"
    cfg = INRSetConfig(data="digits", n=24, inrs_per_image=2, steps=150, shard_size=16)
    generate_inr_set(cfg, out, progress=False)
    return out


def test_fit_reaches_psnr_bound() -> None:
    from inner_tasks.data import load_digits_split

    images = load_digits_split(size=16).x_train[:6]
    spec = SIRENSpec(2, 1, (16, 16))
    params, mse = fit_sirens(spec, images, seeds=list(range(6)), cfg=FitConfig(steps=200))
    psnr = 10 * torch.log10(1 / mse)
    assert psnr.min() > 30.0, psnr
    # the vmapped fit is the same function as the plain model: render one INR through nn.Module
    model = build_model(spec, seed=0)
    model.load_state_dict({k: v[0] for k, v in params.items()})
    coords = pixel_coords(16, 16)
    with torch.no_grad():
        direct = ((model(coords).reshape(16, 16) - images[0, 0]) ** 2).mean()
    assert float(direct) == pytest.approx(float(mse[0]), rel=1e-4)


def test_store_layout_and_reader_match(tiny_set: Path) -> None:
    inrs = load_inr_set(tiny_set)
    assert inrs.weights.shape == (48, inrs.graph.num_params)
    assert inrs.graph.num_params == 2 * 16 + 16 + 16 * 16 + 16 + 16 + 1
    rows = read_index(tiny_set)
    assert len(rows) == 48 and {r["split"] for r in rows} == {"train", "test"}
    # two replicates per image with distinct seeds
    assert torch.equal(inrs.image_index[0::2], inrs.image_index[1::2])
    assert (inrs.seeds[0::2] != inrs.seeds[1::2]).all()
    # the metaopt renderer (functional SIREN from the JSON) reproduces the stored PSNR exactly
    mse = ((render_images(inrs, inrs.weights) - inrs.images[inrs.image_index]) ** 2).mean((1, 2, 3))
    assert torch.allclose(10 * torch.log10(1 / mse), inrs.psnr, atol=1e-3)
    report = json.loads((tiny_set / "psnr.json").read_text())
    assert report["num_inrs"] == 48 and report["psnr_db"]["all"]["min"] > 25.0
    test_one = inrs.first_replicate(True)
    assert len(test_one) == int(inrs.image_is_test.sum()) and inrs.is_test[test_one].all()


def test_resume_skips_done_shards_and_rejects_changed_settings(tiny_set: Path, tmp_path: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in (tiny_set / "shards").iterdir()}
    report = generate_inr_set(INRSetConfig(data="digits", n=24, inrs_per_image=2, steps=150, shard_size=16), tiny_set, progress=False)
    assert report["num_inrs"] == 48
    assert {p.name: p.stat().st_mtime_ns for p in (tiny_set / "shards").iterdir()} == before
    # a run killed after its first shard: deleting the last shard's rows makes only that shard refit
    out = tmp_path / "partial"
    cfg = INRSetConfig(data="digits", n=12, steps=20, shard_size=8)
    generate_inr_set(cfg, out, progress=False)
    lines = (out / "index.jsonl").read_text().splitlines()
    (out / "index.jsonl").write_text("\n".join(l for l in lines if json.loads(l)["shard"] == 0) + "\n")
    first = (out / "shards" / "shard_00000.safetensors").stat().st_mtime_ns
    generate_inr_set(cfg, out, progress=False)
    assert (out / "shards" / "shard_00000.safetensors").stat().st_mtime_ns == first
    assert len(read_index(out)) == 12
    with pytest.raises(ValueError, match="different settings"):
        generate_inr_set(INRSetConfig(data="digits", n=12, steps=21, shard_size=8), out, progress=False)


def test_augmentations_preserve_the_rendered_image(tiny_set: Path) -> None:
    inrs = load_inr_set(tiny_set)
    w = inrs.weights.double()
    coords = pixel_coords(16, 16).double()
    ref = render(inrs.graph, inrs.layers, w, coords)
    g = torch.Generator().manual_seed(0)
    for permute, flip in ((True, False), (False, True), (True, True)):
        aug = augment(inrs.graph, inrs.layers, w, generator=g, permute=permute, flip_signs=flip)
        assert (aug - w).abs().max() > 0.1  # the weights really change
        assert torch.allclose(render(inrs.graph, inrs.layers, aug, coords), ref, atol=1e-5)
    # in float32 (the training dtype) too
    aug32 = augment(inrs.graph, inrs.layers, inrs.weights, generator=g)
    assert torch.allclose(render_images(inrs, aug32), render_images(inrs, inrs.weights), atol=1e-5)
    # a wrong transform (flip only the incoming weights) does change the image: the test can fail
    p = inrs.graph.edges_to_params(w[0].clone())
    p["net.0.weight"][0] *= -1
    bad = torch.cat([t.flatten() for t in p.values()])[None]
    assert (render(inrs.graph, inrs.layers, bad, coords) - ref[:1]).abs().max() > 1e-2


def test_sign_canonicalisation_keeps_the_image_and_removes_the_flips(tiny_set: Path) -> None:
    inrs = load_inr_set(tiny_set)
    w = inrs.weights.double()
    coords = pixel_coords(16, 16).double()
    canon = canonicalize_signs(inrs.graph, inrs.layers, w)
    assert torch.allclose(render(inrs.graph, inrs.layers, canon, coords), render(inrs.graph, inrs.layers, w, coords), atol=1e-5)
    p = inrs.graph.edges_to_params(canon.t())
    assert (p["net.0.bias"] >= 0).all() and (p["net.2.bias"] >= 0).all()
    # sign flips are removed exactly; permutations commute with the map (canon(perm(w)) = perm(canon(w)))
    g = torch.Generator().manual_seed(3)
    flipped = augment(inrs.graph, inrs.layers, w, generator=g, permute=False)
    assert (flipped - w).abs().max() > 0.1
    assert torch.allclose(canonicalize_signs(inrs.graph, inrs.layers, flipped), canon, atol=1e-12)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    perm_then = canonicalize_signs(inrs.graph, inrs.layers, augment(inrs.graph, inrs.layers, w, generator=g1, flip_signs=False))
    then_perm = augment(inrs.graph, inrs.layers, canon, generator=g2, flip_signs=False)
    assert torch.allclose(perm_then, then_perm, atol=1e-12)


def test_input_transforms_in_weight_space_move_the_image_exactly(tiny_set: Path) -> None:
    inrs = load_inr_set(tiny_set)
    w = inrs.weights.double()
    coords = pixel_coords(16, 16).double()
    g = torch.Generator().manual_seed(5)
    a, t = random_affine(len(w), rotate_deg=20, scale=0.1, shift=0.2, generator=g, dtype=torch.float64)
    assert not torch.allclose(a, torch.eye(2, dtype=a.dtype).expand_as(a)) and t.abs().max() > 0.05
    moved = transform_inputs(inrs.graph, inrs.layers, w, a, t)
    # the new INR at x is the old one at A x + t (each INR its own A, t)
    want = torch.stack([render(inrs.graph, inrs.layers, w[i : i + 1], coords @ a[i].T + t[i])[0] for i in range(len(w))])
    assert torch.allclose(render(inrs.graph, inrs.layers, moved, coords), want, atol=1e-6)
    # identity transform is a no-op; only the first layer changes
    same = transform_inputs(inrs.graph, inrs.layers, w, torch.eye(2, dtype=w.dtype).expand(len(w), 2, 2), torch.zeros(len(w), 2, dtype=w.dtype))
    assert torch.allclose(same, w, atol=1e-12)
    p0, p1 = inrs.graph.edges_to_params(w.t()), inrs.graph.edges_to_params(moved.t())
    first = {inrs.layers[0]["weight"], inrs.layers[0]["bias"]}
    assert all(torch.equal(p0[k], p1[k]) for k in p0 if k not in first)
    assert all(not torch.equal(p0[k], p1[k]) for k in first)
    # a shift alone leaves A the identity
    a1, t1 = random_affine(len(w), shift=0.125, generator=g, dtype=torch.float64)
    assert torch.allclose(a1, torch.eye(2, dtype=a1.dtype).expand_as(a1))


def test_neuron_nodes_match_the_graph_layout(tiny_set: Path) -> None:
    inrs = load_inr_set(tiny_set)
    inputs, neurons = neuron_nodes(inrs.graph, inrs.layers)
    assert inputs.tolist() == [0, 1] and [len(n) for n in neurons] == [16, 16, 1]
    # the activations of the last layer are the rendered image, and the graph simulation agrees with
    # the neuron -> node map: every neuron node receives exactly the edges of its weight row
    acts = activations(inrs.graph, inrs.layers, inrs.weights[:3], pixel_coords(16, 16))
    assert torch.equal(acts[-1], render(inrs.graph, inrs.layers, inrs.weights[:3], pixel_coords(16, 16)))
    # every weight edge runs between the nodes the map names for its row and column
    ids, (src, dst) = inrs.graph.edge_param_ids(), inrs.graph.edge_index.long()
    params = inrs.graph.edges_to_params(inrs.weights[0])
    units = [inputs, *neurons]
    for l, layer in enumerate(inrs.layers):
        t = inrs.graph.param_names.index(layer["weight"])
        row = {int(n): i for i, n in enumerate(units[l + 1])}
        col = {int(n): i for i, n in enumerate(units[l])}
        for k in torch.nonzero(ids == t).flatten().tolist():
            assert params[layer["weight"]][row[int(dst[k])], col[int(src[k])]] == inrs.weights[0, k]
    assert len(set(torch.cat([inputs, *neurons]).tolist())) == 2 + 16 + 16 + 1


def test_reader_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="python -m inner_tasks.inr"):
        load_inr_set(tmp_path)
