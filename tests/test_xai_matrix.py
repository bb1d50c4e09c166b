"""Every Xplique attribution method x every Xplique metric on a small trained deel_lip model.

The model (SpectralConv2D / GroupSort2 / ScaledL2NormPooling2D / SpectralDense) is trained
for a few epochs on the real 8x8 digits; 8 held-out digits are explained with small
settings. Tables are computed once per module (`evaluate_attributions`, shared fixtures)
and each (method, metric) pair is a test case. ``MeGe`` / ``ReCo`` use a learning
algorithm that fine-tunes a copy of the trained model on each split (memoised).

By default four methods (one per family of quirks: plain gradient, ReLU override, Grad-CAM,
black box) meet every metric, and every method is run on both label encodings
(`test_attributions_shape_and_label_encodings`); the other methods' pairs are marked slow
(``pytest -m slow``), to keep ``make test`` lean.
"""

import time

import keras
import numpy as np
import pytest

pytest.importorskip("xplique")

from deel_lip.layers import GroupSort2, ScaledL2NormPooling2D, SpectralConv2D, SpectralDense  # noqa: E402
from deel_lip.model import Sequential  # noqa: E402
from deel_lip.xai import (  # noqa: E402
    ATTRIBUTION_METHODS,
    METRICS,
    evaluate_attributions,
    explainer,
    seeded,
)

N_SAMPLES = 8

METHOD_KWARGS = {
    "IntegratedGradients": {"steps": 5},
    "SmoothGrad": {"nb_samples": 4},
    "VarGrad": {"nb_samples": 4},
    "SquareGrad": {"nb_samples": 4},
    "Occlusion": {"patch_size": 2, "patch_stride": 2},
    "Rise": {"nb_samples": 32, "grid_size": 4},
    "Lime": {"nb_samples": 32},
    "KernelShap": {"nb_samples": 32},
    "SobolAttributionMethod": {"grid_size": 4, "nb_design": 8},
    "HsicAttributionMethod": {"grid_size": 4, "nb_design": 16},
}

REPRESENTATIVE_METHODS = ["Saliency", "GuidedBackprop", "GradCAM", "Rise"]
OTHER_METHODS = [m for m in ATTRIBUTION_METHODS if m not in REPRESENTATIVE_METHODS]

METRIC_KWARGS = {
    "Deletion": {"steps": 4},
    "Insertion": {"steps": 4},
    "MuFidelity": {"nb_samples": 16, "grid_size": 4},
    "AverageStability": {"nb_samples": 3},
    "MeGe": {"k_splits": 2},
}


@pytest.fixture(scope="module")
def trained(digits):
    images, labels = digits
    keras.utils.set_random_seed(0)
    model = Sequential(
        [
            keras.Input((8, 8, 1)),
            SpectralConv2D(8, 3),
            GroupSort2(),
            ScaledL2NormPooling2D(),
            keras.layers.Flatten(),
            SpectralDense(10),
        ]
    )
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False,
    )
    model.fit(images[:1500], labels[:1500], epochs=3, batch_size=64, verbose=0)
    accuracy = model.evaluate(images[1500:], labels[1500:], verbose=0)[1]
    assert accuracy > 0.7  # a trained model, not a random one
    x, y = images[1500 : 1500 + N_SAMPLES], labels[1500 : 1500 + N_SAMPLES]
    return model, x, y


def _table(trained, methods, metrics):
    model, x, y = trained
    fine_tuned = {}

    def learning_algorithm(x_train, y_train, x_test, y_test):
        key = x_train.tobytes()
        if key not in fine_tuned:
            copy = keras.models.clone_model(model)
            copy.set_weights(model.get_weights())
            copy.compile(
                keras.optimizers.SGD(1e-2),
                keras.losses.CategoricalCrossentropy(from_logits=True),
                jit_compile=False,
            )
            copy.fit(x_train, y_train, epochs=2, verbose=0)
            fine_tuned[key] = copy
        return fine_tuned[key]

    start = time.perf_counter()
    result = evaluate_attributions(
        model,
        x,
        y,
        methods,
        metrics,
        method_kwargs={m: METHOD_KWARGS[m] for m in methods if m in METHOD_KWARGS},
        metric_kwargs={m: METRIC_KWARGS[m] for m in metrics if m in METRIC_KWARGS},
        learning_algorithm=learning_algorithm,
        seed=0,
    )
    print(f"\n{len(methods)} x {len(metrics)} table: {time.perf_counter() - start:.1f} s")
    return result


@pytest.fixture(scope="module")
def table(trained):
    return _table(trained, REPRESENTATIVE_METHODS, METRICS)


@pytest.fixture(scope="module")
def slow_table(trained):
    return _table(trained, OTHER_METHODS, METRICS)


def _check(value, method, metric):
    assert isinstance(value, float)
    assert np.isfinite(value), f"{method} x {metric} = {value}"


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("method", REPRESENTATIVE_METHODS)
def test_method_with_metric(table, method, metric):
    _check(table[method][metric], method, metric)


@pytest.mark.slow
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("method", OTHER_METHODS)
def test_method_with_metric_slow(slow_table, method, metric):
    _check(slow_table[method][metric], method, metric)


def test_the_matrix_is_complete():
    default = {(m, k) for m in REPRESENTATIVE_METHODS for k in METRICS}
    slow = {(m, k) for m in OTHER_METHODS for k in METRICS}
    assert default | slow == {(m, k) for m in ATTRIBUTION_METHODS for k in METRICS}
    assert not default & slow


@pytest.mark.parametrize("method", ATTRIBUTION_METHODS)
def test_attributions_shape_and_label_encodings(trained, method):
    model, x, y = trained
    e = explainer(method, model, **METHOD_KWARGS.get(method, {}))
    with seeded(0):
        from_indices = np.asarray(e(x, y))
    with seeded(0):
        from_one_hot = np.asarray(e(x, keras.utils.to_categorical(y, 10)))
    assert from_indices.shape == (N_SAMPLES, 8, 8, 1)
    assert np.all(np.isfinite(from_indices))
    assert np.any(from_indices != 0)
    np.testing.assert_array_equal(from_indices, from_one_hot)
