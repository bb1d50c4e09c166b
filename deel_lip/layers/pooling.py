"""Lipschitz pooling and invertible (space-to-depth) resampling.

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

from deel_lip.layers.base import LipschitzLayer

__all__ = [
    "ScaledAveragePooling2D",
    "ScaledL2NormPooling2D",
    "ScaledGlobalAveragePooling2D",
    "ScaledGlobalL2NormPooling2D",
    "InvertibleDownSampling",
    "InvertibleUpSampling",
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
    avoids the infinite derivative of the square root at 0. Written with two ``where``
    so that no infinite or NaN value reaches the gradient.
    """
    above = x > eps * eps
    safe = ops.where(above, x, ops.ones_like(x))
    return ops.where(above, ops.sqrt(safe), ops.stop_gradient(ops.sqrt(ops.maximum(x, 0.0))))


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


def _spatial_axes(data_format: str) -> tuple[int, int]:
    return (1, 2) if data_format == "channels_last" else (2, 3)


def _spatial_size(x, axes):
    """``H * W`` of ``x`` as a float tensor (works with unknown static sizes)."""
    shape = ops.shape(x)
    return ops.cast(shape[axes[0]] * shape[axes[1]], x.dtype)


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
        return super().call(inputs) * (self._get_coef() * self._window_scale())

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
        window_size = math.prod(self.pool_size)
        sums = super().call(ops.square(inputs)) * window_size
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
        axes = _spatial_axes(self.data_format)
        sums = ops.sum(ops.square(inputs), axis=axes, keepdims=self.keepdims)
        return sqrt_zero_grad_below(sums, self.eps_grad_sqrt) * self._get_coef()

    def get_config(self):
        config = super().get_config()
        config.update({"k_coef_lip": self.k_coef_lip, "eps_grad_sqrt": self.eps_grad_sqrt})
        return config


class _SpaceToDepth(keras.layers.Layer):
    """Shared argument handling of the invertible resampling layers."""

    def __init__(self, pool_size, data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        if isinstance(pool_size, int) and not isinstance(pool_size, bool):
            pool_size = (pool_size, pool_size)
        if (
            not isinstance(pool_size, (tuple, list))
            or len(pool_size) != 2
            or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in pool_size)
        ):
            raise ValueError(
                f"pool_size must be an integer >= 1 or a tuple of 2 such integers, "
                f"received: pool_size={pool_size!r}"
            )
        if data_format not in DATA_FORMATS:
            raise ValueError(
                f"data_format must be one of {DATA_FORMATS}, received: {data_format!r}"
            )
        self.pool_size = tuple(pool_size)
        self.data_format = data_format

    def _check_rank(self, input_shape) -> None:
        if len(input_shape) != 4:
            raise ValueError(
                f"{type(self).__name__} expects 4D inputs, "
                f"received input shape {tuple(input_shape)}"
            )

    def _split(self, input_shape):
        """``(rows, cols, channels)`` of a 4D shape in this layer's data format."""
        if self.data_format == "channels_last":
            return input_shape[1], input_shape[2], input_shape[3]
        return input_shape[2], input_shape[3], input_shape[1]

    def _join(self, batch, rows, cols, channels):
        if self.data_format == "channels_last":
            return (batch, rows, cols, channels)
        return (batch, channels, rows, cols)

    def _to_channels_last(self, x):
        return x if self.data_format == "channels_last" else ops.transpose(x, (0, 2, 3, 1))

    def _from_channels_last(self, x):
        return x if self.data_format == "channels_last" else ops.transpose(x, (0, 3, 1, 2))

    def get_config(self):
        config = super().get_config()
        config.update({"pool_size": self.pool_size, "data_format": self.data_format})
        return config


