"""The public layer contract (issue 10, item 1), measured.

* every public deel_lip layer states its constant with ``lipschitz_bound()``, and the
  value is the one it guarantees: the exact norm of its linear part (dense SVD) or its
  largest exact Jacobian norm on random inputs is at most the bound (+1e-5), and equal to
  it for the layers that reach it;
* the model wrappers decide through ``lipschitz_bound()`` and the public registry: a
  third-party layer implementing the method is accepted (and receives the model factor),
  one without it is warned about, a registered plain class is accepted;
* `compute_layer_sv` works through the public ``linear_map``;
* Keras arguments a constrained layer cannot honour (LoRA, quantization) are refused with
  a message naming them;
* raw kernels start at the constrained scale (``condense_on_build``), the function being
  unchanged;
* no module of the package imports a private name (``_x``) from another module.
"""

import ast
import importlib
import math
import pathlib
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import deel_lip.layers as L
from deel_lip.layers.contract import Condensable, LipschitzBounded
from deel_lip.model import Sequential, layer_lipschitz_bound, register_lipschitz
from deel_lip.utils import compute_layer_sv, evaluate_lip_const, layer_operator_matrix

K = 0.7  # a constant other than 1, so that a bound ignoring k_coef_lip fails
RNG = np.random.default_rng(0)
ROOT = pathlib.Path(L.__file__).resolve().parents[2]  # the repository

#: (constructor, input shape of one sample, tight: the exact norm equals the bound)
LINEAR = {
    "SpectralDense": (lambda: L.SpectralDense(6, k_coef_lip=K), (5,), True),
    "FrobeniusDense": (
        lambda: L.FrobeniusDense(6, disjoint_neurons=False, k_coef_lip=K),
        (5,),
        False,
    ),
    "SpectralConv2D": (lambda: L.SpectralConv2D(4, 3, k_coef_lip=K), (6, 6, 2), False),
    "FrobeniusConv2D": (lambda: L.FrobeniusConv2D(4, 3, k_coef_lip=K), (6, 6, 2), False),
    "SpectralConv1D": (lambda: L.SpectralConv1D(4, 3, k_coef_lip=K), (9, 2), False),
    "SpectralConv2DTranspose": (
        lambda: L.SpectralConv2DTranspose(3, 3, k_coef_lip=K),
        (5, 5, 2),
        False,
    ),
    "SpectralDepthwiseConv2D": (
        lambda: L.SpectralDepthwiseConv2D(3, k_coef_lip=K),
        (6, 6, 2),
        False,
    ),
    "ScaledAveragePooling2D": (lambda: L.ScaledAveragePooling2D(2, k_coef_lip=K), (6, 6, 2), True),
    "ScaledGlobalAveragePooling2D": (
        lambda: L.ScaledGlobalAveragePooling2D(k_coef_lip=K),
        (4, 4, 2),
        True,
    ),
    "InvertibleDownSampling": (lambda: L.InvertibleDownSampling(2), (4, 4, 2), True),
    "InvertibleUpSampling": (lambda: L.InvertibleUpSampling(2), (2, 2, 8), True),
    "LayerCentering": (lambda: L.LayerCentering(use_bias=False), (4, 4, 2), True),
}
#: nonlinear layers: (constructor, input shape, tight)
NONLINEAR = {
    "GroupSort": (lambda: L.GroupSort(n=3, k_coef_lip=K), (6,), True),
    "GroupSort2": (lambda: L.GroupSort2(k_coef_lip=K), (6,), True),
    "FullSort": (lambda: L.FullSort(k_coef_lip=K), (6,), True),
    "MaxMin": (lambda: L.MaxMin(k_coef_lip=K), (6,), True),
    "Householder": (lambda: L.Householder(k_coef_lip=K), (6,), True),
    "PReLUlip": (lambda: L.PReLUlip(k_coef_lip=K), (6,), True),
    "ScaledL2NormPooling2D": (lambda: L.ScaledL2NormPooling2D(2, k_coef_lip=K), (4, 4, 2), True),
    "ScaledGlobalL2NormPooling2D": (
        lambda: L.ScaledGlobalL2NormPooling2D(k_coef_lip=K),
        (4, 4, 2),
        True,
    ),
    "BatchCentering": (lambda: L.BatchCentering(), (6,), True),
}


def _family(module: str, name: str):
    """A layer class of the new families (issue 10, item 4), when its module exists."""
    try:
        return getattr(importlib.import_module(f"deel_lip.layers.{module}"), name)
    except (ImportError, AttributeError):
        return None


