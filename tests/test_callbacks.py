"""Callbacks, exercised inside `model.fit`: condensation, monitoring, loss-parameter schedules."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from deel_lip.callbacks import (
    CondenseCallback,
    LossParamLog,
    LossParamScheduler,
    MonitorCallback,
)
from deel_lip.layers import SpectralDense


def _flat(digits, n=256):
    images, labels = digits
    return images[:n].reshape(n, -1), labels[:n]


def _sv(w):
    w = np.asarray(ops.convert_to_numpy(w), dtype=np.float64)
    return np.linalg.svd(w.reshape(-1, w.shape[-1]), compute_uv=False)


class CountingLayer(keras.layers.Layer):
    """Identity layer that counts its `condense` calls."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.condensed = 0

    def call(self, inputs):
        return inputs

    def condense(self):
        self.condensed += 1


def _nested_model(units=(32, 16)):
    """Functional model holding a nested Sequential: every layer kind is reached."""
    inner = keras.Sequential(
        [keras.Input((units[0],)), SpectralDense(units[1], name="inner_dense"), CountingLayer()],
        name="inner",
    )
    inputs = keras.Input((64,))
    x = SpectralDense(units[0], name="outer_dense")(inputs)
    x = CountingLayer(name="outer_count")(x)
    x = inner(x)
    outputs = keras.layers.Dense(10, name="head")(x)
    return keras.Model(inputs, outputs)


def _compile(model, lr=1e-2):
    # XLA compilation of the normalisation loops takes seconds and is not what is tested here
    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    return model


def _counters(model):
    outer = model.get_layer("outer_count")
    inner = model.get_layer("inner").layers[-1]
    return outer.condensed, inner.condensed


# --------------------------------------------------------------------------- CondenseCallback


def test_condense_callback_hooks(digits):
    x, y = _flat(digits, 128)
    model = _compile(_nested_model())
    # 2 epochs of 4 batches; the end of training always condenses once more
    for on_epoch, on_batch, expected in [
        (True, False, 3),
        (False, True, 9),
        (True, True, 11),
        (False, False, 1),
    ]:
        before = _counters(model)
        callback = CondenseCallback(on_epoch=on_epoch, on_batch=on_batch)
        model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[callback])
        counts = tuple(after - start for after, start in zip(_counters(model), before))
        assert counts == (expected, expected), (on_epoch, on_batch)


def test_condense_callback_leaves_kernels_orthogonal(digits):
    x, y = _flat(digits, 256)
    model = _compile(_nested_model(), lr=5e-2)
    inner = model.get_layer("inner")
    layers = [model.get_layer("outer_dense"), inner.get_layer("inner_dense")]

    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    for layer in layers:
        assert np.abs(_sv(layer.kernel) - 1).max() > 1e-2, layer.name  # drifted
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[CondenseCallback()])
    for layer in layers:
        sv = _sv(layer.kernel)
        assert np.abs(sv - 1).max() < 2e-3, (layer.name, sv.min(), sv.max())
        np.testing.assert_allclose(
            ops.convert_to_numpy(layer.kernel),
            ops.convert_to_numpy(layer.constrained_kernel),
            atol=2e-3,
        )
    # condensing does not change the function computed by the model
    before = ops.convert_to_numpy(model.predict(x[:64], verbose=0))
    callback = CondenseCallback()
    callback.set_model(model)
    assert callback.condense_model() == 2 + 2  # two SpectralDense, two counting layers
    after = ops.convert_to_numpy(model.predict(x[:64], verbose=0))
    np.testing.assert_allclose(after, before, atol=1e-5)


# --------------------------------------------------------------------------- MonitorCallback


def _events(logdir):
    """``{tag: [(step, value), ...]}`` read from the TensorBoard event files."""
    found = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                found.setdefault(value.tag, []).append((event.step, array))
    return found


