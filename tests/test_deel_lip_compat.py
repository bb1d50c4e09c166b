"""deel-lip (Keras 3) code runs on deel_lip with only the import prefix changed.

Written from deel-lip's documented API (inventory in `tests/deel_lip_api.py`): every
public name exists under deel-lip's module name, constructs with deel-lip's arguments
(layers are also called), functions answer deel-lip's call with a correct value, and
``.keras`` files written in deel-lip's format (registered names ``deel-lip>X``, module
``deel.lip.*``, deel-lip's keys and weight layout) load with equal predictions.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import warnings
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import deel_lip.migration as migration
from deel_lip.layers import GroupSort2, SpectralConv2D, SpectralDense
from deel_lip.layers.depthwise import SpectralDepthwiseConv2D
from deel_lip.model import Sequential
from deel_lip.regularizers import Lorth2D, LorthRegularizer
from deel_lip.utils import layer_operator_matrix
from tests.deel_lip_api import API, MODULES, Api

RNG = np.random.default_rng(0)


def _marks(api: Api):
    if api.pending:
        return [pytest.mark.xfail(strict=False, reason=api.pending)]
    return []


def _params(kind):
    return [pytest.param(a, id=a.id, marks=_marks(a)) for a in API if a.kind in kind]


def _lookup(api: Api):
    return getattr(importlib.import_module(api.module), api.name)


def _norm(matrix) -> float:
    return float(np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)[0])


def _small_model():
    model = Sequential([keras.Input((6,)), SpectralDense(8), GroupSort2(), SpectralDense(2)])
    model(RNG.normal(size=(4, 6)).astype("float32"), training=True)
    return model


# ------------------------------------------------------------------ inventory


def test_every_deel_lip_module_name_imports():
    for theirs, ours in MODULES.items():
        assert importlib.import_module(ours).__name__ == ours, theirs


@pytest.mark.parametrize("api", _params({"constant", "module"}))
def test_name_exists(api):
    assert _lookup(api) is not None


@pytest.mark.parametrize("api", _params({"layer"}))
def test_layer_constructs_and_runs_with_deel_lip_arguments(api):
    layer = _lookup(api)(*api.args, **api.kwargs)
    x = RNG.normal(size=(2, *api.input_shape)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    assert np.all(np.isfinite(y))
    for key in ("k_coef_lip", "eps_grad_sqrt", "filterwise_normalisation"):
        if key in api.kwargs:
            assert layer.get_config()[key] == api.kwargs[key]


@pytest.mark.parametrize("api", _params({"class"}))
def test_class_constructs_with_deel_lip_arguments(api, tmp_path):
    kwargs = {k: (str(tmp_path) if v == "LOGDIR" else v) for k, v in api.kwargs.items()}
    obj = _lookup(api)(*api.args, **kwargs)
    assert isinstance(obj, _lookup(api))


def test_activations_module_is_the_layers():
    import deel_lip.activations as acts
    import deel_lip.layers as layers

    for name in acts.__all__:
        assert getattr(acts, name) is getattr(layers, name)


def test_unconstrained_pad_conv2d_is_ours():
    from deel_lip.layers import PadConv2D
    from deel_lip.layers.unconstrained import PadConv2D as Alias

    assert Alias is PadConv2D


# ------------------------------------------------------------------ functions


def _vanilla_model(fn):
    model = _small_model()
    export = fn(model)
    x = RNG.normal(size=(5, 6)).astype("float32")
    assert not any(type(layer).__module__.startswith("deel_lip") for layer in export.layers[:1])
    np.testing.assert_allclose(export.predict(x, verbose=0), model(x), atol=1e-6)


def _rko(fn):
    kernel = RNG.normal(size=(3, 3, 2, 4)).astype("float32")
    w_bar, _, _ = fn(
        kernel,
        u=None,
        adjustment_coef=1.0,
        eps_spectral=1e-3,
        eps_bjorck=1e-3,
        beta=0.5,
        maxiter_spectral=10,
        maxiter_bjorck=15,
    )
    assert tuple(w_bar.shape) == kernel.shape
    assert _norm(np.reshape(w_bar, (-1, 4))) <= 1.0 + 1e-3


def _bjorck(fn):
    w = RNG.normal(size=(6, 4)).astype("float32")
    w = w / _norm(w)
    out = np.asarray(fn(w=w, eps=1e-3, beta=0.5, maxiter=15))
    np.testing.assert_allclose(out.T @ out, np.eye(4), atol=5e-3)


def _spectral(fn):
    kernel = RNG.normal(size=(6, 4)).astype("float32")
    u = RNG.normal(size=(1, 4)).astype("float32")  # deel-lip's u: (1, units)
    w_bar, _, _ = fn(kernel, u, eps=1e-3, maxiter=10)
    assert _norm(w_bar) == pytest.approx(1.0, abs=1e-2)


def _spectral_conv(fn):
    """deel-lip's power iteration on the "same" convolution of u's size: norm ~ 1 there."""
    kernel = RNG.normal(size=(3, 3, 2, 4)).astype("float32")
    u = RNG.normal(size=(1, 8, 8, 2)).astype("float32")
    w_bar, _, _ = fn(kernel, u, stride=1, conv_first=True, pad_func=None, eps=1e-3, maxiter=50)
    conv = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)
    conv.build((None, 8, 8, 2))
    conv.set_weights([keras.ops.convert_to_numpy(w_bar)])
    assert _norm(layer_operator_matrix(conv, (8, 8, 2))) == pytest.approx(1.0, abs=2e-2)


def _lip_const(fn):
    model = _small_model()
    value = float(fn(model, RNG.normal(size=(8, 6)).astype("float32"), seed=1))
    assert 0.5 < value <= 1.0 + 1e-3


def _lip_const_gen(fn):
    model = _small_model()

    def generator():
        while True:
            yield RNG.normal(size=(8, 6)).astype("float32"), np.zeros((8, 2))

    assert 0.5 < float(fn(model, generator(), eps=1e-4, seed=None)) <= 1.0 + 1e-3


def _multi_gpu_labels(fn):
    labels = np.array([[1.0], [0.0], [1.0], [0.0], [0.0]], "float32")
    # deel-lip: batch * (y / n_pos - (1 - y) / n_neg), per class column
    expected = 5 * (labels / 2 - (1 - labels) / 3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fn(labels)), expected, rtol=1e-5)


def _l2_normalize(fn):
    x = RNG.normal(size=(3, 5)).astype("float32")
    out = keras.ops.convert_to_numpy(fn(x, axis=-1, epsilon=1e-12))
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)


def _layer_sv(fn):
    layer = keras.layers.Dense(3)
    layer.build((None, 5))
    low, high = fn(layer, supplementary_type2sv={})
    values = np.linalg.svd(layer.get_weights()[0], compute_uv=False)
    assert (low, high) == pytest.approx((values.min(), values.max()), rel=1e-6)


def _model_sv(fn):
    model = _small_model()
    result = fn(model)
    assert [name for name, _ in result] == [layer.name for layer in model.layers]
    assert result[0][1][1] == pytest.approx(1.0, abs=1e-3)


CALLS = {
    "model.vanillaModel": _vanilla_model,
    "normalizers.reshaped_kernel_orthogonalization": _rko,
    "normalizers.bjorck_normalization": _bjorck,
    "normalizers.spectral_normalization": _spectral,
    "normalizers.spectral_normalization_conv": _spectral_conv,
    "utils.evaluate_lip_const": _lip_const,
    "utils.evaluate_lip_const_gen": _lip_const_gen,
    "utils.process_labels_for_multi_gpu": _multi_gpu_labels,
    "utils.l2_normalize": _l2_normalize,
    "compute_layer_sv.compute_layer_sv": _layer_sv,
    "compute_layer_sv.compute_model_sv": _model_sv,
}


def test_every_function_has_a_call():
    assert {a.id for a in API if a.kind == "function"} == set(CALLS)


@pytest.mark.parametrize("api", _params({"function"}))
def test_function_answers_deel_lip_call(api):
    CALLS[api.id](_lookup(api))


def test_sequential_set_klip_factor_scales_the_model():
    """Zero biases: every layer is positively homogeneous, so f becomes 4 f exactly."""
    model = _small_model()
    x = RNG.normal(size=(5, 6)).astype("float32")
    before = keras.ops.convert_to_numpy(model(x))
    model.set_klip_factor(4.0)
    after = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(after, 4.0 * before, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ registration


SERIALISABLE = [
    a
    for a in API
    if a.kind in ("layer", "class")
    and a.module.split(".")[1]
    in ("layers", "losses", "metrics", "constraints", "initializers", "model")
] + [a for a in API if a.name in ("LorthRegularizer", "OrthDenseRegularizer")]


@pytest.mark.parametrize("api", [pytest.param(a, id=a.id, marks=_marks(a)) for a in SERIALISABLE])
def test_registered_under_deel_lip_name(api):
    cls = _lookup(api)
    assert keras.saving.get_custom_objects()[f"deel-lip>{api.name}"] is cls
    # our own saves keep deel_lip's registered name
    assert keras.saving.get_registered_name(cls) == f"deel_lip>{api.name}"


# ------------------------------------------------------------------ .keras files


def _deel_lip_archive(model, path, deel_lip_weights: bool):
    """Save ``model`` and rewrite the archive as deel-lip (Keras 3) would have written it."""
    ours = str(path.with_name("ours.keras"))
    model.save(ours)
    with zipfile.ZipFile(ours) as archive:
        entries = {n: archive.read(n) for n in archive.namelist()}
    text = entries["config.json"].decode()
    text = text.replace('"deel_lip>', '"deel-lip>').replace('"deel_lip.', '"deel.lip.')
    text = text.replace('"conv_transpose"', '"flag_deconv"')
    if deel_lip_weights:  # deel-lip's GroupSort2 also saved its group size
        text = text.replace(
            '"class_name": "GroupSort2", "config": {',
            '"class_name": "GroupSort2", "config": {"n": 2, ',
        )
        assert '"n": 2' in text
    entries["config.json"] = text.encode()
    if deel_lip_weights:  # kernel, bias, u, sigma, wbar per constrained layer
        path.with_name("w_in.h5").write_bytes(entries["model.weights.h5"])
        with h5py.File(path.with_name("w_in.h5"), "r+") as h5:
            for name in h5["layers"]:
                group = h5[f"layers/{name}/vars"]
                arrays = [np.asarray(group[k]) for k in sorted(group, key=int)]
                if len(arrays) != 4:
                    continue
                kernel, bias, u, wbar = arrays
                for k in list(group):
                    del group[k]
                new = [kernel, bias, u, np.ones((1, 1), "float32"), wbar]
                for i, value in enumerate(new):
                    group.create_dataset(str(i), data=value)
        entries["model.weights.h5"] = path.with_name("w_in.h5").read_bytes()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return json.loads(text)


def _conv_model():
    model = Sequential(
        [
            keras.Input((6, 6, 2)),
            SpectralConv2D(4, 3, kernel_regularizer=LorthRegularizer((3, 3, 2, 4), 1)),
            GroupSort2(),
            keras.layers.Flatten(),
            SpectralDense(3),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    model.fit(RNG.normal(size=(8, 6, 6, 2)), RNG.normal(size=(8, 3)), epochs=1, verbose=0)
    return model


def test_deel_lip_registered_names_load_with_keras(tmp_path):
    model = _conv_model()
    path = tmp_path / "deel_lip_format.keras"
    _deel_lip_archive(model, path, deel_lip_weights=False)
    x = RNG.normal(size=(4, 6, 6, 2)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = keras.saving.load_model(path)
    assert type(loaded.layers[0]) is SpectralConv2D
    assert loaded.layers[0].kernel_regularizer.conv_transpose is False
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_load_deel_lip_model_converts_config_and_weights(tmp_path):
    model = _conv_model()
    path = tmp_path / "deel_lip_weights.keras"
    config = _deel_lip_archive(model, path, deel_lip_weights=True)
    assert config["registered_name"] == "deel-lip>Sequential"
    x = RNG.normal(size=(4, 6, 6, 2)).astype("float32")
    loaded = migration.load_deel_lip_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for ours, theirs in zip(model.layers, loaded.layers, strict=True):
        for a, b in zip(ours.weights, theirs.weights, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_convert_config_names_and_keys():
    config = {
        "module": "deel.lip.regularizers",
        "class_name": "LorthRegularizer",
        "registered_name": "deel-lip>LorthRegularizer",
        "config": {
            "kernel_shape": None,
            "stride": 1,
            "lambda_lorth": 1.0,
            "dim": 2,
            "flag_deconv": True,
        },
    }
    converted = migration.convert_deel_lip_config(config)
    assert converted["registered_name"] == "deel_lip>LorthRegularizer"
    assert converted["module"] == "deel_lip.regularizers"
    assert converted["config"]["conv_transpose"] is True
    assert "flag_deconv" in config["config"]  # input untouched
    for name in ("GroupSort2", "FullSort"):  # deel-lip saved the implied group size
        cls = keras.saving.get_custom_objects()[f"deel_lip>{name}"]
        theirs = {
            "registered_name": f"deel-lip>{name}",
            "class_name": name,
            "module": "deel.lip.layers.activations",
            "config": {**cls().get_config(), "n": 2 if name == "GroupSort2" else 6},
        }
        layer = keras.saving.deserialize_keras_object(migration.convert_deel_lip_config(theirs))
        x = RNG.normal(size=(2, 6)).astype("float32")
        np.testing.assert_array_equal(layer(x), cls()(x))
    with pytest.raises(ValueError, match="NoSuchLayer"):
        migration.convert_deel_lip_config({"registered_name": "deel-lip>NoSuchLayer"})
    with pytest.raises(TypeError, match="config"):
        migration.convert_deel_lip_config("not a config")


def test_load_deel_lip_model_rejects_non_archive(tmp_path):
    path = tmp_path / "x.keras"
    path.write_text("not a zip")
    with pytest.raises(ValueError, match="filepath"):
        migration.load_deel_lip_model(path)


# ------------------------------------------------------------------ SpectralDepthwiseConv2D


@pytest.mark.parametrize(
    "mult, filterwise, padding, strides, k",
    [
        (1, True, "same", 1, 1.0),
        (2, True, "valid", 1, 2.0),
        (1, False, "same", 2, 0.5),
        (3, True, "same", 2, 1.0),
        (1, True, "valid", 3, 1.0),
    ],
)
def test_depthwise_exact_norm_at_most_k(mult, filterwise, padding, strides, k):
    layer = SpectralDepthwiseConv2D(
        3,
        strides=strides,
        padding=padding,
        depth_multiplier=mult,
        filterwise_normalisation=filterwise,
        k_coef_lip=k,
    )
    for size in (5, 8):
        layer_ = layer if size == 5 else SpectralDepthwiseConv2D.from_config(layer.get_config())
        x = RNG.normal(size=(2, size, size, 3)).astype("float32")
        layer_(x, training=True)
        norm = _norm(layer_operator_matrix(layer_, (size, size, 3)))
        assert norm <= k * (1 + 1e-5)
        exported = layer_.vanilla_export()
        assert type(exported) is keras.layers.DepthwiseConv2D
        np.testing.assert_array_equal(exported(x), layer_(x))


def test_depthwise_bound_is_reached_by_a_constant_filter():
    """All-equal filters at stride 1: the norm tends to k on large inputs (tight bound)."""
    layer = SpectralDepthwiseConv2D(3, padding="same", depthwise_initializer="ones", k_coef_lip=1.0)
    layer.build((None, 24, 24, 1))
    norm = _norm(layer_operator_matrix(layer, (24, 24, 1)))
    assert 0.95 <= norm <= 1.0 + 1e-5


def test_depthwise_save_load_round_trip(tmp_path):
    model = keras.Sequential(
        [keras.Input((6, 6, 2)), SpectralDepthwiseConv2D(3, depth_multiplier=2, k_coef_lip=2.0)]
    )
    model(RNG.normal(size=(1, 6, 6, 2)).astype("float32"), training=True)
    model.save(tmp_path / "dw.keras")
    loaded = keras.saving.load_model(tmp_path / "dw.keras")
    x = RNG.normal(size=(3, 6, 6, 2)).astype("float32")
    np.testing.assert_array_equal(loaded(x), model(x))
    assert loaded.layers[0].get_config()["k_coef_lip"] == 2.0


def test_depthwise_in_a_model_trains_under_xla_and_exports():
    """Sequential(k=2) gives the layer 2 ** (1/2): its exact norm stays below it."""
    from deel_lip.model import vanilla_export

    model = Sequential(
        [
            keras.Input((8, 8, 3)),
            SpectralDepthwiseConv2D(3, depth_multiplier=2),
            keras.layers.Flatten(),
            SpectralDense(2),
        ],
        k_coef_lip=2.0,
    )
    model.compile(optimizer="adam", loss="mse", jit_compile=True)
    x = RNG.normal(size=(16, 8, 8, 3)).astype("float32")
    history = model.fit(x, np.zeros((16, 2)), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert _norm(layer_operator_matrix(model.layers[0], (8, 8, 3))) <= np.sqrt(2.0) * (1 + 1e-5)
    export = vanilla_export(model)
    assert type(export.layers[0]) is keras.layers.DepthwiseConv2D
    np.testing.assert_allclose(export.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(padding="reflect"), "padding"),
        (dict(orthogonal=True), "orthogonal"),
        (dict(dilation_rate=2), "dilation_rate"),
        (dict(filterwise_normalisation=1), "filterwise_normalisation"),
    ],
)
def test_depthwise_rejects_unsupported_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        SpectralDepthwiseConv2D(3, **kwargs)


# ------------------------------------------------------------------ regularizers, callbacks


def test_lorth2d_is_the_unweighted_regularizer():
    kernel = RNG.normal(size=(3, 3, 2, 4)).astype("float32")
    value = float(Lorth2D((3, 3, 2, 4), stride=1, flag_deconv=False)._compute_lorth(kernel))
    assert value == pytest.approx(float(LorthRegularizer((3, 3, 2, 4), 1, 1.0)(kernel)))
    assert value > 0


def test_lorth_regularizer_flag_deconv_is_conv_transpose():
    kernel = RNG.normal(size=(3, 3, 4, 2)).astype("float32")
    with pytest.warns(DeprecationWarning, match="conv_transpose"):
        old = LorthRegularizer((3, 3, 4, 2), 1, 1.0, 2, flag_deconv=True)
    assert old.conv_transpose is True
    assert old.get_config()["conv_transpose"] is True
    assert float(old(kernel)) == pytest.approx(
        float(LorthRegularizer((3, 3, 4, 2), 1, 1.0, 2, True)(kernel))
    )


def _scalar_steps(logdir) -> list[int]:
    steps = []
    for path in glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            if any(v.tag.endswith("_max") for v in event.summary.value):
                steps.append(int(event.step))
    return sorted(steps)


@pytest.mark.parametrize(
    "on_epoch, on_batch, expected",
    [
        (True, False, [0, 1]),
        (False, True, [0, 1, 2, 3, 4, 5]),
        (True, True, [0, 1, 2, 3, 4, 5]),
        (False, False, []),
    ],
)
def test_monitor_callback_on_epoch_on_batch(tmp_path, on_epoch, on_batch, expected):
    from deel_lip.callbacks import MonitorCallback

    model = keras.Sequential([keras.Input((4,)), SpectralDense(2, name="d")])
    model.compile(optimizer="sgd", loss="mse")
    callback = MonitorCallback(["d"], str(tmp_path), on_epoch=on_epoch, on_batch=on_batch)
    model.fit(
        RNG.normal(size=(12, 4)),
        RNG.normal(size=(12, 2)),
        batch_size=4,
        epochs=2,
        verbose=0,
        callbacks=[callback],
    )
    assert _scalar_steps(str(tmp_path)) == expected
    assert MonitorCallback.from_config(callback.get_config()).on_batch is on_batch
    with pytest.raises(ValueError, match="on_batch"):
        MonitorCallback(["d"], str(tmp_path), on_batch="yes")


# ------------------------------------------------------------------ metric values


def test_metrics_give_deel_lip_values_on_fixed_inputs():
    """deel-lip's formulas: margin over 2 L (disjoint neurons) or sqrt(2) L, sign for binary."""
    from deel_lip import metrics

    y_pred = np.array([[3.0, 1.0, 0.0], [0.5, 0.4, 2.0], [1.0, 0.2, 0.1]], "float32")
    y_true = np.eye(3, dtype="float32")[[0, 2, 1]]
    margin = np.array([2.0, 1.5, -0.8])  # f_y - max_{j != y} f_j
    for disjoint, factor in ((True, 2.0 * 1.5), (False, np.sqrt(2.0) * 1.5)):
        acc = metrics.CategoricalProvableRobustAccuracy(0.55, 1.5, disjoint)
        assert float(acc(y_true, y_pred)) == pytest.approx(np.mean(margin / factor > 0.55))
        avg = metrics.CategoricalProvableAvgRobustness(1.5, disjoint, negative_robustness=True)
        assert float(avg(y_true, y_pred)) == pytest.approx(np.mean(margin / factor), rel=1e-5)
    b_pred = np.array([[0.7], [-0.2], [0.1], [-1.5]], "float32")
    b_true = np.array([[1.0], [1.0], [0.0], [0.0]], "float32")
    signed = np.array([0.7, -0.2, -0.1, 1.5])
    acc = metrics.BinaryProvableRobustAccuracy(0.3, 2.0)
    assert float(acc(b_true, b_pred)) == pytest.approx(np.mean(signed / 2.0 > 0.3))
    avg = metrics.BinaryProvableAvgRobustness(2.0, negative_robustness=False)
    assert float(avg(b_true, b_pred)) == pytest.approx(np.mean(np.maximum(signed, 0) / 2.0))


