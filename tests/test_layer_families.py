"""AOL and SLL layers: exact bounds, tight cases, condense, export, saving, training, errors.

The pairwise sweeps over kernel sizes, strides, paddings, channels, sizes and
``k_coef_lip`` are in `test_guarantees.py` (AOL through the linear-layer harness, SLL
through `test_exact_sll_linear_bound_and_jacobians`); this file checks what those do not:
adversarial kernels on which the bound is attained, gradient-norm preservation at
initialisation, `condense`, model-level export and `.keras` saving, `fit` on real digits
with and without XLA, and argument errors.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from deel_lip._backend import batch_jacobian
from deel_lip.layers.aol import AOLConv2D, AOLDense, CenteredOrthogonal, aol_rescale
from deel_lip.layers.sll import SLLConv2D, SLLDense
from deel_lip.model import Sequential, vanilla_export
from deel_lip.utils import layer_operator_matrix

BOUND_TOL = 1e-5
EXPORT_TOL = 1e-6


def _norm(matrix) -> float:
    return float(np.linalg.norm(matrix, 2))


def _jacobian_norms(fn, x) -> np.ndarray:
    """Spectral norm of the exact Jacobian of ``fn`` at every sample of ``x``."""
    jac = ops.convert_to_numpy(batch_jacobian(fn, ops.convert_to_tensor(x))).astype(np.float64)
    return np.array([_norm(j) for j in jac])


def _built(layer, shape, seed=0, kernel=None, scale=2.0):
    layer.build((None,) + shape)
    rng = np.random.default_rng(seed)
    value = scale * rng.standard_normal(layer.kernel.shape) if kernel is None else kernel
    layer.kernel.assign(np.asarray(value, "float32"))
    if hasattr(layer, "log_q"):
        layer.log_q.assign(rng.standard_normal(layer.log_q.shape).astype("float32"))
        if layer.use_bias:
            layer.bias.assign(rng.standard_normal(layer.bias.shape).astype("float32"))
    if hasattr(layer, "cache_stale"):
        layer(np.zeros((1,) + shape, "float32"), training=True)  # refresh the AOL cache
    return layer


# ---------------------------------------------------------------- AOL


@pytest.mark.parametrize("side", ["input", "output", "auto"])
@pytest.mark.parametrize("k", [1.0, 0.5, 3.0])
@pytest.mark.parametrize("n_in,n_out", [(5, 7), (20, 8), (12, 12), (64, 10)])
def test_aol_dense_bound_holds_and_is_attained(n_in, n_out, k, side):
    rng = np.random.default_rng(n_in * n_out)
    kernels = {
        "gaussian": 2.0 * rng.standard_normal((n_in, n_out)),
        "huge scale": 1e3 * rng.standard_normal((n_in, n_out)),
        "rank one": np.outer(rng.standard_normal(n_in), rng.standard_normal(n_out)),
        "all ones": np.ones((n_in, n_out)),  # Gershgorin is tight: norm exactly k
        "one zero row": np.vstack([np.zeros((1, n_out)), rng.standard_normal((n_in - 1, n_out))]),
        "one zero column": np.hstack([np.zeros((n_in, 1)), rng.standard_normal((n_in, n_out - 1))]),
    }
    for name, kernel in kernels.items():
        layer = _built(AOLDense(n_out, k_coef_lip=k, rescaling_side=side), (n_in,), kernel=kernel)
        norm = _norm(layer_operator_matrix(layer, (n_in,)))
        assert norm <= k * (1 + BOUND_TOL), f"{name}: exact norm {norm} > k={k}"
        if name in ("all ones", "rank one"):  # |W W^T| has rank one: d rescales it exactly
            assert norm >= k * (1 - BOUND_TOL), f"{name}: exact norm {norm} < k={k}"


@pytest.mark.parametrize("n_in,n_out", [(16, 24), (24, 16), (1568, 64)])
def test_aol_dense_is_orthogonal_at_initialisation(n_in, n_out):
    """Orthogonal init: ``W W^T = I`` (n_in <= n_out) or ``W^T W = I``, and "auto" picks
    that side, so ``d = 1`` and every singular value of the layer (``min(n_in, n_out)`` of
    them) is ``k``: gradient-norm preserving at initialisation."""
    layer = AOLDense(n_out, k_coef_lip=2.0)
    layer.build((None, n_in))
    values = np.linalg.svd(layer_operator_matrix(layer, (n_in,)), compute_uv=False)
    np.testing.assert_allclose(values[: min(n_in, n_out)], 2.0, rtol=1e-5)


@pytest.mark.parametrize("channels", [(1, 16), (16, 32), (32, 16), (8, 8)])
@pytest.mark.parametrize("kernel_size", [3, 2, (3, 1)])
def test_aol_conv_is_an_isometry_at_initialisation(channels, kernel_size):
    """Default `CenteredOrthogonal` init: an orthogonal centre tap, so AOL leaves the kernel
    as it is and every singular value of the circular convolution is ``k``."""
    c_in, c_out = channels
    layer = AOLConv2D(c_out, kernel_size, padding="circular", k_coef_lip=0.5)
    layer.build((None, 6, 6, c_in))
    values = np.linalg.svd(layer_operator_matrix(layer, (6, 6, c_in)), compute_uv=False)
    np.testing.assert_allclose(values[: 36 * min(c_in, c_out)], 0.5, rtol=1e-5)


def test_centered_orthogonal_refuses_dense_shapes():
    with pytest.raises(ValueError, match="shape"):
        CenteredOrthogonal()((4, 4))


@pytest.mark.parametrize("side", ["input", "output"])
@pytest.mark.parametrize("padding", ["same", "valid", "constant", "circular"])
@pytest.mark.parametrize("strides", [1, 2, (2, 1)])
def test_aol_conv_positive_kernel_approaches_its_bound_from_below(padding, strides, side):
    """All-positive kernel: the Gram row sums equal the norm of the infinite convolution
    (constant inputs), so the finite norm rises with the size and never exceeds k; a
    circular stride-1 convolution attains it exactly at every size."""
    k = 1.5
    norms = []
    for size in (4, 8, 16):
        shape = (size, size, 2)
        conv = AOLConv2D(3, 3, strides=strides, padding=padding, k_coef_lip=k, rescaling_side=side)
        layer = _built(conv, shape)
        layer.kernel.assign(np.ones(layer.kernel.shape, "float32"))
        layer(np.zeros((1,) + shape, "float32"), training=True)
        norms.append(_norm(layer_operator_matrix(layer, shape)))
    assert max(norms) <= k * (1 + BOUND_TOL), norms
    assert all(b >= a - 1e-6 for a, b in zip(norms, norms[1:])), norms
    if padding == "circular" and strides == 1:
        np.testing.assert_allclose(norms, k, rtol=1e-5)
    elif strides == 1:
        assert norms[-1] >= 0.85 * k, norms  # zero padding loses only at the border


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 5, (3, 1)])
def test_aol_conv_bound_at_sizes_larger_than_the_harness(kernel_size):
    """Random kernels at 9x9 to 13x11 inputs (the harness stops at 8x8)."""
    for i, (size, strides) in enumerate([((9, 9), 1), ((12, 10), 2), ((13, 11), 1)]):
        if any(k < s for k, s in zip(np.broadcast_to(kernel_size, 2), np.broadcast_to(strides, 2))):
            continue
        shape = size + (3,)
        for side in ("input", "output"):
            conv = AOLConv2D(4, kernel_size, strides=strides, k_coef_lip=0.5, rescaling_side=side)
            layer = _built(conv, shape, seed=i)
            assert _norm(layer_operator_matrix(layer, shape)) <= 0.5 * (1 + BOUND_TOL)


def test_aol_rescale_is_scale_invariant_and_condense_keeps_the_function():
    rng = np.random.default_rng(3)
    kernel = rng.standard_normal((3, 3, 4, 5)).astype("float32")
    for side in ("input", "output"):
        np.testing.assert_allclose(
            ops.convert_to_numpy(aol_rescale(kernel * 37.0, side)),
            ops.convert_to_numpy(aol_rescale(kernel, side)),
            rtol=1e-5,
            atol=1e-7,
        )
    for layer, shape in [(AOLConv2D(5, 3, k_coef_lip=2.0), (7, 7, 4)), (AOLDense(6), (9,))]:
        _built(layer, shape, seed=1, scale=10.0)
        x = rng.standard_normal((4,) + shape).astype("float32")
        before = ops.convert_to_numpy(layer(x))
        layer.condense()
        after = ops.convert_to_numpy(layer(x))
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
        raw = np.linalg.norm(ops.convert_to_numpy(layer.kernel))
        constrained = np.linalg.norm(ops.convert_to_numpy(layer.current_constrained_kernel()))
        np.testing.assert_allclose(raw, constrained / layer.lipschitz_bound(), rtol=1e-5)


def test_aol_condense_of_a_zero_kernel_stays_finite():
    layer = _built(AOLDense(3), (4,), kernel=np.zeros((4, 3)))
    layer.condense()
    assert np.all(ops.convert_to_numpy(layer.kernel) == 0.0)
    assert np.all(np.isfinite(ops.convert_to_numpy(layer.current_constrained_kernel())))


# ---------------------------------------------------------------- SLL


def test_sll_dense_all_ones_kernel_attains_the_linear_bound():
    """Constant ``W``: ``W^T W = n 1 1^T``, ``t = n m`` (q = 1), so ``||T^-1/2 W^T|| = 1``."""
    layer = _built(SLLDense(hidden_units=7), (5,), kernel=np.ones((5, 7)))
    layer.log_q.assign(np.zeros(7, "float32"))
    matrix = layer_operator_matrix(layer.linear_bound_map, (5,))
    np.testing.assert_allclose(_norm(matrix), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "layer,shape", [(SLLDense(k_coef_lip=0.7), (16,)), (SLLConv2D(3), (5, 5, 3))]
)
def test_sll_block_is_gradient_norm_preserving_at_initialisation(layer, shape):
    """Orthogonal init (conv: `CenteredOrthogonal`, an orthogonal 1x1 map) and q = 1 give
    ``T = I`` and a Jacobian ``k (I - 2 W D W^T)`` that is ``k`` times an orthogonal matrix
    (a reflection on the active units)."""
    layer.build((None,) + shape)
    rng = np.random.default_rng(0)
    layer.bias.assign(rng.standard_normal(layer.bias.shape).astype("float32"))
    x = rng.standard_normal((8,) + shape).astype("float32")
    jac = ops.convert_to_numpy(batch_jacobian(layer, ops.convert_to_tensor(x))).astype(np.float64)
    k = layer.lipschitz_bound()
    for j in jac:
        values = np.linalg.svd(j, compute_uv=False)
        np.testing.assert_allclose(values, k, rtol=1e-5)


@pytest.mark.parametrize(
    "layer,shape",
    [
        (SLLDense(hidden_units=12, k_coef_lip=2.0), (6,)),
        (SLLConv2D(3, hidden_filters=5, k_coef_lip=0.5), (6, 6, 2)),
        (SLLConv2D((2, 3)), (5, 6, 3)),
    ],
)
def test_sll_pairs_and_condense(layer, shape):
    """``||f(x) - f(y)|| <= k ||x - y||`` on random and close pairs; `condense` leaves the
    function unchanged and makes ``T = I``."""
    _built(layer, shape, seed=5, scale=3.0)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((256,) + shape).astype("float32")
    k = layer.lipschitz_bound()
    for y in (rng.standard_normal(x.shape), x + 1e-2 * rng.standard_normal(x.shape)):
        y = y.astype("float32")
        out = ops.convert_to_numpy(layer(x) - layer(y)).reshape(len(x), -1)
        ratio = np.linalg.norm(out, axis=1) / np.linalg.norm((x - y).reshape(len(x), -1), axis=1)
        assert ratio.max() <= k * (1 + BOUND_TOL), ratio.max()
    before = ops.convert_to_numpy(layer(x))
    layer.condense()
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), before, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.scales()), 1.0, rtol=1e-5)


def test_sll_conv_transpose_is_the_adjoint_of_the_convolution():
    """``W`` (transposed convolution) is exactly ``(W^T)^T`` for odd, even and mixed kernels."""
    for kernel_size in [(3, 3), (2, 2), (2, 3), (4, 1)]:
        layer = _built(SLLConv2D(kernel_size, hidden_filters=3), (5, 6, 2), seed=1)
        kernel = ops.convert_to_numpy(layer.kernel).astype("float64")
        inner = layer_operator_matrix(lambda x, f=layer, w=kernel: f._inner(x, w), (5, 6, 2))
        outer = layer_operator_matrix(lambda h, f=layer, w=kernel: f._outer(h, w), (5, 6, 3))
        np.testing.assert_allclose(outer, inner.T, atol=1e-12)


# ---------------------------------------------------------------- models


def _family_model(k_coef_lip=1.0):
    return Sequential(
        [
            keras.Input((8, 8, 1)),
            AOLConv2D(8, 3, name="aol_conv"),
            SLLConv2D(3, hidden_filters=12, name="sll_conv"),
            AOLConv2D(8, 3, strides=2, padding="circular", name="aol_conv_circ"),
            keras.layers.Flatten(),
            AOLDense(32, name="aol_dense"),
            SLLDense(hidden_units=48, name="sll_dense"),
            AOLDense(10, name="logits"),
        ],
        k_coef_lip=k_coef_lip,
    )


@pytest.mark.parametrize("jit_compile", [True, False])
def test_families_train_on_digits_and_export(digits, jit_compile, tmp_path):
    images, labels = digits
    keras.utils.set_random_seed(0)
    model = _family_model(k_coef_lip=10.0)
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    history = model.fit(images[:1024], labels[:1024], batch_size=64, epochs=3, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    accuracy = model.evaluate(images[1024:], labels[1024:], verbose=0)[1]
    assert accuracy > 0.8, accuracy

    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(
            labels[:64], model(images[:64], training=True), from_logits=True
        )
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(np.all(np.isfinite(ops.convert_to_numpy(g))) for g in grads)

    x = images[1024:1088]
    norms = _jacobian_norms(lambda t: model(t, training=False), x)
    assert norms.max() <= 10.0 * (1 + 1e-4), norms.max()
    print(
        f"FAMILIES ({'XLA' if jit_compile else 'no XLA'}): accuracy {accuracy:.3f}, "
        f"Jacobian norm max {norms.max():.4f} mean {norms.mean():.4f} (bound 10)"
    )

    exported = vanilla_export(model)
    plain = {keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.Dense}
    for layer in exported._flatten_layers(include_self=False):
        assert "deel_lip" not in type(layer).__module__ or type(layer).__name__ == "PadConv2D"
    assert any(type(layer) in plain for layer in exported._flatten_layers(include_self=False))
    expected = ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(ops.convert_to_numpy(exported(x)), expected, atol=EXPORT_TOL)

    path = os.path.join(tmp_path, "families.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded(x)), expected)
    exported_path = os.path.join(tmp_path, "exported.keras")
    exported.save(exported_path)
    reloaded = keras.models.load_model(exported_path)
    np.testing.assert_allclose(ops.convert_to_numpy(reloaded(x)), expected, atol=EXPORT_TOL)


@pytest.mark.parametrize(
    "layer",
    [
        AOLDense(7, k_coef_lip=0.5, use_bias=False, activation="relu"),
        AOLConv2D(4, (3, 2), strides=(2, 1), padding="circular", k_coef_lip=3.0),
        AOLConv2D(2, 3, rescaling_side="output"),
        SLLDense(hidden_units=9, k_coef_lip=2.0, use_bias=False),
        SLLConv2D((3, 1), hidden_filters=4, k_coef_lip=0.25, kernel_initializer="he_normal"),
    ],
)
def test_config_round_trip(layer):
    copy = type(layer).from_config(layer.get_config())
    assert copy.get_config() == layer.get_config()
    assert copy.lipschitz_bound() == layer.lipschitz_bound()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == layer.get_config()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make,argument",
    [
        (lambda: AOLDense(4, k_coef_lip=0.0), "k_coef_lip"),
        (lambda: AOLDense(4, lora_rank=2), "lora_rank"),
        (lambda: AOLConv2D(4, 3, padding="reflect"), "padding"),
        (lambda: AOLConv2D(4, 3, padding=3), "padding"),
        (lambda: AOLConv2D(4, 1, strides=2), "kernel_size"),
        (lambda: AOLConv2D(4, 3, dilation_rate=2), "dilation_rate"),
        (lambda: AOLConv2D(4, 3, rescaling_side="both"), "rescaling_side"),
        (lambda: AOLDense(4, rescaling_side=None), "rescaling_side"),
        (lambda: SLLDense(hidden_units=0), "hidden_units"),
        (lambda: SLLDense(hidden_units=2.5), "hidden_units"),
        (lambda: SLLDense(k_coef_lip=-1.0), "k_coef_lip"),
        (lambda: SLLDense(use_bias="yes"), "use_bias"),
        (lambda: SLLDense(lora_rank=4), "lora_rank"),
        (lambda: SLLDense(dtype="float16"), "float16"),
        (lambda: SLLConv2D(0), "kernel_size"),
        (lambda: SLLConv2D((3, 3, 3)), "kernel_size"),
        (lambda: SLLConv2D(3, hidden_filters=-2), "hidden_filters"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


def test_sll_conv_refuses_inputs_that_are_not_images():
    with pytest.raises(ValueError, match="ndim=4"):
        SLLConv2D(3).build((None, 8, 3))
    with pytest.raises(ValueError, match="vanilla_export"):
        SLLDense().vanilla_export()
