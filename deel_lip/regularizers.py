"""Soft orthogonality regularisers for Dense and convolution kernels.

Both penalties are zero exactly when the layer's linear map is orthogonal (an isometry
or a co-isometry, whichever the shapes allow) and grow with the distance to it; adding
them to the loss pushes every singular value of the layer towards 1 without a hard
constraint.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from deel_lip.normalizers import gram, kernel_matrix

__all__ = ["OrthDenseRegularizer", "LorthRegularizer", "Lorth", "Lorth2D"]


def _check_lambda(name: str, value) -> None:
    is_number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if not is_number or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number > 0, received: {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@keras.saving.register_keras_serializable("deel_lip")
class OrthDenseRegularizer(keras.regularizers.Regularizer):
    """``lambda_orth * ||G - I||_F^2`` with ``G`` the Gram matrix on the small side.

    For the kernel matrix ``W`` (``(in, out)``, or a kernel reshaped to
    ``(-1, kernel.shape[-1])``): ``G = W^T W`` if ``W`` is tall, ``W W^T`` if it is wide.
    The penalty is zero iff every singular value of ``W`` equals 1.

    Args:
        lambda_orth: weight of the penalty (> 0).

    Raises:
        ValueError: if ``lambda_orth`` is not a finite number > 0, or (at call) if the
            weight has rank < 2.
    """

    def __init__(self, lambda_orth: float = 1.0):
        _check_lambda("lambda_orth", lambda_orth)
        self.lambda_orth = lambda_orth

    def __call__(self, x):
        if len(x.shape) < 2:
            raise ValueError(
                f"OrthDenseRegularizer needs a kernel of rank >= 2, received shape {x.shape}"
            )
        g = gram(kernel_matrix(ops.convert_to_tensor(x)))
        eye = ops.eye(g.shape[0], dtype=g.dtype)
        return self.lambda_orth * ops.sum(ops.square(g - eye))

    def get_config(self) -> dict:
        return {"lambda_orth": self.lambda_orth}


@keras.saving.register_keras_serializable("deel_lip")
class LorthRegularizer(keras.regularizers.Regularizer):
    """Orthogonality penalty of a strided convolution (Achour et al., JMLR 2022).

    For a convolution with kernel ``K`` of shape ``(*k, C, M)`` (``C`` input channels,
    ``M`` output channels), stride ``S`` and ``d = dim`` spatial axes, let
    ``G = conv(K, K)`` be the convolution of ``K`` with itself: each of the ``M`` filters,
    seen as a ``C``-channel image zero-padded by ``P = floor((k - 1) / S) * S`` on each
    side, is convolved with ``K`` at stride ``S``. ``G[m, t, m']`` is the inner product of
    the filters ``m`` and ``m'`` shifted by ``S * t``, i.e. the blocks of ``A A^T`` for the
    convolution operator ``A``. With ``I_0`` the identity at offset 0 and zeros elsewhere::

        Lorth(K) = lambda_lorth * (||G - I_0||_F^2 - max(0, M - C * S^d))

    On ``N^d``-pixel outputs with circular boundaries (``N`` at least the size of ``G``),
    ``N^d * Lorth / lambda_lorth = min(||A A^T - I||_F^2, ||A^T A - I||_F^2)``: the
    penalty is zero iff the convolution is orthogonal (row-orthogonal when
    ``M <= C S^d``, column-orthogonal otherwise) and positive otherwise.

    ``conv_transpose=True`` declares a kernel of a transposed convolution, stored by Keras
    as ``(*k, filters, in_channels)``: the layer is the adjoint of the strided convolution
    that reads this array with ``C = filters`` and ``M = in_channels`` (in/out axes swapped
    with respect to the layer), and an operator is orthogonal iff its adjoint is. The
    penalty is therefore computed on that convolution and has the same value with or
    without the flag (the formula above is symmetric in ``A`` and ``A^T``); the flag only
    names the layer's channels correctly in error messages.

    Args:
        kernel_shape: expected kernel shape ``(*k, C, M)``, checked at construction
            (existence of an orthogonal convolution) and against the kernel at call; None
            to take the shape of the kernel at call.
        stride: stride of the convolution, an int or one int per spatial axis (>= 1).
        lambda_lorth: weight of the penalty (> 0).
        dim: number of spatial axes, 1 (Conv1D) or 2 (Conv2D).
        conv_transpose: whether the kernel belongs to a transposed convolution.
        flag_deconv: deel-lip's name of ``conv_transpose`` (deprecated).

    Raises:
        ValueError: for an invalid argument, a kernel whose rank is not ``dim + 2``, a
            stride larger than the kernel in the column-orthogonal case, or more output
            channels than ``C * prod(k)`` in the row-orthogonal case (no orthogonal
            convolution exists then, so the penalty cannot reach zero).

    Reference:
        Achour, Malgouyres, Mamalet, "Existence, stability and scalability of orthogonal
        convolutional neural networks", JMLR 23, 2022.
    """

    def __init__(
        self,
        kernel_shape: Sequence[int] | None = None,
        stride: int | Sequence[int] = 1,
        lambda_lorth: float = 1.0,
        dim: int = 2,
        conv_transpose: bool = False,
        *,
        flag_deconv: bool | None = None,
    ):
        if flag_deconv is not None:
            warnings.warn(
                "LorthRegularizer(flag_deconv=...) is deel-lip's spelling: use conv_transpose=...",
                DeprecationWarning,
                stacklevel=2,
            )
            conv_transpose = flag_deconv
        if dim not in (1, 2) or not _is_int(dim):
            raise ValueError(f"dim must be 1 or 2, received: {dim!r}")
        if not isinstance(conv_transpose, bool):
            raise ValueError(f"conv_transpose must be a bool, received: {conv_transpose!r}")
        _check_lambda("lambda_lorth", lambda_lorth)
        self.dim = dim
        self.conv_transpose = conv_transpose
        self.lambda_lorth = lambda_lorth
        self.stride = stride
        self._strides = self._check_stride(stride)
        self.kernel_shape = None
        if kernel_shape is not None:
            self.kernel_shape = self._check_kernel_shape(kernel_shape)

    # ------------------------------------------------------------------ checks

    def _check_stride(self, stride) -> tuple[int, ...]:
        strides = (stride,) * self.dim if _is_int(stride) else stride
        if (
            not isinstance(strides, Sequence)
            or len(strides) != self.dim
            or not all(_is_int(s) and s >= 1 for s in strides)
        ):
            raise ValueError(
                f"stride must be an integer >= 1 or a sequence of {self.dim} such integers, "
                f"received: {stride!r}"
            )
        return tuple(int(s) for s in strides)

    def _channel_names(self) -> tuple[str, str]:
        if self.conv_transpose:
            return "output channels (filters)", "input channels"
        return "input channels", "output channels"

    def _check_kernel_shape(self, kernel_shape) -> tuple[int, ...]:
        shape = tuple(kernel_shape) if isinstance(kernel_shape, Sequence) else None
        if (
            shape is None
            or len(shape) != self.dim + 2
            or not all(_is_int(d) and d >= 1 for d in shape)
        ):
            raise ValueError(
                f"kernel_shape must be {self.dim + 2} positive integers (*kernel_size, "
                f"channels_in, channels_out) for dim={self.dim}, received: {kernel_shape!r}"
            )
        shape = tuple(int(d) for d in shape)
        sizes, c, m = shape[:-2], shape[-2], shape[-1]
        name_c, name_m = self._channel_names()
        if m <= c * math.prod(self._strides):  # row-orthogonal case
            if m > c * math.prod(sizes):
                raise ValueError(
                    f"No orthogonal convolution exists for kernel_shape={shape}: "
                    f"{m} {name_m} > {c} {name_c} x {math.prod(sizes)} kernel taps."
                )
        elif any(s > k for s, k in zip(self._strides, sizes)):
            raise ValueError(
                f"No orthogonal convolution exists for kernel_shape={shape} with "
                f"stride={self._strides}: the stride must not exceed the kernel size when "
                f"{m} {name_m} > {c} {name_c} x {math.prod(self._strides)} (stride product)."
            )
        return shape

    # ------------------------------------------------------------------ computation

    def _paddings(self, sizes) -> list[int]:
        return [((k - 1) // s) * s for k, s in zip(sizes, self._strides)]

    def self_convolution(self, kernel):
        """``G = conv(K, K)``: ``(M, *offsets, M)``, ``offsets = 2 P / S + 1`` per axis."""
        kernel = ops.convert_to_tensor(kernel)
        rank = self.dim + 2
        # The M filters as a batch of C-channel images: (M, *k, C).
        images = ops.transpose(kernel, (rank - 1, *range(rank - 1)))
        pads = [(0, 0)] + [(p, p) for p in self._paddings(kernel.shape[:-2])] + [(0, 0)]
        images = ops.pad(images, pads)
        return ops.conv(images, kernel, strides=self._strides, padding="valid")

    def _target(self, shape, dtype):
        target = np.zeros(shape, dtype=keras.backend.standardize_dtype(dtype))
        center = tuple(n // 2 for n in shape[1:-1])
        for m in range(shape[0]):
            target[(m, *center, m)] = 1.0
        return target

    def _delta(self, kernel_shape) -> int:
        c, m = kernel_shape[-2], kernel_shape[-1]
        return max(0, m - c * math.prod(self._strides))

    def __call__(self, x):
        x = ops.convert_to_tensor(x)
        shape = tuple(int(d) for d in x.shape)
        if self.kernel_shape is not None and shape != self.kernel_shape:
            raise ValueError(
                f"LorthRegularizer was built for kernel_shape={self.kernel_shape}, "
                f"received a kernel of shape {shape}"
            )
        if self.kernel_shape is None:
            self._check_kernel_shape(shape)
        g = self.self_convolution(x)
        target = ops.convert_to_tensor(self._target(tuple(g.shape), x.dtype))
        distance = ops.sum(ops.square(g - target)) - self._delta(shape)
        return self.lambda_lorth * distance

    def get_config(self) -> dict:
        stride = list(self.stride) if isinstance(self.stride, Sequence) else self.stride
        return {
            "kernel_shape": None if self.kernel_shape is None else list(self.kernel_shape),
            "stride": stride,
            "lambda_lorth": self.lambda_lorth,
            "dim": self.dim,
            "conv_transpose": self.conv_transpose,
        }


class Lorth:
    """deel-lip's unweighted Lorth term: ``||conv(K, K) - I_0||_F^2 - delta``.

    The value of `LorthRegularizer` with ``lambda_lorth=1`` (see it for the formula);
    deel-lip exposed it as the base class ``Lorth`` and its 2D form `Lorth2D`. Use
    `LorthRegularizer` as a layer's ``kernel_regularizer``.

    Args:
        kernel_shape: expected kernel shape ``(*k, C, M)``, or None.
        stride: stride of the convolution (>= 1).
        flag_deconv: whether the kernel belongs to a transposed convolution.
        dim: number of spatial axes (1 or 2); `Lorth2D` fixes it to 2.
    """

    def __init__(self, kernel_shape=None, stride=1, flag_deconv=False, dim=2):
        if not isinstance(flag_deconv, bool):
            raise ValueError(f"flag_deconv must be a bool, received: {flag_deconv!r}")
        self._regularizer = LorthRegularizer(
            kernel_shape, stride, lambda_lorth=1.0, dim=dim, conv_transpose=flag_deconv
        )
        self.kernel_shape = self._regularizer.kernel_shape
        self.stride = stride
        self.flag_deconv = flag_deconv
        self.dim = dim

    def compute_lorth(self, w):
        """The Lorth term of kernel ``w`` (zero iff the convolution is orthogonal)."""
        return self._regularizer(w)

    _compute_lorth = compute_lorth  # deel-lip's (private) method name


class Lorth2D(Lorth):
    """`Lorth` for 2D convolutions (deel-lip's ``Lorth2D``)."""

    def __init__(self, kernel_shape=None, stride=1, flag_deconv=False):
        super().__init__(kernel_shape, stride, flag_deconv, dim=2)