# ------------------------------------------------------------------ deel-lip's workflow


def test_deel_lip_readme_workflow_runs_with_the_prefix_changed(digits, tmp_path):
    """deel-lip's documented recipe (layers, HKR loss, provable metric, condense, export,
    save/load), with ``deel.lip`` replaced by ``deel_lip``, trains on real digits."""
    from deel_lip.activations import GroupSort2 as GS2
    from deel_lip.callbacks import CondenseCallback
    from deel_lip.layers import FrobeniusDense, ScaledL2NormPooling2D
    from deel_lip.losses import MulticlassHKR
    from deel_lip.metrics import CategoricalProvableRobustAccuracy
    from deel_lip.model import vanillaModel

    keras.utils.set_random_seed(0)
    images, labels = digits
    y = keras.utils.to_categorical(labels, 10)
    model = Sequential(
        [
            keras.Input((8, 8, 1)),
            SpectralConv2D(16, (3, 3), k_coef_lip=1.0),
            GS2(),
            ScaledL2NormPooling2D(pool_size=(2, 2)),
            keras.layers.Flatten(),
            SpectralDense(64),
            GS2(),
            FrobeniusDense(10, activation=None, disjoint_neurons=False),
        ],
        k_coef_lip=1.0,
        name="hkr_model",
    )
    model.compile(
        loss=MulticlassHKR(alpha=50.0, min_margin=0.5),
        optimizer=keras.optimizers.Adam(5e-3),
        metrics=["accuracy", CategoricalProvableRobustAccuracy(epsilon=0.1, lip_const=1.0)],
    )
    history = model.fit(
        images[:1500],
        y[:1500],
        batch_size=50,
        epochs=10,
        verbose=0,
        callbacks=[CondenseCallback(on_epoch=True)],
    )
    assert history.history["accuracy"][-1] > 0.8
    export = vanillaModel(model)
    x_test = images[1500:]
    np.testing.assert_allclose(
        export.predict(x_test, verbose=0), model.predict(x_test, verbose=0), atol=1e-5
    )
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(
        loaded.predict(x_test, verbose=0), model.predict(x_test, verbose=0)
    )
