"""Training, inference and memory measurements of a deel_lip model against its plain twin.

The builds of `BUILDS` (deel_lip with Keras's compile defaults and with XLA, the
unconstrained same-ops twin, plain Keras CNNs with average or max pooling, each with
defaults and with XLA) train in the same process on the same real images, with the same
batch size, alternating one epoch each so that machine noise hits them alike. Reported per
architecture: median steady-state seconds per epoch (first epoch excluded: tracing and
XLA compilation), the ratios of deel_lip (defaults, XLA) over the fastest plain baseline
and over the unconstrained twin, accuracy and certified accuracy after the fixed epochs,
and inference time of the model and of its export (Keras defaults) against plain Keras.
"""

from __future__ import annotations

import math
import statistics
import time

import keras
import numpy as np

from benchmarks.models import ARCHITECTURES, lipschitz_model, plain_model, unconstrained_model
from deel_lip.datasets import load_mnist, train_test_split
from deel_lip.model import vanilla_export

CERTIFIED_RADII = (36 / 255, 0.5, 1.0)


def benchmark_data(arch: str, n_train: int = 4000, n_test: int = 1000):
    """Real MNIST images shaped for ``arch``: 28x28x1, or padded to 32x32 and tinted RGB."""
    images, labels = load_mnist()
    x_train, y_train, x_test, y_test = train_test_split(images, labels, n_test=1000)
    x_train, y_train = x_train[:n_train], y_train[:n_train]
    x_test, y_test = x_test[:n_test], y_test[:n_test]
    shape = ARCHITECTURES[arch]["input_shape"]
    if shape[-1] == 3:
        tint = np.array([1.0, 0.8, 0.6], dtype="float32")
        pad = ((0, 0), (2, 2), (2, 2), (0, 0))
        x_train = np.pad(x_train, pad) * tint
        x_test = np.pad(x_test, pad) * tint
    return x_train.astype("float32"), y_train, x_test.astype("float32"), y_test


def lipschitz_loss():
    """Multiclass hinge-KR loss of the library (the loss a deel_lip user trains with)."""
    from deel_lip.losses import MulticlassHKR

    return MulticlassHKR(alpha=49.0, min_margin=0.1)


#: name -> (builder, loss kind, jit_compile). "auto" is Keras's default, the path a user who
#: leaves compile() alone gets: Keras resolves it to no XLA on a CPU-only machine (XLA with
#: a GPU), for deel_lip models too (their frequency bound and sort kernels then run as XLA
#: islands). The report records each build's resolved value.
BUILDS = {
    "deel_lip": (lipschitz_model, "hkr", "auto"),
    "deel_lip_xla": (lipschitz_model, "hkr", True),
    "unconstrained": (unconstrained_model, "hkr", "auto"),
    "plain_avg": (lambda arch: plain_model(arch, pooling="average"), "ce", "auto"),
    "plain_avg_xla": (lambda arch: plain_model(arch, pooling="average"), "ce", True),
    "plain_max": (lambda arch: plain_model(arch, pooling="max"), "ce", "auto"),
    "plain_max_xla": (lambda arch: plain_model(arch, pooling="max"), "ce", True),
}
BASELINES = ("plain_avg", "plain_avg_xla", "plain_max", "plain_max_xla")


def compiled_models(arch: str, names=tuple(BUILDS)) -> dict:
    """``{name: model}`` for the builds ``names`` of `BUILDS`, compiled with Adam(1e-3).

    The deel_lip and unconstrained builds train with the library's hinge-KR loss, the plain
    builds with cross-entropy.
    """
    models = {}
    for name in names:
        builder, loss, jit_compile = BUILDS[name]
        model = builder(arch)
        loss_fn = (
            lipschitz_loss()
            if loss == "hkr"
            else keras.losses.CategoricalCrossentropy(from_logits=True)
        )
        model.compile(keras.optimizers.Adam(1e-3), loss_fn, jit_compile=jit_compile)
        models[name] = model
    return models