def test_monitor_callback_logs_the_largest_singular_value(digits, tmp_path):
    x, y = _flat(digits)
    model = _compile(_nested_model())
    logdir = str(tmp_path / "kernel")
    monitor = MonitorCallback(["outer_dense", "inner_dense"], logdir, target="kernel")
    seen = {}

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            kernel = model.get_layer("inner").get_layer("inner_dense").kernel
            seen[epoch] = _sv(kernel)[0]

    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[monitor, Snapshot()])
    assert glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
    events = _events(logdir)
    scalars = events["inner_dense/kernel_singular_values_max"]
    assert [step for step, _ in scalars] == [0, 1, 2]
    logged = [float(value) for _, value in scalars]
    np.testing.assert_allclose(logged, [seen[e] for e in range(3)], rtol=1e-6)
    np.testing.assert_allclose(history.history["inner_dense_kernel_sigma_max"], logged, rtol=1e-6)
    outer = model.get_layer("outer_dense").kernel
    last = float(events["outer_dense/kernel_singular_values_max"][-1][1])
    np.testing.assert_allclose(last, _sv(outer)[0], rtol=1e-6)
    np.testing.assert_allclose(history.history["outer_dense_kernel_sigma_max"][-1], last)


def test_monitor_callback_wbar_histogram(digits, tmp_path):
    x, y = _flat(digits)
    model = _compile(_nested_model())
    logdir = str(tmp_path / "wbar")
    monitor = MonitorCallback("outer_dense", logdir, target="wbar", what="all")
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[monitor])
    events = _events(logdir)
    histograms = events["outer_dense/wbar_singular_values"]
    assert [step for step, _ in histograms] == [0, 1]
    buckets = histograms[-1][1]  # (bucket, 3) = left edge, right edge, count
    assert buckets.shape[-1] == 3
    assert buckets[:, 2].sum() == 32  # all 32 singular values of the (64, 32) kernel
    sv = _sv(model.get_layer("outer_dense").current_constrained_kernel())
    # histogram edges computed in float32 (XLA by default): 1e-6 slack
    assert buckets[:, 0].min() <= sv.min() + 1e-6 and buckets[:, 1].max() >= sv.max() - 1e-6
    sigma = history.history["outer_dense_wbar_sigma_max"]
    assert len(sigma) == 2 and max(sigma) <= 1 + 1e-4
    np.testing.assert_allclose(sigma[-1], sv[0], rtol=1e-6)


def test_monitor_callback_missing_layers(digits, tmp_path):
    x, y = _flat(digits, 64)
    model = _compile(_nested_model())
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        model.fit(x, y, verbose=0, callbacks=[MonitorCallback(["nope"], str(tmp_path))])
    with pytest.raises(ValueError, match="constrained_kernel"):
        model.fit(
            x, y, verbose=0, callbacks=[MonitorCallback(["head"], str(tmp_path), target="wbar")]
        )


# --------------------------------------------------------------------------- loss parameters


class ScaledMSE(keras.losses.Loss):
    """``scale * mean((y - f)^2)`` with ``scale`` a Keras variable (a loss hyper-parameter)."""

    def __init__(self, scale=1.0, name="scaled_mse"):
        super().__init__(name=name)
        self.scale = keras.Variable(scale, trainable=False, name="scale")

    def call(self, y_true, y_pred):
        return self.scale * ops.mean(ops.square(y_true - y_pred), axis=-1)


class PlainScaledMSE(keras.losses.Loss):
    """Same loss with a plain Python float hyper-parameter."""

    def __init__(self, scale=1.0, name="plain_scaled_mse"):
        super().__init__(name=name)
        self.scale = scale

    def call(self, y_true, y_pred):
        return self.scale * ops.mean(ops.square(y_true - y_pred), axis=-1)


class BatchLosses(keras.callbacks.Callback):
    """Running mean of the loss at every batch end (Keras logs the epoch's running mean)."""

    def __init__(self):
        super().__init__()
        self.values = []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append((batch, logs["loss"]))


