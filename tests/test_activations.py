"""Lipschitz activations: exact Jacobians on real images, outputs, round trips, errors."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from deel_lip.layers import (
    FullSort,
    GroupSort,
    GroupSort2,
    Householder,
    LipschitzLayer,
    MaxMin,
    PReLUlip,
)

TOL = 1e-5
K_VALUES = (1.0, 2.5, 0.3)


def batch_jacobian(layer, x):
    """Per-sample Jacobians ``(batch, out_dim, in_dim)`` of ``layer`` at ``x``."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    jac = tape.batch_jacobian(y, x)
    return jac.numpy().reshape(x.shape[0], -1, int(np.prod(x.shape[1:])))


def singular_values(matrix):
    """Singular values (descending) of a matrix or a stack of matrices, in float64.

    Square roots of the eigenvalues of the smaller Gram matrix: exact up to rounding and
    several times faster than an SVD on the 784-dimensional MNIST Jacobians.
    """
    m = np.asarray(matrix, "float64")
    mt = np.swapaxes(m, -1, -2)
    gram = m @ mt if m.shape[-2] <= m.shape[-1] else mt @ m
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram)[..., ::-1], 0.0, None))


def random_theta(seed=0):
    return keras.initializers.RandomUniform(0.0, 2 * math.pi, seed=seed)


@pytest.fixture(scope="module")
def features(digits, mnist_small):
    """Real images as activation inputs, with many exact ties (zeros) and both signs.

    Digits (8x8) as 64 channels; centred digits as 4x4 maps of 4 channels; MNIST (28x28)
    as 7x7 maps of 16 channels.
    """
    d = digits[0][:150]
    m = mnist_small[0][::125]
    return {
        "flat": np.concatenate([d.reshape(-1, 64), d.reshape(-1, 64) - 0.5]),
        "maps": (d - 0.5).reshape(-1, 4, 4, 4),
        "mnist": (m - 0.3).reshape(-1, 7, 7, 16),
    }


# name -> (factory(k), gradient-norm preserving)
CASES = {
    "groupsort4": (lambda k: GroupSort(n=4, k_coef_lip=k), True),
    "groupsort2": (lambda k: GroupSort2(k_coef_lip=k), True),
    "fullsort": (lambda k: FullSort(k_coef_lip=k), True),
    "householder": (lambda k: Householder(k_coef_lip=k, theta_initializer=random_theta()), True),
    "householder_default": (lambda k: Householder(k_coef_lip=k), True),
    "maxmin": (lambda k: MaxMin(k_coef_lip=k), False),
    "prelu": (
        lambda k: PReLUlip(
            k_coef_lip=k, alpha_initializer=keras.initializers.RandomUniform(-1.5, 1.5, seed=1)
        ),
        False,
    ),
}


def _check_jacobian_bound(name, k, x):
    """Spectral norm of the exact Jacobian <= k at every point of ``x``; == k (all
    singular values) for gradient-norm-preserving layers."""
    factory, gnp = CASES[name]
    layer = factory(k)
    sv = singular_values(batch_jacobian(layer, x))
    assert sv.max() <= k * (1 + TOL)
    if gnp:
        np.testing.assert_allclose(sv, k, rtol=TOL)
    elif name == "maxmin":
        # every sample has a nonzero input coordinate: an orthonormal column times k
        np.testing.assert_allclose(sv.max(axis=1), k, rtol=TOL)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("k", K_VALUES)
@pytest.mark.parametrize("data", ["flat", "maps"])
def test_exact_jacobian_bound(features, name, k, data):
    _check_jacobian_bound(name, k, features[data])


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_jacobian_bound_mnist(features, name):
    _check_jacobian_bound(name, 2.5, features["mnist"][:2])


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("k", K_VALUES)
def test_pairs_of_real_images(features, name, k):
    """||f(x) - f(y)|| <= k ||x - y|| on pairs of real images."""
    factory, _ = CASES[name]
    x = features["maps"]
    y = np.roll(x, 1, axis=0)
    layer = factory(k)
    out = lambda a: layer(a).numpy().reshape(len(a), -1).astype("float64")  # noqa: E731
    lhs = np.linalg.norm(out(x) - out(y), axis=1)
    rhs = np.linalg.norm((x - y).reshape(len(x), -1).astype("float64"), axis=1)
    assert np.all(lhs <= k * rhs * (1 + TOL) + 1e-6)
    assert lhs.max() > 0


