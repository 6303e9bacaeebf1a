import numpy as np
import pytest
import torch

from neuroprobe.cka import hsic, linear_cka


def _rng():
    return np.random.default_rng(0)


def test_self_similarity_is_one():
    x = _rng().normal(size=(40, 12))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, x, unbiased=True) == pytest.approx(1.0)


def test_invariant_to_orthogonal_transform_and_isotropic_scaling():
    rng = _rng()
    x = rng.normal(size=(50, 10))
    y = x @ rng.normal(size=(10, 8)) + 0.5 * rng.normal(size=(50, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    base = linear_cka(x, y)
    assert linear_cka(x, y @ q) == pytest.approx(base, rel=1e-10)
    assert linear_cka(3.7 * x, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, y @ q, unbiased=True) == pytest.approx(linear_cka(x, y, unbiased=True))
    # not invariant to an arbitrary (anisotropic) linear map
    assert linear_cka(x * np.arange(1, 11), y) != pytest.approx(base, rel=1e-3)


def test_one_dimensional_features_give_squared_correlation():
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    y = np.array([[1.0], [-1.0], [1.0], [-1.0]])
    assert linear_cka(x, y) == pytest.approx(0.2)  # r = -2/sqrt(20) by hand


def test_biased_matches_centring_matrix_formula():
    rng = _rng()
    x, y = rng.normal(size=(9, 4)), rng.normal(size=(9, 3))
    n = 9
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    ref = np.trace(k @ h @ l @ h) / (n - 1) ** 2
    assert hsic(k, l) == pytest.approx(ref)


def test_unbiased_hsic_matches_song_et_al_sum_over_distinct_indices():
    rng = _rng()
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 2))
    k, l = x @ x.T, y @ y.T
    n = 7
    # Song et al. 2012, eq. (5) written as sums over distinct index tuples
    idx = range(n)
    a = sum(k[i, j] * l[i, j] for i in idx for j in idx if i != j)
    b = sum(k[i, j] * l[q, r] for i in idx for j in idx for q in idx for r in idx
            if len({i, j, q, r}) == 4)
    c = sum(k[i, j] * l[i, q] for i in idx for j in idx for q in idx if len({i, j, q}) == 3)
    from math import perm
    ref = a / perm(n, 2) + b / perm(n, 4) - 2 * c / perm(n, 3)
    assert hsic(k, l, unbiased=True) == pytest.approx(ref, rel=1e-9)


def test_unbiased_removes_small_sample_bias():
    rng = _rng()
    x, y = rng.normal(size=(30, 500)), rng.normal(size=(30, 500))
    assert linear_cka(x, y) > 0.5           # biased estimator: far from 0 for p >> n
    assert abs(linear_cka(x, y, unbiased=True)) < 0.1


def test_conv_maps_and_tensors():
    t = torch.randn(6, 4, 3, 3)
    assert linear_cka(t, t, reduce="mean") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same images"):
        linear_cka(t, t[:5])