def _frozen_regression(loss, run_eagerly=False, jit_compile="auto"):
    """Zero-output model trained with learning rate 0: each batch loss is ``scale * 1``."""
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(1, kernel_initializer="zeros", name="out")]
    )
    model.compile(keras.optimizers.SGD(0.0), loss, run_eagerly=run_eagerly, jit_compile=jit_compile)
    return model


def _expected_running_means(values, steps_per_epoch):
    means = []
    for start in range(0, len(values), steps_per_epoch):
        epoch = values[start : start + steps_per_epoch]
        means += [float(np.mean(epoch[: i + 1])) for i in range(len(epoch))]
    return means


@pytest.mark.parametrize("jit_compile", [False, True])
def test_scheduler_reaches_the_compiled_train_step(digits, jit_compile):
    x, _ = _flat(digits, 128)
    y = np.ones((128, 1), "float32")
    loss = ScaledMSE()
    model = _frozen_regression(loss, jit_compile=jit_compile)
    assert model.jit_compile is jit_compile
    scheduler = LossParamScheduler("scale", fp=[1.0, 3.0, 0.5], xp=[0, 4, 6])
    recorder = BatchLosses()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[scheduler, recorder])
    steps = 2 * 8
    scheduled = [float(np.interp(t, [0, 4, 6], [1.0, 3.0, 0.5])) for t in range(steps)]
    logged = [value for _, value in recorder.values]
    np.testing.assert_allclose(logged, _expected_running_means(scheduled, 8), rtol=1e-5)
    assert float(ops.convert_to_numpy(loss.scale)) == pytest.approx(scheduled[-1])
    assert scheduler.step == steps
    # the schedule continues from its step in a later fit, and from a restored config
    clone = LossParamScheduler.from_config(scheduler.get_config())
    assert clone.step == steps and clone.get_config() == scheduler.get_config()


def test_scheduler_plain_attribute(digits):
    x, _ = _flat(digits, 64)
    y = np.ones((64, 1), "float32")
    loss = PlainScaledMSE()
    model = _frozen_regression(loss, run_eagerly=True)
    recorder = BatchLosses()
    scheduler = LossParamScheduler("scale", fp=[2.0, 4.0], xp=[0, 3])
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[scheduler, recorder])
    scheduled = [2.0 + 2.0 * min(t, 3) / 3 for t in range(4)]
    logged = [value for _, value in recorder.values]
    np.testing.assert_allclose(logged, _expected_running_means(scheduled, 4), rtol=1e-5)
    assert loss.scale == pytest.approx(4.0)
    compiled = _frozen_regression(PlainScaledMSE())
    with pytest.warns(UserWarning, match="not a keras.Variable"):
        compiled.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[scheduler])


@pytest.mark.parametrize(
    ("param", "fp", "match"),
    [
        ("alpha", [0.5, 1.5], "alpha must be in"),
        ("alpha", [-0.1, 0.5], "alpha must be in"),
        ("min_margin", [1.0, 0.0], "min_margin"),
    ],
)
def test_scheduler_checks_values_of_deel_lip_losses(digits, param, fp, match):
    from deel_lip.losses import MulticlassHKR

    x, _ = _flat(digits, 32)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(2)])
    model.compile("sgd", MulticlassHKR(alpha=0.9, min_margin=1.0, convex=True))
    y = keras.utils.to_categorical(np.arange(32) % 2, 2)
    scheduler = LossParamScheduler(param, fp=fp, xp=[0, 4])
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[scheduler])
    # nothing was assigned
    assert (float(model.loss.alpha), float(model.loss.min_margin)) == pytest.approx((0.9, 1.0))


