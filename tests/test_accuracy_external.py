"""The Small CNN Zoo reader: TF-layout rows map exactly onto our graph's edge order; bad files fail clearly."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from metaopt.weightspace import ZooFormatError, is_small_cnn_zoo, load_small_cnn_zoo
from metaopt.weightspace.external import equivalent_cnn, read_layout

# (varname, TF shape): 2 convs (1->3, 3->4 channels, 3x3 and 2x2) then a dense layer to 5 classes
LAYOUT = [
    ("sequential/conv2d/kernel:0", (3, 3, 1, 3)), ("sequential/conv2d/bias:0", (3,)),
    ("sequential/conv2d_1/kernel:0", (2, 2, 3, 4)), ("sequential/conv2d_1/bias:0", (4,)),
    ("sequential/dense/kernel:0", (4, 5)), ("sequential/dense/bias:0", (5,)),
]


def write_small_cnn_zoo(folder, n=5, activations=("relu", "tanh")):
    """Torch models exported in the Small CNN Zoo layout; returns their torch-order flat parameters."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, start = [], 0
    for name, shape in LAYOUT:
        size = int(np.prod(shape))
        rows.append({"varname": name, "start_idx": start, "end_idx": start + size, "size": size, "shape": str(shape)})
        start += size
    with open(folder / "layout.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["varname", "start_idx", "end_idx", "size", "shape"])
        w.writeheader()
        w.writerows(rows)
    flat_tf, flat_torch = [], []
    for i in range(n):
        torch.manual_seed(i)
        model = equivalent_cnn_from_layout(activations[i % len(activations)])
        parts = []
        for p in model.parameters():
            t = p.detach()
            if t.dim() == 4:
                t = t.permute(2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]
            elif t.dim() == 2:
                t = t.T
            parts.append(t.reshape(-1))
        flat_tf.append(torch.cat(parts).numpy())
        flat_torch.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    np.save(folder / "weights.npy", np.stack(flat_tf))
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["test_accuracy", "config.activation", "train_accuracy"])
        for i in range(n):
            w.writerow([0.1 + 0.1 * i, activations[i % len(activations)], 0.2])
    return flat_torch


def equivalent_cnn_from_layout(activation):
    layout = [{"varname": v, "shape": s, "start": 0, "end": 0} for v, s in LAYOUT]
    pairs = [(layout[i], layout[i + 1]) for i in range(0, len(layout), 2)]
    return equivalent_cnn(pairs, activation)


def test_reader_maps_rows_to_edge_order_exactly(tmp_path):
    expected = write_small_cnn_zoo(tmp_path / "zoo")
    assert is_small_cnn_zoo(tmp_path / "zoo") and not is_small_cnn_zoo(tmp_path)
    zoo = load_small_cnn_zoo(tmp_path / "zoo")
    assert len(zoo) == 5 and zoo.name == "zoo"
    assert set(zoo.graphs) == {"smallcnn-relu", "smallcnn-tanh"}
    for i in range(5):
        assert torch.equal(zoo.weights[i], expected[i])
        g = zoo.graph_of(i)
        assert g.num_params == expected[i].numel()
        assert [tuple(s) for s in g.param_shapes] == [(3, 1, 3, 3), (3,), (4, 3, 2, 2), (4,), (5, 4), (5,)]
    assert zoo.targets().tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def test_external_zoo_runs_through_the_pipeline(tmp_path):
    write_small_cnn_zoo(tmp_path / "zoo", n=12)
    from metaopt.weightspace.accuracy import PredictorConfig, fit_and_score, make_split

    zoo = load_small_cnn_zoo(tmp_path / "zoo")
    train, test = make_split(zoo, "50", 0)
    res = fit_and_score(zoo, train, test, "gmn", PredictorConfig(hidden=8, layers=1, steps=2, batch_size=4), 0)
    assert len(res["pred"]) == len(test) and np.isfinite(res["pred"]).all()


def test_missing_files_name_the_file_and_format(tmp_path):
    write_small_cnn_zoo(tmp_path / "zoo")
    (tmp_path / "zoo" / "layout.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"layout\.csv.*varname, start_idx, end_idx, shape"):
        load_small_cnn_zoo(tmp_path / "zoo")
    write_small_cnn_zoo(tmp_path / "z2")
    (tmp_path / "z2" / "metrics.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"metrics\.csv.*test_accuracy"):
        load_small_cnn_zoo(tmp_path / "z2")
    with pytest.raises(FileNotFoundError, match=r"weights\.npy.*\[N, P\]"):
        load_small_cnn_zoo(tmp_path / "nothing")


def test_malformed_files_raise_format_errors(tmp_path):
    d = tmp_path / "zoo"
    write_small_cnn_zoo(d)
    text = (d / "layout.csv").read_text()
    (d / "layout.csv").write_text(text.replace('"(3, 3, 1, 3)"', '"(3, 3, one)"'))
    with pytest.raises(ZooFormatError, match=r"layout\.csv:2.*shape"):
        load_small_cnn_zoo(d)
    (d / "layout.csv").write_text(text.replace('"(3, 3, 1, 3)"', '"(3, 3, 1, 4)"'))
    with pytest.raises(ZooFormatError, match=r"layout\.csv:2.*27 values"):
        read_layout(d / "layout.csv")
    (d / "layout.csv").write_text(text)
    (d / "metrics.csv").write_text("test_accuracy\n0.5\n")
    with pytest.raises(ZooFormatError, match=r"metrics\.csv: 1 rows but .*weights\.npy has 5"):
        load_small_cnn_zoo(d)
    (d / "metrics.csv").write_text("accuracy\n" + "0.5\n" * 5)
    with pytest.raises(ZooFormatError, match="test_accuracy column"):
        load_small_cnn_zoo(d)
    np.save(d / "weights.npy", np.zeros(7, dtype=np.float32))
    with pytest.raises(ZooFormatError, match=r"weights\.npy.*float \[N, P\]"):
        load_small_cnn_zoo(d)
    (d / "weights.npy").write_bytes(b"not numpy")
    with pytest.raises(ZooFormatError, match=r"weights\.npy: not a readable"):
        load_small_cnn_zoo(d)


def test_non_finite_networks_are_skipped(tmp_path):
    d = tmp_path / "zoo"
    write_small_cnn_zoo(d)
    w = np.load(d / "weights.npy")
    w[1, 3] = np.nan
    np.save(d / "weights.npy", w)
    zoo = load_small_cnn_zoo(d)
    assert [r["id"] for r in zoo.records] == [0, 2, 3, 4]
