"""Certified-robustness metrics: formulas, streaming, label encodings, config, errors."""

import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from deel_lip.metrics import (
    BinaryProvableAvgRobustness,
    BinaryProvableRobustAccuracy,
    CategoricalProvableAvgRobustness,
    CategoricalProvableRobustAccuracy,
)
from deel_lip.robustness import certified_radius

SQRT2 = math.sqrt(2.0)
ALL_METRICS = [
    CategoricalProvableRobustAccuracy,
    BinaryProvableRobustAccuracy,
    CategoricalProvableAvgRobustness,
    BinaryProvableAvgRobustness,
]


def _value(metric, y_true, y_pred, sample_weight=None):
    metric.reset_state()
    metric.update_state(y_true, y_pred, sample_weight=sample_weight)
    return float(metric.result())


@pytest.fixture(scope="module")
def real_logits(mnist_small):
    """Logits of a fixed linear map of 1,000 real MNIST images, and their labels.

    The map is scaled so that about 70% of the images are correctly classified, with
    margins spread around the radii tested.
    """
    images, labels = mnist_small
    flat = images.reshape(len(images), -1).astype("float64")
    means = np.stack([flat[labels == c].mean(0) for c in range(10)])
    logits = 0.3 * (flat @ means.T) / np.linalg.norm(means, axis=1)
    logits += np.random.default_rng(0).normal(0.0, 0.3, logits.shape)
    return logits.astype("float32"), labels


# ------------------------------------------------------------------ hand-computed values


def test_multiclass_formulas_on_hand_computed_logits():
    # sample 0: true class 0, margin 3 - 1 = 2 -> radius 2/sqrt(2) (whole vector), 2/2;
    # sample 1: true class 0, margin 0.5 - 2 = -1.5 -> misclassified.
    logits = np.array([[3.0, 1.0, 0.0], [0.5, 2.0, 1.0]], "float32")
    labels = np.array([0, 0])
    whole = CategoricalProvableAvgRobustness(disjoint_neurons=False)
    disjoint = CategoricalProvableAvgRobustness(disjoint_neurons=True)
    signed = CategoricalProvableAvgRobustness(disjoint_neurons=False, negative_robustness=True)
    assert _value(whole, labels, logits) == pytest.approx((2 / SQRT2 + 0) / 2, rel=1e-6)
    assert _value(disjoint, labels, logits) == pytest.approx((2 / 2 + 0) / 2, rel=1e-6)
    assert _value(signed, labels, logits) == pytest.approx((2 - 1.5) / SQRT2 / 2, rel=1e-6)
    lip2 = CategoricalProvableAvgRobustness(lip_const=2.0, disjoint_neurons=False)
    assert _value(lip2, labels, logits) == pytest.approx((1 / SQRT2) / 2, rel=1e-6)
    # robust accuracy: sample 0 has radius sqrt(2) ~ 1.414 (whole) and 1.0 (disjoint)
    for eps, expected_whole, expected_disjoint in [(0.0, 0.5, 0.5), (1.2, 0.5, 0.0)]:
        acc_w = CategoricalProvableRobustAccuracy(eps, disjoint_neurons=False)
        acc_d = CategoricalProvableRobustAccuracy(eps, disjoint_neurons=True)
        assert _value(acc_w, labels, logits) == expected_whole
        assert _value(acc_d, labels, logits) == expected_disjoint
    # certified_radius: same numbers, and without labels the radius of the predicted class
    np.testing.assert_allclose(
        certified_radius(logits, labels, disjoint_neurons=False), [SQRT2, 0.0], rtol=1e-6
    )
    np.testing.assert_allclose(
        certified_radius(logits, labels, disjoint_neurons=False, negative=True),
        [SQRT2, -1.5 / SQRT2],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        certified_radius(logits, disjoint_neurons=True), [1.0, 0.5], rtol=1e-6
    )


