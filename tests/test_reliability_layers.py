"""Reliability of the normalisers, constrained layers and model wrappers.

* XLA gradients are finite through every normaliser and layer, for rank-1, already
  orthogonal, near-degenerate, zero, huge and tiny kernels (the Bjorck stopping test was
  differentiated at ``sqrt(0)``: NaN for about half of ``SpectralDense(1)`` kernels).
* Scaling is overflow-safe (1e17 and 1e-20 kernels), measured with exact norms.
* A per-unit layer (``FrobeniusDense(disjoint_neurons=True)``) is sound last, and warns
  when another Lipschitz layer follows it; every Frobenius configuration is checked
  inside a model with the exact norm.
* ``Sequential.pop`` spreads the constant again; the export keeps the wrapper's factor of
  layers without a kernel, also after save/load.
* Refused configurations (transposed convolution, reflect padding) raise clear errors.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from deel_lip import normalizers as N
from deel_lip.layers import (
    BatchCentering,
    FrobeniusConv2D,
    FrobeniusDense,
    FullSort,
    GroupSort2,
    Householder,
    LayerCentering,
    MaxMin,
    PadConv2D,
    PReLUlip,
    ScaledAveragePooling2D,
    ScaledGlobalL2NormPooling2D,
    ScaledL2NormPooling2D,
    SpectralConv1D,
    SpectralConv2D,
    SpectralConv2DTranspose,
    SpectralDense,
)
from deel_lip.model import Model, Sequential, vanilla_export
from deel_lip.utils import layer_operator_matrix

BOUND_TOL = 1e-4


def _kernels(shape, seed=0) -> dict:
    """Hard kernels of a given 2D shape: random, rank 1, orthogonal, near-degenerate, ..."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    random = rng.standard_normal(shape)
    q, _ = np.linalg.qr(rng.standard_normal((max(shape), min(shape))))
    orthogonal = q if rows >= cols else q.T
    rank1 = np.outer(rng.standard_normal(rows), rng.standard_normal(cols))
    return {
        "random": random,
        "orthogonal": orthogonal,
        "rank1": rank1,
        "near_degenerate": rank1 + 1e-7 * random,
        "zero": np.zeros(shape),
        "huge": 1e17 * random,
        "tiny": 1e-20 * random,
    }


def _xla_gradients(fn, kernels: dict) -> dict:
    """``kind -> (fn(kernel), gradient of sum(fn(kernel) * weights))`` under XLA.

    One compiled function per kernel shape: each kernel is assigned to the same variable
    (the values, not the graph, are what make a gradient NaN).
    """
    shape = next(iter(kernels.values())).shape
    variable = tf.Variable(tf.zeros(shape, "float32"))
    weights = tf.constant(np.random.default_rng(1).standard_normal(shape), "float32")

    @tf.function(jit_compile=True)
    def grad():
        with tf.GradientTape() as tape:
            out = fn(variable)
            loss = tf.reduce_sum(tf.reshape(out, [-1]) * tf.reshape(weights, [-1])[: tf.size(out)])
        return out, tape.gradient(loss, variable)

    results = {}
    for kind, kernel in kernels.items():
        variable.assign(np.asarray(kernel, "float32"))
        out, gradient = grad()
        results[kind] = (out.numpy(), gradient.numpy())
    return results


def _xla_gradient(fn, kernel):
    """`_xla_gradients` of one kernel."""
    return _xla_gradients(fn, {"kernel": kernel})["kernel"]


NORMALISERS = {
    "bjorck_rko": lambda w: N.reshaped_kernel_orthogonalization(w, None, 1.0)[0],
    "bjorck_rko_maxiter2": lambda w: N.reshaped_kernel_orthogonalization(
        w, None, 1.0, maxiter_bjorck=2
    )[0],
    "spectral_only": lambda w: N.reshaped_kernel_orthogonalization(w, None, 1.0, eps_bjorck=None)[
        0
    ],
    "spectral_normalization": lambda w: N.spectral_normalization(w)[0],
    "frobenius": lambda w: N.frobenius_normalization(w),
    "frobenius_disjoint": lambda w: N.frobenius_normalization(w, disjoint_neurons=True),
    "gram_iteration_bound": lambda w: ops.reshape(N.gram_iteration_bound(N.gram(w)), (1,)),
}


