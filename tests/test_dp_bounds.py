"""Clipless DP-SGD bounds: exact per-sample gradient norms on real digits never exceed them."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from deel_lip import dp, losses
from deel_lip import layers as dl


def _model():
    """One chain with every supported layer type (biases on)."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            dl.SpectralConv2D(6, 3, padding="same"),
            dl.GroupSort2(),
            dl.FrobeniusConv2D(8, 3, strides=2, padding="valid"),
            dl.MaxMin(),
            dl.ScaledL2NormPooling2D(pool_size=2),
            dl.SpectralConv2D(8, 2, padding="reflect", activation="relu"),
            dl.ScaledAveragePooling2D(pool_size=2),
            keras.layers.Flatten(),
            dl.SpectralDense(24, activation="relu"),
            dl.FullSort(),
            keras.layers.Reshape((4, 6)),
            dl.SpectralDense(6),
            dl.GroupSort(n=3),
            keras.layers.Flatten(),
            dl.FrobeniusDense(16, disjoint_neurons=False),
            keras.layers.ReLU(),
            dl.FrobeniusDense(10, disjoint_neurons=True),
        ]
    )


def _labels(kind, y):
    one_hot = keras.utils.to_categorical(y, 10).astype("float32")
    return {"sparse": y, "one_hot": one_hot, "signs": 2.0 * one_hot - 1.0}[kind]


LOSSES = [
    (losses.TauCategoricalCrossentropy(tau=20.0), "one_hot"),
    (losses.TauSparseCategoricalCrossentropy(tau=0.5), "sparse"),
    (losses.TauBinaryCrossentropy(tau=5.0), "one_hot"),
    (losses.HingeMargin(min_margin=4.0), "signs"),
    (losses.HKR(alpha=math.inf, min_margin=4.0), "signs"),
    (losses.MulticlassHinge(min_margin=4.0), "one_hot"),
    (losses.MulticlassHKR(alpha=0.999, min_margin=4.0, convex=True), None),
    (losses.MulticlassHKR(alpha=1.0, min_margin=4.0, convex=True), "one_hot"),
    (losses.MultiMargin(min_margin=4.0), "one_hot"),
    (losses.CategoricalHinge(min_margin=4.0), "one_hot"),
]


@pytest.fixture(scope="module")
def private_model(mnist_small):
    keras.utils.set_random_seed(1)
    model = _model()
    for layer in model.layers:  # non-zero biases exercise the bias terms of the bounds
        if getattr(layer, "use_bias", False):
            layer.bias.assign(np.random.default_rng(0).normal(0, 0.3, layer.bias.shape))
    images, _ = mnist_small
    norm = float(np.linalg.norm(images.reshape(len(images), -1), axis=1).max())
    return dp.make_private(
        model, input_norm=norm, noise_multiplier=1.0, batch_size=64, dataset_size=1000
    )


def _per_sample_norms(model, loss, x, y):
    """Exact per-sample gradient norm of each bounded layer (jacobian of the loss vector)."""
    variables = [v for b in model.layer_bounds for v in b.variables()]
    with tf.GradientTape() as tape:
        values = dp.per_sample_losses(loss, y, model(x, training=True))
    jac = tape.jacobian(values, variables)
    norms, index = {}, 0
    for bound in model.layer_bounds:
        if not bound.has_parameters:
            continue
        squares = 0.0
        for _ in bound.variables():
            squares += tf.reduce_sum(tf.reshape(jac[index], (len(x), -1)) ** 2, axis=1)
            index += 1
        norms[bound.name] = np.sqrt(squares.numpy())
    return norms


@pytest.mark.parametrize("loss,labels", LOSSES, ids=lambda v: getattr(v, "name", str(v)))
def test_per_sample_gradients_within_bounds(private_model, mnist_small, loss, labels):
    images, y = mnist_small
    if labels is None:  # a KR term: refused at compile, naming the loss
        with pytest.raises(ValueError, match="MulticlassHKR.*KR term"):
            private_model.compile("sgd", loss)
        return
    private_model.compile("sgd", loss)
    bounds = {b.name: float(c) for b, c in private_model.per_sample_bounds()}
    idx = np.random.default_rng(0).choice(len(images), 32, replace=False)
    norms = _per_sample_norms(private_model, loss, images[idx], _labels(labels, y[idx]))
    ratios = {name: norms[name].max() / bounds[name] for name in bounds}
    print(loss.name, {k: round(v, 4) for k, v in ratios.items()})
    assert set(ratios) == set(norms)
    assert max(ratios.values()) <= 1.0
    assert max(ratios.values()) > 0.0