for _name, _module, _make, _shape, _table in (
    ("AOLDense", "aol", lambda cls: cls(6, k_coef_lip=K), (5,), LINEAR),
    ("AOLConv2D", "aol", lambda cls: cls(4, 3, k_coef_lip=K), (6, 6, 2), LINEAR),
    ("SLLDense", "sll", lambda cls: cls(k_coef_lip=K), (6,), NONLINEAR),
    ("SLLConv2D", "sll", lambda cls: cls(k_coef_lip=K), (5, 5, 2), NONLINEAR),
    ("OrthogonalConv2D", "orthogonal_conv", lambda cls: cls(4, 3, k_coef_lip=K), (6, 6, 2), LINEAR),
):
    _cls = _family(_module, _name)
    if _cls is not None:  # AOL is not tight for a random kernel; an SLL block not either
        _tight = _name == "OrthogonalConv2D"  # orthogonal whatever its parameters
        _table[_name] = ((lambda make=_make, cls=_cls: make(cls)), _shape, _tight)

#: constant of the layers without a k_coef_lip argument
FIXED = {
    "InvertibleDownSampling",
    "InvertibleUpSampling",
    "LayerCentering",
    "BatchCentering",
    "LipResidual",
}
NOT_LAYERS = {"LipschitzLayer", "LipschitzBounded", "Condensable", "ConstrainedKernel"}
UNCONSTRAINED = {"PadConv2D"}  # a plain convolution with more padding modes


def _public_layer_classes():
    names = [n for n in L.__all__ if n not in NOT_LAYERS]
    return {n: getattr(L, n) for n in names if isinstance(getattr(L, n), type)}


def _expected_bound(name):
    return 1.0 if name in FIXED else K


def test_every_public_layer_states_its_bound_and_is_measured_here():
    classes = _public_layer_classes()
    for name, cls in classes.items():
        if name in UNCONSTRAINED:
            assert not hasattr(cls, "lipschitz_bound"), name
            continue
        assert callable(getattr(cls, "lipschitz_bound", None)), f"{name} has no lipschitz_bound"
    measured = set(LINEAR) | set(NONLINEAR) | {"LipResidual"}
    missing = set(classes) - measured - UNCONSTRAINED
    assert not missing, f"layers without a measured bound in this test: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(LINEAR))
def test_linear_layers_exact_norm_is_within_the_stated_bound(name):
    make, shape, tight = LINEAR[name]
    layer = make()
    x = RNG.normal(size=(2,) + shape).astype("float32")
    layer(x, training=True)  # one normalisation from the random kernel
    bound = layer.lipschitz_bound()
    assert isinstance(bound, float) and bound == pytest.approx(_expected_bound(name))
    assert isinstance(layer, LipschitzBounded)
    matrix = layer_operator_matrix(
        layer if hasattr(layer, "linear_map") else (lambda t: layer(t, training=False)), shape
    )
    norm = float(np.linalg.norm(matrix, 2))
    assert norm <= bound * (1 + 1e-5)
    if tight:
        assert norm == pytest.approx(bound, rel=1e-5)
    else:  # the frequency bound is tight in practice, AOL close: a good part of the budget
        assert norm >= 0.3 * bound
    if hasattr(layer, "linear_map"):
        assert compute_layer_sv(layer, input_shape=shape)[1] == pytest.approx(norm, rel=1e-9)


@pytest.mark.parametrize("name", sorted(NONLINEAR))
def test_nonlinear_layers_exact_jacobian_norms_are_within_the_stated_bound(name):
    make, shape, tight = NONLINEAR[name]
    layer = make()
    x = RNG.normal(size=(32,) + shape).astype("float32")
    layer(x)
    if name == "PReLUlip":  # slopes of modulus 1 make the layer exactly k-Lipschitz
        layer.alpha.assign(-np.ones(layer.alpha.shape, "float32"))
    bound = layer.lipschitz_bound()
    assert isinstance(bound, float) and bound == pytest.approx(_expected_bound(name))
    measured = evaluate_lip_const(layer, x)
    assert measured <= bound * (1 + 1e-5)
    if tight:
        assert measured == pytest.approx(bound, rel=1e-5)