def test_channels_first_gradient_norm(features):
    x = features["maps"][:20]
    x_cf = np.moveaxis(x, -1, 1)
    for layer in (
        GroupSort(2, data_format="channels_first", k_coef_lip=1.7),
        Householder(data_format="channels_first", k_coef_lip=1.7, theta_initializer=random_theta()),
    ):
        np.testing.assert_allclose(singular_values(batch_jacobian(layer, x_cf)), 1.7, rtol=TOL)


# ----------------------------------------------------------------- outputs


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 64])
def test_groupsort_sorts_groups(features, n):
    x = features["flat"]
    y = GroupSort(n=n, k_coef_lip=2.0)(x).numpy()
    expected = 2.0 * np.sort(x.reshape(len(x), -1, n), axis=-1).reshape(x.shape)
    np.testing.assert_array_equal(y, expected)


def test_groupsort_variants_agree(features):
    x = features["mnist"]
    np.testing.assert_array_equal(GroupSort2()(x), GroupSort(2)(x))
    np.testing.assert_array_equal(FullSort()(x), GroupSort(None)(x))
    np.testing.assert_array_equal(FullSort()(x), GroupSort(16)(x))
    x_cf = np.moveaxis(x, -1, 1)
    for n in (2, 4, None):
        cf = GroupSort(n, data_format="channels_first")(x_cf).numpy()
        np.testing.assert_array_equal(np.moveaxis(cf, 1, -1), GroupSort(n)(x))


def test_maxmin_formula(features):
    x = features["maps"]
    y = MaxMin(k_coef_lip=0.5)(x).numpy()
    expected = 0.5 * np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=-1)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_allclose(
        np.linalg.norm(y.reshape(len(x), -1), axis=1),
        0.5 * np.linalg.norm(x.reshape(len(x), -1), axis=1),
        rtol=1e-6,
    )
    y_cf = MaxMin(data_format="channels_first")(np.moveaxis(x, -1, 1)).numpy()
    np.testing.assert_array_equal(np.moveaxis(y_cf, 1, -1), 2 * expected)


@pytest.mark.parametrize("k", K_VALUES)
def test_householder_default_is_groupsort2_on_halves_and_honours_k(features, k):
    x = features["flat"]
    y = Householder(k_coef_lip=k)(x).numpy()
    z1, z2 = x[:, :32], x[:, 32:]
    expected = k * np.concatenate([np.minimum(z1, z2), np.maximum(z1, z2)], axis=-1)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_householder_reflection_formula(features):
    x = features["flat"]
    layer = Householder(k_coef_lip=3.0, theta_initializer=random_theta(3))
    y = layer(x).numpy()
    theta = layer.theta.numpy()
    z1, z2 = x[:, :32].astype("float64"), x[:, 32:].astype("float64")
    keep = z1 * np.sin(theta / 2) - z2 * np.cos(theta / 2) <= 0
    r1 = z1 * np.cos(theta) + z2 * np.sin(theta)
    r2 = z1 * np.sin(theta) - z2 * np.cos(theta)
    expected = 3.0 * np.concatenate([np.where(keep, z1, r1), np.where(keep, z2, r2)], axis=-1)
    np.testing.assert_allclose(y, expected, atol=1e-5)
    assert 0 < keep.mean() < 1  # both pieces are exercised
    # a reflection and the identity preserve the norm of each pair
    np.testing.assert_allclose(
        np.linalg.norm(y, axis=1), 3.0 * np.linalg.norm(x, axis=1), rtol=1e-5
    )