@keras.saving.register_keras_serializable("deel_lip")
class InvertibleDownSampling(_SpaceToDepth):
    """Space-to-depth: each ``ph x pw`` block of pixels becomes ``ph pw`` channels.

    Output channel ``c * ph * pw + i * pw + j`` at ``(r, s)`` is input channel ``c`` at
    pixel ``(r * ph + i, s * pw + j)``. The map is a permutation of the coordinates:
    orthogonal, exactly 1-Lipschitz and gradient-norm preserving.
    `InvertibleUpSampling` with the same ``pool_size`` is its inverse.

    Args:
        pool_size: integer or tuple ``(ph, pw)`` of integers >= 1.
        data_format: "channels_last" or "channels_first".
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape:
        ``(batch, rows, cols, channels)`` (or channels first), ``rows`` divisible by ``ph``
        and ``cols`` by ``pw``.

    Output shape:
        ``(batch, rows / ph, cols / pw, channels * ph * pw)`` (or channels first).

    Raises:
        ValueError: invalid ``pool_size`` or ``data_format``; at build: input not 4D,
            spatial size not divisible by ``pool_size``.

    Reference:
        Anil, Lucas, Grosse, "Sorting out Lipschitz function approximation", ICML 2019.
    """

    def build(self, input_shape):
        self._check_rank(input_shape)
        rows, cols, _ = self._split(input_shape)
        for size, pool, name in (
            (rows, self.pool_size[0], "rows"),
            (cols, self.pool_size[1], "cols"),
        ):
            if size is not None and size % pool != 0:
                raise ValueError(
                    f"InvertibleDownSampling needs {name} divisible by the pool size, "
                    f"received {name}={size} for pool_size={self.pool_size}"
                )
        self.built = True

    def call(self, inputs):
        x = self._to_channels_last(inputs)
        shape = ops.shape(x)
        rows, cols, channels = shape[1], shape[2], x.shape[3]
        ph, pw = self.pool_size
        x = ops.reshape(x, (-1, rows // ph, ph, cols // pw, pw, channels))
        x = ops.transpose(x, (0, 1, 3, 5, 2, 4))
        x = ops.reshape(x, (-1, rows // ph, cols // pw, channels * ph * pw))
        return self._from_channels_last(x)

    def compute_output_shape(self, input_shape):
        rows, cols, channels = self._split(input_shape)
        ph, pw = self.pool_size
        return self._join(
            input_shape[0],
            None if rows is None else rows // ph,
            None if cols is None else cols // pw,
            None if channels is None else channels * ph * pw,
        )


@keras.saving.register_keras_serializable("deel_lip")
class InvertibleUpSampling(_SpaceToDepth):
    """Depth-to-space, the inverse of `InvertibleDownSampling` with the same pool size.

    Groups of ``ph pw`` consecutive channels become a ``ph x pw`` block of pixels. A
    permutation of the coordinates: orthogonal, exactly 1-Lipschitz.

    Args:
        pool_size: integer or tuple ``(ph, pw)`` of integers >= 1.
        data_format: "channels_last" or "channels_first".
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape:
        ``(batch, rows, cols, channels)`` (or channels first), ``channels`` divisible by
        ``ph * pw``.

    Output shape:
        ``(batch, rows * ph, cols * pw, channels / (ph * pw))`` (or channels first).

    Raises:
        ValueError: invalid ``pool_size`` or ``data_format``; at build: input not 4D,
            unknown channel count or one not divisible by ``ph * pw``.
    """

    def build(self, input_shape):
        self._check_rank(input_shape)
        _, _, channels = self._split(input_shape)
        block = self.pool_size[0] * self.pool_size[1]
        if channels is None or channels % block != 0:
            raise ValueError(
                f"InvertibleUpSampling needs a known channel count divisible by "
                f"ph * pw = {block}, received channels={channels}"
            )
        self.built = True

    def call(self, inputs):
        x = self._to_channels_last(inputs)
        shape = ops.shape(x)
        rows, cols = shape[1], shape[2]
        ph, pw = self.pool_size
        channels = x.shape[3] // (ph * pw)
        x = ops.reshape(x, (-1, rows, cols, channels, ph, pw))
        x = ops.transpose(x, (0, 1, 4, 2, 5, 3))
        x = ops.reshape(x, (-1, rows * ph, cols * pw, channels))
        return self._from_channels_last(x)

    def compute_output_shape(self, input_shape):
        rows, cols, channels = self._split(input_shape)
        ph, pw = self.pool_size
        return self._join(
            input_shape[0],
            None if rows is None else rows * ph,
            None if cols is None else cols * pw,
            None if channels is None else channels // (ph * pw),
        )
