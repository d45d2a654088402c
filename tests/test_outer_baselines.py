"""outer_train.evaluate's optional tuned baselines (Muon, SOAP): tuned on the grid, reported beside Adam."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from outer_train import evaluate


@pytest.mark.parametrize("baseline", ["muon", "soap"])
def test_evaluate_tunes_a_baseline(tmp_path: Path, baseline: str) -> None:
    threads = torch.get_num_threads()
    evaluate.main(["--tasks", "mlp_digits_deep", "--seeds", "0", "--steps", "12", "--grid-points", "2",
                   "--threads", "1", "--baselines", "adam", baseline, "--out", str(tmp_path)])
    torch.set_num_threads(threads)
    res = json.loads((tmp_path / "results.json").read_text())["entries"][0]["results"]
    assert set(res) == {"adam", baseline} and len(res[baseline]["grid"]) == 2
    assert res[baseline]["curve"][1:] != res["adam"]["curve"][1:]
    assert f"| {baseline} |" in (tmp_path / "results.md").read_text()


def test_evaluate_runs_the_soap_switch_beside_the_lr_free_row(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    evaluate.main(["--tasks", "mlp_digits_deep", "--seeds", "0", "--steps", "300", "--grid-points", "2", "--threads",
                   "1", "--baselines", "adam", "--rule", "anchor=lrfree_anchor", "--lr-free", "--soap-switch",
                   "--soap-variant", "onesided:sides='shorter',window=50", "--soap-variant", "rows:sides='rows'",
                   "--variants-only", "--no-best",
                   "--out", str(tmp_path)])
    torch.set_num_threads(threads)
    out = json.loads((tmp_path / "results.json").read_text())
    res = out["entries"][0]["results"]
    assert set(res) == {"adam", "anchor+lrfree", "anchor+lrfree+soap", "anchor+lrfree+onesided", "anchor+lrfree+rows"}
    lrfree = "anchor=lrfree_anchor+lrfree (lr_free)"
    assert out["rules"] == [lrfree, f"{lrfree}+soap (soap_switch)",
                            f"{lrfree}+onesided (soap_switch sides='shorter',window=50)",
                            f"{lrfree}+rows (soap_switch sides='rows')"]
    for variant in ("anchor+lrfree+soap", "anchor+lrfree+onesided"):
        same = [a == b for a, b in zip(res["anchor+lrfree"]["curve"], res[variant]["curve"])]
        assert same[0] and not same[-1]  # the same lr-free run until the switch, SOAP's after it
    assert res["anchor+lrfree+soap"]["curve"][-1] != res["anchor+lrfree+onesided"]["curve"][-1]
    with pytest.raises(SystemExit):
        evaluate.main(["--soap-switch", "--out", str(tmp_path / "x")])


@pytest.mark.parametrize("variant", ["onesided:sides='rows'", "x:window=5", "x:sides='diagonal'", "x:colour=1", "x", "x:window=[",
                                     "1a:scale=1"])
def test_a_soap_variant_needs_lr_free_and_good_settings(tmp_path: Path, variant: str) -> None:
    with pytest.raises(SystemExit):  # the first lacks --lr-free, the others are bad settings
        evaluate.main(["--soap-variant", variant, *(["--lr-free"] if not variant.startswith("onesided") else []),
                       "--out", str(tmp_path)])


def test_a_soap_variant_takes_tuple_values() -> None:
    """A comma inside brackets belongs to the value (betas), the others separate the pairs."""
    from metaopt.optim import SoapSwitch

    assert evaluate.split_pairs("block=64,betas=(0.95,0.999),sides=columns") == [
        "block=64", "betas=(0.95,0.999)", "sides=columns"]
    label, switch = evaluate.parse_soap_variant("b999:block=64,betas=(0.95,0.999),sides=columns", pytest.fail)
    assert label == "b999" and switch == SoapSwitch(block=64, betas=(0.95, 0.999), sides="columns")


def test_soap_variants_only_runs_the_variants_and_reuses_the_row_they_vary(tmp_path: Path) -> None:
    """--soap-variants-only: a screen of switch variants runs them alone (not the +lrfree row they vary), and takes
    that row from an earlier run with --reuse; without --soap-variant it is refused."""
    threads = torch.get_num_threads()
    common = ["--tasks", "mlp_digits_deep", "--seeds", "0", "--steps", "300", "--grid-points", "2", "--threads", "1",
              "--baselines", "adam", "--lr-free", "--variants-only", "--no-best"]
    evaluate.main([*common, "--rule", "base=lrfree_anchor", "--out", str(tmp_path / "base")])
    evaluate.main([*common, "--rule", "fo=lrfree_anchor", "--soap-variant", "w50:window=50", "--soap-variants-only",
                   "--reuse", str(tmp_path / "base" / "results.json"), "--out", str(tmp_path / "screen")])
    torch.set_num_threads(threads)
    out = json.loads((tmp_path / "screen" / "results.json").read_text())
    assert out["rules"] == ["base=lrfree_anchor+lrfree (lr_free)",  # reused, then the one row run here
                            "fo=lrfree_anchor+lrfree (lr_free)+w50 (soap_switch window=50)"]
    res = out["entries"][0]["results"]
    assert set(res) == {"adam", "base+lrfree", "fo+lrfree+w50"}
    assert res["fo+lrfree+w50"]["curve"][0] == res["base+lrfree"]["curve"][0]
    assert res["fo+lrfree+w50"]["curve"][-1] != res["base+lrfree"]["curve"][-1]  # switched after 50 steps held
    with pytest.raises(SystemExit):
        evaluate.main([*common, "--soap-variants-only", "--out", str(tmp_path / "x")])