@pytest.mark.parametrize("shape", [(8, 1), (1, 1), (1, 8), (6, 4), (4, 6)], ids=str)
@pytest.mark.parametrize("name", list(NORMALISERS))
def test_xla_gradients_are_finite_through_every_normaliser(name, shape):
    for kind, (out, gradient) in _xla_gradients(NORMALISERS[name], _kernels(shape)).items():
        assert np.all(np.isfinite(out)), f"{name} {kind}: non-finite output"
        assert np.all(np.isfinite(gradient)), f"{name} {kind}: non-finite XLA gradient"


def test_xla_gradient_of_bjorck_on_an_orthogonal_matrix_is_finite():
    """The stopping test is 0 at the first step for an orthogonal matrix (sqrt(0) before)."""
    for shape in [(5, 1), (1, 5), (4, 4), (6, 3)]:
        kernel = _kernels(shape)["orthogonal"]
        out, gradient = _xla_gradient(lambda w: N.bjorck_normalization(w), kernel)
        np.testing.assert_allclose(out, kernel, atol=1e-5)
        assert np.all(np.isfinite(gradient))


def test_spectral_dense_one_unit_xla_gradients_are_finite_for_every_kernel():
    """Before the fix: 5 of 12 random kernels gave NaN gradients under XLA (0 without)."""
    x = tf.constant(np.random.default_rng(0).standard_normal((4, 8)), "float32")
    non_finite = 0
    layer = SpectralDense(1)
    layer.build((None, 8))

    @tf.function(jit_compile=True)
    def grad():
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(layer(x, training=True))
        return tape.gradient(y, layer.kernel)

    for seed in range(12):
        kernel = np.random.default_rng(seed).standard_normal((8, 1)).astype("float32")
        layer.kernel.assign(kernel)
        non_finite += not np.all(np.isfinite(grad().numpy()))
    assert non_finite == 0