class _EpochTimer(keras.callbacks.Callback):
    """Wall time from the start to the end of the epoch, as seen by the callbacks."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def _timed_epoch(model, x, y, batch_size: int) -> float:
    """Seconds of one training epoch, without `fit`'s set-up and tear-down.

    `fit`'s tear-down sometimes waits up to ~2 s after the last step on this machine,
    whatever the model (seen when several models alternate in one process): timing the
    whole call would measure that, not training.
    """
    timer = _EpochTimer()
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=True, callbacks=[timer])
    return timer.seconds


class _PredictTimer(keras.callbacks.Callback):
    def on_predict_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_predict_end(self, logs=None):
        self.seconds = time.perf_counter() - self.start


def _timed_predict(model, x, batch_size: int) -> float:
    """Seconds of one `predict` over ``x``, set-up and tear-down excluded likewise."""
    timer = _PredictTimer()
    model.predict(x, batch_size=batch_size, verbose=0, callbacks=[timer])
    return timer.seconds


def certified_accuracy(logits: np.ndarray, labels: np.ndarray, radius: float) -> float:
    """Fraction correct with margin / sqrt(2) > radius (1-Lipschitz output vector)."""
    true = logits[np.arange(len(labels)), labels]
    others = logits.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    margin = true - others.max(axis=1)
    return float(np.mean(margin / math.sqrt(2) > radius))


def run_training_benchmark(
    arch: str,
    epochs: int = 6,
    batch_size: int = 128,
    n_train: int = 4000,
    n_test: int = 1000,
    inference_repeats: int = 7,
    names=tuple(BUILDS),
) -> dict:
    """Measure one architecture; ``epochs`` counts the warm-up epoch.

    Ratios: *default* = deel_lip with Keras's compile defaults, *xla* = deel_lip with
    ``jit_compile=True``, each over the fastest plain baseline measured.
    """
    keras.utils.set_random_seed(0)
    x_train, y_train, x_test, y_test = benchmark_data(arch, n_train, n_test)
    y_train_1h = keras.utils.to_categorical(y_train, 10)
    models = compiled_models(arch, names)
    times = {name: [] for name in models}
    for epoch in range(epochs):
        for name, model in models.items():
            seconds = _timed_epoch(model, x_train, y_train_1h, batch_size)
            if epoch > 0:
                times[name].append(seconds)
    lip = models["deel_lip"]
    exported = vanilla_export(lip)
    exported.compile()  # uncompiled export: Keras defaults, like the others
    x_inference = np.concatenate([x_train, x_test])
    inference_names = [n for n in ("deel_lip", "unconstrained", "plain_avg") if n in models]
    predictors = {**{n: models[n] for n in inference_names}, "exported": exported}
    for model in predictors.values():  # warm-up: tracing and compilation
        _timed_predict(model, x_inference[:256], 256)
    inference = {name: [] for name in predictors}
    for _ in range(inference_repeats):
        for name, model in predictors.items():
            inference[name].append(_timed_predict(model, x_inference, 256))
    logits = {name: np.asarray(model.predict(x_test, verbose=0)) for name, model in models.items()}
    export_diff = float(
        np.abs(np.asarray(exported.predict(x_test, verbose=0)) - logits["deel_lip"]).max()
    )
    med = {name: statistics.median(values) for name, values in times.items()}
    inf = {name: statistics.median(values) for name, values in inference.items()}
    baselines = [n for n in BASELINES if n in med]
    fastest = min(baselines, key=med.get)
    row = {
        "architecture": arch,
        "epochs": epochs,
        "batch_size": batch_size,
        "n_train": len(x_train),
        "builds": {
            n: {"jit_compile": BUILDS[n][2], "resolved_jit_compile": bool(models[n].jit_compile)}
            for n in models
        },
        "epoch_seconds": med,
        "epoch_seconds_all": times,
        "fastest_baseline": fastest,
        "ratio_default": med["deel_lip"] / med[fastest],
        "ratio_vs_unconstrained": med["deel_lip"] / med["unconstrained"],
        "inference_seconds": inf,
        "inference_ratio_exported_vs_plain": inf["exported"] / inf["plain_avg"],
        "inference_ratio_deel_lip_vs_exported": inf["deel_lip"] / inf["exported"],
        "accuracy": {
            name: float(np.mean(values.argmax(1) == y_test)) for name, values in logits.items()
        },
        "certified_accuracy": {
            f"{radius:.3f}": certified_accuracy(logits["deel_lip"], y_test, radius)
            for radius in CERTIFIED_RADII
        },
        "export_max_abs_diff": export_diff,
    }
    if "deel_lip_xla" in med:
        row["ratio_xla"] = med["deel_lip_xla"] / med[fastest]
    return row
