"""Lipschitz dense layers."""

from __future__ import annotations

import keras
from keras import ops

from deel_lip.layers.normalized import FrobeniusKernel, SpectralKernel
from deel_lip.normalizers import (
    DEFAULT_BETA_BJORCK,
    DEFAULT_EPS_BJORCK,
    DEFAULT_EPS_SPECTRAL,
    DEFAULT_MAXITER_BJORCK,
    DEFAULT_MAXITER_SPECTRAL,
)

__all__ = ["SpectralDense", "FrobeniusDense"]


class DenseKernel:
    """What a constrained Dense declares: its linear map and its export class (a mixin
    for any `ConstrainedKernel` subclass of `keras.layers.Dense`)."""

    def _linear(self, inputs, kernel):
        return ops.matmul(inputs, kernel)

    def _export_class(self):
        return keras.layers.Dense


@keras.saving.register_keras_serializable("deel_lip")
class SpectralDense(DenseKernel, SpectralKernel, keras.layers.Dense):
    """Dense layer with an orthogonal kernel scaled to ``k_coef_lip``.

    ``W_bar = k_coef_lip * bjorck(W / sigma)``: every singular value of ``W_bar`` is at
    most ``k_coef_lip`` (and equal to it up to ``eps_bjorck`` when Bjorck converged), so
    the layer is ``k_coef_lip``-Lipschitz in L2 and gradient-norm preserving.
    With ``eps_bjorck=None`` the kernel is only spectrally normalised.

    Args:
        units: number of output units.
        activation: as in `keras.layers.Dense` (likewise ``use_bias``,
            ``kernel_initializer``, ``bias_initializer``, ``kernel_regularizer``,
            ``bias_regularizer``, ``activity_regularizer``, ``kernel_constraint``,
            ``bias_constraint``).
        k_coef_lip: Lipschitz constant of the layer (> 0).
        eps_spectral: power-iteration tolerance (> 0).
        eps_bjorck: Bjorck tolerance (> 0), or None for spectral normalisation only.
        beta_bjorck: Bjorck coefficient in (0, 0.5].
        maxiter_spectral: maximum power iterations per step.
        maxiter_bjorck: maximum Bjorck iterations per step.
        condense_on_build: at build, set the raw kernel to its constrained kernel (as
            `condense()`; the function is unchanged), so the optimizer's steps are sized
            relative to the kernel actually used (default True; see
            docs/guide/tight_convolutions.md).

    Input shape:
        ``(batch, ..., input_dim)``.

    Output shape:
        ``(batch, ..., units)``.

    Reference:
        Anil, Lucas, Grosse, "Sorting out Lipschitz function approximation", ICML 2019.
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        k_coef_lip=1.0,
        eps_spectral=DEFAULT_EPS_SPECTRAL,
        eps_bjorck=DEFAULT_EPS_BJORCK,
        beta_bjorck=DEFAULT_BETA_BJORCK,
        maxiter_spectral=DEFAULT_MAXITER_SPECTRAL,
        maxiter_bjorck=DEFAULT_MAXITER_BJORCK,
        condense_on_build=True,
        keep_raw_scale=False,
        **kwargs,
    ):
        keras.layers.Dense.__init__(
            self,
            units,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            **kwargs,
        )
        self._init_spectral(
            k_coef_lip,
            eps_spectral,
            eps_bjorck,
            beta_bjorck,
            maxiter_spectral,
            maxiter_bjorck,
            condense_on_build,
            keep_raw_scale,
        )


@keras.saving.register_keras_serializable("deel_lip")
class FrobeniusDense(DenseKernel, FrobeniusKernel, keras.layers.Dense):
    """Dense layer whose kernel is divided by its Frobenius norm.

    ``W_bar = k_coef_lip * W / ||W||_F`` makes the whole layer ``k_coef_lip``-Lipschitz.
    With ``disjoint_neurons=True`` each column is normalised separately,
    ``W_bar[:, j] = k_coef_lip * W[:, j] / ||W[:, j]||``: each output unit is then
    ``k_coef_lip``-Lipschitz on its own (use the ``2 L`` certificate), the output vector
    as a whole up to ``k_coef_lip * sqrt(units)``. With one unit both coincide. A per-unit
    layer is sound only as the last layer with a Lipschitz constant of a model: the
    `deel_lip.model` wrappers warn when another Lipschitz layer follows it.

    Args:
        units, activation, use_bias, ...: as in `keras.layers.Dense`.
        disjoint_neurons: normalise each output unit separately.
        k_coef_lip: Lipschitz constant (> 0).
        condense_on_build: at build, set the raw kernel to its constrained kernel (as
            `condense()`; the function is unchanged), so the optimizer's steps are sized
            relative to the kernel actually used (default True; see
            docs/guide/tight_convolutions.md).

    Input shape:
        ``(batch, ..., input_dim)``.

    Output shape:
        ``(batch, ..., units)``.
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        disjoint_neurons=True,
        k_coef_lip=1.0,
        condense_on_build=True,
        keep_raw_scale=False,
        **kwargs,
    ):
        keras.layers.Dense.__init__(
            self,
            units,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            **kwargs,
        )
        self._init_frobenius(k_coef_lip, disjoint_neurons, condense_on_build, keep_raw_scale)
