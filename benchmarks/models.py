"""The benchmarked architectures, each built once from deel_lip and once from plain Keras.

* ``small``: the MNIST CNN of the speed issue - two 3x3 convolutions (16, 32 channels),
  each followed by GroupSort2 and 2x2 L2-norm pooling, then Dense 64 + GroupSort2 and
  Dense 10. The plain baselines use Conv2D/Dense with ReLU and 2x2 average or max pooling.
* ``wide``: the same with 64 and 128 channels on 32x32x3 inputs.

Three builds of each: `lipschitz_model` (deel_lip), `plain_model` (what a Keras user
trains without constraint: ReLU, average or max pooling, cross-entropy) and `unconstrained_model`
(the deel_lip architecture with plain `Conv2D`/`Dense` kernels: the only difference with
the deel_lip build is the constraint, so it measures the constraint's cost alone; its
inference graph is the one `vanilla_export` produces).
"""

from __future__ import annotations

import warnings

import keras

from deel_lip.layers import (
    GroupSort2,
    ScaledL2NormPooling2D,
    SpectralConv2D,
    SpectralDense,
)
from deel_lip.model import Sequential

ARCHITECTURES = {
    "small": {"input_shape": (28, 28, 1), "channels": (16, 32), "units": 64},
    "wide": {"input_shape": (32, 32, 3), "channels": (64, 128), "units": 64},
}


def lipschitz_model(arch: str, classes: int = 10) -> keras.Model:
    """1-Lipschitz twin: SpectralConv2D + GroupSort2 + ScaledL2NormPooling2D."""
    spec = ARCHITECTURES[arch]
    layers = [keras.Input(spec["input_shape"])]
    for filters in spec["channels"]:
        layers += [SpectralConv2D(filters, 3), GroupSort2(), ScaledL2NormPooling2D(2)]
    layers += [
        keras.layers.Flatten(),
        SpectralDense(spec["units"]),
        GroupSort2(),
        SpectralDense(classes),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Sequential(layers, name=f"deel_lip_{arch}")


def plain_model(arch: str, classes: int = 10, pooling: str = "average") -> keras.Model:
    """What a Keras user trains without constraint: Conv2D + ReLU + pooling, Dense + ReLU.

    ``pooling`` is "average" (`AveragePooling2D`) or "max" (`MaxPooling2D`).
    """
    if pooling not in ("average", "max"):
        raise ValueError(f"pooling must be 'average' or 'max', received: {pooling!r}")
    pool = keras.layers.AveragePooling2D if pooling == "average" else keras.layers.MaxPooling2D
    spec = ARCHITECTURES[arch]
    layers = [keras.Input(spec["input_shape"])]
    for filters in spec["channels"]:
        layers += [keras.layers.Conv2D(filters, 3, padding="same", activation="relu"), pool(2)]
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dense(spec["units"], activation="relu"),
        keras.layers.Dense(classes),
    ]
    return keras.Sequential(layers, name=f"plain_{pooling}_{arch}")


def unconstrained_model(arch: str, classes: int = 10) -> keras.Model:
    """The deel_lip architecture with unconstrained `Conv2D`/`Dense` kernels."""
    spec = ARCHITECTURES[arch]
    layers = [keras.Input(spec["input_shape"])]
    for filters in spec["channels"]:
        layers += [
            keras.layers.Conv2D(filters, 3, padding="same"),
            GroupSort2(),
            ScaledL2NormPooling2D(2),
        ]
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dense(spec["units"]),
        GroupSort2(),
        keras.layers.Dense(classes),
    ]
    return keras.Sequential(layers, name=f"unconstrained_{arch}")
