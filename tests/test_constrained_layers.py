"""Constrained layers: bad-input errors, config round trip, `.keras` save/load round trip."""

import inspect
import math

import keras
import numpy as np
import pytest
from keras import ops

from deel_lip.layers import (
    FrobeniusConv2D,
    FrobeniusDense,
    SpectralConv1D,
    SpectralConv2D,
    SpectralConv2DTranspose,
    SpectralDense,
)

SPECTRAL = [SpectralDense, SpectralConv2D, SpectralConv1D, SpectralConv2DTranspose]
FROBENIUS = [FrobeniusDense, FrobeniusConv2D]
CONVS = [SpectralConv2D, FrobeniusConv2D, SpectralConv1D, SpectralConv2DTranspose]

BASE_ARGS = {
    SpectralDense: {"units": 4},
    FrobeniusDense: {"units": 4},
    SpectralConv2D: {"filters": 2, "kernel_size": 3},
    FrobeniusConv2D: {"filters": 2, "kernel_size": 3},
    SpectralConv1D: {"filters": 2, "kernel_size": 3},
    SpectralConv2DTranspose: {"filters": 2, "kernel_size": 3},
}
INPUT_SHAPES = {
    SpectralDense: (6,),
    FrobeniusDense: (6,),
    SpectralConv2D: (6, 5, 2),
    FrobeniusConv2D: (6, 5, 2),
    SpectralConv1D: (7, 2),
    SpectralConv2DTranspose: (4, 5, 2),
}


def _name(cls):
    return cls.__name__


# ------------------------------------------------------------------ bad input

BAD_NORMALIZATION = [
    ("eps_spectral", 0),
    ("eps_spectral", -1e-3),
    ("eps_spectral", "small"),
    ("eps_bjorck", 0),
    ("eps_bjorck", -1.0),
    ("beta_bjorck", 0),
    ("beta_bjorck", 0.6),
    ("beta_bjorck", -0.5),
    ("maxiter_spectral", 0),
    ("maxiter_spectral", 1.5),
    ("maxiter_bjorck", 0),
    ("maxiter_bjorck", -3),
]
BAD_K = [("k_coef_lip", 0), ("k_coef_lip", -1.0), ("k_coef_lip", math.inf)]
BAD_CONSTRUCTION = (
    [(cls, name, value) for cls in SPECTRAL for name, value in BAD_NORMALIZATION + BAD_K]
    + [(cls, name, value) for cls in FROBENIUS for name, value in BAD_K]
    + [(FrobeniusDense, "disjoint_neurons", "yes")]
    + [(cls, "dilation_rate", 2) for cls in CONVS]
    + [(cls, "groups", 2) for cls in CONVS]
    + [(cls, "padding", "foo") for cls in CONVS]
    + [(cls, "padding", "causal") for cls in (SpectralConv2D, FrobeniusConv2D)]
    + [(SpectralConv1D, "padding", mode) for mode in ("reflect", "circular")]
    + [(SpectralConv2DTranspose, "padding", mode) for mode in ("causal", "reflect", "circular")]
)


@pytest.mark.parametrize(
    ("cls", "argument", "value"),
    BAD_CONSTRUCTION,
    ids=[f"{_name(c)}-{a}={v}" for c, a, v in BAD_CONSTRUCTION],
)
def test_bad_argument_raises_value_error_naming_it(cls, argument, value):
    with pytest.raises(ValueError, match=argument) as info:
        cls(**BASE_ARGS[cls], **{argument: value})
    assert str(value) in str(info.value)


@pytest.mark.parametrize(
    ("cls", "kernel_size", "strides", "padding"),
    [
        (SpectralConv2D, 1, 2, "same"),
        (SpectralConv2D, (1, 3), (2, 1), "valid"),
        (FrobeniusConv2D, 1, (2, 1), "circular"),
        (FrobeniusConv2D, 2, 3, "same"),
        (SpectralConv1D, 1, 3, "causal"),
        (SpectralConv1D, 2, 3, "same"),
    ],
)
def test_kernel_smaller_than_stride_is_the_same_convolution_and_trains(
    cls, kernel_size, strides, padding
):
    layer = cls(3, kernel_size, strides=strides, padding=padding, use_bias=False)
    spatial = (9, 8) if cls is not SpectralConv1D else (9,)
    x = np.random.default_rng(0).normal(size=(4,) + spatial + (2,)).astype("float32")
    out = layer(x)
    if padding in ("same", "valid"):
        reference = ops.conv(x, layer.constrained_kernel, strides=strides, padding=padding)
    elif padding == "causal":
        reference = ops.conv(
            ops.pad(x, layer._compute_causal_padding()), layer.constrained_kernel, strides=strides
        )
    else:
        reference = ops.conv(layer._pad(x), layer.constrained_kernel, strides=strides)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(reference))
    # Differentiating the plain strided convolution crashes oneDNN now and then: train.
    model = keras.Sequential([keras.Input(x.shape[1:]), layer, keras.layers.Flatten()])
    model.compile("adam", "mse")
    target = np.zeros((4,) + model.output_shape[1:], "float32")
    model.fit(np.repeat(x, 16, axis=0), np.repeat(target, 16, axis=0), epochs=3, verbose=0)


def test_transposed_conv_platform_limits_are_explicit():
    # TensorFlow's CPU kernel rejects this output padding at call time: refuse it upfront.
    with pytest.raises(ValueError, match="output_padding"):
        SpectralConv2DTranspose(2, 2, strides=1, padding="same", output_padding=0)
    SpectralConv2DTranspose(2, 3, strides=1, padding="same", output_padding=0)
    with pytest.warns(UserWarning, match="smaller than strides"):
        SpectralConv2DTranspose(2, 1, strides=2)


