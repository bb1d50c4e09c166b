"""Lipschitz pooling.

A pooling window of ``ph x pw`` pixels at strides ``(sh, sw)`` with "valid" padding
reads each input pixel in at most ``c = ceil(ph / sh) * ceil(pw / sw)`` windows (the
overlap count; 1 when the windows do not overlap). The layers below are scaled with that
count so that their Lipschitz constant is at most ``k_coef_lip`` for every input size,
and exactly ``k_coef_lip`` when the windows do not overlap.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from deel_lip._backend import in_xla_context
from deel_lip.layers.base import LipschitzLayer

__all__ = [
    "ScaledAveragePooling2D",
    "ScaledL2NormPooling2D",
    "ScaledGlobalAveragePooling2D",
    "ScaledGlobalL2NormPooling2D",
]

DEFAULT_EPS_GRAD_SQRT = 1e-6
DATA_FORMATS = ("channels_last", "channels_first")


def overlap_count(pool_size, strides) -> int:
    """Largest number of windows that read one pixel: ``prod(ceil(p / s))``."""
    return math.prod(-(-p // s) for p, s in zip(pool_size, strides))


def sqrt_zero_grad_below(x, eps: float):
    """``sqrt(x)`` (``x >= 0``) whose gradient is 0 where ``sqrt(x) <= eps``.

    The value is exact everywhere. Above ``eps`` the gradient is the true
    ``1 / (2 sqrt(x))``; below it is 0 (a valid subgradient of the L2 norm at 0), which
    avoids the infinite derivative of the square root at 0. A custom gradient: the
    forward pass is a bare square root (a ``where``-based version is 5x slower on CPU).
    """
    return _sqrt_zero_grad_below(x, float(eps))


def _sqrt_zero_grad_below(x, eps: float):
    @ops.custom_gradient
    def sqrt(x):
        root = ops.sqrt(x)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            safe = ops.maximum(root, ops.cast(max(eps, 1e-30), root.dtype))
            return ops.where(root > eps, upstream * 0.5 / safe, ops.zeros_like(upstream))

        return root, grad

    return sqrt(x)


def _check_eps_grad_sqrt(eps_grad_sqrt) -> float:
    if (
        isinstance(eps_grad_sqrt, bool)
        or not isinstance(eps_grad_sqrt, (int, float))
        or not math.isfinite(eps_grad_sqrt)
        or eps_grad_sqrt < 0
    ):
        raise ValueError(f"eps_grad_sqrt must be a finite number >= 0, received: {eps_grad_sqrt!r}")
    return float(eps_grad_sqrt)


def _check_valid_window(layer) -> None:
    if not isinstance(layer.padding, str) or layer.padding.lower() != "valid":
        raise ValueError(
            f"{type(layer).__name__} supports padding='valid' only ('same' averages fewer "
            f"pixels at the border, which breaks the Lipschitz bound), "
            f"received: padding={layer.padding!r}"
        )
    layer.padding = "valid"
    if any(s < 1 for s in layer.strides):
        raise ValueError(
            f"{type(layer).__name__}: strides must be >= 1, received: strides={layer.strides}"
        )


def _as_float(x, dtype):
    """Integer or boolean inputs cast to the layer's compute dtype (as Keras layers do)."""
    if keras.backend.is_float_dtype(keras.backend.standardize_dtype(x.dtype)):
        return x
    return ops.cast(x, dtype)


def _spatial_axes(data_format: str) -> tuple[int, int]:
    return (1, 2) if data_format == "channels_last" else (2, 3)


def _spatial_size(x, axes):
    """``H * W`` of ``x`` as a float tensor (works with unknown static sizes)."""
    shape = ops.shape(x)
    return ops.cast(shape[axes[0]] * shape[axes[1]], x.dtype)


def _window_means(layer, x):
    """Mean of ``x`` over each pooling window of ``layer`` ("valid" windows only).

    TensorFlow's own kernels: the average pooling kernel (forward and backward), 3x
    faster than any reshape-and-reduce on CPU. Traced for XLA with non-overlapping
    windows (``strides == pool_size``) on static spatial sizes: a reshape and a mean over
    the window axes, which XLA fuses (faster than its pooling). Both crop the rows and
    columns that do not fill a window, so they are equal.
    """
    axes = _spatial_axes(layer.data_format)
    shape = tuple(x.shape)
    sizes = [shape[axis] for axis in axes]
    if not in_xla_context() or tuple(layer.strides) != tuple(layer.pool_size) or None in sizes:
        return keras.layers.AveragePooling2D.call(layer, x)
    shape = (-1 if shape[0] is None else shape[0],) + shape[1:]
    (ph, pw), (h, w) = layer.pool_size, sizes
    rows, cols = h // ph, w // pw
    if axes == (1, 2):
        x = x[:, : rows * ph, : cols * pw, :]
        windows = ops.reshape(x, (shape[0], rows, ph, cols, pw, shape[3]))
        return ops.mean(windows, axis=(2, 4))
    x = x[:, :, : rows * ph, : cols * pw]
    windows = ops.reshape(x, (shape[0], shape[1], rows, ph, cols, pw))
    return ops.mean(windows, axis=(3, 5))


