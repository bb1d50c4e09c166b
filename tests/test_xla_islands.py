"""XLA islands (`deel_lip._backend.xla_island`): same values and gradients, current constants.

In a graph that XLA does not compile (Keras's default on CPU), the sort kernels and the
kernel normalisation run as XLA-compiled functions. They must compute the same function
and gradient as the plain kernels (``DEEL_LIP_XLA_ISLANDS=0``), and a change of the
Lipschitz coefficient after tracing must reach the island (its traces hold constants).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deel_lip import _backend
from deel_lip.layers import GroupSort, GroupSort2, SpectralConv2D, SpectralDense
from deel_lip.utils import layer_operator_matrix


def _value_and_grads(layer, x, islands: bool, monkeypatch):
    monkeypatch.setenv(_backend.XLA_ISLANDS_ENV, "1" if islands else "0")

    @tf.function(jit_compile=False)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.sin(y))
        return y, tape.gradient(loss, [x] + layer.trainable_variables)

    y, grads = step(x)
    return np.asarray(y), [np.asarray(g) for g in grads]


@pytest.mark.parametrize(
    "make,shape",
    [
        (GroupSort2, (16, 6, 6, 8)),
        (lambda: GroupSort(4), (16, 6, 6, 8)),
        (lambda: SpectralConv2D(6, 3), (8, 7, 7, 3)),
        (lambda: SpectralDense(5), (8, 12)),
    ],
)
def test_island_computes_the_same_function_and_gradient(make, shape, monkeypatch):
    x = tf.constant(np.random.default_rng(0).normal(size=shape).astype("float32"))
    layer = make()
    layer.build((None,) + shape[1:])
    weights = layer.get_weights()
    plain = _value_and_grads(layer, x, islands=False, monkeypatch=monkeypatch)
    layer.set_weights(weights)  # a training call updates the normalisation state
    island = _value_and_grads(layer, x, islands=True, monkeypatch=monkeypatch)
    np.testing.assert_allclose(island[0], plain[0], atol=1e-5)
    for got, expected in zip(island[1], plain[1]):
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_island_runs_inside_fit_and_a_new_coefficient_reaches_it(digits):
    """After a traced training step, `set_klip_factor` changes the bound the island uses."""
    images, labels = digits
    layer = SpectralConv2D(4, 3)
    model = keras.Sequential([keras.Input((8, 8, 1)), layer, keras.layers.Flatten()])
    model.add(keras.layers.Dense(10))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images[:256], labels[:256], epochs=1, verbose=0)
    layer.set_klip_factor(0.5)

    @tf.function(jit_compile=False)
    def kernel():
        return layer.compute_constrained_kernel()[0]

    layer.constrained_kernel.assign(kernel())  # through the island traced by fit
    norm = np.linalg.norm(layer_operator_matrix(layer, (8, 8, 1)), 2)
    assert norm <= 0.5 * (1 + 1e-4)
