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

import warnings

import keras
from keras import ops

from deel_lip.layers._conv_bound import ConvBound, conv_frequency_bound_with_padding
from deel_lip.layers.normalized import FrobeniusKernel, SpectralKernel
from deel_lip.normalizers import (
    DEFAULT_BETA_BJORCK,
    DEFAULT_EPS_BJORCK,
    DEFAULT_EPS_SPECTRAL,
    DEFAULT_MAXITER_BJORCK,
    DEFAULT_MAXITER_SPECTRAL,
    conv_lipschitz_factor,
    conv_transpose_lipschitz_factor,
)
from deel_lip.normalizers_freq import conv_frequency_bound

__all__ = [
    "PadConv2D",
    "SpectralConv2D",
    "FrobeniusConv2D",
    "SpectralConv1D",
    "SpectralConv2DTranspose",
]

KERAS_PADDINGS = ("same", "valid")
EXTRA_PADDINGS = ("constant", "reflect", "symmetric", "circular")
PAD_CONV_PADDINGS = KERAS_PADDINGS + EXTRA_PADDINGS


def _check_unit_dilation_and_groups(layer) -> None:
    if any(d != 1 for d in layer.dilation_rate):
        raise ValueError(
            f"{type(layer).__name__} supports dilation_rate=1 only, "
            f"received: dilation_rate={layer.dilation_rate}"
        )
    if getattr(layer, "groups", 1) != 1:
        raise ValueError(
            f"{type(layer).__name__} supports groups=1 only, received: groups={layer.groups}"
        )


