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


# ------------------------------------------------------------ deel-lip's spellings


def test_bjorck_normalization_accepts_deel_lip_w_keyword():
    w = np.random.default_rng(0).normal(size=(7, 4)).astype("float32")
    w = w / np.linalg.norm(w, 2)
    expected = np.asarray(N.bjorck_normalization(w))
    with pytest.warns(DeprecationWarning, match="matrix="):
        got = np.asarray(N.bjorck_normalization(w=w, eps=1e-3, beta=0.5, maxiter=15))
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(TypeError, match="both"):
        N.bjorck_normalization(w, w=w)


def test_reshaped_kernel_orthogonalization_accepts_u_none_and_beta():
    w = np.random.default_rng(0).normal(size=(3, 3, 2, 5)).astype("float32")
    with pytest.warns(DeprecationWarning, match="beta_bjorck"):
        w_bar, u, sigma = N.reshaped_kernel_orthogonalization(
            w, u=None, adjustment_coef=2.0, beta=0.4
        )
    values = np.linalg.svd(np.asarray(w_bar).reshape(-1, 5), compute_uv=False)
    np.testing.assert_allclose(values, 2.0, atol=2e-3)
    assert tuple(u.shape) == (1, 5)
    assert float(sigma) > 0


@pytest.mark.parametrize("shape", [(12, 5), (5, 12)], ids=str)
def test_spectral_normalization_u_shapes(shape):
    """deel-lip's u is (1, last axis); ours is (1, small side); both are accepted and the
    vector comes back in the shape given (deel-lip's for u=None)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=shape).astype("float32")
    exact = np.linalg.norm(w, 2)
    for u in (None, rng.normal(size=(1, shape[1])), rng.normal(size=(1, min(shape)))):
        w_bar, u_out, sigma = N.spectral_normalization(w, u, eps=1e-6, maxiter=100)
        expected_shape = (1, shape[1]) if u is None else u.shape
        assert tuple(u_out.shape) == tuple(expected_shape)
        assert exact <= float(sigma) <= exact * 1.01
        assert np.linalg.norm(np.asarray(w_bar, "float64"), 2) <= 1 + 1e-5
    right = np.linalg.svd(w)[2][0]  # the top right singular vector, deel-lip's u
    _, u_out, _ = N.spectral_normalization(w, right[None, :], eps=1e-6, maxiter=100)
    np.testing.assert_allclose(np.abs(np.asarray(u_out)[0]), np.abs(right), atol=1e-4)
    with pytest.raises(ValueError, match="u must have shape"):
        N.spectral_normalization(w, np.ones((1, 7)))


def _conv_operator_norm(kernel, shape, stride, pad_func=None):
    import tensorflow as tf

    from deel_lip.utils import layer_operator_matrix

    def fn(x):
        x = tf.cast(x, "float32")
        if pad_func is None:
            return tf.nn.conv2d(x, kernel, stride, "SAME")
        return tf.nn.conv2d(pad_func(x), kernel, stride, "VALID")

    return np.linalg.norm(layer_operator_matrix(fn, shape), 2)


@pytest.mark.parametrize("stride, conv_first", [(1, True), (2, True), (2, False)])
def test_spectral_normalization_conv_estimates_the_operator_norm(stride, conv_first):
    kernel = np.random.default_rng(0).normal(size=(3, 3, 2, 3)).astype("float32")
    exact = _conv_operator_norm(kernel, (6, 6, 2), stride)
    shape = (1, 6, 6, 2) if conv_first else (1, 6 // stride, 6 // stride, 3)
    u = np.random.default_rng(1).normal(size=shape).astype("float32")
    w_bar, u_out, sigma = N.spectral_normalization_conv(
        kernel, u, stride=stride, conv_first=conv_first, eps=1e-4, maxiter=200
    )
    assert tuple(u_out.shape) == shape
    np.testing.assert_allclose(float(sigma), exact, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(w_bar), kernel / (float(sigma) + 1e-4), rtol=1e-6)
    kernel_bar, u_same, one = N.spectral_normalization_conv(kernel, u, eps=-1.0)
    assert kernel_bar is kernel and u_same is u and one == 1.0
    with pytest.raises(ValueError, match="u must have shape"):
        N.spectral_normalization_conv(kernel, np.ones((1, 6, 6, 5), "float32"))


def test_spectral_normalization_conv_with_pad_func():
    import tensorflow as tf

    kernel = np.random.default_rng(0).normal(size=(3, 3, 1, 2)).astype("float32")

    def circular(x):
        x = tf.concat([x[:, -1:], x, x[:, :1]], axis=1)
        return tf.concat([x[:, :, -1:], x, x[:, :, :1]], axis=2)

    exact = _conv_operator_norm(kernel, (5, 5, 1), 1, circular)
    u = np.random.default_rng(1).normal(size=(1, 5, 5, 1)).astype("float32")
    _, _, sigma = N.spectral_normalization_conv(kernel, u, pad_func=circular, maxiter=200)
    np.testing.assert_allclose(float(sigma), exact, rtol=1e-3)