def test_lip_residual_is_a_convex_combination_with_bound_one():
    layer = L.LipResidual(initial_alpha=0.3)
    a, b = (RNG.normal(size=(4, 5)).astype("float32") for _ in range(2))
    out = ops.convert_to_numpy(layer([a, b]))
    np.testing.assert_allclose(out, 0.3 * b + 0.7 * a, rtol=1e-5, atol=1e-6)  # float32
    assert layer.lipschitz_bound() == 1.0


def test_bound_includes_the_wrapper_factor_and_per_unit_flag():
    model = Sequential([keras.Input((4,)), L.SpectralDense(4), L.GroupSort2()], k_coef_lip=4.0)
    assert [layer.lipschitz_bound() for layer in model.layers] == pytest.approx([2.0, 2.0])
    per_unit = L.FrobeniusDense(3, disjoint_neurons=True)
    assert per_unit.per_unit_bound and not L.FrobeniusDense(1).per_unit_bound
    assert not L.SpectralDense(3).per_unit_bound


# ------------------------------------------------------------------ model wrappers


class ThirdPartyScaled(keras.layers.Layer):
    """A third-party layer with its own bound: ``y = 2 k x``, no deel_lip base class."""

    def __init__(self, k=1.0, **kwargs):
        super().__init__(**kwargs)
        self.k, self.factor = k, 1.0

    def lipschitz_bound(self) -> float:
        return 2.0 * self.k * self.factor

    def set_klip_factor(self, factor):
        self.factor = factor

    def call(self, inputs):
        return inputs * self.lipschitz_bound()


class Doubling(keras.layers.Layer):
    def call(self, inputs):
        return 2.0 * inputs


def _warnings_of(build):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = build()
    return result, [str(w.message) for w in caught]


def test_third_party_layer_with_a_bound_is_accepted_and_gets_the_factor():
    layer = ThirdPartyScaled()
    model, messages = _warnings_of(
        lambda: Sequential([keras.Input((3,)), L.SpectralDense(3), layer], k_coef_lip=9.0)
    )
    assert messages == []
    assert layer.factor == pytest.approx(3.0) and layer_lipschitz_bound(layer) == 6.0
    x = np.ones((1, 3), "float32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(model(x))[0],
        6.0 * ops.convert_to_numpy(model.layers[0](x))[0],
        rtol=1e-6,
    )


def test_layer_without_a_bound_is_warned_about_until_registered():
    _, messages = _warnings_of(lambda: Sequential([keras.Input((3,)), Doubling(name="dbl")]))
    assert len(messages) == 1 and "'dbl'" in messages[0] and "register_lipschitz" in messages[0]
    assert layer_lipschitz_bound(Doubling()) is None
    register_lipschitz(Doubling, 2.0)
    _, messages = _warnings_of(lambda: Sequential([keras.Input((3,)), Doubling()]))
    assert messages == [] and layer_lipschitz_bound(Doubling()) == 2.0


def test_registry_decides_plain_keras_layers_from_their_settings():
    assert layer_lipschitz_bound(keras.layers.Flatten()) == 1.0
    assert layer_lipschitz_bound(keras.layers.ReLU(negative_slope=0.5)) == 1.0
    assert layer_lipschitz_bound(keras.layers.ReLU(threshold=1.0)) is None  # discontinuous
    assert layer_lipschitz_bound(keras.layers.Activation("sigmoid")) == 0.25
    assert layer_lipschitz_bound(keras.layers.Activation("gelu")) is None
    assert layer_lipschitz_bound(keras.layers.Dense(3)) is None
    assert layer_lipschitz_bound(L.PadConv2D(2, 3)) is None


def test_register_lipschitz_refuses_bad_arguments():
    with pytest.raises(TypeError, match="layer_type"):
        register_lipschitz(3, 1.0)
    with pytest.raises(ValueError, match="bound"):
        register_lipschitz(Doubling, -1.0)
    with pytest.raises(TypeError, match="bound"):
        register_lipschitz("elu", lambda layer: 1.0)


def test_condense_goes_through_the_protocol():
    class Counting(keras.layers.Layer):
        calls = 0

        def lipschitz_bound(self):
            return 1.0

        def condense(self):
            type(self).calls += 1

        def vanilla_export(self):
            return keras.layers.Identity(name=self.name)

    layer = Counting()
    assert isinstance(layer, Condensable) and not isinstance(keras.layers.Dense(2), Condensable)
    model = Sequential([keras.Input((2,)), layer])
    model.condense()
    assert Counting.calls == 1
    assert isinstance(model.vanilla_export().layers[-1], keras.layers.Identity)


