"""Training callbacks: Xplique metrics in the epoch logs, attribution snapshots, seeding."""

import csv
import glob
import os
import random

import keras
import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("xplique")

from PIL import Image  # noqa: E402

from deel_lip.layers import GroupSort2, SpectralConv2D, SpectralDense  # noqa: E402
from deel_lip.model import Sequential  # noqa: E402
from deel_lip.xai import AttributionSnapshotCallback, XpliqueMetricsCallback, seeded  # noqa: E402

METHODS = ["Saliency", "SmoothGrad"]
METRICS = ["MuFidelity", "Deletion", "Sparseness"]
METHOD_KWARGS = {"SmoothGrad": {"nb_samples": 4}}
METRIC_KWARGS = {"MuFidelity": {"nb_samples": 16, "grid_size": 4}, "Deletion": {"steps": 4}}
KEYS = [f"xai/{method}/{metric}" for method in METHODS for metric in METRICS]


@pytest.fixture(scope="module")
def data(digits):
    images, labels = digits
    return images[:512], labels[:512], images[1700:1708], labels[1700:1708]


def _model():
    keras.utils.set_random_seed(0)
    model = Sequential(
        [
            keras.Input((8, 8, 1)),
            SpectralConv2D(8, 3),
            GroupSort2(),
            keras.layers.Flatten(),
            SpectralDense(10),
        ]
    )
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    return model


def _metrics_callback(x, y, **kwargs):
    return XpliqueMetricsCallback(
        x, y, METHODS, METRICS, method_kwargs=METHOD_KWARGS, metric_kwargs=METRIC_KWARGS, **kwargs
    )


def _fit(data, callbacks, epochs=3):
    x_train, y_train, _, _ = data
    model = _model()
    history = model.fit(
        x_train, y_train, epochs=epochs, batch_size=64, shuffle=True, verbose=0, callbacks=callbacks
    )
    return history.history


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """One 3-epoch run with the metrics callback followed by CSVLogger and TensorBoard."""
    _, _, x, y = data
    directory = tmp_path_factory.mktemp("logs")
    path = str(directory / "log.csv")
    callback = _metrics_callback(x, y, seed=0)
    loggers = [
        keras.callbacks.CSVLogger(path),
        keras.callbacks.TensorBoard(str(directory), write_graph=False),
    ]
    history = _fit(data, [callback, *loggers])
    return history, callback, path


def test_metrics_are_in_history_and_csv(run):
    history, callback, path = run
    for key in KEYS:
        assert len(history[key]) == 3, key
        assert all(np.isfinite(history[key]))
    assert sorted(callback.results) == [0, 1, 2]
    assert callback.results[2] == {key: history[key][2] for key in KEYS}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    for key in KEYS:
        np.testing.assert_allclose([float(row[key]) for row in rows], history[key], rtol=1e-6)


def test_metrics_are_in_tensorboard(run):
    history, _, path = run
    events = glob.glob(os.path.join(os.path.dirname(path), "train", "events.out.tfevents.*"))
    assert events
    logged = {}
    for event_file in events:
        for event in tf.compat.v1.train.summary_iterator(event_file):
            for value in event.summary.value:
                if value.tag.startswith("epoch_xai/"):
                    number = float(tf.make_ndarray(value.tensor))
                    logged.setdefault(value.tag, []).append(number)
    for key in KEYS:
        np.testing.assert_allclose(logged[f"epoch_{key}"], history[key], rtol=1e-6)


def test_metrics_change_as_the_model_trains(run):
    history, _, _ = run
    # the metrics are rebuilt on the current weights (MuFidelity would freeze them)
    for method in METHODS:
        values = history[f"xai/{method}/MuFidelity"]
        assert len(set(values)) == 3, values
    sparseness = history["xai/Saliency/Sparseness"]
    assert sparseness[0] != sparseness[2]


@pytest.mark.slow  # ~30 s; `pytest -m slow` and the full check run it
def test_same_seed_same_values_and_training_unaffected(run, data):
    history, _, _ = run
    _, _, x, y = data
    again = _fit(data, [_metrics_callback(x, y, seed=0)])
    for key in KEYS + ["loss"]:
        np.testing.assert_array_equal(again[key], history[key], err_msg=key)
    plain = _fit(data, [])
    np.testing.assert_array_equal(plain["loss"], history["loss"])
    other = _fit(data, [_metrics_callback(x, y, seed=1)], epochs=1)
    assert other["xai/SmoothGrad/MuFidelity"][0] != history["xai/SmoothGrad/MuFidelity"][0]


