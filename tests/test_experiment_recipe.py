"""The "How to add an experiment" recipe (docs/design.md), followed by a toy experiment: a GMN
predicts a property of tiny MLPs from their weights, trained with the shared `fit_epochs`, and the
driver writes its JSON (with the command) and a Markdown table through `experiments.results`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch_geometric.data import Batch

from experiments.results import command_line, update_results_json
from metaopt import to_graph
from metaopt.nn import GMN
from metaopt.weightspace.training import fit_epochs


def _zoo(n: int, gen: torch.Generator) -> tuple[list, list, torch.Tensor]:
    """Tiny MLPs and their target: the mean output on a fixed probe (a function of the weights)."""
    probe = torch.randn(16, 3, generator=gen)
    graphs, weights, targets = [], [], []
    for _ in range(n):
        net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        graphs.append(to_graph(net, torch.zeros(1, 3)))
        weights.append(torch.cat([p.detach().reshape(-1) for p in net.parameters()]))  # edge k = element k
        targets.append(float(net(probe).mean().detach()))
    return graphs, weights, torch.tensor(targets)


def toy_main(argv: list[str], out: Path) -> int:
    """The driver: parse, run methods x seeds, write <name>.json and a Markdown table."""
    epochs = int(argv[argv.index("--epochs") + 1])
    rows = {}
    for seed in (0, 1):
        gen = torch.Generator().manual_seed(seed)
        graphs, weights, y = _zoo(48, gen)
        torch.manual_seed(seed)
        model = GMN(hidden=16, layers=2, edge_in=1, graph_out=1)
        std = (y - y.mean()) / y.std()

        def batch_loss(ids: torch.Tensor) -> torch.Tensor:
            batch = Batch.from_data_list([graphs[i] for i in ids.tolist()])
            values = torch.cat([weights[i] for i in ids.tolist()])[:, None]
            pred = model(batch, edge_values=values).graph[:, 0]
            return ((pred - std[ids]) ** 2).mean()

        losses = fit_epochs(model, torch.arange(48), batch_loss, epochs=epochs, batch_size=8, lr=3e-3,
                            weight_decay=0.0, generator=gen)
        rows[f"seed{seed}"] = {"first_epoch_mse": losses[0], "last_epoch_mse": losses[-1]}
    update_results_json(out / "toy.json", {"gmn": rows}, depth=1, command=command_line("python -m experiments.toy", argv))
    (out / "toy.md").write_text("| seed | first | last |\n|---|---:|---:|\n" + "".join(
        f"| {k} | {v['first_epoch_mse']:.3f} | {v['last_epoch_mse']:.3f} |\n" for k, v in rows.items()))
    return 0


def test_a_toy_experiment_following_the_recipe_learns_and_records_its_command(tmp_path: Path) -> None:
    assert toy_main(["--epochs", "12"], tmp_path) == 0
    result = json.loads((tmp_path / "toy.json").read_text())
    assert result["gmn"]["command"] == "python -m experiments.toy --epochs 12"
    for seed in ("seed0", "seed1"):
        rec = result["gmn"][seed]
        assert rec["last_epoch_mse"] < 0.7 * rec["first_epoch_mse"], rec  # it learns from weights
    assert (tmp_path / "toy.md").read_text().startswith("| seed | first | last |")


def test_inr_table_is_rendered_from_the_json_into_the_docs_block(tmp_path) -> None:
    """`python -m experiments.results docs/results/inr.json --doc docs/inr_cka.md` fills the doc's
    generated block from the JSON (shared- and random-init columns); a doc without the block is an error."""
    import pytest

    from experiments.results import inr_markdown, main

    rec = lambda acc: {"acc_mean": acc, "acc_std": 0.01, "n_seeds": 3}  # noqa: E731
    path = tmp_path / "inr.json"
    update_results_json(path, {"gmn": rec(0.88), "mlp_pixels": rec(0.979)}, depth=1, command="a")
    update_results_json(path, {"random_init": {"gmn": rec(0.1)}}, depth=2, command="b")
    lines = inr_markdown(json.loads(path.read_text())).splitlines()
    assert lines[0] == "| method | shared init test accuracy | seeds | random init test accuracy | seeds |"
    assert lines[2] == "| GMN, weights only | 88.00 ± 1.00 % | 3 | 10.00 ± 1.00 % | 3 |"
    assert lines[3] == "| MLP on the images (reference) | 97.90 ± 1.00 % | 3 | - | - |"
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- results:inr:start -->\nold\n<!-- results:inr:end -->\nafter\n")
    assert main([str(path), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "old" not in text and lines[2] in text and text.startswith("before") and text.endswith("after\n")
    (tmp_path / "plain.md").write_text("no block\n")
    with pytest.raises(SystemExit, match="has none of the blocks"):
        main([str(path), "--doc", str(tmp_path / "plain.md")])


def test_ablation_table_lists_each_runs_changed_settings(tmp_path) -> None:
    """`python -m experiments.results <out>/*/classify.json`: one row per run folder and method, with the
    settings that differ from ClassifyConfig's defaults (the seed is not a setting)."""
    from experiments.results import main
    from metaopt.weightspace.inr_classify import ClassifyConfig

    cfg = {**vars(ClassifyConfig()), "probes": 64, "dropout": 0.2, "seed": 3}
    run = tmp_path / "probes64" / "classify.json"
    run.parent.mkdir()
    run.write_text(json.dumps({"config": cfg, "summary": {"gmn": {"test_acc_mean": 0.9622, "seeds": 1}},
                               "runs": [{"method": "gmn", "seed": 3, "train_acc": 0.989, "test_acc": 0.9622}]}))
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- results:inr_ablation:start -->\n<!-- results:inr_ablation:end -->\n")
    assert main([str(run), "--doc", str(doc)]) == 0
    assert "| probes64 | dropout 0.2, probes 64 | gmn | 1 | 96.22 % | 98.9 % |" in doc.read_text()