def test_prelulip_clips_slopes_and_scales(features):
    x = features["maps"]
    steep = PReLUlip(k_coef_lip=0.5, alpha_initializer=keras.initializers.Constant(3.0))
    # |alpha| clipped to 1: the layer is 0.5 * identity, not 0.5 * 3 on negatives
    np.testing.assert_allclose(steep(x), 0.5 * x, rtol=1e-6)
    flipped = PReLUlip(k_coef_lip=2.0, alpha_initializer=keras.initializers.Constant(-4.0))
    np.testing.assert_allclose(flipped(x), 2.0 * np.abs(x), rtol=1e-6)


def test_prelulip_training_keeps_slopes_in_range(features):
    x = features["maps"]
    layer = PReLUlip(k_coef_lip=0.7, alpha_initializer=keras.initializers.Constant(0.9))
    model = keras.Sequential([keras.Input(x.shape[1:]), layer])
    # target pushes every slope far above 1
    model.compile(optimizer=keras.optimizers.SGD(10.0), loss="mse")
    model.fit(x, 5.0 * x, epochs=2, batch_size=50, verbose=0)
    alpha = layer.alpha.numpy()
    assert alpha.max() <= 1.0 and alpha.min() >= -1.0
    assert np.isclose(alpha.max(), 1.0)
    sv = singular_values(batch_jacobian(layer, x[:20]))
    assert sv.max() <= 0.7 * (1 + TOL)


def test_set_klip_factor_scales_output(features):
    x = features["maps"]
    for layer in (GroupSort(4), MaxMin(), Householder(), PReLUlip()):
        assert isinstance(layer, LipschitzLayer)
        base = layer(x).numpy()
        layer.set_klip_factor(0.25)
        np.testing.assert_allclose(layer(x), 0.25 * base, rtol=1e-6)


# ----------------------------------------------------------------- round trips


def _built(factory, x):
    layer = factory()
    layer(x)
    return layer


ROUND_TRIP = {
    "groupsort": lambda: GroupSort(n=4, k_coef_lip=1.5),
    "groupsort_cf": lambda: GroupSort(n=2, data_format="channels_first", k_coef_lip=0.5),
    "groupsort2": lambda: GroupSort2(k_coef_lip=2.0),
    "fullsort": lambda: FullSort(k_coef_lip=3.0),
    "maxmin": lambda: MaxMin(k_coef_lip=0.7),
    "householder": lambda: Householder(k_coef_lip=2.5, theta_initializer=random_theta(5)),
    "prelu": lambda: PReLUlip(
        k_coef_lip=1.3,
        alpha_initializer=keras.initializers.RandomUniform(-1, 1, seed=2),
        shared_axes=[1, 2],
    ),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_config_round_trip(features, name):
    x = features["maps"]
    layer = _built(ROUND_TRIP[name], x)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == config
    np.testing.assert_array_equal(clone(x), layer(x))


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_save_load_round_trip(features, name, tmp_path):
    x = features["maps"]
    layer = ROUND_TRIP[name]()
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    assert loaded.layers[-1].get_config() == layer.get_config()


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("n", [0, -2, 2.0, "2", True])
def test_groupsort_invalid_n(n):
    with pytest.raises(ValueError, match="n must be"):
        GroupSort(n=n)


@pytest.mark.parametrize("n, channels", [(3, 8), (16, 8), (5, 64)])
def test_groupsort_n_not_dividing_channels(n, channels):
    with pytest.raises(ValueError, match=rf"n={n} for {channels} channels"):
        GroupSort(n=n).build((None, channels))


@pytest.mark.parametrize("cls", [GroupSort, GroupSort2, FullSort, MaxMin, Householder])
@pytest.mark.parametrize("data_format", ["NHWC", None, "channels_middle"])
def test_invalid_data_format(cls, data_format):
    with pytest.raises(ValueError, match="data_format"):
        cls(data_format=data_format)


@pytest.mark.parametrize("cls", [GroupSort, GroupSort2, FullSort, MaxMin, Householder, PReLUlip])
@pytest.mark.parametrize("k", [0, -1.0, float("inf"), float("nan"), "1", None])
def test_invalid_k_coef_lip(cls, k):
    with pytest.raises(ValueError, match="k_coef_lip"):
        cls(k_coef_lip=k)


@pytest.mark.parametrize("shape", [(None, 5), (None, 4, 4, 7)])
def test_householder_odd_channels(shape):
    with pytest.raises(ValueError, match="even number of channels"):
        Householder().build(shape)


@pytest.mark.parametrize("cls", [GroupSort2, FullSort, MaxMin, Householder])
def test_unknown_channels_or_rank(cls):
    with pytest.raises(ValueError, match="known channel"):
        cls().build((None, 4, None))
    with pytest.raises(ValueError, match="rank >= 2"):
        cls().build((4,))


def test_jit_compile_matches_eager(features):
    x = features["maps"]
    layers = [
        Householder(k_coef_lip=0.9, theta_initializer=random_theta()),
        GroupSort(4),
        PReLUlip(alpha_initializer=keras.initializers.Constant(0.3)),
        MaxMin(),
        GroupSort2(),
        FullSort(k_coef_lip=1.1),
    ]
    model = keras.Sequential([keras.Input(x.shape[1:])] + layers + [keras.layers.Flatten()])
    model.add(keras.layers.Dense(1))
    model.compile(optimizer="adam", loss="mse", jit_compile=True)
    model.fit(x, x[:, 0, 0, :1], epochs=1, batch_size=50, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), model(x), rtol=1e-5, atol=1e-6)


