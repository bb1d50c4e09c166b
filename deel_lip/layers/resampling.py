"""Invertible resampling: space-to-depth and depth-to-space.

Both layers only move pixels into channels (or back): they are permutations of the
input's entries, hence exactly orthogonal (every singular value equals 1).
"""

from __future__ import annotations

import keras
from keras import ops

from deel_lip.layers.pooling import DATA_FORMATS

__all__ = ["InvertibleDownSampling", "InvertibleUpSampling"]


class _SpaceToDepth(keras.layers.Layer):
    """Shared argument handling and shapes of the invertible resampling layers."""

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

    def _split(self, input_shape):
        """``(rows, cols, channels)`` of a 4D shape; raises unless 4D with known channels."""
        if len(input_shape) != 4:
            raise ValueError(
                f"{type(self).__name__} expects 4D inputs, "
                f"received input shape {tuple(input_shape)}"
            )
        if self.data_format == "channels_last":
            rows, cols, channels = input_shape[1], input_shape[2], input_shape[3]
        else:
            rows, cols, channels = input_shape[2], input_shape[3], input_shape[1]
        if channels is None:
            raise ValueError(
                f"{type(self).__name__} needs a known channel count, received channels=None"
            )
        return rows, cols, channels

    def _output_shape(self, input_shape, up: bool):
        """Output shape; unknown (None) sizes stay unknown."""
        rows, cols, channels = self._split(input_shape)
        (ph, pw), block = self.pool_size, self.pool_size[0] * self.pool_size[1]

        def scale(size, factor, grow):
            if size is None:
                return None
            return size * factor if grow else size // factor

        rows, cols, channels = (
            scale(rows, ph, up),
            scale(cols, pw, up),
            scale(channels, block, not up),
        )
        if self.data_format == "channels_last":
            return (input_shape[0], rows, cols, channels)
        return (input_shape[0], channels, rows, cols)

    def _to_channels_last(self, x):
        return x if self.data_format == "channels_last" else ops.transpose(x, (0, 2, 3, 1))

    def _from_channels_last(self, x):
        return x if self.data_format == "channels_last" else ops.transpose(x, (0, 3, 1, 2))

    def lipschitz_bound(self) -> float:
        """1: the layer permutes coordinates (an isometry)."""
        return 1.0

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
            unknown channel count, spatial size not divisible by ``pool_size``.

    Reference:
        Anil, Lucas, Grosse, "Sorting out Lipschitz function approximation", ICML 2019.
    """

    def build(self, input_shape):
        rows, cols, _ = self._split(input_shape)
        for name, size, pool in (
            ("rows", rows, self.pool_size[0]),
            ("cols", cols, self.pool_size[1]),
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
        return self._output_shape(input_shape, up=False)


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
        _, _, channels = self._split(input_shape)
        block = self.pool_size[0] * self.pool_size[1]
        if channels % block != 0:
            raise ValueError(
                f"InvertibleUpSampling needs a channel count divisible by "
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
        return self._output_shape(input_shape, up=True)