def test_binary_formulas_and_label_encodings():
    # radius |f| / L; with labels the sign of f must match the label
    scores = np.array([[0.8], [-0.3], [0.2]], "float32")
    labels01 = np.array([1, 1, 0])
    labels_pm = np.array([1, 1, -1])
    expected = [0.8, 0.0, 0.0]
    expected_signed = [0.8, -0.3, -0.2]
    for labels in (labels01, labels_pm, labels01.reshape(-1, 1), labels_pm.astype("float32")):
        for logits in (scores, scores.reshape(-1)):
            np.testing.assert_allclose(certified_radius(logits, labels), expected, rtol=1e-6)
            np.testing.assert_allclose(
                certified_radius(logits, labels, negative=True), expected_signed, rtol=1e-6
            )
            avg = BinaryProvableAvgRobustness(lip_const=2.0)
            assert _value(avg, labels, logits) == pytest.approx(0.8 / 2 / 3, rel=1e-6)
            signed = BinaryProvableAvgRobustness(negative_robustness=True)
            assert _value(signed, labels, logits) == pytest.approx(0.3 / 3, rel=1e-5)
            acc = BinaryProvableRobustAccuracy(epsilon=0.5)
            assert _value(acc, labels, logits) == pytest.approx(1 / 3)
            assert _value(BinaryProvableRobustAccuracy(0.9), labels, logits) == 0.0
    np.testing.assert_allclose(certified_radius(scores), [0.8, 0.3, 0.2], rtol=1e-6)


# ------------------------------------------------------------------ real data, streaming


@pytest.mark.parametrize("disjoint", [False, True])
def test_categorical_metrics_equal_numpy_and_stream(real_logits, disjoint):
    logits, labels = real_logits
    one_hot = keras.utils.to_categorical(labels, 10)
    signed = certified_radius(logits, labels, disjoint_neurons=disjoint, negative=True)
    assert 0.5 < np.mean(signed > 0) < 0.95  # a mix of correct and wrong predictions
    eps = 0.1
    cases = [
        (CategoricalProvableRobustAccuracy(eps, disjoint_neurons=disjoint), np.mean(signed > eps)),
        (CategoricalProvableAvgRobustness(disjoint_neurons=disjoint), np.maximum(signed, 0).mean()),
        (
            CategoricalProvableAvgRobustness(disjoint_neurons=disjoint, negative_robustness=True),
            signed.mean(),
        ),
    ]
    for metric, expected in cases:
        assert 0 < abs(expected)
        assert _value(metric, one_hot, logits) == pytest.approx(expected, rel=1e-5)
        assert _value(metric, labels, logits) == pytest.approx(expected, rel=1e-5)
        # streaming: three unequal batches == one big batch
        metric.reset_state()
        for part in np.split(np.arange(len(labels)), [100, 550]):
            metric.update_state(one_hot[part], logits[part])
        assert float(metric.result()) == pytest.approx(expected, rel=1e-5)
        metric.reset_state()
        assert float(metric.result()) == 0.0
        assert [float(v) for v in metric.variables] == [0.0, 0.0]


def test_binary_metrics_equal_numpy_and_stream(real_logits):
    logits, labels = real_logits
    # binary task "digit < 5": score = (mean of logits 0-4) - (mean of logits 5-9)
    scores = (logits[:, :5].mean(1) - logits[:, 5:].mean(1)).reshape(-1, 1) * 4
    y01 = (labels < 5).astype("int64")
    ypm = 2 * y01 - 1
    signed = certified_radius(scores, y01, lip_const=2.0, negative=True)
    np.testing.assert_array_equal(signed, certified_radius(scores, ypm, 2.0, negative=True))
    assert 0.5 < np.mean(signed > 0) < 1.0
    cases = [
        (BinaryProvableRobustAccuracy(0.05, lip_const=2.0), np.mean(signed > 0.05)),
        (BinaryProvableAvgRobustness(lip_const=2.0), np.maximum(signed, 0).mean()),
        (BinaryProvableAvgRobustness(2.0, negative_robustness=True), signed.mean()),
    ]
    for metric, expected in cases:
        for y in (y01, ypm, y01.reshape(-1, 1)):
            assert _value(metric, y, scores) == pytest.approx(expected, rel=1e-5)
        metric.reset_state()
        for part in np.split(np.arange(len(labels)), [10, 700]):
            metric.update_state(ypm[part], scores[part])
        assert float(metric.result()) == pytest.approx(expected, rel=1e-5)


