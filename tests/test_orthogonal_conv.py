"""OrthogonalConv2D (BCOP): paraunitary kernels, exact orthogonality, export, saving, errors.

The pairwise sweeps (kernel sizes, strides, paddings, channels, sizes, ``k_coef_lip``,
projector ranks; random parameters and after training) are in `test_guarantees.py`; this
file checks the properties specific to the parametrisation: the transfer matrix is unitary
at every frequency (so the circular convolution is orthogonal on every input size), the
bound holds whatever the Bjorck convergence, `condense` keeps the function, the export is
a plain Keras layer with the same outputs, `.keras` saving is exact, a network trains on
real digits (with XLA: slow-marked), XLA gradients equal the plain graph's, and bad
arguments raise.
"""

import os

import keras
import numpy as np
import pytest

from deel_lip.layers import GroupSort2, OrthogonalConv2D, ScaledL2NormPooling2D, SpectralDense
from deel_lip.layers.orthogonal_conv import paraunitary_kernel
from deel_lip.model import Sequential, vanilla_export
from deel_lip.utils import layer_operator_matrix


def _randomised(layer, shape, seed=0, scale=2.0):
    layer.build((None,) + shape)
    rng = np.random.default_rng(seed)
    for variable in [layer.orthogonal, *layer.frames]:
        variable.assign((scale * rng.standard_normal(variable.shape)).astype("float32"))
    return layer


def _singular_values(layer, shape) -> np.ndarray:
    return np.linalg.svd(layer_operator_matrix(layer, shape), compute_uv=False)


