"""Forward + backward cost of each Lipschitz activation and pooling against Keras's own.

One ``tf.function`` per layer computes ``sum(layer(x) ** 2)`` and its input gradient on a
``128x28x28x16`` tensor (the first block of the small MNIST CNN), with and without XLA;
the median milliseconds are reported with the ratio to ReLU (activations) or to average
pooling (poolings). Layers alternate within each repetition, so machine noise hits them
alike.
"""

from __future__ import annotations

import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from deel_lip.layers import (
    FullSort,
    GroupSort,
    GroupSort2,
    Householder,
    MaxMin,
    ScaledAveragePooling2D,
    ScaledL2NormPooling2D,
)

SHAPE = (128, 28, 28, 16)


def _layers() -> dict:
    """``{name: (layer, reference name)}``; the references are Keras layers."""
    return {
        "ReLU (keras)": (keras.layers.ReLU(), None),
        "GroupSort2": (GroupSort2(), "ReLU (keras)"),
        "GroupSort(4)": (GroupSort(4), "ReLU (keras)"),
        "FullSort": (FullSort(), "ReLU (keras)"),
        "MaxMin": (MaxMin(), "ReLU (keras)"),
        "Householder": (Householder(), "ReLU (keras)"),
        "AveragePooling2D (keras)": (keras.layers.AveragePooling2D(2), None),
        "MaxPooling2D (keras)": (keras.layers.MaxPooling2D(2), "AveragePooling2D (keras)"),
        "ScaledAveragePooling2D": (ScaledAveragePooling2D(2), "AveragePooling2D (keras)"),
        "ScaledL2NormPooling2D": (ScaledL2NormPooling2D(2), "AveragePooling2D (keras)"),
    }


def _step(layer, jit_compile: bool):
    @tf.function(jit_compile=jit_compile)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)))
        return tape.gradient(loss, x)

    return step


def run_kernel_benchmark(shape=SHAPE, repeats: int = 15) -> list[dict]:
    """Median milliseconds of forward + backward for every layer, without and with XLA."""
    x = tf.constant(np.random.default_rng(0).normal(size=shape).astype("float32"))
    layers = _layers()
    steps = {
        (name, jit): _step(layer, jit) for name, (layer, _) in layers.items() for jit in (0, 1)
    }
    for step in steps.values():  # trace, compile, build
        np.asarray(step(x))
    times = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            start = time.perf_counter()
            np.asarray(step(x))
            times[key].append(time.perf_counter() - start)
    ms = {key: statistics.median(values) * 1e3 for key, values in times.items()}
    rows = []
    for name, (_, reference) in layers.items():
        row = {"layer": name, "reference": reference}
        for jit, label in ((0, "default"), (1, "xla")):
            row[f"{label}_ms"] = ms[(name, jit)]
            if reference is not None:
                row[f"{label}_ratio"] = ms[(name, jit)] / ms[(reference, jit)]
        rows.append(row)
    return rows
