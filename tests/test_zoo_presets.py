"""Zoo presets: the published zoos' draws never change; diverse-archs-spread trains each family on its own budget."""

import hashlib
import json

import pytest

from inner_tasks.models import spec_to_json
from inner_tasks.zoo.presets import DIVERSE_FAMILIES, FAMILY_BUDGETS, PRESETS, sample_config


def test_published_presets_draw_what_their_tables_were_measured_on():
    # sha256 over the first 200 draws of varying-cnns and diverse-archs (architecture, hyperparameters,
    # seed) as generated for docs/accuracy.md: adding presets or budgets must not move them.
    h = hashlib.sha256()
    for preset in ("varying-cnns", "diverse-archs"):
        for i in range(200):
            c = sample_config(preset, 0, i)
            h.update((spec_to_json(c.spec) + json.dumps(c.hparams, sort_keys=True) + str(c.seed)).encode())
    assert h.hexdigest() == "ba528e75e160333adde6d3e951caa1504b0b64d56bc0d42220f0c69ad92edc9f"


def test_spread_preset_uses_each_family_budget():
    assert "diverse-archs-spread" in PRESETS and set(FAMILY_BUDGETS) == set(DIVERSE_FAMILIES)
    seen: dict[str, set[int]] = {}
    for i in range(600):
        c = sample_config("diverse-archs-spread", 0, i)
        lo, hi = FAMILY_BUDGETS[c.family]["epochs"]
        assert lo <= c.hparams["epochs"] <= hi and FAMILY_BUDGETS[c.family]["lr_min"] <= c.hparams["lr"] <= 4e-2
        seen.setdefault(c.family, set()).add(c.hparams["epochs"])
    assert set(seen) == set(DIVERSE_FAMILIES)
    assert max(seen["deepsets"]) > 10 >= max(seen["mlp"])  # slow learners get more steps than the old 1-10 epochs
    # the same architectures as diverse-archs: only the training budget differs
    old = {type(sample_config("diverse-archs", 0, i).spec).__name__ for i in range(100)}
    new = {type(sample_config("diverse-archs-spread", 0, i).spec).__name__ for i in range(100)}
    assert old == new


def test_tiny_spread_zoo_stays_tiny():
    assert all(sample_config("diverse-archs-spread", 0, i, tiny=True).hparams["epochs"] <= 2 for i in range(50))


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="unknown zoo preset"):
        sample_config("diverse", 0, 0)
