"""Convolutions: explicit padding modes and Lipschitz-constrained kernels.

Constrained convolutions normalise their reshaped ``(kh * kw * c_in, c_out)`` kernel
``K`` (Bjorck or Frobenius), then divide it by a bound of the convolution's operator norm
valid for every input size (`deel_lip.layers._conv_bound`):

* ``conv_bound="frequency"`` (default): the supremum over frequencies of the norm of the
  kernel's (polyphase) transfer matrix, certified on a grid
  (`deel_lip.normalizers_freq.conv_frequency_bound`); tight: the exact norm reaches
  0.99 of ``k_coef_lip`` at moderate sizes;
* ``conv_bound="coverage"``: ``||K||_2 * factor`` with ``factor`` the square root of the
  largest number of (window, tap) pairs reading one input pixel
  (`deel_lip.normalizers.conv_lipschitz_factor`); loose (a trained 3x3 convolution uses
  0.7 to 0.94 of its budget). Configs saved without the key load with it.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from deel_lip.layers._conv_bound import (
    ConvBound,
    conv_frequency_bound_with_padding,
    spectral_conv_init,
)
from deel_lip.layers.conv_transpose import SpectralConv2DTranspose
from deel_lip.layers.normalized import FrobeniusKernel, SpectralKernel
from deel_lip.layers.pad_conv import (  # noqa: F401  (re-exported)
    EXTRA_PADDINGS,
    KERAS_PADDINGS,
    PAD_CONV_PADDINGS,
    PadConv2D,
    apply_padding,
    check_padding_fits,
    check_unit_dilation_and_groups,
)
from deel_lip.normalizers import (
    DEFAULT_BETA_BJORCK,
    DEFAULT_EPS_BJORCK,
    DEFAULT_EPS_SPECTRAL,
    DEFAULT_MAXITER_BJORCK,
    DEFAULT_MAXITER_SPECTRAL,
    conv_lipschitz_factor,
)

__all__ = [
    "PadConv2D",
    "SpectralConv2D",
    "FrobeniusConv2D",
    "SpectralConv1D",
    "SpectralConv2DTranspose",
]


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding of one axis: ``(before, after)``."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _stride_sized_kernel(inputs, kernel, strides, data_format):
    """Inputs and kernel of an equal "valid" convolution whose kernel is >= the stride.

    Along an axis where the kernel ``k`` is smaller than the stride ``s``, the kernel gets
    ``s - k`` trailing zero taps and the input ``s - k`` trailing zeros: every output
    ``sum_{t < k} w_t x_{i s + t}`` and the output size ``floor((n - k) / s) + 1`` stay the
    same. TensorFlow 2.20's oneDNN CPU kernels can corrupt memory when they differentiate
    a convolution whose kernel is smaller than its stride (plain `keras.layers.Conv2D`
    too); this form never reaches that case.
    """
    first = 1 if data_format == "channels_last" else 2
    input_pad = [(0, 0)] * len(inputs.shape)
    for axis, (k, s) in enumerate(zip(kernel.shape[: len(strides)], strides)):
        if k < s:
            input_pad[first + axis] = (0, s - k)
            # zeros concatenated rather than `pad`: oneDNN's graph rewrite of a padded
            # convolution kernel fails ("Could not find input edge 1")
            zeros_shape = list(kernel.shape)
            zeros_shape[axis] = s - k
            kernel = ops.concatenate([kernel, ops.zeros(zeros_shape, kernel.dtype)], axis=axis)
    return ops.pad(inputs, input_pad), kernel


class _ConvKernel(ConvBound):
    """What a constrained convolution declares: its linear map, bounds and export."""

    def _linear(self, inputs, kernel):
        small_kernel = any(k < s for k, s in zip(self.kernel_size, self.strides))
        if not small_kernel and self.padding != "causal":
            return self.convolution_op(inputs, kernel)
        padded = self._explicitly_padded(inputs)
        if padded is None:  # "same" padding of an unknown spatial size
            return self.convolution_op(inputs, kernel)
        if small_kernel:
            padded, kernel = _stride_sized_kernel(padded, kernel, self.strides, self.data_format)
        return ops.conv(
            padded,
            kernel,
            strides=list(self.strides),
            padding="valid",
            data_format=self.data_format,
        )

    def _explicitly_padded(self, inputs):
        """The inputs padded so that a "valid" convolution gives the layer's output."""
        mode = getattr(self, "pad_mode", self.padding)
        if mode == "valid":
            return inputs
        if mode == "causal":
            return ops.pad(inputs, self._compute_causal_padding())
        if mode != "same":
            return self._pad(inputs)
        first = 1 if self.data_format == "channels_last" else 2
        pads = [(0, 0)] * len(inputs.shape)
        for axis, (k, s) in enumerate(zip(self.kernel_size, self.strides)):
            size = inputs.shape[first + axis]
            if size is None:
                return None
            pads[first + axis] = _same_padding(size, k, s)
        return ops.pad(inputs, pads)

    def _coverage_factor(self):
        padding = getattr(self, "pad_mode", self.padding)
        return conv_lipschitz_factor(self.kernel_size, self.strides, padding)

    def _frequency_bound(self, kernel):
        padding = getattr(self, "pad_mode", self.padding)
        if self._coverage_is_exact(kernel.shape):
            return ops.cast(self._coverage_factor() * self._get_coef(), kernel.dtype)
        return conv_frequency_bound_with_padding(
            kernel, self.kernel_size, self.strides, padding, self._get_coef()
        )

    def _coverage_is_exact(self, kernel_shape) -> bool:
        """True when the coverage bound is the supremum itself, so the frequency bound
        (which the minimum with coverage would discard) need not be computed: Bjorck
        kernels with orthonormal rows (``kh kw c_in <= c_out``), stride 1, coverage factor
        ``sqrt(kh kw)``. With ``M M^T = k^2 I`` (``M`` the reshaped kernel, taps ``K_p``),
        ``T(w) T(w)^H = sum_p K_p K_p^T = kh kw k^2 I`` at every frequency (the cross terms
        vanish): the supremum is ``k sqrt(kh kw)``, the coverage bound."""
        rows = math.prod(int(d) for d in kernel_shape[:-1])
        return (
            getattr(self, "eps_bjorck", None) is not None
            and rows <= int(kernel_shape[-1])
            and all(int(s) == 1 for s in self.strides)
            and math.isclose(
                self._coverage_factor(), math.sqrt(math.prod(self.kernel_size)), rel_tol=1e-12
            )
        )


