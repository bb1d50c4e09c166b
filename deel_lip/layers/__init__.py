"""Lipschitz layers for Keras 3 (deel-lip names and arguments)."""

from deel_lip.layers import unconstrained  # noqa: F401  (deel-lip's module name)
from deel_lip.layers.activations import (
    FullSort,
    GroupSort,
    GroupSort2,
    Householder,
    MaxMin,
    PReLUlip,
)
from deel_lip.layers.aol import AOLConv2D, AOLDense
from deel_lip.layers.base import Condensable, ConstrainedKernel, LipschitzBounded, LipschitzLayer
from deel_lip.layers.convolutional import (
    FrobeniusConv2D,
    PadConv2D,
    SpectralConv1D,
    SpectralConv2D,
    SpectralConv2DTranspose,
)
from deel_lip.layers.dense import FrobeniusDense, SpectralDense
from deel_lip.layers.depthwise import SpectralDepthwiseConv2D
from deel_lip.layers.orthogonal_conv import OrthogonalConv2D
from deel_lip.layers.pooling import (
    ScaledAveragePooling2D,
    ScaledGlobalAveragePooling2D,
    ScaledGlobalL2NormPooling2D,
    ScaledL2NormPooling2D,
)
from deel_lip.layers.resampling import InvertibleDownSampling, InvertibleUpSampling
from deel_lip.layers.residual import BatchCentering, LayerCentering, LipResidual
from deel_lip.layers.sll import SLLConv2D, SLLDense

__all__ = [
    "LipschitzLayer",
    "Condensable",
    "LipschitzBounded",
    "ConstrainedKernel",
    "SpectralDense",
    "FrobeniusDense",
    "PadConv2D",
    "SpectralConv2D",
    "FrobeniusConv2D",
    "SpectralConv1D",
    "SpectralConv2DTranspose",
    "SpectralDepthwiseConv2D",
    "OrthogonalConv2D",
    "AOLDense",
    "AOLConv2D",
    "SLLDense",
    "SLLConv2D",
    "GroupSort",
    "GroupSort2",
    "FullSort",
    "MaxMin",
    "Householder",
    "PReLUlip",
    "ScaledAveragePooling2D",
    "ScaledL2NormPooling2D",
    "ScaledGlobalAveragePooling2D",
    "ScaledGlobalL2NormPooling2D",
    "InvertibleDownSampling",
    "InvertibleUpSampling",
    "LipResidual",
    "BatchCentering",
    "LayerCentering",
]
