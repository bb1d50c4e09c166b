"""Orthogonality regularisers: exact values against dense operators, zeros, gradient descent."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from deel_lip.regularizers import LorthRegularizer, OrthDenseRegularizer


def _orthonormal(rows, cols, seed=0):
    """A ``(rows, cols)`` matrix whose small-side Gram matrix is the identity."""
    a = np.random.default_rng(seed).standard_normal((max(rows, cols), min(rows, cols)))
    q, _ = np.linalg.qr(a)
    return (q if rows >= cols else q.T).astype("float32")


def _circular_conv_matrix(kernel, stride, n, dim):
    """Dense matrix ``(out, in)`` of the circular convolution giving ``n^dim`` outputs."""
    kernel = np.asarray(kernel, dtype="float32")
    sizes, channels = kernel.shape[:dim], kernel.shape[-2]
    spatial = [stride * n] * dim
    basis = np.eye(channels * stride**dim * n**dim, dtype="float32")
    basis = basis.reshape(-1, *spatial, channels)
    x = np.pad(basis, [(0, 0)] + [(0, k - 1) for k in sizes] + [(0, 0)], mode="wrap")
    y = ops.convert_to_numpy(ops.conv(x, kernel, strides=stride, padding="valid"))
    return y.reshape(len(basis), -1).T.astype(np.float64)


def _orthogonality_gap(kernel, stride, dim, n=6):
    """``max |s - 1|`` over the ``min(out, in)`` singular values of the circular conv."""
    a = _circular_conv_matrix(kernel, stride, n, dim)
    sv = np.linalg.svd(a, compute_uv=False)[: min(a.shape)]
    return np.abs(sv - 1.0).max()


def _value(regularizer, kernel):
    return float(ops.convert_to_numpy(regularizer(np.asarray(kernel, dtype="float32"))))


# --------------------------------------------------------------------------- OrthDense


@pytest.mark.parametrize("shape", [(16, 16), (32, 8), (8, 32), (3, 3, 4, 8)])
def test_orth_dense_zero_iff_orthogonal(shape):
    regularizer = OrthDenseRegularizer(lambda_orth=0.5)
    rows = int(np.prod(shape[:-1]))
    orthogonal = _orthonormal(rows, shape[-1]).reshape(shape)
    assert abs(_value(regularizer, orthogonal)) < 1e-6
    w = np.random.default_rng(1).standard_normal(shape).astype("float32") * 0.3
    m = w.reshape(rows, -1).astype(np.float64)
    g = m.T @ m if rows >= shape[-1] else m @ m.T
    expected = 0.5 * np.sum((g - np.eye(len(g))) ** 2)
    np.testing.assert_allclose(_value(regularizer, w), expected, rtol=1e-5)
    assert expected > 0.1


def test_orth_dense_in_a_model_and_gradient_descent(digits):
    images, labels = digits
    x = images[:256].reshape(256, -1)
    regularizer = OrthDenseRegularizer(lambda_orth=1.0)
    dense = keras.layers.Dense(16, kernel_regularizer=regularizer, name="orth")
    model = keras.Sequential([keras.Input((64,)), dense, keras.layers.Dense(10)])
    model.compile(
        keras.optimizers.SGD(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model(x[:2])
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(model.losses[0])), _value(regularizer, dense.kernel), rtol=1e-6
    )
    dense.kernel.assign(np.random.default_rng(0).standard_normal((64, 16)).astype("float32") * 0.5)
    before = np.linalg.svd(ops.convert_to_numpy(dense.kernel), compute_uv=False)
    model.fit(x, labels[:256], epochs=3, batch_size=32, verbose=0)
    after = np.linalg.svd(ops.convert_to_numpy(dense.kernel), compute_uv=False)
    assert np.abs(after - 1).max() < 0.5 * np.abs(before - 1).max()


# --------------------------------------------------------------------------- Lorth

EXACT_CASES = [
    # dim, kernel shape, stride: row-orthogonal (M <= C S^d) and column-orthogonal cases
    (2, (3, 3, 4, 4), 1),
    (2, (3, 3, 2, 6), 1),
    (2, (3, 3, 6, 2), 1),
    (2, (3, 3, 2, 5), 2),
    (2, (4, 4, 2, 12), 2),
    (2, (2, 2, 4, 2), 2),
    (1, (3, 4, 4), 1),
    (1, (5, 1, 3), 2),
    (1, (4, 2, 6), 2),
]


@pytest.mark.parametrize("dim, shape, stride", EXACT_CASES)
def test_lorth_equals_distance_of_operator_to_orthogonality(dim, shape, stride):
    """``N^d Lorth = min(||A A^T - I||^2, ||A^T A - I||^2)`` for the circular conv ``A``."""
    kernel = np.random.default_rng(2).standard_normal(shape).astype("float32") * 0.3
    regularizer = LorthRegularizer(kernel_shape=shape, stride=stride, dim=dim, lambda_lorth=2.0)
    n = 5  # larger than the self-convolution: no wrap-around
    a = _circular_conv_matrix(kernel, stride, n, dim)
    rows = np.sum((a @ a.T - np.eye(a.shape[0])) ** 2)
    cols = np.sum((a.T @ a - np.eye(a.shape[1])) ** 2)
    expected = 2.0 * min(rows, cols) / n**dim
    np.testing.assert_allclose(_value(regularizer, kernel), expected, rtol=1e-4)
    assert expected > 0.1


def _paraunitary_kernel(channels, dim, seed=0):
    """Orthogonal 2-tap-per-axis stride-1 convolution, embedded in a size-3 kernel.

    ``H(z) = Q prod_d (P_d + (I - P_d) z_d)`` with ``Q`` orthogonal and ``P_d`` orthogonal
    projections is paraunitary, so the convolution with taps ``H``'s coefficients is
    orthogonal.
    """
    q = _orthonormal(channels, channels, seed)
    taps = {(0,) * dim: q.astype(np.float64)}
    for axis in range(dim):
        basis = _orthonormal(channels, channels // 2, seed + axis + 1).astype(np.float64)
        p = basis @ basis.T
        new = {}
        for index, tap in taps.items():
            shifted = tuple(i + (d == axis) for d, i in enumerate(index))
            new[index] = new.get(index, 0) + tap @ p
            new[shifted] = new.get(shifted, 0) + tap @ (np.eye(channels) - p)
        taps = new
    kernel = np.zeros((3,) * dim + (channels, channels))
    for index, tap in taps.items():
        kernel[index] = tap
    return kernel.astype("float32")


def _identity_kernel(channels):
    kernel = np.zeros((3, 3, channels, channels), "float32")
    kernel[1, 1] = np.eye(channels)
    return kernel


def _one_by_one(c, m):
    return _orthonormal(c, m).reshape(1, 1, c, m)


def _block(k, c, m):
    """kernel_size == stride: the reshaped kernel orthogonal on its small side."""
    return _orthonormal(k * k * c, m).reshape(k, k, c, m)


ORTHOGONAL_CASES = [
    ("identity 3x3", 2, _identity_kernel(4), 1),
    ("1x1 RO", 2, _one_by_one(8, 4), 1),
    ("1x1 CO", 2, _one_by_one(4, 8), 1),
    ("1x1 square", 2, _one_by_one(6, 6), 1),
    ("2x2 stride 2 RO", 2, _block(2, 3, 8), 2),
    ("2x2 stride 2 CO", 2, _block(2, 2, 12), 2),
    ("3x3 stride 3 RO", 2, _block(3, 1, 6), 3),
    ("paraunitary 2D", 2, _paraunitary_kernel(4, 2), 1),
    ("paraunitary 1D", 1, _paraunitary_kernel(6, 1), 1),
]


@pytest.mark.parametrize(
    "name, dim, kernel, stride", ORTHOGONAL_CASES, ids=[case[0] for case in ORTHOGONAL_CASES]
)
def test_lorth_zero_on_orthogonal_positive_otherwise(name, dim, kernel, stride):
    assert _orthogonality_gap(kernel, stride, dim) < 1e-5  # orthogonal by construction
    regularizer = LorthRegularizer(kernel_shape=kernel.shape, stride=stride, dim=dim)
    assert abs(_value(regularizer, kernel)) < 1e-6
    noise = np.random.default_rng(3).standard_normal(kernel.shape).astype("float32")
    assert _value(regularizer, kernel + 0.05 * noise) > 1e-3
    assert _value(regularizer, 1.1 * kernel) > 1e-3


def test_lorth_transposed_convolution():
    """A Conv2DTranspose is orthogonal iff Lorth of its kernel is zero."""
    filters, in_channels = 3, 8
    kernel = _block(2, filters, in_channels)  # Keras layout (2, 2, filters, in_channels)
    layer = keras.layers.Conv2DTranspose(filters, 2, strides=2, use_bias=False)
    layer.build((None, 3, 3, in_channels))
    layer.kernel.assign(kernel)
    basis = np.eye(3 * 3 * in_channels, dtype="float32").reshape(-1, 3, 3, in_channels)
    dense = ops.convert_to_numpy(layer(basis)).reshape(len(basis), -1)
    np.testing.assert_allclose(np.linalg.svd(dense, compute_uv=False), 1.0, atol=1e-5)
    regularizer = LorthRegularizer(kernel_shape=kernel.shape, stride=2, conv_transpose=True)
    assert abs(_value(regularizer, kernel)) < 1e-6
    random = np.random.default_rng(4).standard_normal(kernel.shape).astype("float32")
    plain = LorthRegularizer(stride=2)
    np.testing.assert_allclose(_value(regularizer, random), _value(plain, random), rtol=1e-6)
    assert _value(regularizer, random) > 0.1


@pytest.mark.parametrize("dim, shape, stride", [(2, (3, 3, 4, 8), 2), (1, (3, 4, 6), 1)])
def test_lorth_gradient_descent_orthogonalises(dim, shape, stride):
    kernel = np.random.default_rng(5).standard_normal(shape).astype("float32") * 0.3
    regularizer = LorthRegularizer(stride=stride, dim=dim)
    variable = tf.Variable(kernel)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = regularizer(variable)
        variable.assign_sub(0.01 * tape.gradient(loss, variable))
        return loss

    for _ in range(300):
        step()
    before = _orthogonality_gap(kernel, stride, dim)
    after = _orthogonality_gap(variable.numpy(), stride, dim)
    assert before > 0.5
    assert after < 0.1
    assert _value(regularizer, variable.numpy()) < 1e-3 * _value(regularizer, kernel)


def test_lorth_in_a_conv_model(digits):
    images, labels = digits
    regularizer = LorthRegularizer(kernel_shape=(3, 3, 1, 4), stride=1, lambda_lorth=10.0)
    conv = keras.layers.Conv2D(4, 3, kernel_regularizer=regularizer, name="conv")
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), conv, keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model(images[:2])
    start = _value(regularizer, conv.kernel)
    np.testing.assert_allclose(float(ops.convert_to_numpy(model.losses[0])), start, rtol=1e-6)
    model.fit(images[:256], labels[:256], epochs=2, batch_size=32, verbose=0)
    assert _value(regularizer, conv.kernel) < 0.1 * start


def test_config_round_trips():
    for regularizer in (
        OrthDenseRegularizer(lambda_orth=0.3),
        LorthRegularizer(kernel_shape=(3, 3, 2, 4), stride=2, lambda_lorth=0.1),
        LorthRegularizer(stride=(1, 2), dim=2, conv_transpose=True),
        LorthRegularizer(kernel_shape=(5, 2, 3), dim=1),
    ):
        config = regularizer.get_config()
        clone = type(regularizer).from_config(config)
        assert clone.get_config() == config
        restored = keras.regularizers.deserialize(keras.regularizers.serialize(regularizer))
        assert type(restored) is type(regularizer)
        assert restored.get_config() == config


BAD_LORTH = [
    ({"stride": 0}, "stride"),
    ({"stride": 1.5}, "stride"),
    ({"stride": True}, "stride"),
    ({"stride": (1, 2, 3)}, "stride"),
    ({"dim": 3}, "dim"),
    ({"dim": 0}, "dim"),
    ({"dim": 2.0}, "dim"),
    ({"lambda_lorth": 0.0}, "lambda_lorth"),
    ({"lambda_lorth": -1.0}, "lambda_lorth"),
    ({"conv_transpose": 1}, "conv_transpose"),
    ({"kernel_shape": (3, 3, 4)}, "kernel_shape"),
    ({"kernel_shape": (3, 3, 0, 4)}, "kernel_shape"),
    ({"kernel_shape": "3x3"}, "kernel_shape"),
    ({"kernel_shape": (3, 4, 4), "dim": 2}, "kernel_shape"),
    # row-orthogonal case with more outputs than C * taps: no orthogonal conv exists
    ({"kernel_shape": (1, 1, 2, 4), "stride": 2}, "No orthogonal convolution"),
    # column-orthogonal case with a stride larger than the kernel
    ({"kernel_shape": (2, 2, 1, 10), "stride": 3}, "No orthogonal convolution"),
]


def test_bad_arguments():
    for kwargs, match in BAD_LORTH:
        with pytest.raises(ValueError, match=match):
            LorthRegularizer(**kwargs)
            pytest.fail(f"LorthRegularizer({kwargs}) did not raise")
    for value in (0.0, -1.0, "1", float("inf")):
        with pytest.raises(ValueError, match="lambda_orth"):
            OrthDenseRegularizer(lambda_orth=value)


def test_bad_kernels_at_call():
    with pytest.raises(ValueError, match="kernel_shape"):
        LorthRegularizer(kernel_shape=(3, 3, 2, 4))(np.zeros((3, 3, 2, 5), "float32"))
    with pytest.raises(ValueError, match="kernel_shape"):
        LorthRegularizer(dim=2)(np.zeros((3, 2, 4), "float32"))
    with pytest.raises(ValueError, match="No orthogonal convolution"):
        LorthRegularizer(stride=2)(np.zeros((1, 1, 2, 4), "float32"))
    with pytest.raises(ValueError, match="rank >= 2"):
        OrthDenseRegularizer()(np.zeros((4,), "float32"))