def _other_models():
    """Layers not in `_model`: Conv1D, down-sampling, global pooling, no-bias convolution."""
    sequence = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Reshape((28, 28)),
            dl.SpectralConv1D(8, 3, strides=2),
            dl.GroupSort2(),
            keras.layers.Flatten(),
            dl.SpectralDense(10),
        ]
    )
    image = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            dl.InvertibleDownSampling(2),
            dl.SpectralConv2D(8, 3, use_bias=False),
            keras.layers.Activation("relu"),
            dl.ScaledGlobalL2NormPooling2D(),
            dl.SpectralDense(10),
        ]
    )
    return [sequence, image]


@pytest.mark.parametrize("index", [0, 1])
def test_other_layers_within_bounds(mnist_small, index):
    images, y = mnist_small
    model = _other_models()[index]
    norm = float(np.linalg.norm(images.reshape(len(images), -1), axis=1).max())
    private = dp.make_private(
        model, input_norm=norm, noise_multiplier=1.0, batch_size=64, dataset_size=1000
    )
    for loss, labels in (LOSSES[0], LOSSES[5]):
        private.compile("sgd", loss)
        bounds = {b.name: float(c) for b, c in private.per_sample_bounds()}
        norms = _per_sample_norms(private, loss, images[:64], _labels(labels, y[:64]))
        ratios = {name: norms[name].max() / bounds[name] for name in bounds}
        print(model.name, loss.name, {k: round(v, 4) for k, v in ratios.items()})
        assert 0.0 < max(ratios.values()) <= 1.0


def test_loss_constants_hold_and_are_reached(mnist_small):
    """||d loss / d logits|| <= L on random and saturated logits; the max is near L."""
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(0, 30, (512, 10)), "float32")
    y = rng.integers(0, 10, 512)
    for loss, labels in LOSSES:
        if labels is None:
            continue
        with tf.GradientTape() as tape:
            tape.watch(logits)
            total = tf.reduce_sum(dp.per_sample_losses(loss, _labels(labels, y), logits))
        grads = tape.gradient(total, logits).numpy()
        observed = np.linalg.norm(grads, axis=1).max()
        constant = dp.loss_lipschitz(loss, 10)
        print(loss.name, observed / constant)
        assert observed <= constant * (1 + 1e-5)
        assert observed >= 0.7 * constant


def test_multi_hot_labels_projected_to_one_hot():
    """A multi-hot row would exceed the one-hot constant: the train step projects it."""
    loss = losses.MulticlassHinge(min_margin=2.0)
    y = np.ones((4, 10), "float32")  # all positive
    logits = tf.zeros((4, 10))
    with tf.GradientTape() as tape:
        tape.watch(logits)
        total = tf.reduce_sum(dp.per_sample_losses(loss, y, logits))
    grads = tape.gradient(total, logits).numpy()
    assert np.linalg.norm(grads, axis=1).max() <= dp.loss_lipschitz(loss, 10) * (1 + 1e-6)


def test_projection_keeps_operator_norm(private_model):
    """After a noisy optimizer step every kernel is back in its constraint set."""
    private_model.compile(keras.optimizers.SGD(5.0), losses.TauCategoricalCrossentropy(10.0))
    x = np.random.default_rng(0).uniform(0, 1, (64, 28, 28, 1)).astype("float32")
    y = keras.utils.to_categorical(np.arange(64) % 10, 10)
    private_model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    for bound in private_model.layer_bounds:
        if bound.projection is None:
            continue
        limit, kind = bound.projection
        kernel = bound.layer.kernel.numpy().reshape(-1, bound.layer.kernel.shape[-1])
        if kind == "spectral":
            assert np.linalg.norm(kernel, 2) <= limit * (1 + 1e-5)
        elif kind == "frobenius":
            assert np.linalg.norm(kernel) == pytest.approx(limit, rel=1e-5)
        else:
            np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), limit, rtol=1e-5)
