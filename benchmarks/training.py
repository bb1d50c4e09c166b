"""Training, inference and memory measurements of a deel_lip model against its plain twin.

Both models train in the same process on the same real images, with the same batch size,
alternating one epoch each so that machine noise hits both alike. Reported per
architecture: median steady-state seconds per epoch (first epoch excluded: tracing and
XLA compilation), their ratio, accuracy and certified accuracy after the fixed epochs,
inference time of the exported model against the plain model, and peak training memory
(measured in separate processes, see `benchmarks.memory`).
"""

from __future__ import annotations

import math
import statistics
import time

import keras
import numpy as np

from benchmarks.models import ARCHITECTURES, lipschitz_model, plain_model
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

    return MulticlassHKR(alpha=0.98, min_margin=0.1)


def compiled_pair(arch: str, jit_compile=True):
    """(deel_lip model, plain model), compiled with the same optimizer settings."""
    lip = lipschitz_model(arch)
    lip.compile(keras.optimizers.Adam(1e-3), lipschitz_loss(), jit_compile=jit_compile)
    plain = plain_model(arch)
    plain.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.CategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return lip, plain


def _timed_epoch(model, x, y, batch_size: int) -> float:
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
    return time.perf_counter() - start


def _timed_predict(model, x, batch_size: int) -> float:
    start = time.perf_counter()
    model.predict(x, batch_size=batch_size, verbose=0)
    return time.perf_counter() - start


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
    jit_compile=True,
) -> dict:
    """Measure one architecture; ``epochs`` counts the warm-up epoch."""
    keras.utils.set_random_seed(0)
    x_train, y_train, x_test, y_test = benchmark_data(arch, n_train, n_test)
    y_train_1h = keras.utils.to_categorical(y_train, 10)
    lip, plain = compiled_pair(arch, jit_compile)
    times = {"deel_lip": [], "plain": []}
    for epoch in range(epochs):
        for name, model in (("plain", plain), ("deel_lip", lip)):
            seconds = _timed_epoch(model, x_train, y_train_1h, batch_size)
            if epoch > 0:
                times[name].append(seconds)
    exported = vanilla_export(lip)
    inference = {"plain": [], "exported": [], "deel_lip": []}
    for _ in range(inference_repeats):
        for name, model in (("plain", plain), ("exported", exported), ("deel_lip", lip)):
            inference[name].append(_timed_predict(model, x_test, 256))
    lip_logits = np.asarray(lip.predict(x_test, verbose=0))
    plain_logits = np.asarray(plain.predict(x_test, verbose=0))
    export_diff = float(np.abs(np.asarray(exported.predict(x_test, verbose=0)) - lip_logits).max())
    med = {name: statistics.median(values) for name, values in times.items()}
    inf = {name: statistics.median(values) for name, values in inference.items()}
    return {
        "architecture": arch,
        "epochs": epochs,
        "batch_size": batch_size,
        "n_train": len(x_train),
        "jit_compile": jit_compile,
        "epoch_seconds": med,
        "epoch_seconds_all": times,
        "epoch_ratio": med["deel_lip"] / med["plain"],
        "inference_seconds": inf,
        "inference_ratio_exported_vs_plain": inf["exported"] / inf["plain"],
        "inference_ratio_exported_vs_deel_lip": inf["exported"] / inf["deel_lip"],
        "accuracy": {
            "deel_lip": float(np.mean(lip_logits.argmax(1) == y_test)),
            "plain": float(np.mean(plain_logits.argmax(1) == y_test)),
        },
        "certified_accuracy": {
            f"{radius:.3f}": certified_accuracy(lip_logits, y_test, radius)
            for radius in CERTIFIED_RADII
        },
        "export_max_abs_diff": export_diff,
    }
