"""Properties of the normalisation math (deel_lip.normalizers)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deel_lip import normalizers as N
from deel_lip import normalizers_conv as NC


def _svd(matrix):
    return np.linalg.svd(np.asarray(matrix, dtype="float64"), compute_uv=False)


shapes = st.tuples(st.integers(1, 80), st.integers(1, 80))


@settings(max_examples=40, deadline=None)
@given(
    shape=shapes,
    log_scale=st.floats(-3, 3),
    rank_drop=st.integers(0, 3),
    beta=st.sampled_from([0.5, 0.25, 0.1]),
    maxiter=st.sampled_from([1, 2, 15]),
    seed=st.integers(0, 2**16),
)
def test_orthogonalization_bound_holds_for_any_matrix(
    shape, log_scale, rank_drop, beta, maxiter, seed
):
    """sigma_max(W_bar) <= coef for any matrix, scale, rank, beta and iteration count."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape) * 10.0**log_scale
    w[:, : min(rank_drop, shape[1] - 1)] = 0.0
    u = rng.normal(size=(1, min(shape))).astype("float32")
    w_bar, _, _ = N.reshaped_kernel_orthogonalization(
        w.astype("float32"), u, 0.7, beta_bjorck=beta, maxiter_bjorck=maxiter
    )
    assert _svd(w_bar).max() <= 0.7 * (1 + 1e-5)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, log_scale=st.floats(-3, 3), seed=st.integers(0, 2**16))
def test_spectral_only_normalization_is_a_certified_bound(shape, log_scale, seed):
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=shape) * 10.0**log_scale).astype("float32")
    u = rng.normal(size=(1, min(shape))).astype("float32")
    w_bar, _, sigma = N.reshaped_kernel_orthogonalization(w, u, 1.0, eps_bjorck=None)
    sv = _svd(w_bar)
    assert sv.max() <= 1 + 1e-5
    assert sv.max() >= 0.9  # the Gram iteration bound is tight enough to be useful
    assert float(sigma) >= _svd(w).max() * (1 - 1e-5)


def test_bjorck_converges_to_orthogonal():
    rng = np.random.default_rng(0)
    for shape in [(288, 64), (64, 288), (30, 30), (1568, 64)]:
        w = rng.normal(size=shape).astype("float32")
        u = rng.normal(size=(1, min(shape))).astype("float32")
        w_bar, _, _ = N.reshaped_kernel_orthogonalization(
            w, u, 1.0, eps_bjorck=1e-6, maxiter_bjorck=60
        )
        sv = _svd(w_bar)
        np.testing.assert_allclose(sv, 1.0, atol=1e-3)


def test_power_iteration_finds_top_singular_value():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(50, 20)).astype("float32")
    g = N.gram(N.kernel_matrix(w))
    u = N.power_iteration(g, rng.normal(size=(1, 20)).astype("float32"), eps=1e-7, maxiter=500)
    estimate = math.sqrt((np.asarray(u) @ np.asarray(g) @ np.asarray(u).T).item())
    assert estimate == pytest.approx(_svd(w).max(), rel=1e-4)
    assert estimate <= _svd(w).max() * (1 + 1e-5)  # approaches from below


def test_gram_iteration_bound_is_an_upper_bound_and_tight():
    rng = np.random.default_rng(2)
    for shape in [(40, 10), (10, 40), (64, 64)]:
        w = rng.normal(size=shape)
        g = N.gram(w.astype("float64"))
        lam = _svd(w).max() ** 2
        bound = float(N.gram_iteration_bound(g, iterations=12))
        assert lam * (1 - 1e-12) <= bound <= lam * 1.01  # equal up to float64 rounding


def test_frobenius_normalization():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 3, 4, 5)).astype("float32")
    whole = np.asarray(N.frobenius_normalization(w))
    assert np.linalg.norm(whole) == pytest.approx(1.0, rel=1e-6)
    per_unit = np.asarray(N.frobenius_normalization(w, disjoint_neurons=True))
    np.testing.assert_allclose(np.linalg.norm(per_unit.reshape(-1, 5), axis=0), 1.0, rtol=1e-6)


def _patch_operator(n, k, s, pads, mode):
    """Dense 0/1 matrix of the 1D patch extraction for padding ``mode``."""
    rows = []
    padded = n + sum(pads)
    for start in range(0, padded - k + 1, s):
        for tap in range(k):
            row = np.zeros(n)
            src = NC._source_index(start + tap - pads[0], n, mode)
            if src is not None:
                row[src] = 1.0
            rows.append(row)
    return np.array(rows)


@pytest.mark.parametrize("mode", ["zero", "reflect", "symmetric", "circular"])
def test_coverage_count_is_the_exact_norm_of_patch_extraction(mode):
    for n in range(3, 12):
        for k in (1, 2, 3, 4, 5):
            for s in (1, 2, 3):
                pads = ((k - 1) // 2, k // 2)
                if mode == "reflect" and max(pads) >= n:
                    continue
                patches = _patch_operator(n, k, s, pads, mode)
                if patches.size == 0:
                    continue
                exact = _svd(patches).max() ** 2
                assert N.conv_coverage_1d(n, k, s, *pads, mode) == pytest.approx(exact)


def test_reflect_source_index_matches_numpy_pad():
    for n in (3, 5, 8):
        signal = np.arange(n)
        for mode, np_mode in (
            ("reflect", "reflect"),
            ("symmetric", "symmetric"),
            ("circular", "wrap"),
        ):
            pad = 2
            expected = np.pad(signal, pad, mode=np_mode)
            got = [NC._source_index(p - pad, n, mode) for p in range(n + 2 * pad)]
            np.testing.assert_array_equal(expected, got)


def test_conv_factors():
    # zero padding: sqrt(prod ceil(k / s))
    assert N.conv_lipschitz_factor((3, 3), (1, 1), "same") == pytest.approx(3.0)
    assert N.conv_lipschitz_factor((3, 3), (2, 2), "valid") == pytest.approx(2.0)
    assert N.conv_lipschitz_factor((2, 2), (2, 2), "same") == pytest.approx(1.0)
    assert N.conv_lipschitz_factor((3, 1), (1, 1), "same") == pytest.approx(math.sqrt(3))
    # reflect padding reads border pixels more often: a larger, exact factor
    assert N.conv_lipschitz_factor((3, 3), (1, 1), "reflect") > 3.0
    assert N.conv_transpose_lipschitz_factor((3, 3), (2, 2)) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"eps_spectral": 0}, "eps_spectral"),
        ({"eps_spectral": -1e-3}, "eps_spectral"),
        ({"eps_bjorck": 0.0}, "eps_bjorck"),
        ({"beta_bjorck": 0.0}, "beta_bjorck"),
        ({"beta_bjorck": 0.6}, "beta_bjorck"),
        ({"maxiter_spectral": 0}, "maxiter_spectral"),
        ({"maxiter_bjorck": 2.5}, "maxiter_bjorck"),
        ({"k_coef_lip": 0.0}, "k_coef_lip"),
        ({"k_coef_lip": float("inf")}, "k_coef_lip"),
        ({"k_coef_lip": "1"}, "k_coef_lip"),
    ],
)
def test_argument_check_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        N.check_normalization_args(**kwargs)


def test_argument_check_accepts_defaults_and_none_bjorck():
    N.check_normalization_args()
    N.check_normalization_args(eps_bjorck=None)
