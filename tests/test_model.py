"""Model-level properties: export equality, save/load, jit, dtype policies, Sequential."""

import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

from deel_lip.layers import SpectralConv2D, SpectralDense
from deel_lip.model import Model, Sequential, condense, vanilla_export
from deel_lip.normalizers import kernel_matrix


def _digits_data(digits, n=256):
    images, labels = digits
    return images[:n], keras.utils.to_categorical(labels[:n], 10).astype("float32")


def _cnn(name_prefix="m", k_coef_lip=1.0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Sequential(
            [
                keras.Input((8, 8, 1)),
                SpectralConv2D(8, 3, name=f"{name_prefix}_conv"),
                keras.layers.Flatten(name=f"{name_prefix}_flat"),
                SpectralDense(16, name=f"{name_prefix}_dense"),
                keras.layers.Dense(10, name=f"{name_prefix}_head"),
            ],
            k_coef_lip=k_coef_lip,
        )


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, "float64") - np.asarray(b, "float64"))))


def test_export_equals_model_before_and_after_more_training(digits):
    x, y = _digits_data(digits)
    model = _cnn()
    model.compile("adam", "mse")
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    exported = vanilla_export(model)
    assert [type(layer).__name__ for layer in exported.layers] == [
        "Conv2D",
        "Flatten",
        "Dense",
        "Dense",
    ]
    assert [layer.name for layer in exported.layers] == [layer.name for layer in model.layers]
    assert _max_diff(exported(x), model(x)) <= 1e-6
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    assert _max_diff(exported(x), model(x)) > 1e-4  # the export is a copy, not a view
    exported_again = model.vanilla_export()
    assert _max_diff(exported_again(x), model(x)) <= 1e-6
    # the export shares no variable with the original
    original_ids = {id(v) for v in model.weights}
    assert not original_ids & {id(v) for v in exported_again.weights}


def test_functional_model_export_and_nested_model(digits):
    x, _ = _digits_data(digits, 32)
    inner = Sequential([keras.Input((16,)), SpectralDense(8, name="inner_dense")], name="inner")
    inputs = keras.Input((8, 8, 1))
    h = SpectralConv2D(4, 3, padding="reflect", name="conv_reflect")(inputs)
    h = keras.layers.Flatten()(h)
    h = SpectralDense(16, name="dense16")(h)
    outputs = inner(h)
    model = Model(inputs, outputs)
    exported = model.vanilla_export()
    assert type(exported).__module__.startswith("keras")
    assert _max_diff(exported(x), model(x)) <= 1e-6
    assert exported.get_layer("inner").get_layer("inner_dense").__class__ is keras.layers.Dense


def test_export_is_pure_and_works_with_any_compile_settings(digits):
    x, y = _digits_data(digits, 64)
    model = _cnn()
    model.compile("adam", lambda y_true, y_pred: keras.ops.mean((y_true - y_pred) ** 2))
    model.fit(x, y, epochs=1, verbose=0)
    weights_before = [np.array(w) for w in model.weights]
    exported = vanilla_export(model)
    for before, after in zip(weights_before, model.weights):
        np.testing.assert_array_equal(before, np.asarray(after))  # export mutates nothing
    assert _max_diff(exported(x), model(x)) == 0.0
    condense(model)
    condense(model)
    assert _max_diff(vanilla_export(model)(x), model(x)) == 0.0


def test_export_requires_built_model():
    with pytest.raises(ValueError, match="built"):
        vanilla_export(keras.Sequential([SpectralDense(3)]))
    with pytest.raises(TypeError, match="model"):
        vanilla_export(SpectralDense(3))


def test_save_load_restores_everything_and_continued_training_is_identical(tmp_path, digits):
    x, y = _digits_data(digits)
    model = _cnn()
    model.compile(keras.optimizers.SGD(0.05), "mse")
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, shuffle=False)
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert type(reloaded) is Sequential
    assert reloaded.k_coef_lip == model.k_coef_lip
    assert _max_diff(reloaded(x), model(x)) == 0.0
    for a, b in zip(model.weights, reloaded.weights):
        assert a.path.split("/")[-2:] == b.path.split("/")[-2:]
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    model.fit(x, y, epochs=2, batch_size=64, verbose=0, shuffle=False)
    reloaded.fit(x, y, epochs=2, batch_size=64, verbose=0, shuffle=False)
    assert _max_diff(reloaded(x), model(x)) <= 1e-6


def test_unbuilt_sequential_first_call_inside_fit_and_predict(digits):
    x, y = _digits_data(digits, 64)
    flat = x.reshape(len(x), -1)
    for first in ("fit", "predict"):
        model = keras.Sequential([SpectralDense(16), SpectralDense(10)])
        if first == "fit":
            model.compile("adam", "mse")
            model.fit(flat, y, epochs=1, verbose=0)
        predicted = model.predict(flat, verbose=0)
        # Inference reads the cache: it neither recomputes nor moves the layer state.
        state = [np.array(v) for layer in model.layers for v in layer.non_trainable_variables]
        again = model.predict(flat, verbose=0)
        after = [np.array(v) for layer in model.layers for v in layer.non_trainable_variables]
        for a, b in zip(state, after, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(again, predicted)
        for layer in model.layers:
            sv = np.linalg.svd(
                np.asarray(kernel_matrix(layer.constrained_kernel)), compute_uv=False
            )
            assert sv.max() <= 1 + 1e-4
            assert sv.min() >= 1 - 1e-3
        assert _max_diff(predicted, model(flat)) <= 1e-5


def test_jit_compile_matches_eager_graph(digits):
    x, y = _digits_data(digits)
    results = []
    for jit in (False, True):
        keras.utils.set_random_seed(1)
        model = _cnn()
        model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=jit)
        model.fit(x, y, epochs=2, batch_size=64, verbose=0, shuffle=False)
        results.append(np.asarray(model(x)))
    assert _max_diff(*results) <= 1e-4