def test_compute_layer_sv_uses_the_public_linear_map():
    class Scaled(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

        def linear_map(self, inputs, kernel=None):
            return inputs * ops.cast(self.w, inputs.dtype)

        def call(self, inputs):
            return self.linear_map(inputs) + 1.0

    layer = Scaled()
    layer(np.zeros((1, 3), "float32"))
    layer.w.assign(np.array([0.5, 3.0, -2.0], "float32"))
    assert compute_layer_sv(layer, input_shape=(3,)) == pytest.approx((0.5, 3.0))


# ------------------------------------------------------------------ refused Keras arguments

CONSTRAINED = {
    "SpectralDense": (lambda **kw: L.SpectralDense(4, **kw), (3,)),
    "FrobeniusDense": (lambda **kw: L.FrobeniusDense(4, **kw), (3,)),
    "SpectralConv2D": (lambda **kw: L.SpectralConv2D(4, 3, **kw), (5, 5, 2)),
    "FrobeniusConv2D": (lambda **kw: L.FrobeniusConv2D(4, 3, **kw), (5, 5, 2)),
    "SpectralConv1D": (lambda **kw: L.SpectralConv1D(4, 3, **kw), (7, 2)),
    "SpectralConv2DTranspose": (lambda **kw: L.SpectralConv2DTranspose(4, 3, **kw), (5, 5, 2)),
    "SpectralDepthwiseConv2D": (lambda **kw: L.SpectralDepthwiseConv2D(3, **kw), (5, 5, 2)),
}


@pytest.mark.parametrize("name", sorted(CONSTRAINED))
@pytest.mark.parametrize("argument", ["lora_rank", "lora_alpha"])
def test_lora_is_refused_at_construction_naming_the_argument(name, argument):
    make, _ = CONSTRAINED[name]
    with pytest.raises(ValueError, match=argument):
        make(**{argument: 2})


@pytest.mark.parametrize("name", sorted(CONSTRAINED))
def test_lora_quantization_and_quantized_policies_are_refused_after_construction(name):
    make, shape = CONSTRAINED[name]
    layer = make()
    layer.build((None,) + shape)
    with pytest.raises(ValueError, match="lora_rank"):
        layer.enable_lora(2)
    with pytest.raises(ValueError, match="quantized"):
        layer.quantize("int8")
    with pytest.raises(ValueError, match="int8_from_float32"):
        make(dtype="int8_from_float32")


def test_quantization_config_is_refused():
    config = object()  # any config: the layer cannot honour one
    with pytest.raises(ValueError, match="quantization_config"):
        L.SpectralDense(4, quantization_config=config)


# ------------------------------------------------------------ raw kernels at constrained scale


@pytest.mark.parametrize("name", sorted(CONSTRAINED))
def test_raw_kernel_starts_at_the_constrained_kernel_and_the_function_is_unchanged(name):
    make, shape = CONSTRAINED[name]
    init = keras.initializers.RandomNormal(stddev=5.0, seed=3)
    arg = "depthwise_initializer" if "Depthwise" in name else "kernel_initializer"
    on, off = make(**{arg: init}), make(**{arg: init, "condense_on_build": False})
    x = RNG.normal(size=(2,) + shape).astype("float32")
    y_on, y_off = (ops.convert_to_numpy(layer(x)) for layer in (on, off))
    raw_on, raw_off = (ops.convert_to_numpy(layer.kernel) for layer in (on, off))
    cached = ops.convert_to_numpy(on.current_constrained_kernel())
    np.testing.assert_allclose(raw_on, cached, atol=1e-6)
    assert np.linalg.norm(raw_off) > 5.0 * np.linalg.norm(raw_on)  # off: initializer's scale
    np.testing.assert_allclose(y_on, y_off, rtol=2e-4, atol=2e-5)
    assert on.get_config()["condense_on_build"] is True
    clone = type(on).from_config(off.get_config())
    assert clone.condense_on_build is False


def test_layer_built_while_keras_traces_fit_starts_condensed():
    layer = L.SpectralDense(3, kernel_initializer=keras.initializers.RandomNormal(stddev=4.0))
    model = keras.Sequential([layer])  # no Input: built inside fit's first trace
    model.compile("sgd", "mse")
    model.fit(np.ones((4, 5), "float32"), np.zeros((4, 3), "float32"), epochs=1, verbose=0)
    # sgd with lr 0.01 for one step moves the kernel by far less than its norm
    assert np.linalg.norm(ops.convert_to_numpy(layer.kernel)) == pytest.approx(
        math.sqrt(3.0), rel=0.05
    )


def test_weights_do_not_depend_on_where_the_model_was_built():
    """A model built in fit's trace has the same weight list as one built eagerly, so
    ``clone_model`` + ``set_weights(get_weights())`` reproduce it exactly."""
    x = np.random.default_rng(0).random((32, 3)).astype("float32")
    traced = keras.Sequential([L.SpectralDense(4), L.GroupSort2(), L.SpectralDense(2)])
    traced.compile("adam", "mse")
    traced.fit(x, x[:, :2], epochs=1, verbose=0)
    eager = keras.Sequential(
        [keras.Input((3,)), *(type(la).from_config(la.get_config()) for la in traced.layers)]
    )
    assert [w.shape for w in eager.get_weights()] == [w.shape for w in traced.get_weights()]
    clone = keras.models.clone_model(traced)
    clone.set_weights(traced.get_weights())
    np.testing.assert_array_equal(clone.predict(x, verbose=0), traced.predict(x, verbose=0))


def test_layer_built_in_a_user_tf_function_is_condensed_by_its_first_training_call():
    init = keras.initializers.RandomNormal(stddev=4.0, seed=1)
    layer = L.SpectralDense(3, kernel_initializer=init)
    step = tf.function(lambda t: layer(t, training=True))
    step(tf.zeros((1, 5)))
    kernel = ops.convert_to_numpy(layer.kernel)
    np.testing.assert_allclose(kernel, ops.convert_to_numpy(layer.constrained_kernel), atol=1e-6)
    assert not bool(layer.condense_pending.numpy())
    layer.kernel.assign(3.0 * kernel)  # later calls do not condense again
    step(tf.zeros((1, 5)))
    np.testing.assert_allclose(ops.convert_to_numpy(layer.kernel), 3.0 * kernel)


# ------------------------------------------------------------------ private imports


def _private_imports(path: pathlib.Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.ImportFrom) and node.module):
            continue
        if not node.module.startswith("deel_lip"):
            continue
        for alias in node.names:
            if not alias.name.startswith("_"):
                continue
            # a private *module* (e.g. deel_lip._backend) is the designated shared place
            target = ROOT.joinpath(*node.module.split("."), alias.name)
            if not (target.with_suffix(".py").exists() or target.is_dir()):
                found.append(f"from {node.module} import {alias.name}")
    return found