@keras.saving.register_keras_serializable("deel_lip")
class SpectralConv2D(_ConvKernel, SpectralKernel, PadConv2D):
    """2D convolution with an orthogonal reshaped kernel, ``k_coef_lip``-Lipschitz.

    ``K_bar = k_coef_lip * B / bound(B)`` with ``B = bjorck(K / sigma)``, ``K`` the
    reshaped ``(kh * kw * c_in, filters)`` kernel and ``bound`` the frequency bound of the
    convolution (``conv_bound="frequency"``) or the coverage factor of the padding mode
    and strides (``"coverage"``): the operator norm is at most ``k_coef_lip`` for every
    input size.

    Args:
        filters: as in `keras.layers.Conv2D` (likewise ``kernel_size``, ``strides``,
            ``data_format``, ``activation``, ``use_bias``, initializers, regularizers and
            constraints).
        padding: "same", "valid", "constant", "reflect", "symmetric" or "circular".
        dilation_rate: must be 1.
        k_coef_lip: as in `deel_lip.layers.SpectralDense` (likewise ``eps_spectral``,
            ``eps_bjorck``, ``beta_bjorck``, ``maxiter_spectral``, ``maxiter_bjorck``).
        conv_bound: "frequency" (default, tight) or "coverage" (the factor of
            `deel_lip.normalizers.conv_lipschitz_factor`; loose); see the module docstring.
        condense_on_build: at build, set the raw kernel to its constrained kernel (as
            `condense()`; the function is unchanged), so the optimizer's steps are sized
            relative to the kernel actually used (default True; see
            docs/guide/tight_convolutions.md).

    Input shape:
        4D tensor ``(batch, rows, cols, channels)`` (channels_last).

    Output shape:
        4D tensor ``(batch, new_rows, new_cols, filters)``.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
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
        PadConv2D.__init__(
            self,
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
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

    def _export_class(self):
        return PadConv2D._export_class(self)


@keras.saving.register_keras_serializable("deel_lip")
class FrobeniusConv2D(_ConvKernel, FrobeniusKernel, PadConv2D):
    """2D convolution whose kernel is scaled to a ``k_coef_lip``-Lipschitz map.

    ``K_bar = k_coef_lip * W / bound(W)`` with ``W = K / ||K||_F`` and ``bound`` as in
    `SpectralConv2D` (``conv_bound``): no Bjorck iteration, ``k_coef_lip``-Lipschitz for
    every input size, but not orthogonal.

    Args:
        filters: as in `SpectralConv2D`, like every other argument except the Bjorck
            ones (``eps_spectral``, ``eps_bjorck``, ``beta_bjorck``, ``maxiter_*``).
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
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
        conv_bound="frequency",
        condense_on_build=True,
        keep_raw_scale=False,
        **kwargs,
    ):
        PadConv2D.__init__(
            self,
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
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
        check_unit_dilation_and_groups(self)
        self._init_frobenius(k_coef_lip, False, condense_on_build, keep_raw_scale)
        # disjoint neurons make no sense for convolutions: keep the config minimal
        del self._lipschitz_args["disjoint_neurons"]
        self._init_conv_bound(conv_bound)

    def _export_class(self):
        return PadConv2D._export_class(self)


@keras.saving.register_keras_serializable("deel_lip")
class SpectralConv1D(_ConvKernel, SpectralKernel, keras.layers.Conv1D):
    """1D convolution with an orthogonal reshaped kernel, ``k_coef_lip``-Lipschitz.

    Padding "same", "valid" or "causal" (all zero paddings: frequency bound of the
    polyphase kernel, or coverage factor ``sqrt(ceil(k / s))``). Other arguments as
    `SpectralConv2D`.

    Input shape:
        3D tensor ``(batch, steps, channels)`` (channels_last).

    Output shape:
        3D tensor ``(batch, new_steps, filters)``.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="same",
        data_format=None,
        dilation_rate=1,
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
        keras.layers.Conv1D.__init__(
            self,
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
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

    def _export_class(self):
        return keras.layers.Conv1D
