"""deel_lip models resolve compile()'s default ``jit_compile="auto"`` as Keras does.

On a CPU-only machine that is no XLA: the convolutions keep TensorFlow's oneDNN kernels
and the frequency bound and sort kernels run as XLA islands (faster than whole-model XLA
there, docs/benchmarks.md).
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from deel_lip.layers import GroupSort2, ScaledL2NormPooling2D, SpectralConv2D, SpectralDense
from deel_lip.model import Model, Sequential


def _layers():
    return [
        keras.Input((8, 8, 1)),
        SpectralConv2D(8, 3),
        GroupSort2(),
        ScaledL2NormPooling2D(2),
        keras.layers.Flatten(),
        SpectralDense(10),
    ]


def _sequential():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Sequential(_layers())


def _functional():
    inputs, *layers = _layers()
    x = inputs
    for layer in layers:
        x = layer(x)
    return Model(inputs, x)


@pytest.fixture(scope="module", autouse=True)
def _cpu_only():
    if any(d.device_type != "CPU" for d in tf.config.list_physical_devices()):
        pytest.skip("Keras itself enables XLA by default with an accelerator")


@pytest.mark.parametrize("build", [_sequential, _functional])
def test_default_compile_is_keras_resolution(build):
    model = build()
    model.compile("adam", "mse")
    plain = keras.Sequential(_layers())
    plain.compile("adam", "mse")
    assert plain.jit_compile is False  # Keras's own "auto" on this CPU-only machine
    assert model.jit_compile is False


@pytest.mark.parametrize("build", [_sequential, _functional])
def test_explicit_choices_are_honoured(build):
    model = build()
    model.compile("adam", "mse", jit_compile=False)
    assert model.jit_compile is False
    model.compile("adam", "mse", jit_compile=True)
    assert model.jit_compile is True
    model.compile("adam", "mse", run_eagerly=True)
    assert model.jit_compile is False
    model.compile("adam", "mse", None, None, None, True)  # run_eagerly given by position
    assert model.jit_compile is False


def test_no_xla_under_a_distribution_strategy():
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        model = _sequential()
        model.compile("adam", "mse")
    assert model.jit_compile is False


@pytest.mark.parametrize("jit_compile", ["auto", True])
def test_default_and_xla_compile_train_on_real_digits(digits, jit_compile):
    images, labels = digits
    x, y = images[:512].astype("float32"), keras.utils.to_categorical(labels[:512], 10)
    model = _sequential()
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.CategoricalCrossentropy(True),
        jit_compile=jit_compile,
    )
    assert model.jit_compile is (jit_compile is True)
    history = model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    # The trained model is current and identical to its eager call.
    np.testing.assert_allclose(model.predict(x, verbose=0), model(x), rtol=1e-5, atol=1e-5)