def test_loss_param_log(digits, capsys):
    x, _ = _flat(digits, 64)
    y = np.ones((64, 1), "float32")
    loss = ScaledMSE()
    model = _frozen_regression(loss)
    scheduler = LossParamScheduler("scale", fp=[1.0, 2.0], xp=[0, 12])
    log = LossParamLog("scale", rate=2)
    history = model.fit(x, y, epochs=5, batch_size=16, verbose=0, callbacks=[scheduler, log])
    # value at each epoch end: after the last batch of the epoch (step 4 e + 3)
    expected = [float(np.interp(4 * e + 3, [0, 12], [1.0, 2.0])) for e in range(5)]
    np.testing.assert_allclose(history.history["scale"], expected, rtol=1e-6)
    printed = [line for line in capsys.readouterr().out.splitlines() if "scale =" in line]
    assert [line.split(":")[0] for line in printed] == ["Epoch 1", "Epoch 3", "Epoch 5"]
    assert float(printed[-1].split("=")[1]) == pytest.approx(expected[-1], rel=1e-5)


def test_loss_without_the_parameter(digits):
    x, _ = _flat(digits, 32)
    y = np.ones((32, 1), "float32")
    model = _frozen_regression(keras.losses.MeanSquaredError())
    for callback in (LossParamScheduler("tau", fp=[1.0], xp=[0]), LossParamLog("tau")):
        with pytest.raises(ValueError, match="no attribute 'tau'"):
            model.fit(x, y, verbose=0, callbacks=[callback])


# --------------------------------------------------------------------------- config / errors


def test_callback_configs_round_trip(tmp_path):
    for callback in (
        CondenseCallback(on_epoch=False, on_batch=True),
        MonitorCallback(["a", "b"], str(tmp_path), target="wbar", what="all"),
        LossParamScheduler("alpha", fp=[1, 5], xp=[0, 100], step=7),
        LossParamLog("alpha", rate=3),
    ):
        config = callback.get_config()
        clone = type(callback).from_config(config)
        assert clone.get_config() == config
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(callback)
        )
        assert type(restored) is type(callback)
        assert restored.get_config() == config
        assert restored.params is None and restored.model is None  # Callback.__init__ ran


BAD_ARGUMENTS = [
    (CondenseCallback, {"on_epoch": 1}, "on_epoch"),
    (CondenseCallback, {"on_batch": "yes"}, "on_batch"),
    (MonitorCallback, {"monitored_layers": [], "logdir": "x"}, "monitored_layers"),
    (MonitorCallback, {"monitored_layers": [3], "logdir": "x"}, "monitored_layers"),
    (MonitorCallback, {"monitored_layers": ["a"], "logdir": None}, "logdir"),
    (MonitorCallback, {"monitored_layers": ["a"], "logdir": "x", "target": "w"}, "target"),
    (MonitorCallback, {"monitored_layers": ["a"], "logdir": "x", "what": "min"}, "what"),
    (LossParamScheduler, {"param_name": "", "fp": [1], "xp": [0]}, "param_name"),
    (LossParamScheduler, {"param_name": "a", "fp": [1, 2], "xp": [0]}, "same"),
    (LossParamScheduler, {"param_name": "a", "fp": [], "xp": []}, "non-zero"),
    (LossParamScheduler, {"param_name": "a", "fp": [1, 2], "xp": [3, 3]}, "increasing"),
    (LossParamScheduler, {"param_name": "a", "fp": [1, np.nan], "xp": [0, 1]}, "finite"),
    (LossParamScheduler, {"param_name": "a", "fp": [1], "xp": [0], "step": -1}, "step"),
    (LossParamLog, {"param_name": 3}, "param_name"),
    (LossParamLog, {"param_name": "a", "rate": 0}, "rate"),
    (LossParamLog, {"param_name": "a", "rate": 1.5}, "rate"),
]


def test_bad_arguments():
    for factory, kwargs, match in BAD_ARGUMENTS:
        with pytest.raises(ValueError, match=match):
            factory(**kwargs)
            pytest.fail(f"{factory.__name__}({kwargs}) did not raise")
