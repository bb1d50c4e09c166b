"""Lipschitz layers for Keras 3 (deel-lip names and arguments)."""

from deel_lip.layers.base import Condensable, ConstrainedKernel, LipschitzLayer
from deel_lip.layers.convolutional import (
    FrobeniusConv2D,
    PadConv2D,
    SpectralConv1D,
    SpectralConv2D,
    SpectralConv2DTranspose,
)
from deel_lip.layers.dense import FrobeniusDense, SpectralDense
