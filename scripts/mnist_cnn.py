"""The 1-Lipschitz MNIST CNN shared by the result scripts (`loss_tradeoff`, `xai_claim`)."""

from __future__ import annotations

import keras

from deel_lip.layers import GroupSort2, ScaledL2NormPooling2D, SpectralConv2D, SpectralDense
from deel_lip.model import Sequential


def lipschitz_cnn(name: str = "lipschitz_cnn") -> Sequential:
    """28x28x1 -> 10 logits, 1-Lipschitz in L2 as a whole (last layer `SpectralDense`)."""
    return Sequential(
        [
            keras.Input((28, 28, 1)),
            SpectralConv2D(16, 3),
            GroupSort2(),
            ScaledL2NormPooling2D(2),
            SpectralConv2D(32, 3),
            GroupSort2(),
            ScaledL2NormPooling2D(2),
            keras.layers.Flatten(),
            SpectralDense(64),
            GroupSort2(),
            SpectralDense(10),
        ],
        name=name,
    )
