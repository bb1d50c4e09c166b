"""A model is current after training: inference, export and saving use the final weights.

The inference cache of a constrained layer is refreshed by each training call, *before*
the optimizer step that follows it; the ``cache_stale`` flag makes the next inference call
recompute it from the current weights. Reference everywhere: a copy of the model whose
caches are recomputed eagerly from its final weights.
"""

import warnings

import keras
import numpy as np
import pytest

from deel_lip.layers import (
    ConstrainedKernel,
    GroupSort2,
    ScaledL2NormPooling2D,
    SpectralConv2D,
    SpectralDense,
)
from deel_lip.model import Sequential, condense, vanilla_export


def _data(digits, n=384):
    images, labels = digits
    return images[:n], keras.utils.to_categorical(labels[:n], 10).astype("float32")


def _layers():
    return [
        keras.Input((8, 8, 1)),
        SpectralConv2D(8, 3, name="conv"),
        GroupSort2(name="gs_conv"),
        ScaledL2NormPooling2D(2, name="pool"),
        keras.layers.Flatten(name="flat"),
        SpectralDense(16, name="dense"),
        GroupSort2(name="gs_dense"),
        SpectralDense(10, name="head"),
    ]


def _model(kind: str):
    if kind == "deel_lip":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Sequential(_layers())
    return keras.Sequential(_layers())


def _constrained(model):
    return [layer for layer in model.layers if isinstance(layer, ConstrainedKernel)]


def _fresh_reference(model):
    """Copy of ``model`` whose caches are recomputed eagerly from its current weights."""
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    for layer in _constrained(reference):
        layer.constrained_kernel.assign(layer.compute_constrained_kernel()[0])
        layer.cache_stale.assign(False)
    return reference


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, "float64") - np.asarray(b, "float64"))))


def _fit(model, x, y, jit_compile=False, **kwargs):
    model.compile(keras.optimizers.Adam(1e-2), "mse", jit_compile=jit_compile)
    model.fit(x, y, batch_size=64, verbose=0, shuffle=False, **kwargs)


@pytest.mark.parametrize("kind", ["deel_lip", "keras"])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_export_and_predict_after_fit_use_the_final_weights(digits, kind, jit_compile):
    x, y = _data(digits)
    model = _model(kind)
    _fit(model, x, y, jit_compile, epochs=2)
    stale_caches = [np.array(layer.constrained_kernel) for layer in _constrained(model)]
    assert all(bool(np.asarray(layer.cache_stale)) for layer in _constrained(model))
    reference = _fresh_reference(model)
    expected = np.asarray(reference(x))
    # The last step's caches predate the last optimizer update (what the fix is about).
    fresh = [np.array(layer.constrained_kernel) for layer in _constrained(reference)]
    assert max(_max_diff(a, b) for a, b in zip(stale_caches, fresh, strict=True)) > 1e-4

    exported = vanilla_export(model)
    for layer in _constrained(model):  # the export changes nothing
        assert bool(np.asarray(layer.cache_stale))
    assert _max_diff(exported(x), expected) <= 1e-6
    for layer, ref in zip(_constrained(model), _constrained(reference), strict=True):
        kernel = exported.get_layer(layer.name).kernel
        assert _max_diff(kernel, ref.constrained_kernel) <= 1e-6

    predicted = model.predict(x, verbose=0)
    assert _max_diff(predicted, expected) <= 1e-5
    assert not any(bool(np.asarray(layer.cache_stale)) for layer in _constrained(model))
    for layer, ref in zip(_constrained(model), _constrained(reference), strict=True):
        assert _max_diff(layer.constrained_kernel, ref.constrained_kernel) <= 1e-6
    # Same function as the condensed model (projection of the final weights).
    condensed = keras.models.clone_model(model)
    condensed.set_weights(model.get_weights())
    condense(condensed)
    assert _max_diff(predicted, condensed(x)) <= 1e-4


def test_evaluate_after_fit_uses_the_final_weights(digits):
    x, y = _data(digits)
    model = _model("keras")
    _fit(model, x, y, epochs=1)
    expected = float(np.mean((np.asarray(_fresh_reference(model)(x)) - y) ** 2))
    loss = model.evaluate(x, y, batch_size=len(x), verbose=0)
    assert abs(loss - expected) <= 1e-6


def test_train_on_batch_loop_then_predict_and_export(digits):
    x, y = _data(digits)
    model = _model("keras")
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    for start in range(0, len(x), 64):
        model.train_on_batch(x[start : start + 64], y[start : start + 64])
    expected = np.asarray(_fresh_reference(model)(x))
    assert _max_diff(vanilla_export(model)(x), expected) <= 1e-6
    assert _max_diff(model.predict(x, verbose=0), expected) <= 1e-5
    assert _max_diff(model(x), expected) <= 1e-6


def test_save_after_fit_reloads_the_final_model(digits, tmp_path):
    x, y = _data(digits)
    model = _model("deel_lip")
    _fit(model, x, y, epochs=1)
    expected = np.asarray(_fresh_reference(model)(x))
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert not any(bool(np.asarray(layer.cache_stale)) for layer in _constrained(reloaded))
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(model(x)))
    assert _max_diff(reloaded(x), expected) <= 1e-6
    weights_path = str(tmp_path / "model.weights.h5")
    model.save_weights(weights_path)
    twin = _model("deel_lip")
    twin.load_weights(weights_path)
    np.testing.assert_array_equal(np.asarray(twin(x)), np.asarray(model(x)))


def test_inference_between_epochs_does_not_change_training(digits):
    """Inference refreshes only the cache, not the normalisation state: a fit with
    validation after every epoch ends with exactly the weights of a fit without."""
    x, y = _data(digits)
    weights = []
    for validate in (False, True):
        keras.utils.set_random_seed(4)
        model = _model("keras")
        extra = {"validation_data": (x[:128], y[:128])} if validate else {}
        _fit(model, x, y, epochs=2, **extra)
        cache = ("constrained_kernel", "cache_stale")
        weights.append([np.array(v) for v in model.weights if not v.path.endswith(cache)])
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_inference_on_a_current_cache_moves_no_variable(digits):
    x, y = _data(digits)
    model = _model("keras")
    _fit(model, x, y, epochs=1)
    first = model.predict(x, verbose=0)
    state = [np.array(v) for v in model.weights]
    again = model.predict(x, verbose=0)
    model.evaluate(x, y, verbose=0)
    vanilla_export(model)
    for before, after in zip(state, model.weights, strict=True):
        np.testing.assert_array_equal(before, np.asarray(after))
    np.testing.assert_array_equal(first, again)