@pytest.mark.parametrize("policy", ["bfloat16", "float16"])
def test_16_bit_variable_policies_are_refused(policy):
    for layer in (
        lambda: SpectralDense(3, dtype=policy),
        lambda: SpectralConv2D(3, 3, dtype=policy),
    ):
        with pytest.raises(ValueError, match=f"mixed_bfloat16.*{policy}"):
            layer()


@pytest.mark.parametrize("policy", ["float32", "float64", "mixed_bfloat16"])
def test_dtype_policies_train_and_keep_the_bound(policy, digits):
    x, y = _digits_data(digits, 128)
    keras.config.set_dtype_policy(policy)
    try:
        model = _cnn()
        model.compile("adam", "mse")
        model.fit(x, y, epochs=1, batch_size=64, verbose=0)
        out = model(x)
        expected = {"float32": "float32", "float64": "float64", "mixed_bfloat16": "bfloat16"}
        assert keras.backend.standardize_dtype(out.dtype) == expected[policy]
        dense = model.get_layer("m_dense")
        # the normalisation runs in the variable dtype: float32 at least
        assert keras.backend.standardize_dtype(dense.constrained_kernel.dtype) in (
            "float32",
            "float64",
        )
        sv = np.linalg.svd(np.asarray(dense.constrained_kernel, "float64"), compute_uv=False)
        assert sv.max() <= 1 + 1e-4
        assert np.all(np.isfinite(np.asarray(out, "float32")))
    finally:
        keras.config.set_dtype_policy("float32")


def test_sequential_spreads_k_coef_lip_and_warns():
    with pytest.warns(UserWarning, match="not known to be Lipschitz"):
        model = Sequential(
            [keras.Input((4,)), SpectralDense(4), keras.layers.Dense(4), SpectralDense(2)],
            k_coef_lip=4.0,
        )
    coefs = [layer._get_coef() for layer in model.layers if isinstance(layer, SpectralDense)]
    assert coefs == pytest.approx([2.0, 2.0])
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    clone = Sequential.from_config(model.get_config())
    assert clone.k_coef_lip == 4.0
    with pytest.raises(ValueError, match="k_coef_lip"):
        Sequential([SpectralDense(2)], k_coef_lip=0.0)
    # ReLU, Flatten and our layers do not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Sequential([keras.Input((4,)), SpectralDense(4), keras.layers.ReLU(), SpectralDense(2)])
    assert model(x).shape == (3, 2)


def test_condense_projects_raw_kernel_and_keeps_the_function(digits):
    x, y = _digits_data(digits, 128)
    model = _cnn()
    model.compile("adam", "mse")
    model.fit(x, y, epochs=1, verbose=0)
    # the function of the current weights (the inference cache lags one optimizer step)
    before = np.asarray(model(x, training=True))
    condense(model)
    dense = model.get_layer("m_dense")
    raw_sv = np.linalg.svd(np.asarray(dense.kernel), compute_uv=False)
    np.testing.assert_allclose(raw_sv, 1.0, atol=1e-3)
    assert _max_diff(model(x), before) <= 1e-3


_MIRRORED_SCRIPT = textwrap.dedent(
    """
    import os, sys, json
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras, numpy as np
    from deel_lip.layers import SpectralConv2D, SpectralDense
    from deel_lip.datasets import load_digits

    images, labels = load_digits()
    x = images[:256]
    y = keras.utils.to_categorical(labels[:256], 10).astype("float32")

    def run(strategy):
        keras.utils.set_random_seed(3)
        with strategy.scope():
            model = keras.Sequential([
                keras.Input((8, 8, 1)), SpectralConv2D(8, 3), keras.layers.Flatten(),
                SpectralDense(16), keras.layers.Dense(10),
            ])
            model.compile(keras.optimizers.SGD(0.05), "mse")
        model.fit(x, y, epochs=2, batch_size=64, verbose=0, shuffle=False)
        return np.asarray(model.predict(x, verbose=0))

    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    one = run(tf.distribute.OneDeviceStrategy(devices[0]))
    two = run(tf.distribute.MirroredStrategy(devices))
    print(json.dumps({"replicas": len(devices), "diff": float(np.abs(one - two).max())}))
    """
)


# ~30-45 s: slow-marked; SpectralConv2D trained across replicas equals one device in
# test_multiworker.py, and SpectralDense models under MirroredStrategy in
# test_losses_distributed.py, both in the default run.
@pytest.mark.slow
def test_mirrored_strategy_two_cpus_matches_one_device():
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["diff"] <= 1e-4


def test_vanilla_model_is_deel_lips_name_of_vanilla_export(digits):
    from deel_lip.model import vanillaModel

    x, _ = _digits_data(digits, n=32)
    model = _cnn("vm")
    with pytest.warns(DeprecationWarning, match="vanilla_export"):
        exported = vanillaModel(model)
    assert _max_diff(exported(x), model(x)) <= 1e-6
    with pytest.warns(DeprecationWarning, match="vanilla_export"):
        exported = model.vanillaModel()
    assert _max_diff(exported(x), model(x)) <= 1e-6
