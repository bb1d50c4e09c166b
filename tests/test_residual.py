"""Residual combination and centering layers: exact Jacobians, behaviour, round trips."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deel_lip.layers import BatchCentering, GroupSort, LayerCentering, LipResidual

TOL = 1e-5


def singular_values(matrix):
    """Singular values (descending) of a matrix or a stack of matrices, in float64.

    Square roots of the eigenvalues of the smaller Gram matrix: exact up to rounding and
    several times faster than an SVD on the 784-dimensional MNIST Jacobians.
    """
    m = np.asarray(matrix, "float64")
    mt = np.swapaxes(m, -1, -2)
    gram = m @ mt if m.shape[-2] <= m.shape[-1] else mt @ m
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram)[..., ::-1], 0.0, None))


def batch_jacobian(fn, x):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    jac = tape.batch_jacobian(y, x).numpy()
    return jac.reshape(x.shape[0], -1, int(np.prod(x.shape[1:])))


def full_jacobian(fn, x):
    """Jacobian of ``fn`` as a map of the whole tensor ``x`` (batch included)."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return tape.jacobian(y, x).numpy().reshape(int(np.prod(y.shape)), int(np.prod(x.shape)))


@pytest.fixture(scope="module")
def maps(digits):
    """Real digits as 4x4 maps of 4 channels, centred to have both signs."""
    return (digits[0][:200] - 0.5).reshape(-1, 4, 4, 4)


@pytest.fixture(scope="module")
def mnist_maps(mnist_small):
    return mnist_small[0][::100]


# ----------------------------------------------------------------- LipResidual


def _residual(alpha):
    layer = LipResidual(initial_alpha=alpha)
    layer.build([(None, 4, 4, 4), (None, 4, 4, 4)])
    return layer


@pytest.mark.parametrize("alpha", [0.5, 0.1, 0.93])
def test_lip_residual_formula_and_pair_norm(maps, alpha):
    layer = _residual(alpha)
    assert float(layer.alpha) == pytest.approx(alpha, rel=1e-6)
    x, b = maps[:20], np.roll(maps, 3, axis=0)[:20]
    np.testing.assert_allclose(layer([x, b]), alpha * b + (1 - alpha) * x, rtol=1e-5, atol=1e-6)
    # exact Jacobian of (identity, branch) -> y: [(1 - a) I, a I]
    pair = np.stack([x, b], axis=1)
    jac = batch_jacobian(lambda p: layer([p[:, 0], p[:, 1]]), pair)
    sv = singular_values(jac)
    np.testing.assert_allclose(sv, np.sqrt(alpha**2 + (1 - alpha) ** 2), rtol=TOL)
    assert sv.max() <= 1 + TOL


def test_lip_residual_around_lipschitz_branch(maps, mnist_maps):
    """identity and GroupSort branch both 1-Lipschitz: the block is 1-Lipschitz."""
    layer = LipResidual(initial_alpha=0.7)
    branch = GroupSort(4)
    for x in (maps, mnist_maps[:2].reshape(-1, 7, 7, 16)):
        jac = batch_jacobian(lambda t: layer([t, branch(t)]), x)
        assert singular_values(jac).max() <= 1 + TOL


def test_lip_residual_alpha_stays_in_unit_interval(maps):
    x = maps
    identity, branch = keras.Input(x.shape[1:]), keras.Input(x.shape[1:])
    layer = LipResidual()
    model = keras.Model([identity, branch], layer([identity, branch]))
    model.compile(optimizer=keras.optimizers.SGD(50.0), loss="mse")
    # target = 3 * branch: the optimum alpha is outside (0, 1)
    model.fit([x, -x], -3 * x, epochs=3, batch_size=50, verbose=0)
    alpha = float(layer.alpha)
    assert 0.5 < alpha <= 1.0  # pushed towards 1, never beyond


# ----------------------------------------------------------------- BatchCentering


def test_batch_centering_training_and_inference(maps):
    layer = BatchCentering(momentum=0.8)
    x = maps[:64]
    layer.build(x.shape)
    layer.bias.assign(np.array([0.1, -0.2, 0.3, 0.0], "float32"))
    y = layer(x, training=True).numpy()
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), [0.1, -0.2, 0.3, 0.0], atol=1e-5)
    batch_mean = x.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(layer.moving_mean, 0.2 * batch_mean, rtol=1e-5)
    layer(x, training=True)
    np.testing.assert_allclose(layer.moving_mean, (0.2 + 0.16) * batch_mean, rtol=1e-5)
    z = layer(x, training=False).numpy()
    np.testing.assert_allclose(z, x - 0.36 * batch_mean + layer.bias.numpy(), rtol=1e-5, atol=1e-6)


def test_batch_centering_exact_jacobians(maps):
    layer = BatchCentering()
    x = maps[:8]
    layer(x, training=True)
    # inference: a translation, Jacobian = identity
    sv = singular_values(batch_jacobian(lambda t: layer(t, training=False), maps))
    np.testing.assert_allclose(sv, 1.0, rtol=TOL)
    # training, as a map of the whole batch: a projection, norm 1
    sv = singular_values(full_jacobian(lambda t: layer(t, training=True), x))
    assert sv.max() <= 1 + TOL
    assert sv.max() == pytest.approx(1.0, rel=TOL)
    assert np.sum(sv < 1e-4) == 4  # the 4 per-channel mean directions are removed