@keras.saving.register_keras_serializable("deel_lip")
class ScaledAveragePooling2D(LipschitzLayer, keras.layers.AveragePooling2D):
    """Average pooling scaled to be ``k_coef_lip``-Lipschitz.

    ``y = k_coef_lip * sqrt(ph * pw / c) * avg_pool(x)`` with ``c`` the overlap count
    ``ceil(ph / sh) * ceil(pw / sw)``. The pooling matrix is ``B / (ph pw)`` with ``B`` a
    0/1 matrix with ``ph pw`` ones per row and at most ``c`` per column, so
    ``||B||_2 <= sqrt(ph pw c)`` and the layer is ``k_coef_lip``-Lipschitz. Without
    overlap (``strides >= pool_size``, the default) the rows are orthogonal and the
    norm is exactly ``k_coef_lip``.

    Args:
        pool_size, strides, data_format: as in `keras.layers.AveragePooling2D`.
        padding: "valid" only ("same" averages fewer pixels at the border and breaks
            the bound).
        k_coef_lip: Lipschitz constant (> 0).
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape:
        4D tensor ``(batch, rows, cols, channels)`` or ``(batch, channels, rows, cols)``.

    Output shape:
        4D tensor ``(batch, pooled_rows, pooled_cols, channels)`` (or channels first).

    Raises:
        ValueError: ``padding`` other than "valid", ``strides < 1``, ``k_coef_lip <= 0``.
    """

    def __init__(
        self,
        pool_size=(2, 2),
        strides=None,
        padding="valid",
        data_format=None,
        k_coef_lip=1.0,
        **kwargs,
    ):
        super().__init__(
            pool_size=pool_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            **kwargs,
        )
        _check_valid_window(self)
        self._init_lipschitz(k_coef_lip)

    def _window_scale(self) -> float:
        return math.sqrt(math.prod(self.pool_size) / overlap_count(self.pool_size, self.strides))

    def call(self, inputs):
        inputs = _as_float(inputs, self.compute_dtype)
        return _window_means(self, inputs) * (self._get_coef() * self._window_scale())

    def get_config(self):
        config = super().get_config()
        config["k_coef_lip"] = self.k_coef_lip
        return config


@keras.saving.register_keras_serializable("deel_lip")
class ScaledL2NormPooling2D(LipschitzLayer, keras.layers.AveragePooling2D):
    """L2 norm of each pooling window, scaled to be ``k_coef_lip``-Lipschitz.

    ``y = k_coef_lip / sqrt(c) * sqrt(sum_{window} x^2)`` with ``c`` the overlap count.
    Each window norm is 1-Lipschitz in the window's pixels, and
    ``sum_w ||x_w - x'_w||^2 <= c ||x - x'||^2``, so the layer is ``k_coef_lip``-Lipschitz.
    Without overlap it is gradient-norm preserving wherever every window is nonzero.
    The square root has a zero gradient where the window norm is at most
    ``eps_grad_sqrt`` (see `sqrt_zero_grad_below`).

    Args:
        pool_size, strides, data_format: as in `keras.layers.AveragePooling2D`.
        padding: "valid" only.
        k_coef_lip: Lipschitz constant (> 0).
        eps_grad_sqrt: window norm (>= 0) below which the gradient is set to 0.
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape:
        4D tensor ``(batch, rows, cols, channels)`` or ``(batch, channels, rows, cols)``.

    Output shape:
        4D tensor ``(batch, pooled_rows, pooled_cols, channels)`` (or channels first).

    Raises:
        ValueError: ``padding`` other than "valid", ``strides < 1``, ``k_coef_lip <= 0``,
            ``eps_grad_sqrt < 0``.

    Reference:
        Boureau, Ponce, LeCun, "A theoretical analysis of feature pooling in visual
        recognition", ICML 2010.
    """

    def __init__(
        self,
        pool_size=(2, 2),
        strides=None,
        padding="valid",
        data_format=None,
        k_coef_lip=1.0,
        eps_grad_sqrt=DEFAULT_EPS_GRAD_SQRT,
        **kwargs,
    ):
        super().__init__(
            pool_size=pool_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            **kwargs,
        )
        _check_valid_window(self)
        self.eps_grad_sqrt = _check_eps_grad_sqrt(eps_grad_sqrt)
        self._init_lipschitz(k_coef_lip)

    def call(self, inputs):
        inputs = _as_float(inputs, self.compute_dtype)
        sums = _window_means(self, ops.square(inputs)) * math.prod(self.pool_size)
        scale = self._get_coef() / math.sqrt(overlap_count(self.pool_size, self.strides))
        return sqrt_zero_grad_below(sums, self.eps_grad_sqrt) * scale

    def get_config(self):
        config = super().get_config()
        config.update({"k_coef_lip": self.k_coef_lip, "eps_grad_sqrt": self.eps_grad_sqrt})
        return config


