"""Constraints: norm bounds measured by numpy SVD, config round trips, bad arguments."""

import keras
import numpy as np
import pytest
from keras import ops

from deel_lip.constraints import (
    AutoWeightClipConstraint,
    FrobeniusConstraint,
    SpectralConstraint,
    WeightClipConstraint,
)

SHAPES = [(32, 16), (16, 32), (24, 24), (3, 3, 4, 8), (3, 3, 16, 4), (5, 6, 3)]


def _matrix(w):
    w = np.asarray(ops.convert_to_numpy(w), dtype=np.float64)
    return w.reshape(-1, w.shape[-1])


def _sv(w):
    return np.linalg.svd(_matrix(w), compute_uv=False)


def _random(shape, scale=3.0, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype("float32")


ALL = [
    WeightClipConstraint(c_val=0.5),
    AutoWeightClipConstraint(scale=2.0),
    FrobeniusConstraint(eps=1e-6),
    SpectralConstraint(k_coef_lip=2.0, eps_spectral=1e-4, eps_bjorck=None, maxiter_bjorck=7),
    SpectralConstraint(beta_bjorck=0.3, maxiter_spectral=4),
]


@pytest.mark.parametrize("constraint", ALL, ids=lambda c: type(c).__name__)
def test_config_round_trip(constraint):
    config = constraint.get_config()
    clone = type(constraint).from_config(config)
    assert clone.get_config() == config
    restored = keras.constraints.deserialize(keras.constraints.serialize(constraint))
    assert type(restored) is type(constraint)
    assert restored.get_config() == config
    w = _random((6, 5))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(clone(w)), ops.convert_to_numpy(constraint(w))
    )


def test_weight_clip_bounds_and_keeps_small_values():
    w = _random((20, 7))
    out = ops.convert_to_numpy(WeightClipConstraint(c_val=0.7)(w))
    assert np.abs(out).max() <= 0.7
    inside = np.abs(w) <= 0.7
    assert inside.any() and (~inside).any()
    np.testing.assert_array_equal(out[inside], w[inside])
    np.testing.assert_allclose(np.abs(out[~inside]), 0.7)


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_auto_weight_clip_bounds_the_spectral_norm_by_one_over_scale(scale):
    """deel-lip's semantics: c = 1 / (scale sqrt(size)), so ||W||_2 <= ||W||_F <= 1 / scale."""
    for shape in SHAPES:
        c = 1.0 / (scale * np.sqrt(np.prod(shape)))
        w = np.random.default_rng(0).uniform(-0.9 * c, 0.9 * c, shape).astype("float32")
        w[..., 0] = 100.0  # saturated entries
        out = _matrix(AutoWeightClipConstraint(scale=scale)(w))
        assert np.abs(out).max() <= c * (1 + 1e-6)
        assert _sv(out)[0] <= (1.0 / scale) * (1 + 1e-6)
        np.testing.assert_allclose(out[:, 1:], _matrix(w)[:, 1:])  # small weights untouched


@pytest.mark.parametrize("shape", [(4, 4), (64, 10), (3, 3, 16, 32)], ids=str)
@pytest.mark.parametrize("scale", [1.0, 0.5, 4.0])
def test_auto_weight_clip_all_ones_reaches_exactly_its_bound(shape, scale):
    """All-ones weights: the worst case, spectral norm exactly 1 / scale (was sqrt(units))."""
    out = _matrix(AutoWeightClipConstraint(scale=scale)(np.ones(shape, "float32")))
    norm = float(np.linalg.norm(out, 2))
    assert norm <= (1.0 / scale) * (1 + 1e-6)
    np.testing.assert_allclose(norm, 1.0 / scale, rtol=1e-5)


def test_auto_weight_clip_bounds_a_dense_layer_exactly():
    layer = keras.layers.Dense(10, use_bias=False, kernel_constraint=AutoWeightClipConstraint())
    layer.build((None, 64))
    layer.kernel.assign(np.ones((64, 10), "float32"))
    layer.kernel.assign(layer.kernel_constraint(layer.kernel))
    jac = np.asarray(ops.convert_to_numpy(layer.kernel), "float64").T
    assert np.linalg.norm(jac, 2) <= 1.0 + 1e-6


def test_auto_weight_clip_vector():
    out = ops.convert_to_numpy(AutoWeightClipConstraint(scale=0.5)(np.array([2.0, -0.1, -3.0])))
    c = 1.0 / (0.5 * np.sqrt(3.0))
    np.testing.assert_allclose(out, [c, -0.1, -c], rtol=1e-6)


def test_weight_clip_accepts_deel_lip_c_with_deprecation():
    with pytest.warns(DeprecationWarning, match="c_val"):
        constraint = WeightClipConstraint(c=0.3)
    assert constraint.c_val == 0.3
    out = ops.convert_to_numpy(constraint(_random((5, 4))))
    assert np.abs(out).max() <= 0.3 + 1e-7
    with pytest.raises(ValueError, match="c_val"):
        WeightClipConstraint(c=-1.0)


