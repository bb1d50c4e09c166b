"""`SpectralConv2DTranspose`: transposed 2D convolution with an orthogonal reshaped
kernel (re-exported by `deel_lip.layers.convolutional`)."""

from __future__ import annotations

import warnings

import keras
from keras import ops

from deel_lip.layers._conv_bound import ConvBound, spectral_conv_init
from deel_lip.layers.normalized import SpectralKernel
from deel_lip.normalizers import (
    DEFAULT_BETA_BJORCK,
    DEFAULT_EPS_BJORCK,
    DEFAULT_EPS_SPECTRAL,
    DEFAULT_MAXITER_BJORCK,
    DEFAULT_MAXITER_SPECTRAL,
    conv_transpose_lipschitz_factor,
)
from deel_lip.normalizers_freq import conv_frequency_bound

__all__ = ["SpectralConv2DTranspose"]


@keras.saving.register_keras_serializable("deel_lip")
class SpectralConv2DTranspose(ConvBound, SpectralKernel, keras.layers.Conv2DTranspose):
    """Transposed 2D convolution with an orthogonal reshaped kernel.

    The Keras kernel is ``(kh, kw, filters, c_in)``; its ``(kh * kw * filters, c_in)``
    matrix is the matrix of the adjoint (strided) convolution, whose operator norm equals
    the transposed convolution's. It is orthogonalised and divided by the frequency bound
    of that adjoint convolution (``conv_bound="frequency"``, default; cropping and output
    padding can only lower the norm) or by ``sqrt(prod ceil(k / s))``
    (``"coverage"``, `deel_lip.normalizers.conv_transpose_lipschitz_factor`).

    Args:
        filters: as in `keras.layers.Conv2DTranspose` (likewise ``kernel_size``,
            ``strides``, ``padding`` ("same" or "valid"), ``output_padding``,
            ``data_format``, ``activation``, ``use_bias``, ...).
        dilation_rate: must be 1.
        k_coef_lip: as in `deel_lip.layers.SpectralDense` (likewise ``eps_spectral``,
            ``eps_bjorck``, ``beta_bjorck``, ``maxiter_spectral``, ``maxiter_bjorck``,
            ``condense_on_build``).

    Platform limits (TensorFlow 2.20 CPU, oneDNN; plain `keras.layers.Conv2DTranspose`
    alike): an explicit ``output_padding`` of 0 with "same" padding on an axis with an
    even kernel (any stride) fails at call time for every input size >= 2, so it is
    rejected at construction; training a kernel smaller
    than its stride can crash the process, so it warns (``TF_ENABLE_ONEDNN_OPTS=0``
    avoids both). The forward convolutions avoid the second case themselves (see
    `_stride_sized_kernel`).
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
        output_padding=None,
        data_format=None,
        dilation_rate=(1, 1),
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
        conv_bound="frequency",
        condense_on_build=True,
        keep_raw_scale=False,
        **kwargs,
    ):
        keras.layers.Conv2DTranspose.__init__(
            self,
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            output_padding=output_padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
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
        spectral_conv_init(
            self,
            dict(
                k_coef_lip=k_coef_lip,
                eps_spectral=eps_spectral,
                eps_bjorck=eps_bjorck,
                beta_bjorck=beta_bjorck,
                maxiter_spectral=maxiter_spectral,
                maxiter_bjorck=maxiter_bjorck,
                condense_on_build=condense_on_build,
                keep_raw_scale=keep_raw_scale,
            ),
            conv_bound,
        )
        self._check_platform_limits()

    def _check_platform_limits(self) -> None:
        axes = list(zip(self.kernel_size, self.strides))
        if self.padding == "same" and self.output_padding is not None:
            # TensorFlow's CPU kernel aborts ("Conv2DBackpropInput ... Operation received an
            # exception") for every input size >= 2 along such an axis: the output size
            # (n - 1) s + op of an even kernel with op = 0 is not one "same" can produce.
            bad = [
                axis
                for axis, ((k, _), op) in enumerate(zip(axes, self.output_padding))
                if k % 2 == 0 and op == 0
            ]
            if bad:
                raise ValueError(
                    "SpectralConv2DTranspose with padding='same' cannot take output_padding=0 "
                    f"on an axis with an even kernel (axis {bad[0]}; TensorFlow's CPU kernel "
                    f"rejects it at call time): received kernel_size={self.kernel_size}, "
                    f"strides={self.strides}, output_padding={self.output_padding}. Use "
                    "output_padding=None, an odd kernel, or padding='valid'."
                )
        if any(k < s for k, s in axes):
            warnings.warn(
                f"SpectralConv2DTranspose '{self.name}': kernel_size={self.kernel_size} is "
                f"smaller than strides={self.strides}; training it can crash TensorFlow 2.20's "
                "oneDNN CPU kernels (set TF_ENABLE_ONEDNN_OPTS=0 before importing TensorFlow "
                "to avoid them)",
                stacklevel=3,
            )

    def _linear(self, inputs, kernel):
        return ops.conv_transpose(
            inputs,
            kernel,
            strides=list(self.strides),
            padding=self.padding,
            output_padding=self.output_padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )

    def _coverage_factor(self):
        return conv_transpose_lipschitz_factor(self.kernel_size, self.strides)

    def _frequency_bound(self, kernel):
        # the (kh, kw, filters, c_in) kernel is the one of the adjoint strided convolution;
        # min with the coverage bound (both sound), see `conv_frequency_bound_with_padding`
        bound = conv_frequency_bound(kernel, self.strides, "same")
        coverage = conv_transpose_lipschitz_factor(self.kernel_size, self.strides)
        return ops.minimum(bound, ops.cast(coverage * self._get_coef(), bound.dtype))

    def _export_class(self):
        return keras.layers.Conv2DTranspose
