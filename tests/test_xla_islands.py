"""XLA islands (`deel_lip._backend.xla_island`): same values and gradients.

In a graph that XLA does not compile (Keras's default on CPU), the sort kernels and the
convolutions' frequency bound run as XLA-compiled functions. They must compute the same
function and gradient as the plain kernels (``DEEL_LIP_XLA_ISLANDS=0``).
"""

import numpy as np
import pytest
import tensorflow as tf

from deel_lip import _backend
from deel_lip.layers import GroupSort, GroupSort2, SpectralConv2D, SpectralDepthwiseConv2D


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
        # kh kw c_in > c_out: the frequency bound is computed (no coverage shortcut)
        (lambda: SpectralConv2D(8, 3), (4, 10, 10, 6)),
        (lambda: SpectralConv2D(8, 3, strides=2), (4, 10, 10, 6)),
        (lambda: SpectralDepthwiseConv2D(3), (4, 10, 10, 3)),
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