@pytest.mark.parametrize("shape", [(20, 8), (8, 20)], ids=str)
def test_spectral_constraint_accepts_deel_lip_u(shape):
    """``u=``: ours (1, small side) or deel-lip's (1, last axis) start vector."""
    w = _random(shape)
    for size in {min(shape), shape[-1]}:
        u = np.random.default_rng(1).standard_normal((1, size))
        constraint = SpectralConstraint(u=u)
        out = ops.convert_to_numpy(constraint(w))
        values = _sv(out)
        assert values[0] <= 1.0 + 1e-5
        np.testing.assert_allclose(values, 1.0, atol=1e-3)
        clone = SpectralConstraint.from_config(constraint.get_config())
        np.testing.assert_array_equal(ops.convert_to_numpy(clone(w)), out)
    with pytest.raises(ValueError, match="u must have shape"):
        SpectralConstraint(u=np.ones((1, 3)))(w)
    with pytest.raises(ValueError, match="u must be"):
        SpectralConstraint(u=np.zeros((1, 8)))


def test_frobenius_constraint_unit_norm():
    for shape in SHAPES:
        out = _matrix(FrobeniusConstraint()(_random(shape)))
        np.testing.assert_allclose(np.linalg.norm(out), 1.0, rtol=1e-5)
        assert _sv(out)[0] <= 1.0 + 1e-6


def test_frobenius_constraint_zero_kernel_is_finite():
    out = ops.convert_to_numpy(FrobeniusConstraint()(np.zeros((3, 2), "float32")))
    np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize("k_coef_lip", [1.0, 0.5, 3.0])
def test_spectral_constraint_orthogonal_and_bounded(k_coef_lip):
    for shape in SHAPES:
        _check_spectral(shape, k_coef_lip)


def _check_spectral(shape, k_coef_lip):
    w = _random(shape)
    constraint = SpectralConstraint(k_coef_lip=k_coef_lip)
    out = constraint(w)
    sv = _sv(out)
    assert sv.max() <= k_coef_lip * (1 + 1e-4)
    sv_in = _sv(w)
    if sv_in.max() / sv_in.min() < 100:  # Bjorck converges within its iteration budget
        assert sv.min() >= k_coef_lip * (1 - 1e-3)
    else:  # the bound still holds, the smallest singular value was only raised
        assert sv.min() / sv.max() > 2 * sv_in.min() / sv_in.max()
    assert out.shape == shape
    # stateless and deterministic: same input, same output
    np.testing.assert_array_equal(ops.convert_to_numpy(constraint(w)), ops.convert_to_numpy(out))


def test_spectral_constraint_without_bjorck_is_bounded():
    for shape in SHAPES:
        w = _random(shape)
        sv = _sv(SpectralConstraint(k_coef_lip=2.0, eps_bjorck=None)(w))
        assert sv.max() <= 2.0 * (1 + 1e-4)
        assert sv.max() >= 2.0 * 0.9  # a bound, not a crude over-estimate
        # spectral normalisation only: the singular values keep their ratios
        sv_in = _sv(w)
        np.testing.assert_allclose(sv / sv.max(), sv_in / sv_in.max(), rtol=1e-3, atol=1e-5)


def test_spectral_constraint_under_tf_function():
    import tensorflow as tf

    constraint = SpectralConstraint()
    w = _random((3, 3, 4, 8))
    eager = ops.convert_to_numpy(constraint(w))
    traced = tf.function(constraint, jit_compile=True)(w).numpy()
    np.testing.assert_allclose(traced, eager, atol=1e-5)


def test_constraints_hold_after_fit(digits):
    images, labels = digits
    x = images[:512].reshape(512, -1)
    y = labels[:512]
    spectral = keras.layers.Dense(32, kernel_constraint=SpectralConstraint(), name="spectral")
    clipped = keras.layers.Dense(16, kernel_constraint=AutoWeightClipConstraint(), name="clip")
    frob = keras.layers.Dense(10, kernel_constraint=FrobeniusConstraint(), name="frob")
    model = keras.Sequential(
        [keras.Input((64,)), spectral, keras.layers.ReLU(), clipped, keras.layers.ReLU(), frob]
    )
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    initial = _sv(spectral.kernel)[0]
    history = model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert initial > 1.1  # glorot init: the constraint had work to do
    assert _sv(spectral.kernel)[0] <= 1.0 + 1e-4
    assert np.linalg.norm(_matrix(clipped.kernel), axis=0).max() <= 1.0 + 1e-6
    np.testing.assert_allclose(np.linalg.norm(_matrix(frob.kernel)), 1.0, rtol=1e-5)


BAD_ARGUMENTS = [
    (WeightClipConstraint, "c_val", 0),
    (WeightClipConstraint, "c_val", -1.0),
    (WeightClipConstraint, "c_val", "2"),
    (WeightClipConstraint, "c_val", True),
    (WeightClipConstraint, "c_val", float("inf")),
    (AutoWeightClipConstraint, "scale", 0.0),
    (AutoWeightClipConstraint, "scale", None),
    (FrobeniusConstraint, "eps", 0.0),
    (FrobeniusConstraint, "eps", -1e-7),
    (SpectralConstraint, "k_coef_lip", 0.0),
    (SpectralConstraint, "k_coef_lip", -2.0),
    (SpectralConstraint, "eps_spectral", 0.0),
    (SpectralConstraint, "eps_bjorck", -1e-3),
    (SpectralConstraint, "beta_bjorck", 0.6),
    (SpectralConstraint, "beta_bjorck", 0.0),
    (SpectralConstraint, "maxiter_spectral", 0),
    (SpectralConstraint, "maxiter_bjorck", 2.5),
]


def test_bad_arguments():
    for factory, name, value in BAD_ARGUMENTS:
        with pytest.raises(ValueError, match=name):
            factory(**{name: value})
            pytest.fail(f"{factory.__name__}({name}={value!r}) did not raise")