LAYERS = {
    "SpectralDense(1), 1 input": (lambda: SpectralDense(1), (1,)),
    "SpectralDense(1)": (lambda: SpectralDense(1), (6,)),
    "SpectralDense(3) spectral": (lambda: SpectralDense(3, eps_bjorck=None), (5,)),
    "FrobeniusDense(4)": (lambda: FrobeniusDense(4), (3,)),
    "FrobeniusDense(4) whole": (lambda: FrobeniusDense(4, disjoint_neurons=False), (3,)),
    "SpectralConv2D": (lambda: SpectralConv2D(2, 3, k_coef_lip=3.0), (5, 5, 1)),
    "FrobeniusConv2D": (lambda: FrobeniusConv2D(2, 3), (5, 5, 2)),
    "SpectralConv1D": (lambda: SpectralConv1D(1, 2), (6, 1)),
    "SpectralConv2DTranspose": (lambda: SpectralConv2DTranspose(1, 2, strides=2), (3, 3, 1)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_xla_gradients_are_finite_through_every_layer(name):
    make, shape = LAYERS[name]
    layer = make()
    layer.build((None,) + shape)
    x = tf.constant(np.random.default_rng(0).standard_normal((3,) + shape), "float32")
    kernel_shape = tuple(layer.kernel.shape)
    rows = int(np.prod(kernel_shape[:-1]))

    @tf.function(jit_compile=True)
    def grad():
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(layer(x, training=True) ** 2)
        return tape.gradient(y, layer.kernel)

    for kind, matrix in _kernels((rows, kernel_shape[-1])).items():
        layer.kernel.assign(matrix.reshape(kernel_shape).astype("float32"))
        assert np.all(np.isfinite(grad().numpy())), f"{name} {kind}"


def test_binary_hkr_model_ending_in_spectral_dense_1_trains_finite_under_xla(digits):
    from deel_lip.losses import HKR

    images, labels = digits
    x = images[:512].reshape(512, -1)
    y = np.where(labels[:512] == 0, 1.0, -1.0).astype("float32")[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Sequential([keras.Input((64,)), SpectralDense(16), GroupSort2(), SpectralDense(1)])
    model.compile(keras.optimizers.Adam(1e-2), HKR(alpha=10.0), jit_compile=True)
    history = model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for layer in model.layers:
        for weight in layer.weights:
            assert np.all(np.isfinite(ops.convert_to_numpy(weight))), weight.path


@pytest.mark.slow  # ~30 s; `pytest -m slow` and the full check run it
def test_conv_stack_with_k_coef_lip_3_trains_finite_under_xla(digits):
    images, labels = digits
    x, y = images[:256], keras.utils.to_categorical(labels[:256], 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Sequential(
            [
                keras.Input((8, 8, 1)),
                SpectralConv2D(8, 3),
                GroupSort2(),
                SpectralConv2D(8, 3, strides=2),
                GroupSort2(),
                SpectralConv2D(4, 1),
                keras.layers.Flatten(),
                SpectralDense(10),
            ],
            k_coef_lip=3.0,
        )
    model.compile(keras.optimizers.Adam(1e-2), "mse", jit_compile=True)
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for layer in model.layers:
        for weight in layer.weights:
            assert np.all(np.isfinite(ops.convert_to_numpy(weight))), weight.path


# ----------------------------------------------------------------- overflow-safe scaling


@pytest.mark.parametrize("scale", [1e17, 1e-20, 1e30])
@pytest.mark.parametrize("eps_bjorck", [1e-3, None], ids=["bjorck", "spectral"])
@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (3, 3, 2, 4)], ids=str)
def test_huge_and_tiny_kernels_are_normalised(scale, eps_bjorck, shape):
    raw = np.random.default_rng(0).standard_normal(shape)
    kernel = (raw * scale).astype("float32")
    w_bar, _, sigma = N.reshaped_kernel_orthogonalization(kernel, None, 1.0, eps_bjorck=eps_bjorck)
    matrix = np.asarray(ops.convert_to_numpy(N.kernel_matrix(w_bar)), "float64")
    assert np.all(np.isfinite(matrix)) and np.isfinite(float(sigma))
    values = np.linalg.svd(matrix, compute_uv=False)
    assert values[0] <= 1.0 + BOUND_TOL
    reference = np.linalg.svd(raw.reshape(-1, shape[-1]), compute_uv=False)
    if eps_bjorck is None:  # the same map as the unscaled kernel: sigma_max close to 1
        np.testing.assert_allclose(values / values[0], reference / reference[0], rtol=1e-4)
        assert values[0] >= 0.9
    else:
        np.testing.assert_allclose(values, 1.0, atol=1e-3)
    frob = np.asarray(ops.convert_to_numpy(N.frobenius_normalization(kernel)), "float64")
    np.testing.assert_allclose(np.linalg.norm(frob), 1.0, rtol=1e-5)


@pytest.mark.parametrize("scale", [1e17, 1e-20])
def test_layers_with_huge_or_tiny_kernels_keep_their_bound(scale):
    for layer in (SpectralDense(6, eps_bjorck=None), SpectralDense(6), FrobeniusDense(6)):
        layer.build((None, 10))
        raw = np.random.default_rng(0).standard_normal((10, 6))
        layer.kernel.assign((raw * scale).astype("float32"))
        layer(np.zeros((1, 10), "float32"), training=True)
        matrix = layer_operator_matrix(layer, (10,))
        assert np.all(np.isfinite(matrix))
        if isinstance(layer, FrobeniusDense):  # per unit: each output row has norm 1
            np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-5)
        else:
            assert 0.9 <= np.linalg.norm(matrix, 2) <= 1.0 + BOUND_TOL


# -------------------------------------------------------- Frobenius layers inside a model


def _model_matrix(model, shape) -> np.ndarray:
    return layer_operator_matrix(lambda x: model(x, training=False), shape)


def _frobenius_model(position, disjoint, units, k):
    head = SpectralDense(4, name="head")
    frob = FrobeniusDense(units, disjoint_neurons=disjoint, name="frob")
    layers = [keras.Input((6,)), SpectralDense(12, name="first")]
    layers += [frob, head] if position == "middle" else [frob]
    return Sequential(layers, k_coef_lip=k), frob


@pytest.mark.parametrize("k", [1.0, 0.5, 3.0])
@pytest.mark.parametrize("units", [1, 5, 32])
@pytest.mark.parametrize("disjoint", [True, False])
@pytest.mark.parametrize("position", ["middle", "last"])
def test_every_frobenius_dense_configuration_inside_a_model(position, disjoint, units, k):
    """Sound (exact norm <= k, per output row when per-unit and last) or warned."""
    per_unit = disjoint and units > 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, frob = _frobenius_model(position, disjoint, units, k)
    warned = [w for w in caught if "disjoint_neurons=True" in str(w.message)]
    rng = np.random.default_rng(units)
    frob.kernel.assign(rng.standard_normal(tuple(frob.kernel.shape)).astype("float32"))
    frob.condense()
    matrix = _model_matrix(model, (6,))
    if per_unit and position == "middle":
        assert len(warned) == 1 and "'frob'" in str(warned[0].message)
        assert issubclass(warned[0].category, UserWarning)
        return
    assert not warned
    if per_unit:  # last: each output is k-Lipschitz (the bound the layer documents)
        assert np.linalg.norm(matrix, axis=1).max() <= k * (1 + BOUND_TOL)
    else:
        assert np.linalg.norm(matrix, 2) <= k * (1 + BOUND_TOL)


def test_issue_example_per_unit_layer_before_a_spectral_layer_warns_and_exceeds_one():
    keras.utils.set_random_seed(0)
    with pytest.warns(UserWarning, match="'frob32'.*disjoint_neurons=True"):
        model = Sequential(
            [keras.Input((16,)), FrobeniusDense(32, name="frob32"), SpectralDense(4)],
            k_coef_lip=1.0,
        )
    # the warned-about configuration is indeed not 1-Lipschitz
    assert np.linalg.norm(_model_matrix(model, (16,)), 2) > 1.0 + 1e-4


def test_functional_model_warns_for_a_per_unit_layer_followed_by_a_lipschitz_layer():
    inputs = keras.Input((6,))
    hidden = FrobeniusDense(8, name="per_unit")(inputs)
    with pytest.warns(UserWarning, match="'per_unit'"):
        Model(inputs, SpectralDense(3)(keras.layers.ReLU()(hidden)))
    inputs = keras.Input((6,))
    outputs = FrobeniusDense(8, name="per_unit_last")(SpectralDense(5)(inputs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Model(inputs, outputs)  # last: no warning


@pytest.mark.parametrize("padding", ["same", "valid", "reflect", "circular"])
@pytest.mark.parametrize("k", [1.0, 3.0])
def test_frobenius_conv_inside_a_model_keeps_the_bound(padding, k):
    model = Sequential(
        [
            keras.Input((6, 6, 2)),
            SpectralConv2D(3, 3, padding=padding),
            FrobeniusConv2D(2, 3, strides=2, padding=padding),
            SpectralConv2D(2, 1),
        ],
        k_coef_lip=k,
    )
    conv = model.layers[1]
    conv.kernel.assign(
        np.random.default_rng(0).standard_normal(conv.kernel.shape).astype("float32")
    )
    conv.condense()
    assert np.linalg.norm(_model_matrix(model, (6, 6, 2)), 2) <= k * (1 + BOUND_TOL)


# ------------------------------------------------------------------------ Sequential


def _orthogonal_stack(n, k):
    return Sequential([keras.Input((8,))] + [SpectralDense(8) for _ in range(n)], k_coef_lip=k)


def test_pop_spreads_the_constant_again():
    model = _orthogonal_stack(3, 0.125)
    np.testing.assert_allclose(np.linalg.norm(_model_matrix(model, (8,)), 2), 0.125, rtol=1e-4)
    popped = model.pop()
    norm = np.linalg.norm(_model_matrix(model, (8,)), 2)
    np.testing.assert_allclose(norm, 0.125, rtol=1e-4)  # was 0.25: factors of depth 3
    assert popped._get_coef() == 1.0  # the removed layer has its own constant back
    model.add(SpectralDense(8))
    np.testing.assert_allclose(np.linalg.norm(_model_matrix(model, (8,)), 2), 0.125, rtol=1e-4)


def test_set_klip_factor_sets_and_spreads_the_model_constant():
    model = _orthogonal_stack(2, 1.0)
    model.set_klip_factor(4.0)
    assert model.k_coef_lip == 4.0
    np.testing.assert_allclose(np.linalg.norm(_model_matrix(model, (8,)), 2), 4.0, rtol=1e-4)
    with pytest.raises(ValueError, match="k_coef_lip"):
        model.set_klip_factor(0.0)


def test_softmax_is_known_one_lipschitz():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Sequential([keras.Input((4,)), SpectralDense(3), keras.layers.Softmax()])
        Sequential([keras.Input((4,)), SpectralDense(3), keras.layers.Activation("softmax")])


# ---------------------------------------------------------- export with the wrapper factor


def _kernel_less_model(k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Sequential(
            [
                keras.Input((8, 8, 2)),
                SpectralConv2D(4, 3, name="conv"),
                GroupSort2(name="gs2"),
                Householder(name="hh"),
                ScaledL2NormPooling2D(pool_size=2, name="l2pool"),
                MaxMin(name="maxmin"),
                ScaledAveragePooling2D(pool_size=2, name="avgpool"),
                FullSort(name="fullsort"),
                PReLUlip(name="prelu"),
                ScaledGlobalL2NormPooling2D(name="gl2pool"),
                SpectralDense(3, name="dense"),
            ],
            k_coef_lip=k,
        )


def test_export_keeps_the_factor_of_kernel_less_layers(tmp_path):
    model = _kernel_less_model(5.0)
    x = np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 2)).astype("float32")
    expected = ops.convert_to_numpy(model(x, training=False))
    exported = vanilla_export(model)
    np.testing.assert_allclose(ops.convert_to_numpy(exported(x)), expected, atol=1e-6)
    path = tmp_path / "export.keras"
    exported.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), expected, atol=1e-6)
    model_path = tmp_path / "model.keras"
    model.save(model_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = keras.saving.load_model(model_path)
    again = vanilla_export(reloaded)
    np.testing.assert_allclose(ops.convert_to_numpy(again(x)), expected, atol=1e-6)


def test_issue_example_pooling_export_ratio_is_one():
    model = Sequential([keras.Input((4, 4, 2)), ScaledL2NormPooling2D(pool_size=2)], k_coef_lip=4.0)
    x = np.random.default_rng(0).uniform(0, 1, (4, 4, 4, 2)).astype("float32")
    ratio = np.linalg.norm(model(x)) / np.linalg.norm(vanilla_export(model)(x))
    np.testing.assert_allclose(ratio, 1.0, rtol=1e-6)  # was 4.0


# ------------------------------------------------------------- refused configurations


@pytest.mark.parametrize(
    "kernel, strides, output_padding",
    [((1, 2), (1, 2), (0, 0)), (2, 1, 0), ((3, 4), (2, 3), (1, 0))],
    ids=str,
)
def test_transposed_conv_platform_limit_is_refused(kernel, strides, output_padding):
    """TensorFlow aborts on these (plain Conv2DTranspose); ours refuses at construction."""
    plain = keras.layers.Conv2DTranspose(
        2, kernel, strides=strides, padding="same", output_padding=output_padding
    )
    with pytest.raises(Exception, match="(?i)aborted|operation received|exception"):
        plain(np.ones((1, 3, 4, 1), "float32"))
    with pytest.raises(ValueError, match="output_padding"):
        SpectralConv2DTranspose(
            2, kernel, strides=strides, padding="same", output_padding=output_padding
        )


@pytest.mark.parametrize(
    "kernel, strides, output_padding, padding",
    [((1, 2), (1, 2), None, "same"), ((1, 2), (1, 2), (0, 1), "same"), (2, 2, (0, 0), "valid")],
    ids=str,
)
def test_neighbouring_transposed_conv_configurations_run(kernel, strides, output_padding, padding):
    layer = SpectralConv2DTranspose(
        2, kernel, strides=strides, padding=padding, output_padding=output_padding
    )
    for size in [(1, 1), (2, 3), (5, 4)]:
        x = tf.constant(np.ones((2,) + size + (1,), "float32"))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(layer(x, training=True) ** 2)
        assert np.all(np.isfinite(tape.gradient(y, x).numpy()))


@pytest.mark.parametrize(
    "padding, kernel, size", [("reflect", 3, 1), ("reflect", 5, 2), ("symmetric", 5, 1)]
)
def test_reflect_padding_larger_than_the_input_is_refused(padding, kernel, size):
    for cls in (PadConv2D, SpectralConv2D):
        with pytest.raises(
            ValueError, match=f"padding='{padding}'.*spatial shape \\({size}, {size}\\)"
        ):
            cls(2, kernel, padding=padding)(np.ones((1, size, size, 1), "float32"))


@pytest.mark.parametrize("cls", [LayerCentering, BatchCentering])
def test_centering_layers_cast_integer_inputs(cls):
    x = np.arange(2 * 3 * 3 * 2).reshape(2, 3, 3, 2).astype("int32")
    layer = cls()
    out = layer(x, training=True) if cls is BatchCentering else layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    expected = layer(x.astype("float32"), training=False)
    if cls is LayerCentering:
        np.testing.assert_allclose(ops.convert_to_numpy(out), ops.convert_to_numpy(expected))
    model = keras.Sequential([keras.Input((3, 3, 2), dtype="int32"), cls()])
    assert np.all(np.isfinite(ops.convert_to_numpy(model(x))))