def test_every_n_epochs(data):
    _, _, x, y = data
    callback = XpliqueMetricsCallback(x, y, "Saliency", "Sparseness", every=2)
    history = _fit(data, [callback])
    assert sorted(callback.results) == [1]
    assert len(history["xai/Saliency/Sparseness"]) == 1


def test_attribution_snapshots(data, tmp_path):
    _, _, x, y = data
    directory = tmp_path / "snapshots"
    callback = AttributionSnapshotCallback(x[:4], y[:4], "saliency", str(directory))
    _fit(data, [callback], epochs=2)
    names = sorted(os.listdir(directory))
    assert names == ["Saliency_epoch0001.png", "Saliency_epoch0002.png"]
    assert callback.paths == [str(directory / name) for name in names]
    pixels = []
    for name in names:
        with open(directory / name, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
        with Image.open(directory / name) as image:
            image.verify()
        with Image.open(directory / name) as image:
            assert image.width > 100 and image.height > 100
            pixels.append(np.asarray(image.convert("RGB")))
    assert pixels[0].std() > 0
    assert np.any(pixels[0] != pixels[1])  # the attributions changed with training


@pytest.mark.parametrize("cls", ["metrics", "snapshot"])
def test_config_round_trip(cls, data, tmp_path):
    _, _, x, y = data
    if cls == "metrics":
        callback = _metrics_callback(x[:2], y[:2], every=3, seed=5, prefix="explain")
    else:
        callback = AttributionSnapshotCallback(
            x[:2], y[:2], "Rise", str(tmp_path), every=2, seed=3, method_kwargs={"nb_samples": 8}
        )
    config = callback.get_config()
    restored = type(callback).from_config(config)
    assert restored.get_config() == config
    serialized = keras.saving.serialize_keras_object(callback)
    assert serialized["registered_name"].startswith("deel_lip>")
    again = keras.saving.deserialize_keras_object(serialized)
    assert type(again) is type(callback) and again.get_config() == config
    np.testing.assert_array_equal(again.x, callback.x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(metrics=["MeGe"]), "score a learning algorithm"),
        (dict(metrics=["ReCo"]), "score a learning algorithm"),
        (dict(metrics=["NoSuchMetric"]), "metric must be one of"),
        (dict(methods=["NoSuchMethod"]), "method must be one of"),
        (dict(methods=[]), "methods must name at least one"),
        (dict(every=0), "every must be an int >= 1"),
        (dict(seed=-1), "seed must be an int >= 0"),
        (dict(y=np.zeros(3)), "same length"),
        (dict(metric_kwargs={"Insertion": {}}), "metric_kwargs keys"),
        (dict(prefix=""), "prefix must be a non-empty str"),
    ],
)
def test_metrics_callback_bad_arguments(kwargs, match, data):
    _, _, x, y = data
    arguments = dict(x=x, y=y, methods=["Saliency"], metrics=["Deletion"])
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        XpliqueMetricsCallback(**arguments)


def test_snapshot_callback_bad_arguments(data, tmp_path):
    _, _, x, y = data
    with pytest.raises(ValueError, match="method must be one of"):
        AttributionSnapshotCallback(x, y, "NoSuchMethod", str(tmp_path))
    with pytest.raises(ValueError, match="directory must be a non-empty path"):
        AttributionSnapshotCallback(x, y, "Saliency", "")
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        AttributionSnapshotCallback(x, y, "Saliency", str(tmp_path), every=-2)


def test_seeded_restores_the_random_streams():
    np.random.seed(123)
    random.seed(123)
    numpy_before, python_before = np.random.get_state()[1].copy(), random.getstate()
    with seeded(7):
        first = (np.random.rand(), random.random(), float(tf.random.uniform(())))
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_before)
    assert random.getstate() == python_before
    with seeded(7):
        second = (np.random.rand(), random.random(), float(tf.random.uniform(())))
    assert first == second
    after_a = float(tf.random.uniform(()))
    with seeded(7):
        pass
    after_b = float(tf.random.uniform(()))
    assert after_a != after_b  # TensorFlow's stream moves on, it is not reset to the seed
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        with seeded(-1):
            pass
