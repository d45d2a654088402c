"""CKA: identity, invariances, agreement with direct formulas and a brute-force unbiased HSIC."""

import itertools

import pytest
import torch

from metaopt.analysis.cka import center_gram, cka, cka_from_grams, cka_matrix, gram_linear, hsic, linear_cka_features


def _orthogonal(p: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_self_similarity_is_one(kernel: str, unbiased: bool) -> None:
    x = torch.randn(40, 7)
    assert cka(x, x, kernel, unbiased) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(kernel: str, unbiased: bool) -> None:
    x = torch.randn(50, 6, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(6, 9, dtype=torch.float64)) + 0.3 * torch.randn(50, 9, dtype=torch.float64)
    base = cka(x, y, kernel, unbiased)
    assert 0.05 < base < 0.999  # a non-trivial value, so the invariance checks mean something
    assert cka(x @ _orthogonal(6, 1), y, kernel, unbiased) == pytest.approx(base, abs=1e-9)
    assert cka(x, 7.5 * y @ _orthogonal(9, 2), kernel, unbiased) == pytest.approx(base, abs=1e-9)


def test_not_invariant_to_anisotropic_scaling() -> None:
    x = torch.randn(50, 6, dtype=torch.float64)
    y = x @ torch.randn(6, 6, dtype=torch.float64)
    scaled = x * torch.tensor([100.0, 1, 1, 1, 1, 1], dtype=torch.float64)
    assert abs(cka(scaled, y) - cka(x, y)) > 1e-3


def test_linear_cka_matches_feature_space_formula_and_hsic_definition() -> None:
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randn(12, 3, dtype=torch.float64)
    assert cka(x, y) == pytest.approx(linear_cka_features(x, y), abs=1e-12)
    n = 12
    h = torch.eye(n, dtype=torch.float64) - torch.ones(n, n, dtype=torch.float64) / n
    k, l = gram_linear(x), gram_linear(y)
    direct = torch.trace(k @ h @ l @ h) / (n - 1) ** 2
    assert float(hsic(k, l)) == pytest.approx(float(direct), rel=1e-12)
    assert torch.allclose(center_gram(k), h @ k @ h, atol=1e-12)


def _hsic_brute_force(k: torch.Tensor, l: torch.Tensor) -> float:
    """Unbiased HSIC as the U-statistic over distinct ordered 4-tuples (Song et al. 2012)."""
    n = k.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += float(k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q])
        count += 1
    return total / count


def test_unbiased_hsic_matches_brute_force() -> None:
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    k, l = gram_linear(x), gram_linear(y)
    assert float(hsic(k, l, unbiased=True)) == pytest.approx(_hsic_brute_force(k, l), rel=1e-10)
    assert float(hsic(k, k, unbiased=True)) == pytest.approx(_hsic_brute_force(k, k), rel=1e-10)


def test_unbiased_removes_the_small_sample_bias_for_independent_features() -> None:
    # Independent random features: biased CKA is inflated at small n (p >> n), unbiased CKA is near 0.
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(30, 500, generator=g), torch.randn(30, 500, generator=g)
    assert cka(x, y) > 0.5
    assert abs(cka(x, y, unbiased=True)) < 0.1


def test_cka_matrix_matches_pairwise_and_errors() -> None:
    reps_a = [torch.randn(20, 4), torch.randn(20, 6)]
    reps_b = [torch.randn(20, 3), reps_a[0] * 2]
    m = cka_matrix(reps_a, reps_b)
    assert m.shape == (2, 2)
    assert float(m[0, 1]) == pytest.approx(1.0, abs=1e-10)
    assert float(m[1, 0]) == pytest.approx(cka(reps_a[1], reps_b[0]), abs=1e-12)
    assert float(cka_from_grams(gram_linear(reps_a[0]), gram_linear(reps_b[0]))) == pytest.approx(float(m[0, 0]))
    with pytest.raises(ValueError, match="same inputs"):
        cka(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match="unknown CKA kernel"):
        cka(torch.randn(5, 2), torch.randn(5, 2), kernel="poly")
