"""Properties of the exact measurement utilities (`deel_lip.utils`)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from deel_lip import utils
from deel_lip.layers import (
    FrobeniusConv2D,
    SpectralConv1D,
    SpectralConv2D,
    SpectralConv2DTranspose,
    SpectralDense,
)
from deel_lip.utils import (
    compute_layer_sv,
    compute_model_sv,
    evaluate_lip_const,
    layer_operator_matrix,
)


def _built(layer, shape, seed=0, bias=True):
    """Build ``layer`` on one-sample ``shape`` and give it a random kernel (and bias)."""
    layer.build((None,) + tuple(shape))
    rng = np.random.default_rng(seed)
    kernel = layer._raw_kernel() if hasattr(layer, "_raw_kernel") else layer.kernel
    kernel.assign(rng.standard_normal(kernel.shape).astype("float32"))
    if bias and layer.use_bias:
        layer.bias.assign(rng.standard_normal(layer.bias.shape).astype("float32"))
    return layer


def _same_pads(n, k, s):
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _reference_conv2d(x, kernel, strides, padding):
    """Cross-correlation with explicit loops (TensorFlow's padding convention)."""
    kh, kw, _, c_out = kernel.shape
    sh, sw = strides
    if padding == "same":
        pads = [_same_pads(x.shape[0], kh, sh), _same_pads(x.shape[1], kw, sw)]
    else:
        pads = [(0, 0), (0, 0)]
    xp = np.pad(x, pads + [(0, 0)])
    rows = (xp.shape[0] - kh) // sh + 1
    cols = (xp.shape[1] - kw) // sw + 1
    out = np.zeros((rows, cols, c_out))
    for i in range(rows):
        for j in range(cols):
            patch = xp[i * sh : i * sh + kh, j * sw : j * sw + kw, :]
            out[i, j] = np.tensordot(patch, kernel, axes=3)
    return out


def _snapshot(layer):
    return [(v.path, np.array(ops.convert_to_numpy(v), copy=True)) for v in layer.variables]


def _assert_unchanged(layer, before):
    after = _snapshot(layer)
    assert [path for path, _ in after] == [path for path, _ in before]
    for (path, old), (_, new) in zip(before, after):
        assert old.dtype == new.dtype and np.array_equal(old, new), f"{path} was modified"


# ------------------------------------------------------------ operator matrix


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (2, 1)])
@pytest.mark.parametrize("kernel_size", [3, (2, 3)])
def test_operator_matrix_of_conv2d_equals_bruteforce(padding, strides, kernel_size):
    layer = keras.layers.Conv2D(3, kernel_size, strides, padding, activation="relu")
    _built(layer, (5, 5, 2))
    kernel = ops.convert_to_numpy(layer.kernel).astype(np.float64)
    basis = np.eye(50).reshape(50, 5, 5, 2)
    expected = np.stack(
        [_reference_conv2d(e, kernel, strides, padding).reshape(-1) for e in basis], axis=1
    )
    matrix = layer_operator_matrix(layer, (5, 5, 2))
    assert matrix.shape == expected.shape
    np.testing.assert_allclose(matrix, expected, atol=1e-12)  # bias and ReLU excluded


def test_operator_matrix_of_conv_transpose_is_the_adjoint_of_the_conv():
    kernel = np.random.default_rng(0).standard_normal((3, 3, 2, 4)).astype("float32")
    conv = keras.layers.Conv2D(4, 3, strides=2, padding="valid", use_bias=False)
    conv.build((None, 9, 9, 2))
    conv.kernel.assign(kernel)
    transpose = keras.layers.Conv2DTranspose(2, 3, strides=2, padding="valid", use_bias=False)
    transpose.build((None, 4, 4, 4))
    transpose.kernel.assign(kernel)  # (kh, kw, out=2, in=4)
    np.testing.assert_allclose(
        layer_operator_matrix(transpose, (4, 4, 4)),
        layer_operator_matrix(conv, (9, 9, 2)).T,
        atol=1e-12,
    )