def test_sample_weights(real_logits):
    logits, labels = real_logits
    weights = np.random.default_rng(1).uniform(0, 2, len(labels)).astype("float32")
    signed = certified_radius(logits, labels, disjoint_neurons=False, negative=True)
    metric = CategoricalProvableAvgRobustness(disjoint_neurons=False)
    expected = np.sum(np.maximum(signed, 0) * weights) / weights.sum()
    assert _value(metric, labels, logits, weights) == pytest.approx(expected, rel=1e-5)
    assert _value(metric, labels, logits, weights[:, None]) == pytest.approx(expected, rel=1e-5)
    zero_out_wrong = (signed > 0).astype("float32")
    accuracy = CategoricalProvableRobustAccuracy(0.0, disjoint_neurons=False)
    assert _value(accuracy, labels, logits, zero_out_wrong) == 1.0


def test_metrics_stream_in_evaluate_and_fit(real_logits):
    logits, labels = real_logits
    # a model whose outputs are the fixed logits: a Dense layer on a one-hot sample index
    index_inputs = np.eye(len(labels), dtype="float32")
    model = keras.Sequential([keras.Input((len(labels),)), keras.layers.Dense(10, use_bias=False)])
    model.layers[0].kernel.assign(logits)
    metrics = [
        CategoricalProvableRobustAccuracy(0.1, disjoint_neurons=False),
        CategoricalProvableAvgRobustness(disjoint_neurons=True, negative_robustness=True),
    ]
    model.compile(
        optimizer="sgd", loss="categorical_crossentropy", metrics=metrics, jit_compile=True
    )
    one_hot = keras.utils.to_categorical(labels, 10)
    results = model.evaluate(index_inputs, one_hot, batch_size=64, return_dict=True, verbose=0)
    signed_whole = certified_radius(logits, labels, disjoint_neurons=False, negative=True)
    signed_disjoint = certified_radius(logits, labels, disjoint_neurons=True, negative=True)
    assert results["categorical_provable_robust_accuracy"] == pytest.approx(
        np.mean(signed_whole > 0.1), rel=1e-5
    )
    assert results["categorical_provable_avg_robustness"] == pytest.approx(
        signed_disjoint.mean(), rel=1e-5
    )
    # fit reports the metric over the whole epoch, not the last batch
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse", metrics=metrics[:1])
    history = model.fit(index_inputs, one_hot, batch_size=100, epochs=1, verbose=0)
    assert history.history["categorical_provable_robust_accuracy"][0] == pytest.approx(
        np.mean(signed_whole > 0.1), rel=1e-5
    )


# ------------------------------------------------------------------ config and errors


@pytest.mark.parametrize("cls", ALL_METRICS)
def test_config_round_trip(cls):
    kwargs = {"lip_const": 2.5, "name": "custom"}
    if "epsilon" in cls.__init__.__code__.co_varnames:
        kwargs["epsilon"] = 0.3
    if "disjoint_neurons" in cls.__init__.__code__.co_varnames:
        kwargs["disjoint_neurons"] = False
    if "negative_robustness" in cls.__init__.__code__.co_varnames:
        kwargs["negative_robustness"] = True
    metric = cls(**kwargs)
    config = metric.get_config()
    for key, value in kwargs.items():
        assert config[key] == value
    clone = cls.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert type(restored) is cls and restored.get_config() == config
    assert isinstance(metric, keras.metrics.Metric)
    assert not isinstance(metric, keras.losses.Loss)


