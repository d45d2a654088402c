"""Train/test splits of a zoo for accuracy prediction: "50", "5" (fractions of the zoo) and "ood".

- A fixed test set (25% of the models, drawn with `TEST_SPLIT_SEED`, the same for every predictor
  seed) serves "50" and "5"; the predictor trains on a random 50% / 5% of all models, drawn from the
  other 75% with the run's seed.
- "ood": test = the models of the largest architectures (by parameter count) that together make
  up at least 25% of the zoo; train = a random 50% of the zoo drawn from the models of the remaining,
  smaller architectures. So every test architecture is absent from training and larger than any
  training architecture.
"""

from __future__ import annotations

import numpy as np

from ..zoo_io import Zoo

SPLITS: tuple[str, ...] = ("50", "5", "ood")
TEST_FRACTION = 0.25
TRAIN_FRACTION = {"50": 0.50, "5": 0.05, "ood": 0.50}
TEST_SPLIT_SEED = 12345


def ood_test_mask(zoo: Zoo, fraction: float = TEST_FRACTION) -> np.ndarray:
    """Boolean [N]: models of the largest architectures covering >= `fraction` of the zoo."""
    arch = np.array(zoo.arch_ids())
    sizes = {a: zoo.graphs[a].num_params for a in set(arch)}
    order = sorted(sizes, key=lambda a: (-sizes[a], a))
    counts = {a: int((arch == a).sum()) for a in order}
    chosen, covered = set(), 0
    for a in order:
        if covered >= fraction * len(arch):
            break
        chosen.add(a)
        covered += counts[a]
    if covered == len(arch):
        raise ValueError("ood split: the zoo has a single architecture size; OOD needs several architectures")
    return np.isin(arch, sorted(chosen))


def make_split(zoo: Zoo, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices) of `split` for predictor seed `seed` (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    n = len(zoo)
    if split == "ood":
        test_mask = ood_test_mask(zoo)
    else:
        perm = np.random.default_rng(TEST_SPLIT_SEED).permutation(n)
        test_mask = np.zeros(n, dtype=bool)
        test_mask[perm[: max(1, int(round(TEST_FRACTION * n)))]] = True
    pool = np.flatnonzero(~test_mask)
    n_train = min(len(pool), max(2, int(round(TRAIN_FRACTION[split] * n))))
    train = np.sort(np.random.default_rng(seed).choice(pool, size=n_train, replace=False))
    return train, np.flatnonzero(test_mask)