@keras.saving.register_keras_serializable("deel_lip")
class ScaledGlobalAveragePooling2D(LipschitzLayer, keras.layers.GlobalAveragePooling2D):
    """Global average pooling scaled to be exactly ``k_coef_lip``-Lipschitz.

    ``y_c = k_coef_lip * sqrt(H W) * mean_{h, w}(x_{h, w, c}) = k_coef_lip *
    sum_{h, w} x_{h, w, c} / sqrt(H W)``: each output is the inner product with a unit
    vector, the vectors of different channels are orthogonal, so the operator norm is
    exactly ``k_coef_lip`` (gradient-norm preserving). ``H, W`` are read from each input,
    so the bound holds for every input size.

    Args:
        data_format, keepdims: as in `keras.layers.GlobalAveragePooling2D`.
        k_coef_lip: Lipschitz constant (> 0).
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape:
        4D tensor ``(batch, rows, cols, channels)`` or ``(batch, channels, rows, cols)``.

    Output shape:
        ``(batch, channels)``, or with ``keepdims`` ``(batch, 1, 1, channels)``
        (channels last) / ``(batch, channels, 1, 1)``.
    """

    def __init__(self, data_format=None, k_coef_lip=1.0, keepdims=False, **kwargs):
        super().__init__(data_format=data_format, keepdims=keepdims, **kwargs)
        self._init_lipschitz(k_coef_lip)

    def call(self, inputs):
        inputs = _as_float(inputs, self.compute_dtype)
        axes = _spatial_axes(self.data_format)
        sums = ops.sum(inputs, axis=axes, keepdims=self.keepdims)
        return sums * (self._get_coef() / ops.sqrt(_spatial_size(inputs, axes)))

    def get_config(self):
        config = super().get_config()
        config["k_coef_lip"] = self.k_coef_lip
        return config


@keras.saving.register_keras_serializable("deel_lip")
class ScaledGlobalL2NormPooling2D(LipschitzLayer, keras.layers.GlobalAveragePooling2D):
    """L2 norm of each channel over the spatial axes, ``k_coef_lip``-Lipschitz.

    ``y_c = k_coef_lip * sqrt(sum_{h, w} x_{h, w, c}^2)``: each output is the norm of a
    disjoint block of the input, so the layer is ``k_coef_lip``-Lipschitz and
    gradient-norm preserving wherever every channel is nonzero. The square root has a
    zero gradient where a channel norm is at most ``eps_grad_sqrt``.

    Args:
        data_format, keepdims: as in `keras.layers.GlobalAveragePooling2D`.
        k_coef_lip: Lipschitz constant (> 0).
        eps_grad_sqrt: channel norm (>= 0) below which the gradient is set to 0.
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape:
        4D tensor ``(batch, rows, cols, channels)`` or ``(batch, channels, rows, cols)``.

    Output shape:
        ``(batch, channels)`` (or with ``keepdims`` the 4D shape with unit spatial axes).

    Raises:
        ValueError: ``k_coef_lip <= 0``, ``eps_grad_sqrt < 0``.
    """

    def __init__(
        self,
        data_format=None,
        k_coef_lip=1.0,
        eps_grad_sqrt=DEFAULT_EPS_GRAD_SQRT,
        keepdims=False,
        **kwargs,
    ):
        super().__init__(data_format=data_format, keepdims=keepdims, **kwargs)
        self.eps_grad_sqrt = _check_eps_grad_sqrt(eps_grad_sqrt)
        self._init_lipschitz(k_coef_lip)

    def call(self, inputs):
        inputs = _as_float(inputs, self.compute_dtype)
        axes = _spatial_axes(self.data_format)
        sums = ops.sum(ops.square(inputs), axis=axes, keepdims=self.keepdims)
        return sqrt_zero_grad_below(sums, self.eps_grad_sqrt) * self._get_coef()

    def get_config(self):
        config = super().get_config()
        config.update({"k_coef_lip": self.k_coef_lip, "eps_grad_sqrt": self.eps_grad_sqrt})
        return config