def test_deel_lip_defaults():
    metric = CategoricalProvableRobustAccuracy()
    assert metric.epsilon == pytest.approx(36 / 255)
    assert metric.lip_const == 1.0 and metric.disjoint_neurons is True
    assert CategoricalProvableAvgRobustness().negative_robustness is False


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: CategoricalProvableRobustAccuracy(epsilon=-0.1), "epsilon"),
        (lambda: BinaryProvableRobustAccuracy(epsilon=float("nan")), "epsilon"),
        (lambda: CategoricalProvableAvgRobustness(lip_const=0.0), "lip_const"),
        (lambda: BinaryProvableAvgRobustness(lip_const=-1), "lip_const"),
    ],
)
def test_invalid_arguments_raise_value_error(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_invalid_types_raise_type_error():
    with pytest.raises(TypeError, match="disjoint_neurons"):
        CategoricalProvableRobustAccuracy(disjoint_neurons="yes")
    with pytest.raises(TypeError, match="negative_robustness"):
        BinaryProvableAvgRobustness(negative_robustness=1)


def test_shape_errors():
    with pytest.raises(ValueError, match="classes >= 2"):
        CategoricalProvableRobustAccuracy().update_state(np.ones((4, 1)), np.ones((4, 1)))
    with pytest.raises(ValueError, match="one-hot"):
        CategoricalProvableRobustAccuracy().update_state(np.ones((4, 3)), np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"y_true must have the shape of y_pred"):
        BinaryProvableRobustAccuracy().update_state(np.ones((4,)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="binary predictions"):
        BinaryProvableRobustAccuracy().update_state(np.ones((4,)), np.ones((4, 3, 1)))
    with pytest.raises(ValueError, match="negative=True needs labels"):
        certified_radius(np.ones((4, 3)), negative=True)
    with pytest.raises(ValueError, match="class ids"):
        certified_radius(np.ones((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="one entry per sample"):
        certified_radius(np.ones((2, 3)), np.array([0, 1, 2]))


_DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import os, json
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras, numpy as np
    from deel_lip import metrics as M
    from deel_lip.datasets import load_digits
    from deel_lip.robustness import certified_radius

    images, labels = load_digits()
    images, labels = images[:300], labels[:300]
    flat = images.reshape(len(images), -1)
    means = np.stack([flat[labels == c].mean(0) for c in range(10)])
    logits = (0.2 * flat @ means.T).astype("float32")
    one_hot = keras.utils.to_categorical(labels, 10)
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        model = keras.Sequential([keras.Input((300,)), keras.layers.Dense(10, use_bias=False)])
        model.layers[0].kernel.assign(logits)
        model.compile(
            loss="mse",
            metrics=[
                M.CategoricalProvableRobustAccuracy(0.1, disjoint_neurons=False),
                M.CategoricalProvableAvgRobustness(negative_robustness=True),
            ],
        )
    result = model.evaluate(
        np.eye(300, dtype="float32"), one_hot, batch_size=64, return_dict=True, verbose=0
    )
    signed_whole = certified_radius(logits, labels, disjoint_neurons=False, negative=True)
    signed_disjoint = certified_radius(logits, labels, disjoint_neurons=True, negative=True)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "accuracy": [result["categorical_provable_robust_accuracy"],
                     float(np.mean(signed_whole > 0.1))],
        "avg": [result["categorical_provable_avg_robustness"], float(signed_disjoint.mean())],
    }))
    """
)


def test_metrics_under_mirrored_strategy():
    """Over 2 replicas (2 logical CPUs) evaluate reports the metric over the whole data."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", _DISTRIBUTED_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    values = json.loads(result.stdout.strip().splitlines()[-1])
    assert values["replicas"] == 2
    for key in ("accuracy", "avg"):
        measured, expected = values[key]
        assert measured == pytest.approx(expected, rel=1e-5)
        assert expected != 0