def test_operator_matrix_of_causal_conv1d_and_of_a_callable():
    layer = _built(keras.layers.Conv1D(3, 3, padding="causal", activation="tanh"), (6, 2))
    linear = keras.layers.Conv1D(3, 3, padding="causal", use_bias=False)
    linear.build((None, 6, 2))
    linear.kernel.assign(layer.kernel)
    x = np.random.default_rng(1).standard_normal((4, 6, 2))
    matrix = layer_operator_matrix(layer, (None, 6, 2))  # a batch axis None is dropped
    expected = ops.convert_to_numpy(linear(x)).reshape(4, -1)
    np.testing.assert_allclose(x.reshape(4, -1) @ matrix.T, expected, atol=1e-5)
    # A callable is taken as is: f(e_i) - f(0) removes the bias.
    np.testing.assert_allclose(layer_operator_matrix(linear, (6, 2)), matrix, atol=1e-12)
    affine = keras.layers.Conv1D(3, 3, padding="causal")
    _built(affine, (6, 2))
    affine.kernel.assign(layer.kernel)
    np.testing.assert_allclose(
        layer_operator_matrix(lambda t: affine(t), (6, 2), dtype="float32"), matrix, atol=1e-5
    )


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (SpectralConv2D(3, 3, padding="reflect"), (5, 5, 2)),
        (FrobeniusConv2D(2, (3, 1), strides=2, padding="circular"), (6, 5, 3)),
        (SpectralConv1D(4, 2, strides=2, padding="causal"), (7, 2)),
        (SpectralConv2DTranspose(2, 3, strides=2, output_padding=1), (3, 4, 2)),
        (SpectralDense(5), (3, 4)),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, keras.layers.Layer) else None,
)
def test_operator_matrix_of_constrained_layer_is_its_inference_map(layer, shape):
    _built(layer, shape)
    layer(np.zeros((1,) + shape, "float32"), training=True)  # refresh the cache
    x = np.random.default_rng(2).standard_normal((3,) + shape).astype("float32")
    matrix = layer_operator_matrix(layer, shape)
    bias_out = ops.convert_to_numpy(layer(np.zeros((1,) + shape, "float32"))).reshape(-1)
    expected = ops.convert_to_numpy(layer(x, training=False)).reshape(3, -1)
    np.testing.assert_allclose(x.reshape(3, -1) @ matrix.T + bias_out, expected, atol=1e-5)
    exported = layer.vanilla_export()
    np.testing.assert_allclose(layer_operator_matrix(exported, shape), matrix, atol=1e-12)


def test_operator_matrix_bad_input():
    with pytest.raises(ValueError, match="must be built"):
        layer_operator_matrix(keras.layers.Dense(3), (4,))
    dense = keras.layers.Dense(3)
    dense.build((None, 4))
    for shape in [(None, None), (0,), "4", None]:
        with pytest.raises(ValueError, match="input_shape"):
            layer_operator_matrix(dense, shape)
    with pytest.raises(TypeError, match="layer_or_fn"):
        layer_operator_matrix(3.0, (4,))


# ------------------------------------------------------------ singular values


def test_compute_layer_sv_of_dense_equals_numpy_svd():
    for layer in [keras.layers.Dense(7, activation="relu"), SpectralDense(4)]:
        _built(layer, (5,))
        layer(np.zeros((1, 5), "float32"), training=True)
        if hasattr(layer, "current_constrained_kernel"):
            kernel = layer.current_constrained_kernel()
        else:
            kernel = layer.kernel
        values = np.linalg.svd(ops.convert_to_numpy(kernel).astype(np.float64), compute_uv=False)
        low, high = compute_layer_sv(layer)
        assert (low, high) == pytest.approx((values.min(), values.max()), rel=1e-12)