@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
def test_batch_centering_fit_updates_moving_mean(maps):
    layer = BatchCentering(momentum=0.5, use_bias=False, axis=1)
    x = np.moveaxis(maps, -1, 1)
    model = keras.Sequential([keras.Input(x.shape[1:]), layer])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, x, epochs=3, batch_size=len(x), verbose=0)
    expected = (1 - 0.5**3) * x.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(layer.moving_mean, expected, rtol=1e-5)
    assert layer.bias is None and not layer.trainable_weights


# ----------------------------------------------------------------- LayerCentering


def test_layer_centering_projection(maps, mnist_maps):
    layer = LayerCentering()
    layer.build(maps.shape)
    layer.bias.assign(np.array([1.0, 2.0, 3.0, 4.0], "float32"))
    y = layer(maps).numpy()
    np.testing.assert_allclose(y.mean(axis=(1, 2)), np.tile([1.0, 2.0, 3.0, 4.0], (len(y), 1)))
    for x, lay in ((maps, layer), (mnist_maps[:2], LayerCentering(use_bias=False))):
        sv = singular_values(batch_jacobian(lay, x))
        channels = x.shape[-1]
        np.testing.assert_allclose(sv[:, :-channels], 1.0, rtol=TOL)  # projection
        assert np.all(sv[:, -channels:] < 1e-5)  # one constant map per channel removed
    cf = LayerCentering(axis=1, use_bias=False)
    np.testing.assert_allclose(
        np.moveaxis(cf(np.moveaxis(maps, -1, 1)).numpy(), 1, -1),
        maps - maps.mean(axis=(1, 2), keepdims=True),
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "layer",
    [LipResidual(0.3), BatchCentering(), LayerCentering()],
    ids=lambda layer: type(layer).__name__,
)
def test_pairs_of_real_images(maps, layer):
    x, y = maps, np.roll(maps, 1, axis=0)
    if isinstance(layer, LipResidual):
        branch = GroupSort(2)
        fn = lambda t: layer([t, branch(t)]).numpy()  # noqa: E731
    else:
        fn = lambda t: layer(t).numpy()  # noqa: E731
    lhs = np.linalg.norm((fn(x) - fn(y)).reshape(len(x), -1), axis=1)
    rhs = np.linalg.norm((x - y).reshape(len(x), -1), axis=1)
    assert np.all(lhs <= rhs * (1 + TOL) + 1e-6)
    assert lhs.max() > 0


# ----------------------------------------------------------------- round trips


def _set_weights(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()])


ROUND_TRIP = {
    "residual": lambda: LipResidual(initial_alpha=0.2),
    "batch": lambda: BatchCentering(momentum=0.7),
    "batch_cf": lambda: BatchCentering(momentum=0.0, use_bias=False, axis=1),
    "layer": lambda: LayerCentering(),
    "layer_cf": lambda: LayerCentering(use_bias=True, axis=1),
}


def _call(layer, x):
    return layer([x, -x]) if isinstance(layer, LipResidual) else layer(x)


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_config_round_trip(maps, name):
    x = maps[:30]
    layer = ROUND_TRIP[name]()
    _call(layer, x)
    _set_weights(layer)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    _call(clone, x)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == config
    np.testing.assert_array_equal(_call(clone, x), _call(layer, x))


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_save_load_round_trip(maps, name, tmp_path):
    x = maps[:30]
    layer = ROUND_TRIP[name]()
    inputs = keras.Input(x.shape[1:])
    outputs = layer([inputs, GroupSort(2)(inputs)]) if name == "residual" else layer(inputs)
    model = keras.Model(inputs, outputs)
    _set_weights(layer)
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    assert loaded.layers[-1].get_config() == layer.get_config()


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("alpha", [0, 1, 1.5, -0.1, "0.5", None, True])
def test_lip_residual_invalid_alpha(alpha):
    with pytest.raises(ValueError, match="initial_alpha"):
        LipResidual(initial_alpha=alpha)


@pytest.mark.parametrize(
    "shapes",
    [
        (None, 4, 4, 4),
        [(None, 4, 4, 4)],
        [(None, 4, 4, 4)] * 3,
        [(None, 4, 4, 4), (None, 4, 4, 2)],
        [(None, 4, 4, 4), (None, 16, 4)],
    ],
)
def test_lip_residual_invalid_inputs(shapes):
    with pytest.raises(ValueError, match="LipResidual expects"):
        LipResidual().build(shapes)


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 2, "0.9", None])
def test_batch_centering_invalid_momentum(momentum):
    with pytest.raises(ValueError, match="momentum"):
        BatchCentering(momentum=momentum)


@pytest.mark.parametrize("cls", [BatchCentering, LayerCentering])
def test_centering_invalid_axis(cls):
    with pytest.raises(ValueError, match="axis must be an integer"):
        cls(axis="channels")
    with pytest.raises(ValueError, match="axis=4"):
        cls(axis=4).build((None, 4, 4, 4))
    with pytest.raises(ValueError, match="axis=0"):
        cls(axis=0).build((None, 4, 4, 4))
    with pytest.raises(ValueError, match="known size"):
        cls().build((None, 4, 4, None))


def test_layer_centering_needs_spatial_axes():
    with pytest.raises(ValueError, match="rank >= 3"):
        LayerCentering().build((None, 16))


def test_jit_compile_matches_eager(maps):
    inputs = keras.Input(maps.shape[1:])
    centred = LayerCentering()(BatchCentering()(inputs))
    outputs = LipResidual()([centred, GroupSort(2)(keras.layers.Dense(4)(centred))])
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse", jit_compile=True)
    model.fit(maps, maps, epochs=1, batch_size=50, verbose=0)
    assert np.any(model.layers[1].moving_mean.numpy() != 0)
    np.testing.assert_allclose(model.predict(maps, verbose=0), model(maps), rtol=1e-5, atol=1e-6)
