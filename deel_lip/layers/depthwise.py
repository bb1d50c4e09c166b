"""Depthwise 2D convolution with a guaranteed Lipschitz constant (deel-lip's name).

A depthwise convolution applies to each input channel ``c`` its own ``depth_multiplier``
filters ``K[:, :, c, :]``; its operator is block diagonal over channels, so its norm is
the largest of the channels' norms. The map of channel ``c`` is a one-input-channel
convolution, whose norm is at most ``factor * ||M_c||_2`` with ``M_c`` the
``(kh * kw, depth_multiplier)`` matrix of its filters and ``factor`` the coverage factor
of `deel_lip.normalizers.conv_lipschitz_factor`. The layer divides each ``M_c`` by its
Frobenius norm (``>= ||M_c||_2``, equal when ``depth_multiplier == 1``), hence::

    ||depthwise conv|| <= factor * max_c ||K_bar_c||_F = k_coef_lip.

With ``conv_bound="frequency"`` (default) each channel's map is instead bounded by the
frequency-domain bound of its convolution (`deel_lip.normalizers_freq`), sound for every
input size and much tighter: ``K_bar_c = k_coef_lip * K_c / bound_c``.
"""

from __future__ import annotations

import keras
from keras import ops

from deel_lip.layers._conv_bound import check_conv_bound
from deel_lip.layers.base import ConstrainedKernel
from deel_lip.normalizers import conv_lipschitz_factor
from deel_lip.normalizers_freq import conv_frequency_bound

__all__ = ["SpectralDepthwiseConv2D"]

_TINY = 1e-12
_PADDINGS = ("same", "valid")


def _channel_norms(kernel, filterwise: bool):
    """Frobenius norm of each channel's filters ``(1, 1, C, 1)``, or their max."""
    scale = ops.maximum(ops.max(ops.abs(kernel)), _TINY)  # no overflow in the squares
    scaled = kernel / scale
    norms = ops.sqrt(
        ops.maximum(ops.sum(ops.square(scaled), axis=(0, 1, 3), keepdims=True), _TINY**2)
    )
    if not filterwise:
        norms = ops.max(norms)
    return scaled, norms