@pytest.mark.parametrize(
    "path",
    sorted(ROOT.joinpath("deel_lip").rglob("*.py")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_private_name_is_imported_from_another_module(path):
    assert _private_imports(path) == []


@pytest.mark.parametrize("name", sorted(CONSTRAINED))
def test_keep_raw_scale_holds_the_raw_kernel_at_the_constrained_norm_in_training(name):
    make, shape = CONSTRAINED[name]
    user_calls = []

    def user_constraint(kernel):
        user_calls.append(1)
        return kernel

    arg = "depthwise_constraint" if "Depthwise" in name else "kernel_constraint"
    layer = make(keep_raw_scale=True, **{arg: user_constraint})
    free = make(keep_raw_scale=False)
    x = RNG.normal(size=(8,) + shape).astype("float32")
    models = []
    for lay in (layer, free):
        model = keras.Sequential([keras.Input(shape), lay, keras.layers.Flatten()])
        model.compile(keras.optimizers.Adam(0.05), "mse")
        y = np.zeros((8,) + model.output_shape[1:], "float32") + 1.0
        model.fit(x, y, epochs=4, batch_size=4, verbose=0)
        models.append(model)
    raw = np.linalg.norm(ops.convert_to_numpy(layer.kernel))
    cached = np.linalg.norm(ops.convert_to_numpy(layer.constrained_kernel))
    assert raw == pytest.approx(cached, rel=1e-5)  # after the last step's constraint
    assert user_calls  # the user's constraint still runs (first)
    drifted = np.linalg.norm(ops.convert_to_numpy(free.kernel))
    drifted_cache = np.linalg.norm(ops.convert_to_numpy(free.constrained_kernel))
    assert drifted > 1.01 * drifted_cache  # without it Adam's orthogonal steps grow the kernel
    assert layer.get_config()["keep_raw_scale"] is True
    assert type(layer).from_config(free.get_config()).keep_raw_scale is False