def _pad_amounts(kernel_size) -> list[tuple[int, int]]:
    """Explicit padding that keeps the spatial size at stride 1 (like "same")."""
    return [((k - 1) // 2, k // 2) for k in kernel_size]


def _circular_pad(x, pads, spatial_axes):
    for axis, (before, after) in zip(spatial_axes, pads):
        size = x.shape[axis]
        if size is not None and (before > size or after > size):
            raise ValueError(
                f"circular padding needs inputs at least as large as the padding "
                f"({before}, {after}) on axis {axis}, received size {size}"
            )
        parts = []
        if before:
            parts.append(ops.take(x, ops.arange(-before, 0) % ops.shape(x)[axis], axis=axis))
        parts.append(x)
        if after:
            parts.append(ops.take(x, ops.arange(0, after), axis=axis))
        x = ops.concatenate(parts, axis=axis)
    return x


def check_padding_fits(padding: str, kernel_size, spatial_shape) -> None:
    """Raise `ValueError` if a reflect/symmetric padding is larger than the input.

    "reflect" pads ``p`` pixels by mirroring without the border pixel, so it needs
    ``size > p``; "symmetric" mirrors with it and needs ``size >= p``.
    """
    if padding not in ("reflect", "symmetric"):
        return
    for size, (before, after) in zip(spatial_shape, _pad_amounts(kernel_size)):
        if size is None:
            continue
        needed = max(before, after) + (1 if padding == "reflect" else 0)
        if size < needed:
            raise ValueError(
                f"padding={padding!r} with kernel_size={tuple(kernel_size)} pads "
                f"{max(before, after)} pixels, which needs inputs of spatial size >= {needed}; "
                f"received an input of spatial shape {tuple(spatial_shape)}"
            )


def apply_padding(x, padding: str, kernel_size, data_format: str):
    """Pad ``x`` for a "valid" convolution in one of the `EXTRA_PADDINGS` modes."""
    pads = _pad_amounts(kernel_size)
    rank = len(kernel_size)
    spatial_axes = (
        list(range(1, rank + 1)) if data_format == "channels_last" else list(range(2, rank + 2))
    )
    check_padding_fits(padding, kernel_size, [x.shape[axis] for axis in spatial_axes])
    if padding == "circular":
        return _circular_pad(x, pads, spatial_axes)
    full = [(0, 0)] * (rank + 2)
    for axis, pad in zip(spatial_axes, pads):
        full[axis] = pad
    mode = {"constant": "constant", "reflect": "reflect", "symmetric": "symmetric"}[padding]
    return ops.pad(x, full, mode=mode)


@keras.saving.register_keras_serializable("deel_lip")
class PadConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` with the padding modes "constant", "reflect", "symmetric"
    and "circular" on top of Keras' "same" and "valid".

    Extra modes pad by ``((k - 1) // 2, k // 2)`` on each spatial axis and then apply a
    "valid" convolution, so at stride 1 the output has the input's spatial size.

    Args:
        padding: "same", "valid", "constant", "reflect", "symmetric" or "circular".
        other arguments: as in `keras.layers.Conv2D` (``dilation_rate`` and ``groups``
            must be 1 with the extra modes).
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="same", **kwargs):
        if not isinstance(padding, str) or padding.lower() not in PAD_CONV_PADDINGS:
            raise ValueError(f"padding must be one of {PAD_CONV_PADDINGS}, received: {padding!r}")
        padding = padding.lower()
        keras_padding = padding if padding in KERAS_PADDINGS else "valid"
        super().__init__(filters, kernel_size, strides=strides, padding=keras_padding, **kwargs)
        self.pad_mode = padding
        if padding in EXTRA_PADDINGS:
            _check_unit_dilation_and_groups(self)

    def _pad(self, inputs):
        if self.pad_mode in KERAS_PADDINGS:
            return inputs
        return apply_padding(inputs, self.pad_mode, self.kernel_size, self.data_format)

    def _padded_shape(self, input_shape):
        if self.pad_mode in KERAS_PADDINGS:
            return input_shape
        shape = list(input_shape)
        axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        for axis, (before, after) in zip(axes, _pad_amounts(self.kernel_size)):
            if shape[axis] is not None:
                shape[axis] += before + after
        return tuple(shape)

    def build(self, input_shape):
        axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        check_padding_fits(self.pad_mode, self.kernel_size, [input_shape[a] for a in axes])
        super().build(self._padded_shape(input_shape))

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(self._pad(inputs), kernel)

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(self._padded_shape(input_shape))

    def get_config(self):
        config = super().get_config()
        config["padding"] = self.pad_mode
        return config

    def _export_class(self):
        return keras.layers.Conv2D if self.pad_mode in KERAS_PADDINGS else PadConv2D

    def vanilla_export(self):
        """A PadConv2D has no constraint: its export is a copy of itself (plain Conv2D
        for "same"/"valid")."""
        cls = self._export_class()
        config = cls.get_config(self) if cls is keras.layers.Conv2D else self.get_config()
        if cls is keras.layers.Conv2D:
            config["padding"] = self.pad_mode
        layer = cls.from_config(config)
        layer.build(self._build_input_shape)
        layer.set_weights(self.get_weights())
        return layer

    @property
    def _build_input_shape(self):
        return self._build_shapes_dict["input_shape"]


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
        return conv_frequency_bound_with_padding(
            kernel, self.kernel_size, self.strides, padding, self._get_coef()
        )


def _spectral_conv_init(layer, lipschitz_args, conv_bound) -> None:
    _check_unit_dilation_and_groups(layer)
    layer._init_spectral(**lipschitz_args)
    layer._init_conv_bound(conv_bound)


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
        _spectral_conv_init(
            self,
            dict(
                k_coef_lip=k_coef_lip,
                eps_spectral=eps_spectral,
                eps_bjorck=eps_bjorck,
                beta_bjorck=beta_bjorck,
                maxiter_spectral=maxiter_spectral,
                maxiter_bjorck=maxiter_bjorck,
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
        _check_unit_dilation_and_groups(self)
        self._init_frobenius(k_coef_lip, disjoint_neurons=False)
        # disjoint neurons make no sense for convolutions: keep the config minimal
        self._lipschitz_args = {}
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
        _spectral_conv_init(
            self,
            dict(
                k_coef_lip=k_coef_lip,
                eps_spectral=eps_spectral,
                eps_bjorck=eps_bjorck,
                beta_bjorck=beta_bjorck,
                maxiter_spectral=maxiter_spectral,
                maxiter_bjorck=maxiter_bjorck,
            ),
            conv_bound,
        )

    def _export_class(self):
        return keras.layers.Conv1D


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
            ``eps_bjorck``, ``beta_bjorck``, ``maxiter_spectral``, ``maxiter_bjorck``).

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
        _spectral_conv_init(
            self,
            dict(
                k_coef_lip=k_coef_lip,
                eps_spectral=eps_spectral,
                eps_bjorck=eps_bjorck,
                beta_bjorck=beta_bjorck,
                maxiter_spectral=maxiter_spectral,
                maxiter_bjorck=maxiter_bjorck,
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
