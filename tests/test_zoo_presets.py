"""Zoo presets: the published zoos' draws never change; diverse-archs-spread trains each family on its own budget."""

import hashlib
import json

import pytest

from inner_tasks.models import spec_to_json
from inner_tasks.zoo.presets import DIVERSE_FAMILIES, FAMILY_BUDGETS, PRESETS, sample_config


def _to_12_digits(value):  # noqa: ANN001, ANN202
    """Floats to 12 significant digits: numpy's exp / log differ in the last bit between CPUs (AVX-512 or not)."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: _to_12_digits(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_12_digits(v) for v in value]
    return value


def test_published_presets_draw_what_their_tables_were_measured_on():
    # sha256 over the first 200 draws of varying-cnns and diverse-archs (architecture, hyperparameters to 12
    # significant digits, seed) as generated for docs/accuracy.md: adding presets or budgets must not move them.
    h = hashlib.sha256()
    for preset in ("varying-cnns", "diverse-archs"):
        for i in range(200):
            c = sample_config(preset, 0, i)
            h.update((spec_to_json(c.spec) + json.dumps(_to_12_digits(c.hparams), sort_keys=True) + str(c.seed)).encode())
    assert h.hexdigest() == "5af131ffe606c7704dc4a38499b0b229feec79392df823ad586096c7b5cc1b5b"


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