TOO_FEW_DIMS = [(cls, INPUT_SHAPES[cls][1:]) for cls in BASE_ARGS]
TOO_MANY_DIMS = [(cls, INPUT_SHAPES[cls][:1] + INPUT_SHAPES[cls]) for cls in CONVS]


@pytest.mark.parametrize(("cls", "shape"), TOO_FEW_DIMS, ids=[_name(c) for c, _ in TOO_FEW_DIMS])
def test_input_with_too_few_dims_raises_value_error(cls, shape):
    layer = cls(**BASE_ARGS[cls])
    with pytest.raises(ValueError, match="ndim"):
        layer(np.zeros((2,) + shape, "float32"))


@pytest.mark.parametrize(("cls", "shape"), TOO_MANY_DIMS, ids=[_name(c) for c, _ in TOO_MANY_DIMS])
def test_input_with_too_many_dims_raises_value_error_at_build(cls, shape):
    layer = cls(**BASE_ARGS[cls])
    with pytest.raises(ValueError, match="ndim|rank"):
        layer.build((None,) + shape)


# ------------------------------------------------------------------ configurations

CUSTOM_ARGS = {
    SpectralDense: {
        "units": 5,
        "activation": "relu",
        "activity_regularizer": "l2",  # Keras leaves it out of the config when None
        "use_bias": False,
        "k_coef_lip": 0.5,
        "eps_spectral": 1e-4,
        "eps_bjorck": None,
        "beta_bjorck": 0.3,
        "maxiter_spectral": 4,
        "maxiter_bjorck": 6,
    },
    FrobeniusDense: {
        "units": 3,
        "disjoint_neurons": False,
        "k_coef_lip": 2.0,
        "activity_regularizer": "l1",
    },
    SpectralConv2D: {
        "filters": 3,
        "kernel_size": (3, 1),
        "strides": (2, 1),
        "padding": "reflect",
        "k_coef_lip": 3.0,
        "eps_spectral": 1e-5,
        "eps_bjorck": 1e-4,
        "beta_bjorck": 0.5,
        "maxiter_spectral": 7,
        "maxiter_bjorck": 9,
    },
    FrobeniusConv2D: {"filters": 4, "kernel_size": 2, "padding": "circular", "k_coef_lip": 0.7},
    SpectralConv1D: {
        "filters": 3,
        "kernel_size": 2,
        "strides": 2,
        "padding": "causal",
        "k_coef_lip": 1.5,
        "eps_bjorck": None,
        "maxiter_spectral": 2,
    },
    SpectralConv2DTranspose: {
        "filters": 3,
        "kernel_size": 3,
        "strides": 2,
        "padding": "valid",
        "output_padding": 1,
        "k_coef_lip": 0.25,
        "maxiter_bjorck": 5,
    },
}


def _trained_layer(cls):
    """Layer with custom arguments, built, with a random kernel and one training call."""
    layer = cls(**CUSTOM_ARGS[cls], name=f"custom_{_name(cls).lower()}")
    shape = INPUT_SHAPES[cls]
    layer.build((None,) + shape)
    kernel = layer._raw_kernel()
    kernel.assign(np.random.default_rng(0).standard_normal(kernel.shape).astype("float32"))
    if layer.use_bias:
        layer.bias.assign(np.random.default_rng(1).standard_normal(layer.bias.shape))
    layer(np.zeros((1,) + shape, "float32"), training=True)
    return layer


def _x(cls, n=4):
    return np.random.default_rng(2).standard_normal((n,) + INPUT_SHAPES[cls]).astype("float32")


def _variables(layer):
    return {v.path.split("/", 1)[-1]: ops.convert_to_numpy(v) for v in layer.variables}


@pytest.mark.parametrize("cls", list(BASE_ARGS), ids=_name)
def test_config_is_complete_and_round_trips(cls):
    layer = _trained_layer(cls)
    config = layer.get_config()
    parameters = inspect.signature(cls.__init__).parameters
    arguments = [
        name for name, p in parameters.items() if name != "self" and p.kind != p.VAR_KEYWORD
    ]
    assert set(arguments) <= set(config), set(arguments) - set(config)
    for name, value in CUSTOM_ARGS[cls].items():
        if name == "activity_regularizer":
            continue  # serialised as a dict; its round trip is checked below
        got = config[name]
        if isinstance(got, (tuple, list)):
            got = tuple(got)
            value = tuple(value) if isinstance(value, (tuple, list)) else (value,) * len(got)
        assert got == value, name

    clone = cls.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is cls and restored.get_config() == config

    clone.build((None,) + INPUT_SHAPES[cls])
    clone.set_weights(layer.get_weights())
    x = _x(cls)
    np.testing.assert_array_equal(clone(x, training=False), layer(x, training=False))


@pytest.mark.parametrize("cls", list(BASE_ARGS), ids=_name)
def test_keras_save_load_restores_outputs_and_state(cls, tmp_path):
    layer = _trained_layer(cls)
    model = keras.Sequential([keras.Input(INPUT_SHAPES[cls]), layer])
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    loaded_layer = loaded.layers[0]
    assert type(loaded_layer) is cls
    assert loaded_layer.get_config() == layer.get_config()

    before, after = _variables(layer), _variables(loaded_layer)
    assert sorted(before) == sorted(after)
    assert any("constrained_kernel" in name for name in before)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)

    x = _x(cls)
    np.testing.assert_array_equal(loaded(x, training=False), model(x, training=False))
    # The persisted normalisation state is restored: the next training call is identical.
    np.testing.assert_array_equal(loaded_layer(x, training=True), layer(x, training=True))