def _reference_sort_pairs(x):
    """Autodiff reference of GroupSort2: keep pairs where first <= second, else swap."""
    shape = tuple(x.shape)
    pairs = tf.reshape(x, shape[:-1] + (shape[-1] // 2, 2))
    first, second = pairs[..., 0], pairs[..., 1]
    keep = first <= second
    low, high = tf.where(keep, first, second), tf.where(keep, second, first)
    return tf.reshape(tf.stack([low, high], axis=-1), shape)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_groupsort2_fast_kernel_equals_reference_values_and_gradients(jit_compile, data_format):
    rng = np.random.default_rng(3)
    # Rounded values: many ties, where the gradient routing matters.
    x = tf.constant(np.round(rng.normal(size=(4, 5, 6, 8)) * 2).astype("float32"))
    upstream = tf.constant(rng.normal(size=(4, 5, 6, 8)).astype("float32"))
    layer = GroupSort2(data_format=data_format)

    def to_last(t):
        return t if data_format == "channels_last" else tf.transpose(t, (0, 2, 3, 1))

    @tf.function(jit_compile=jit_compile)
    def both(x):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            ours = to_last(layer(x))
            reference = _reference_sort_pairs(to_last(x))
        return (
            ours,
            reference,
            tape.gradient(ours, x, output_gradients=upstream),
            tape.gradient(reference, x, output_gradients=upstream),
        )

    inputs = x if data_format == "channels_last" else tf.transpose(x, (0, 3, 1, 2))
    ours, reference, grad_ours, grad_reference = both(inputs)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(reference))
    np.testing.assert_array_equal(np.asarray(grad_ours), np.asarray(grad_reference))


def test_householder_casts_integer_inputs_like_keras_layers():
    ints = np.arange(24, dtype="int32").reshape(2, 3, 4) - 12
    layer = Householder()
    out = layer(ints)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(layer(ints.astype("float32"))))


def test_deel_lip_saved_group_size_is_accepted_and_checked():
    from deel_lip.layers import FullSort, GroupSort2

    assert GroupSort2.from_config({"n": 2, "name": "gs"}).n == 2
    assert FullSort.from_config({"n": None, "name": "fs"}).n is None
    with pytest.raises(ValueError, match="n must be 2"):
        GroupSort2(n=4)
    with pytest.raises(ValueError, match="n must be None"):
        FullSort(n=4)
