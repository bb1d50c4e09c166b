"""Lipschitz pooling: exact operator norms (dense matrices, Jacobians), round trips, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deel_lip.layers import (
    InvertibleDownSampling,
    InvertibleUpSampling,
    LipschitzLayer,
    ScaledAveragePooling2D,
    ScaledGlobalAveragePooling2D,
    ScaledGlobalL2NormPooling2D,
    ScaledL2NormPooling2D,
)

TOL = 1e-5
K_VALUES = (1.0, 2.5, 0.3)


def dense_matrix(layer, shape):
    """Matrix ``(out_dim, in_dim)`` of a linear layer on inputs of ``shape`` (no batch)."""
    n = int(np.prod(shape))
    basis = np.eye(n, dtype="float32").reshape((n,) + tuple(shape))
    return layer(basis).numpy().reshape(n, -1).T.astype("float64")


def batch_jacobian(layer, x):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    jac = tape.batch_jacobian(y, x).numpy()
    return jac.reshape(x.shape[0], -1, int(np.prod(x.shape[1:]))).astype("float64")


def singular_values(matrix):
    """Singular values (descending) of a matrix or a stack of matrices, in float64.

    Square roots of the eigenvalues of the smaller Gram matrix: exact up to rounding and
    several times faster than an SVD on the 784-dimensional MNIST Jacobians.
    """
    m = np.asarray(matrix, "float64")
    mt = np.swapaxes(m, -1, -2)
    gram = m @ mt if m.shape[-2] <= m.shape[-1] else mt @ m
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram)[..., ::-1], 0.0, None))


@pytest.fixture(scope="module")
def images(digits, mnist_small):
    return {"digits": digits[0][:200], "mnist": mnist_small[0][::100]}


# ----------------------------------------------------------------- average pooling

# (pool_size, strides, input shape without batch, data_format)
AVERAGE_CASES = [
    ((2, 2), None, (4, 4, 1), "channels_last"),
    ((2, 2), None, (5, 7, 2), "channels_last"),
    ((3, 3), None, (8, 8, 1), "channels_last"),
    ((2, 2), (3, 3), (8, 8, 1), "channels_last"),
    ((2, 3), (1, 2), (6, 7, 1), "channels_last"),
    ((3, 3), (1, 1), (8, 8, 1), "channels_last"),
    ((3, 2), (2, 1), (7, 6, 2), "channels_last"),
    ((2, 2), None, (2, 4, 6), "channels_first"),
    ((3, 3), (2, 2), (1, 7, 7), "channels_first"),
]


def _overlaps(pool, strides):
    strides = pool if strides is None else strides
    return any(p > s for p, s in zip(pool, strides))


@pytest.mark.parametrize("pool, strides, shape, data_format", AVERAGE_CASES)
@pytest.mark.parametrize("k", K_VALUES)
def test_average_pooling_exact_norm(pool, strides, shape, data_format, k):
    layer = ScaledAveragePooling2D(pool, strides=strides, data_format=data_format, k_coef_lip=k)
    sv = singular_values(dense_matrix(layer, shape))
    assert sv.max() <= k * (1 + TOL)
    if not _overlaps(pool, strides):
        np.testing.assert_allclose(sv, k, rtol=TOL)  # orthogonal rows: exactly k
    else:
        assert sv.max() > 0.5 * k  # a bound, not a collapse


def test_average_pooling_values(images):
    x = images["digits"]
    y = ScaledAveragePooling2D(2, k_coef_lip=3.0)(x).numpy()
    blocks = x.reshape(-1, 4, 2, 4, 2, 1)
    np.testing.assert_allclose(y, 3.0 * 2.0 * blocks.mean(axis=(2, 4)), rtol=1e-6)


# ----------------------------------------------------------------- L2-norm pooling


@pytest.mark.parametrize("k", K_VALUES)
@pytest.mark.parametrize("pool, strides", [((2, 2), None), ((4, 2), None), ((2, 2), (3, 3))])
def test_l2_pooling_gradient_norm_preserving(images, k, pool, strides):
    """No overlap: Jacobian = k * (rows x_w / ||x_w||), orthonormal rows when no window
    is zero; exactly k at random points, <= k (zero rows, no NaN) on real images."""
    layer = ScaledL2NormPooling2D(pool, strides=strides, k_coef_lip=k)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(singular_values(batch_jacobian(layer, x)), k, rtol=TOL)
    for name in ("digits", "mnist"):
        x = images[name][:40] if name == "digits" else images[name][:2]
        jac = batch_jacobian(layer, x)
        assert np.all(np.isfinite(jac))
        sv = singular_values(jac)
        assert sv.max() <= k * (1 + TOL)
        np.testing.assert_allclose(sv.max(axis=1), k, rtol=TOL)


@pytest.mark.parametrize("k", K_VALUES)
@pytest.mark.parametrize("pool, strides", [((3, 3), (1, 1)), ((2, 2), (1, 1)), ((3, 2), (2, 1))])
def test_l2_pooling_overlap_bound(images, k, pool, strides):
    layer = ScaledL2NormPooling2D(pool, strides=strides, k_coef_lip=k)
    x = images["digits"][:60]
    sv = singular_values(batch_jacobian(layer, x))
    assert sv.max() <= k * (1 + TOL)
    rng = np.random.default_rng(1)
    z = rng.normal(size=(20, 8, 8, 2)).astype("float32")
    assert singular_values(batch_jacobian(layer, z)).max() <= k * (1 + TOL)


@pytest.mark.parametrize(
    "layer",
    [
        ScaledL2NormPooling2D(2, k_coef_lip=2.5),
        ScaledL2NormPooling2D(3, strides=1, k_coef_lip=0.3),
        ScaledGlobalL2NormPooling2D(k_coef_lip=1.7),
        ScaledAveragePooling2D(3, strides=(1, 2), k_coef_lip=2.0),
        ScaledGlobalAveragePooling2D(k_coef_lip=0.6),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_pairs_of_real_images(images, layer):
    x = images["digits"]
    y = np.roll(x, 1, axis=0)
    out = lambda a: layer(a).numpy().reshape(len(a), -1).astype("float64")  # noqa: E731
    lhs = np.linalg.norm(out(x) - out(y), axis=1)
    rhs = np.linalg.norm((x - y).reshape(len(x), -1).astype("float64"), axis=1)
    assert np.all(lhs <= layer.k_coef_lip * rhs * (1 + TOL) + 1e-6)
    assert lhs.max() > 0


def test_l2_pooling_values_and_eps_gradient():
    x = np.zeros((1, 4, 4, 1), "float32")
    x[0, 0, 0, 0] = 3.0
    x[0, 0, 1, 0] = 4.0  # window (0, 0): norm 5
    x[0, 2, 2, 0] = 5e-7  # window (1, 1): norm below the default eps 1e-6
    x[0, 0, 2, 0] = 1e-3  # window (0, 1): norm 1e-3
    layer = ScaledL2NormPooling2D(2, k_coef_lip=2.0)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt)
        total = tf.reduce_sum(y)
    grad = tape.gradient(total, xt).numpy()[0, ..., 0]
    np.testing.assert_allclose(y.numpy()[0, ..., 0], 2.0 * np.array([[5, 1e-3], [0, 5e-7]]))
    np.testing.assert_allclose(grad[0, :2], 2.0 * np.array([0.6, 0.8]), rtol=1e-6)
    assert grad[0, 2] == pytest.approx(2.0)  # above eps: exact gradient x / ||x||
    assert grad[2, 2] == 0.0  # below eps: zero gradient, not inf
    assert np.all(grad[2:, :2] == 0.0)  # zero window: zero gradient, not NaN


def test_eps_grad_sqrt_survives_round_trips(tmp_path):
    """A non-default eps (deel-lip dropped it from get_config) changes the gradient."""
    x = np.zeros((1, 4, 4, 1), "float32")
    x[0, 0, 0, 0] = 1e-3
    for cls in (ScaledL2NormPooling2D, ScaledGlobalL2NormPooling2D):
        layer = cls(eps_grad_sqrt=1e-2)
        assert layer.get_config()["eps_grad_sqrt"] == 1e-2
        clone = cls.from_config(layer.get_config())
        inputs = keras.Input((4, 4, 1))
        keras.Model(inputs, layer(inputs)).save(tmp_path / "m.keras")
        loaded = keras.models.load_model(tmp_path / "m.keras").layers[-1]
        for candidate in (layer, clone, loaded):
            xt = tf.constant(x)
            with tf.GradientTape() as tape:
                tape.watch(xt)
                total = tf.reduce_sum(candidate(xt))
            assert np.all(tape.gradient(total, xt).numpy() == 0.0)
        assert cls()(x).numpy().max() == pytest.approx(1e-3)


# ----------------------------------------------------------------- global pooling


@pytest.mark.parametrize(
    "shape, data_format",
    [
        ((4, 4, 3), "channels_last"),
        ((5, 3, 2), "channels_last"),
        ((8, 8, 1), "channels_last"),
        ((2, 5, 3), "channels_first"),
    ],
)
@pytest.mark.parametrize("k", K_VALUES)
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_average_pooling_exact_norm(shape, data_format, k, keepdims):
    layer = ScaledGlobalAveragePooling2D(data_format=data_format, k_coef_lip=k, keepdims=keepdims)
    matrix = dense_matrix(layer, shape)
    channels = shape[-1] if data_format == "channels_last" else shape[0]
    assert matrix.shape[0] == channels
    np.testing.assert_allclose(singular_values(matrix), k, rtol=TOL)


def test_global_average_pooling_any_input_size(images):
    layer = ScaledGlobalAveragePooling2D(k_coef_lip=2.0)
    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, layer(inputs))
    for x in (images["digits"][:10], images["mnist"][:3]):
        h, w = x.shape[1:3]
        expected = 2.0 * x.sum(axis=(1, 2)) / np.sqrt(h * w)
        np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5)


@pytest.mark.parametrize("k", K_VALUES)
def test_global_l2_pooling_gradient_norm_preserving(images, k):
    layer = ScaledGlobalL2NormPooling2D(k_coef_lip=k)
    x = (images["digits"][:50] - 0.5).reshape(-1, 4, 4, 4)
    np.testing.assert_allclose(layer(x), k * np.sqrt((x**2).sum(axis=(1, 2))), rtol=1e-5)
    np.testing.assert_allclose(singular_values(batch_jacobian(layer, x)), k, rtol=TOL)
    jac = batch_jacobian(layer, images["mnist"][:3])
    np.testing.assert_allclose(singular_values(jac), k, rtol=TOL)
    cf = ScaledGlobalL2NormPooling2D(data_format="channels_first", k_coef_lip=k, keepdims=True)
    y = cf(np.moveaxis(x, -1, 1)).numpy()
    assert y.shape == (len(x), 4, 1, 1)
    np.testing.assert_allclose(y[:, :, 0, 0], layer(x), rtol=1e-6)


# ----------------------------------------------------------------- invertible resampling


@pytest.mark.parametrize(
    "pool, shape, data_format",
    [
        ((2, 2), (4, 4, 1), "channels_last"),
        ((2, 3), (4, 6, 2), "channels_last"),
        (2, (2, 4, 4), "channels_first"),
        ((1, 2), (3, 4, 4), "channels_first"),
    ],
)
def test_invertible_sampling_is_orthogonal(pool, shape, data_format):
    down = InvertibleDownSampling(pool, data_format=data_format)
    matrix = dense_matrix(down, shape)
    # a permutation matrix: exactly orthogonal, every singular value 1
    assert set(np.unique(matrix)) == {0.0, 1.0}
    np.testing.assert_array_equal(matrix @ matrix.T, np.eye(len(matrix)))
    np.testing.assert_array_equal(matrix.T @ matrix, np.eye(len(matrix)))
    np.testing.assert_allclose(singular_values(matrix), 1.0, rtol=TOL)
    up = InvertibleUpSampling(pool, data_format=data_format)
    down_shape = down.compute_output_shape((None,) + shape)[1:]
    np.testing.assert_array_equal(dense_matrix(up, down_shape), matrix.T)


def test_invertible_sampling_inverts_real_images(images):
    x = images["mnist"]
    for pool in (2, (4, 7), (1, 14)):
        down, up = InvertibleDownSampling(pool), InvertibleUpSampling(pool)
        z = down(x)
        assert tuple(z.shape) == down.compute_output_shape(x.shape)
        np.testing.assert_array_equal(up(z), x)
        np.testing.assert_array_equal(down(up(z)), z)
        np.testing.assert_allclose(
            np.linalg.norm(z.numpy().reshape(len(x), -1), axis=1),
            np.linalg.norm(x.reshape(len(x), -1), axis=1),
            rtol=1e-6,
        )


def test_invertible_downsampling_channel_order():
    x = np.arange(2 * 4 * 6 * 3, dtype="float32").reshape(2, 4, 6, 3)
    y = InvertibleDownSampling((2, 3))(x).numpy()
    for c in range(3):
        for i in range(2):
            for j in range(3):
                np.testing.assert_array_equal(y[:, :, :, c * 6 + i * 3 + j], x[:, i::2, j::3, c])


def test_invertible_sampling_dynamic_spatial_size(images):
    inputs = keras.Input((None, None, 1))
    down = InvertibleDownSampling(2)
    model = keras.Model(inputs, InvertibleUpSampling(2)(down(inputs)))
    for x in (images["digits"][:5], images["mnist"][:2]):
        np.testing.assert_array_equal(model.predict(x, verbose=0), x)


def test_set_klip_factor_scales_output(images):
    x = images["digits"][:20]
    for layer in (
        ScaledAveragePooling2D(2),
        ScaledL2NormPooling2D(2),
        ScaledGlobalAveragePooling2D(),
        ScaledGlobalL2NormPooling2D(),
    ):
        assert isinstance(layer, LipschitzLayer)
        base = layer(x).numpy()
        layer.set_klip_factor(0.5)
        np.testing.assert_allclose(layer(x), 0.5 * base, rtol=1e-6)


# ----------------------------------------------------------------- round trips

ROUND_TRIP = {
    "average": lambda: ScaledAveragePooling2D((3, 2), strides=(1, 2), k_coef_lip=2.5),
    "average_cf": lambda: ScaledAveragePooling2D(2, data_format="channels_first", k_coef_lip=0.5),
    "l2": lambda: ScaledL2NormPooling2D(2, strides=1, k_coef_lip=1.5, eps_grad_sqrt=1e-4),
    "global_average": lambda: ScaledGlobalAveragePooling2D(k_coef_lip=3.0, keepdims=True),
    "global_l2": lambda: ScaledGlobalL2NormPooling2D(k_coef_lip=0.7, eps_grad_sqrt=1e-3),
    "down": lambda: InvertibleDownSampling((2, 4)),
    "up": lambda: InvertibleUpSampling(2, data_format="channels_first"),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_config_round_trip(images, name):
    x = (images["digits"][:30] - 0.5).reshape(-1, 4, 4, 4)
    layer = ROUND_TRIP[name]()
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    np.testing.assert_array_equal(clone(x), layer(x))


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_save_load_round_trip(images, name, tmp_path):
    x = (images["digits"][:30] - 0.5).reshape(-1, 4, 4, 4)
    layer = ROUND_TRIP[name]()
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    assert loaded.layers[-1].get_config() == layer.get_config()


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("cls", [ScaledAveragePooling2D, ScaledL2NormPooling2D])
@pytest.mark.parametrize("padding", ["same", "SAME", "full", 0])
def test_padding_other_than_valid(cls, padding):
    with pytest.raises(ValueError, match="padding='valid' only"):
        cls(2, padding=padding)


def test_padding_valid_is_case_insensitive():
    assert ScaledAveragePooling2D(2, padding="VALID").get_config()["padding"] == "valid"


@pytest.mark.parametrize("cls", [ScaledAveragePooling2D, ScaledL2NormPooling2D])
def test_zero_strides(cls):
    with pytest.raises(ValueError, match="strides must be >= 1"):
        cls(2, strides=(0, 1))


@pytest.mark.parametrize(
    "cls",
    [
        ScaledAveragePooling2D,
        ScaledL2NormPooling2D,
        ScaledGlobalAveragePooling2D,
        ScaledGlobalL2NormPooling2D,
    ],
)
@pytest.mark.parametrize("k", [0, -2.0, float("inf"), "1"])
def test_invalid_k_coef_lip(cls, k):
    with pytest.raises(ValueError, match="k_coef_lip"):
        cls(k_coef_lip=k)


@pytest.mark.parametrize("cls", [ScaledL2NormPooling2D, ScaledGlobalL2NormPooling2D])
@pytest.mark.parametrize("eps", [-1e-6, float("nan"), float("inf"), "1e-6", None, True])
def test_invalid_eps_grad_sqrt(cls, eps):
    with pytest.raises(ValueError, match="eps_grad_sqrt"):
        cls(eps_grad_sqrt=eps)


@pytest.mark.parametrize(
    "layer",
    [ScaledAveragePooling2D(2), ScaledL2NormPooling2D(2), ScaledGlobalAveragePooling2D()],
    ids=lambda layer: type(layer).__name__,
)
def test_pooling_wrong_rank(layer):
    with pytest.raises(ValueError):
        layer(np.zeros((2, 8, 8), "float32"))


@pytest.mark.parametrize("cls", [InvertibleDownSampling, InvertibleUpSampling])
@pytest.mark.parametrize("pool", [0, -1, (2,), (2, 2, 2), 2.5, "2", (2, True), None])
def test_invertible_invalid_pool_size(cls, pool):
    with pytest.raises(ValueError, match="pool_size"):
        cls(pool)


@pytest.mark.parametrize("cls", [InvertibleDownSampling, InvertibleUpSampling])
@pytest.mark.parametrize("data_format", ["NHWC", None])
def test_invertible_invalid_data_format(cls, data_format):
    with pytest.raises(ValueError, match="data_format"):
        cls(2, data_format=data_format)


def test_invertible_downsampling_indivisible_or_wrong_rank():
    with pytest.raises(ValueError, match="rows=5"):
        InvertibleDownSampling(2).build((None, 5, 4, 1))
    with pytest.raises(ValueError, match="cols=7"):
        InvertibleDownSampling((1, 2), data_format="channels_first").build((None, 1, 4, 7))
    with pytest.raises(ValueError, match="4D"):
        InvertibleDownSampling(2).build((None, 4, 4))
    with pytest.raises(ValueError, match="channels=None"):
        InvertibleDownSampling(2).build((None, 4, 4, None))


def test_invertible_upsampling_indivisible_channels():
    with pytest.raises(ValueError, match="channels=3"):
        InvertibleUpSampling(2).build((None, 4, 4, 3))
    with pytest.raises(ValueError, match="channels=None"):
        InvertibleUpSampling(2).build((None, 4, 4, None))
    with pytest.raises(ValueError, match="4D"):
        InvertibleUpSampling(2).build((None, 4, 4, 4, 4))


def test_jit_compile_matches_eager(images):
    x = images["digits"][:100]
    inputs = keras.Input(x.shape[1:])
    h = InvertibleDownSampling(2)(inputs)
    h = InvertibleUpSampling(2)(h)
    h = ScaledL2NormPooling2D(2, k_coef_lip=0.9)(keras.layers.Conv2D(4, 3)(h))
    h = ScaledAveragePooling2D(2, strides=1)(h)
    outputs = keras.layers.Concatenate()(
        [ScaledGlobalAveragePooling2D()(h), ScaledGlobalL2NormPooling2D()(h)]
    )
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse", jit_compile=True)
    model.fit(x, np.ones((len(x), 8)), epochs=1, batch_size=50, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [ScaledGlobalAveragePooling2D, ScaledGlobalL2NormPooling2D])
def test_global_pooling_casts_integer_inputs_like_keras_layers(cls):
    ints = np.arange(2 * 3 * 4 * 2, dtype="int32").reshape(2, 3, 4, 2) - 10
    layer = cls()
    out = layer(ints)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    expected = layer(ints.astype("float32"))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
    keras_out = keras.layers.GlobalAveragePooling2D()(ints)
    assert keras.backend.standardize_dtype(keras_out.dtype) == "float32"