@keras.saving.register_keras_serializable("deel_lip")
class SpectralDepthwiseConv2D(ConstrainedKernel, keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` whose operator norm is at most ``k_coef_lip``.

    ``K_bar[:, :, c, :] = k_coef_lip / factor * K[:, :, c, :] / n_c`` with ``n_c`` the
    Frobenius norm of channel ``c``'s filters (``filterwise_normalisation=True``) or the
    largest of them (False: one scale for the whole kernel). The bound holds for every
    input size (see the module docstring); it is tight when ``depth_multiplier == 1``.

    Args:
        kernel_size, strides, depth_multiplier, data_format, activation, use_bias,
            depthwise_initializer, bias_initializer, depthwise_regularizer,
            bias_regularizer, activity_regularizer, depthwise_constraint,
            bias_constraint: as in `keras.layers.DepthwiseConv2D`.
        padding: "same" or "valid".
        dilation_rate: must be 1.
        k_coef_lip: Lipschitz constant of the layer (> 0).
        filterwise_normalisation: normalise each channel's filters on their own (True)
            or the kernel by the largest channel norm (False); both are
            ``k_coef_lip``-Lipschitz.
        orthogonal, ortho_niter: deel-lip's orthogonal (exponential) depthwise mode is
            not provided: ``orthogonal`` must be False.
        eps_spectral, maxiter_spectral: accepted for deel-lip compatibility and stored in
            the config; the Frobenius normalisation needs no iteration.
        conv_bound: "frequency" (default: ``bound_c`` is the frequency-domain bound of
            channel ``c``'s convolution) or "coverage" (``bound_c = factor * n_c``, the
            behaviour of configs saved without the key).
        condense_on_build: at build, set the raw kernel to its constrained kernel (as
            `condense()`; the function is unchanged), so the optimizer's steps are sized
            relative to the kernel actually used (default True; see
            docs/guide/tight_convolutions.md).

    Raises:
        ValueError: naming the argument, for a padding other than "same"/"valid", a
            dilation rate other than 1, ``orthogonal=True``, or a non-bool
            ``filterwise_normalisation``.
    """

    def __init__(
        self,
        kernel_size,
        strides=(1, 1),
        padding="same",
        depth_multiplier=1,
        data_format=None,
        dilation_rate=(1, 1),
        activation=None,
        use_bias=True,
        depthwise_initializer="glorot_uniform",
        bias_initializer="zeros",
        depthwise_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        depthwise_constraint=None,
        bias_constraint=None,
        k_coef_lip=1.0,
        filterwise_normalisation=True,
        orthogonal=False,
        ortho_niter=-1,
        eps_spectral=1e-3,
        maxiter_spectral=10,
        conv_bound="frequency",
        condense_on_build=True,
        keep_raw_scale=False,
        **kwargs,
    ):
        if not isinstance(padding, str) or padding.lower() not in _PADDINGS:
            raise ValueError(
                f"SpectralDepthwiseConv2D: padding must be one of {_PADDINGS}, received: "
                f"{padding!r}"
            )
        if orthogonal:
            raise ValueError(
                "SpectralDepthwiseConv2D: orthogonal=True (deel-lip's exponential "
                "depthwise mode) is not provided; use orthogonal=False, received: "
                f"{orthogonal!r}"
            )
        if not isinstance(filterwise_normalisation, bool):
            raise ValueError(
                f"filterwise_normalisation must be a bool, received: {filterwise_normalisation!r}"
            )
        keras.layers.DepthwiseConv2D.__init__(
            self,
            kernel_size,
            strides=strides,
            padding=padding.lower(),
            depth_multiplier=depth_multiplier,
            data_format=data_format,
            dilation_rate=dilation_rate,
            activation=activation,
            use_bias=use_bias,
            depthwise_initializer=depthwise_initializer,
            bias_initializer=bias_initializer,
            depthwise_regularizer=depthwise_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            depthwise_constraint=depthwise_constraint,
            bias_constraint=bias_constraint,
            **kwargs,
        )
        if tuple(self.dilation_rate) != (1, 1):
            raise ValueError(
                f"SpectralDepthwiseConv2D: dilation_rate must be 1, received: {dilation_rate!r}"
            )
        self._init_constraint(
            k_coef_lip=k_coef_lip,
            condense_on_build=condense_on_build,
            keep_raw_scale=keep_raw_scale,
            filterwise_normalisation=filterwise_normalisation,
            orthogonal=False,
            ortho_niter=ortho_niter,
            eps_spectral=eps_spectral,
            maxiter_spectral=maxiter_spectral,
            conv_bound=check_conv_bound(conv_bound),
        )

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.setdefault("conv_bound", "coverage")  # files saved before the key existed
        return super().from_config(config)

    def _normalize(self, kernel, state):
        scaled, norms = _channel_norms(kernel, self.filterwise_normalisation)
        w = scaled / norms
        if self.conv_bound == "frequency":
            bounds = conv_frequency_bound(w, self.strides, self.padding, depthwise=True)
            bounds = ops.reshape(bounds, (1, 1, -1, 1))
            # the coverage bound (factor * ||w_c||_F) is sound too: keep the smaller
            coverage = conv_lipschitz_factor(self.kernel_size, self.strides, self.padding)
            frobenius = ops.sqrt(ops.sum(ops.square(w), axis=(0, 1, 3), keepdims=True))
            bounds = ops.minimum(bounds, coverage * frobenius)
            w = w / (bounds if self.filterwise_normalisation else ops.max(bounds))
        return w * self._coef(), {}

    def _lipschitz_factor(self):
        if self.conv_bound == "frequency":
            return 1.0
        return conv_lipschitz_factor(self.kernel_size, self.strides, self.padding)

    def _linear(self, inputs, kernel):
        return ops.depthwise_conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )

    def _add_bias(self, outputs):
        bias = ops.cast(self.bias, outputs.dtype)
        if self.data_format == "channels_first":
            bias = ops.reshape(bias, (1, -1, 1, 1))
        return outputs + bias

    def _export_class(self):
        return keras.layers.DepthwiseConv2D

    def vanilla_export(self) -> keras.layers.Layer:
        """Plain `keras.layers.DepthwiseConv2D` with the constrained kernel of the current
        weights (the model is not changed)."""
        if not self.built:
            raise ValueError(f"Layer {self.name!r} must be built before vanilla_export().")
        config = keras.layers.DepthwiseConv2D.get_config(self)
        config["name"] = self.name
        config.pop("depthwise_constraint", None)
        config.pop("depthwise_regularizer", None)
        layer = keras.layers.DepthwiseConv2D.from_config(config)
        layer.build(self._lip_input_shape)
        weights = [ops.convert_to_numpy(self.current_constrained_kernel())]
        if self.use_bias:
            weights.append(ops.convert_to_numpy(self.bias))
        layer.set_weights(weights)
        return layer