def _orthogonal(n, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q


@pytest.mark.parametrize(
    ("kernel_size", "strides", "c_in", "c_out", "shape"),
    [
        (1, 1, 4, 4, (5, 5, 4)),  # 1x1, orthogonal 4x4 kernel matrix
        (1, 1, 3, 5, (4, 6, 3)),  # 1x1, orthonormal rows
        (2, 2, 1, 4, (6, 6, 1)),  # stride = kernel: disjoint patches, 4x4 orthogonal
        (2, 2, 2, 8, (4, 6, 2)),  # stride = kernel, 8x8 orthogonal
    ],
)
@pytest.mark.parametrize("path", ["dense", "iterative"])
def test_compute_layer_sv_of_known_orthogonal_convolutions(
    kernel_size, strides, c_in, c_out, shape, path, monkeypatch
):
    """Both convolutions are orthogonal operators when the reshaped kernel is: every
    singular value is 1."""
    layer = keras.layers.Conv2D(c_out, kernel_size, strides=strides, padding="valid")
    layer.build((None,) + shape)
    rows = kernel_size * kernel_size * c_in
    kernel = _orthogonal(max(rows, c_out))[:rows, :c_out]
    layer.kernel.assign(kernel.reshape(layer.kernel.shape).astype("float32"))
    if path == "iterative":
        monkeypatch.setattr(utils, "MAX_DENSE_DIM", 8)
    low, high = compute_layer_sv(layer)
    assert low == pytest.approx(1.0, abs=1e-6)
    assert high == pytest.approx(1.0, abs=1e-6)


def test_iterative_singular_values_match_the_dense_ones(monkeypatch):
    layer = _built(SpectralConv2D(3, 3, padding="same"), (6, 6, 2))
    layer(np.zeros((1, 6, 6, 2), "float32"), training=True)
    low, high = compute_layer_sv(layer)
    monkeypatch.setattr(utils, "MAX_DENSE_DIM", 8)
    low_it, high_it = compute_layer_sv(layer)
    assert high_it <= high * (1 + 1e-9)  # power iteration approaches from below
    assert high_it == pytest.approx(high, rel=1e-3)
    assert low_it == pytest.approx(low, rel=1e-4, abs=1e-6)


def test_compute_layer_sv_input_shape():
    layer = _built(SpectralConv2D(2, 3), (None, None, 2))
    with pytest.raises(ValueError, match="input_shape"):
        compute_layer_sv(layer)
    low, high = compute_layer_sv(layer, input_shape=(5, 5, 2))
    values = np.linalg.svd(layer_operator_matrix(layer, (5, 5, 2)), compute_uv=False)
    assert (low, high) == pytest.approx((values.min(), values.max()), rel=1e-12)
    with pytest.raises(ValueError, match="must be built"):
        compute_layer_sv(SpectralConv2D(2, 3))


def _models():
    inner = keras.Sequential([keras.Input((16,)), SpectralDense(6, name="dense6")], name="inner")
    inputs = keras.Input((6, 6, 1))
    h = SpectralConv2D(2, 3, name="conv")(inputs)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(16, name="plain")(h)
    return keras.Model(inputs, inner(h)), inner


@pytest.mark.parametrize(
    "make_layer",
    [
        lambda: _built(SpectralDense(4), (5,)),
        lambda: _built(SpectralConv2D(3, 3, strides=2, padding="symmetric"), (6, 6, 2)),
        lambda: _built(FrobeniusConv2D(3, 2, padding="valid"), (5, 5, 2)),
        lambda: _built(SpectralConv1D(3, 3, padding="causal"), (7, 2)),
        lambda: _built(SpectralConv2DTranspose(2, 3, strides=2), (3, 3, 2)),
        lambda: _built(keras.layers.Conv2D(2, 3), (5, 5, 1)),
    ],
    ids=[
        "SpectralDense",
        "SpectralConv2D",
        "FrobeniusConv2D",
        "SpectralConv1D",
        "SpectralConv2DTranspose",
        "Conv2D",
    ],
)
def test_measurements_never_modify_the_layer(make_layer, monkeypatch):
    """The raw kernel is random and the cache stale: `condense` or a refresh would show."""
    layer = make_layer()
    shape = utils.sample_shape(layer._build_shapes_dict["input_shape"])
    model = keras.Sequential([keras.Input(shape), layer])
    before = _snapshot(layer)
    layer_operator_matrix(layer, shape)
    compute_layer_sv(layer)
    compute_model_sv(model)
    monkeypatch.setattr(utils, "MAX_DENSE_DIM", 4)
    compute_layer_sv(layer)
    x = np.random.default_rng(0).standard_normal((2,) + shape).astype("float32")
    evaluate_lip_const(model, x, eps=1e-2, seed=0)
    _assert_unchanged(layer, before)


def test_layer_built_in_a_traced_function_is_measured_without_refresh():
    layer = SpectralDense(3)
    tf.function(lambda t: layer(t, training=True))(tf.zeros((1, 5)))
    assert not layer._cache_ready  # a training call leaves the cache stale
    layer._raw_kernel().assign(np.random.default_rng(0).standard_normal((5, 3)).astype("float32"))
    before = _snapshot(layer)
    low, high = compute_layer_sv(layer)
    _assert_unchanged(layer, before)
    kernel = ops.convert_to_numpy(layer.compute_constrained_kernel()[0])
    values = np.linalg.svd(kernel.astype(np.float64), compute_uv=False)
    assert (low, high) == pytest.approx((values.min(), values.max()), rel=1e-12)


def test_compute_model_sv_recurses_and_uses_the_mapping():
    model, inner = _models()
    result = compute_model_sv(model)
    assert list(result) == ["conv", "relu", "flat", "plain", "inner/dense6"]
    assert result["relu"] == (None, None) and result["flat"] == (None, None)
    assert result["conv"] == compute_layer_sv(model.get_layer("conv"))
    assert result["inner/dense6"] == compute_layer_sv(inner.get_layer("dense6"))
    assert result["inner/dense6"] == pytest.approx((1.0, 1.0), abs=1e-5)

    seen = []

    def relu_sv(layer, input_shape):
        seen.append(input_shape)
        return (0.0, 1.0)

    mapping = {keras.layers.ReLU: relu_sv, keras.Sequential: lambda layer, shape: (2.0, 3.0)}
    result = compute_model_sv(model, supplementary_type2sv=mapping)
    assert result["relu"] == (0.0, 1.0) and seen == [(None, 6, 6, 2)]
    assert result["inner"] == (2.0, 3.0) and "inner/dense6" not in result


# ------------------------------------------------------------ Jacobian estimate


def test_evaluate_lip_const_of_dense_is_its_top_singular_value(digits):
    layer = _built(keras.layers.Dense(6), (64,))
    model = keras.Sequential([keras.Input((64,)), layer])
    x = digits[0][:40].reshape(40, 64)
    top = np.linalg.svd(ops.convert_to_numpy(layer.kernel).astype(np.float64), compute_uv=False)[0]
    assert evaluate_lip_const(model, x) == pytest.approx(top, rel=1e-5)
    assert evaluate_lip_const(layer, x, eps=0.1, seed=3) == pytest.approx(top, rel=1e-5)


def test_evaluate_lip_const_is_a_lower_bound_on_a_relu_network(digits):
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), SpectralConv2D(4, 3, activation="relu")]
        + [keras.layers.Flatten(), SpectralDense(10)]
    )
    estimate = evaluate_lip_const(model, digits[0][:32])
    assert 0.1 < estimate <= 1.0 + 1e-4


def test_evaluate_lip_const_bad_input():
    layer = _built(keras.layers.Dense(2), (3,))
    x = np.zeros((2, 3), "float32")
    for eps in [0, -1.0, "1"]:
        with pytest.raises(ValueError, match="eps"):
            evaluate_lip_const(layer, x, eps=eps)