def _transfer(kernel: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``T(w) = sum_{a, b} K[a, b] e^{i (w_0 a + w_1 b)}`` (``c_in x c_out``)."""
    kh, kw = kernel.shape[:2]
    phase = np.exp(1j * (w[0] * np.arange(kh)[:, None] + w[1] * np.arange(kw)[None, :]))
    return np.einsum("ab,abij->ij", phase, kernel)


@pytest.mark.parametrize("kernel_size", [(1, 1), (2, 2), (3, 3), (5, 3)])
def test_paraunitary_kernel_is_unitary_at_every_frequency(kernel_size):
    rng = np.random.default_rng(0)
    c = 6
    q, _ = np.linalg.qr(rng.standard_normal((c, c)))
    frames = [np.linalg.qr(rng.standard_normal((c, 3)))[0] for _ in range(sum(kernel_size) - 2)]
    kh = kernel_size[0]
    kernel = np.asarray(paraunitary_kernel(q, frames[: kh - 1], frames[kh - 1 :]), np.float64)
    assert kernel.shape == kernel_size + (c, c)
    for w in rng.uniform(-np.pi, np.pi, size=(50, 2)):
        t = _transfer(kernel, w)
        np.testing.assert_allclose(t.conj().T @ t, np.eye(c), atol=1e-5)


@pytest.mark.parametrize("size", [(4, 4), (5, 7), (9, 9)])
@pytest.mark.parametrize("c_in,c_out,kernel_size", [(2, 2, 3), (3, 5, 3), (4, 4, 5), (2, 3, 2)])
def test_circular_convolution_is_orthogonal_on_every_size(size, c_in, c_out, kernel_size):
    """Every singular value is 1 (an isometry, filters >= c_in), from random parameters."""
    layer = _randomised(OrthogonalConv2D(c_out, kernel_size, padding="circular"), size + (c_in,))
    values = _singular_values(layer, size + (c_in,))
    assert values.max() <= 1 + 1e-6
    assert values.min() >= 1 - 1e-4
    x = np.random.default_rng(1).normal(size=(8,) + size + (c_in,)).astype("float32")
    layer_no_bias = OrthogonalConv2D(c_out, kernel_size, padding="circular", use_bias=False)
    layer_no_bias.build((None,) + size + (c_in,))
    layer_no_bias.set_weights(layer.get_weights()[:-1])
    norms_in = np.linalg.norm(x.reshape(8, -1), axis=1)
    norms_out = np.linalg.norm(np.asarray(layer_no_bias(x)).reshape(8, -1), axis=1)
    np.testing.assert_allclose(norms_out, norms_in, rtol=1e-4)


@pytest.mark.parametrize("maxiter", [1, 2])
def test_bound_holds_when_bjorck_has_not_converged(maxiter):
    """The last Bjorck step caps every singular value at 1: sound after 1 or 2 iterations,
    from badly conditioned parameters."""
    layer = OrthogonalConv2D(4, 3, padding="same", maxiter_bjorck=maxiter, k_coef_lip=0.7)
    layer.build((None, 6, 6, 3))
    rng = np.random.default_rng(2)
    for variable in [layer.orthogonal, *layer.frames]:
        scales = np.logspace(-3, 1, min(variable.shape))
        u, _ = np.linalg.qr(rng.standard_normal((variable.shape[0], len(scales))))
        v, _ = np.linalg.qr(rng.standard_normal((variable.shape[1], len(scales))))
        variable.assign(((u * scales) @ v.T).astype("float32"))
    assert _singular_values(layer, (6, 6, 3)).max() <= 0.7 * (1 + 1e-6)


@pytest.mark.parametrize(
    "kwargs", [{}, {"strides": 2}, {"padding": "valid"}, {"dilation_rate": 2}, {"k_coef_lip": 2.5}]
)
def test_zero_padded_strided_dilated_variants_are_bounded(kwargs):
    layer = _randomised(OrthogonalConv2D(5, 3, **kwargs), (9, 9, 3))
    k = kwargs.get("k_coef_lip", 1.0)
    assert _singular_values(layer, (9, 9, 3)).max() <= k * (1 + 1e-6)
    assert layer.lipschitz_bound() == k


def test_condense_keeps_the_function_and_orthogonalises_the_parameters():
    layer = _randomised(OrthogonalConv2D(4, 3), (7, 7, 2), scale=0.3)
    x = np.random.default_rng(3).normal(size=(4, 7, 7, 2)).astype("float32")
    before = np.asarray(layer(x))
    layer.condense()
    np.testing.assert_allclose(np.asarray(layer(x)), before, atol=1e-5)
    q = layer.orthogonal.numpy()
    np.testing.assert_allclose(q.T @ q, np.eye(q.shape[0]), atol=1e-5)
    for frame in layer.frames:
        f = frame.numpy()
        np.testing.assert_allclose(f.T @ f, np.eye(f.shape[1]), atol=1e-5)


def _network(padding="same"):
    return Sequential(
        [
            keras.Input((8, 8, 1)),
            OrthogonalConv2D(8, 3, padding=padding),
            GroupSort2(),
            ScaledL2NormPooling2D(2),
            OrthogonalConv2D(16, 3, padding=padding),
            GroupSort2(),
            keras.layers.Flatten(),
            SpectralDense(10),
        ]
    )


# The XLA training run (~75 s) is slow-marked: Keras's default on CPU is no XLA; the XLA
# gradients are checked against the plain graph's in `test_xla_gradients_equal_plain_ones`.
@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_trains_on_digits_and_exports_to_plain_keras(digits, jit_compile, tmp_path):
    images, labels = digits
    keras.utils.set_random_seed(0)
    model = _network()
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    history = model.fit(images[:1200], labels[:1200], batch_size=64, epochs=3, verbose=0)
    assert history.history["accuracy"][-1] > 0.8
    x = images[-200:]
    exported = vanilla_export(model)
    conv_classes = {type(layer) for layer in exported.layers if "conv" in layer.name}
    assert conv_classes == {keras.layers.Conv2D}
    np.testing.assert_allclose(
        exported.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5
    )
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for layer in (model.layers[0], model.layers[3]):
        shape = tuple(layer.input.shape[1:])
        assert _singular_values(layer, shape).max() <= 1 + 1e-6


def test_xla_gradients_equal_plain_ones():
    import tensorflow as tf

    layer = _randomised(OrthogonalConv2D(4, 3, projector_rank=1), (6, 6, 3))
    x = tf.constant(np.random.default_rng(1).standard_normal((2, 6, 6, 3)), "float32")

    def gradients():
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(layer(x, training=True) ** 2)
        return tape.gradient(y, [layer.orthogonal, *layer.frames])

    plain = tf.function(gradients, jit_compile=False)()
    xla = tf.function(gradients, jit_compile=True)()
    for a, b in zip(plain, xla):
        assert np.all(np.isfinite(b.numpy()))
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-4)


def test_config_round_trip():
    layer = OrthogonalConv2D(6, (3, 2), padding="circular", projector_rank=2, k_coef_lip=0.5)
    clone = OrthogonalConv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert clone.projector_rank == 2 and clone.pad_mode == "circular"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"padding": "reflect"}, "padding"),
        ({"activation": "relu"}, "activation"),
        ({"kernel_regularizer": "l2"}, "kernel_regularizer"),
        ({"kernel_constraint": "non_neg"}, "kernel_constraint"),
        ({"projector_rank": 0}, "projector_rank"),
        ({"strides": 3, "kernel_size": 2}, "kernel_size"),
        ({"eps_bjorck": None}, "eps_bjorck"),
        ({"k_coef_lip": -1.0}, "k_coef_lip"),
        ({"lora_rank": 2}, "lora"),
        ({"groups": 2}, "groups"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    args = {"filters": 4, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        OrthogonalConv2D(**args)


def test_projector_rank_larger_than_channels_raises_at_build():
    layer = OrthogonalConv2D(3, 3, projector_rank=5)
    with pytest.raises(ValueError, match="projector_rank must be <= max"):
        layer.build((None, 6, 6, 2))
