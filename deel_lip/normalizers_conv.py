"""Convolutions: coverage factors of the patch operator and deel-lip's power iteration.

* `conv_lipschitz_factor` / `conv_transpose_lipschitz_factor`: the certified factor by
  which a convolution's operator norm can exceed the spectral norm of its reshaped kernel,
  for every input size (used by the constrained convolutions).
* `spectral_normalization_conv`: deel-lip's normaliser of a convolution kernel by the
  power-iteration estimate of the operator norm on one input size.

Re-exported by `deel_lip.normalizers`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from keras import ops

from deel_lip._backend import vjp
from deel_lip.normalizers import DEFAULT_EPS_SPECTRAL, DEFAULT_MAXITER_SPECTRAL, safe_norm

__all__ = [
    "conv_coverage_1d",
    "conv_lipschitz_factor",
    "conv_transpose_lipschitz_factor",
    "padding_operator_norm",
    "spectral_normalization_conv",
]

_PADDING_SOURCES = ("zero", "reflect", "symmetric", "circular")


def _source_index(p: int, n: int, mode: str) -> int | None:
    """Input index read at index ``p`` of the padded signal (None for a zero pad)."""
    if 0 <= p < n:
        return p
    if mode == "zero":
        return None
    if mode == "circular":
        return p % n
    if mode == "reflect":  # ... 2 1 | 0 1 2 ... n-1 | n-2 ...
        period = 2 * (n - 1)
        q = p % period if period else 0
        return q if q < n else period - q
    if mode == "symmetric":  # ... 1 0 | 0 1 ... n-1 | n-1 n-2 ...
        period = 2 * n
        q = p % period
        return q if q < n else period - 1 - q
    raise ValueError(f"padding mode must be one of {_PADDING_SOURCES}, received: {mode!r}")


def conv_coverage_1d(
    n: int, kernel: int, stride: int, pad_left: int, pad_right: int, mode: str = "zero"
) -> int:
    """Largest number of (window, tap) pairs reading one input index, for length ``n``.

    The patch-extraction operator ``P`` of a convolution reads each padded index once per
    tap; ``P^T P`` is diagonal with these counts, so ``||P||_2 = sqrt(max count)``.
    """
    padded = n + pad_left + pad_right
    if padded < kernel:
        return 0
    counts = np.zeros(n, dtype=np.int64)
    for start in range(0, padded - kernel + 1, stride):
        for tap in range(kernel):
            src = _source_index(start + tap - pad_left, n, mode)
            if src is not None:
                counts[src] += 1
    return int(counts.max())


def _pads_1d(n: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
    if padding == "valid":
        return 0, 0
    if padding == "causal":
        return kernel - 1, 0
    if padding == "same":  # TensorFlow's convention
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        return total // 2, total - total // 2
    return (kernel - 1) // 2, kernel // 2  # explicit padding of PadConv2D


def _padding_source(padding: str) -> str:
    if padding in ("same", "valid", "causal", "constant"):
        return "zero"
    return padding


def _sup_coverage_1d(kernel: int, stride: int, padding: str) -> int:
    """Supremum over every accepted input length of the 1D coverage count."""
    mode = _padding_source(padding)
    pads = _pads_1d(kernel * 4, kernel, stride, padding)
    n_min = {"reflect": max(pads) + 1, "symmetric": max(max(pads), 1)}.get(mode, 1)
    n_max = n_min + 4 * (kernel + sum(pads)) + 4 * stride + 8
    return max(
        conv_coverage_1d(n, kernel, stride, *_pads_1d(n, kernel, stride, padding), mode)
        for n in range(n_min, n_max + 1)
    )


def conv_lipschitz_factor(
    kernel_size: Sequence[int], strides: Sequence[int], padding: str = "same"
) -> float:
    """Bound on ``||conv|| / ||kernel matrix||_2`` valid for every input size.

    ``sqrt(prod_d max_i c_d(i))``, with ``c_d(i)`` the number of (window, tap) pairs that
    read index ``i`` along axis ``d`` (padding maps separate over axes). For zero padding
    this is ``sqrt(prod ceil(k_d / s_d))``; reflect padding reads border pixels more often
    and gets a larger, still exact, factor.

    Args:
        kernel_size: kernel size per spatial axis.
        strides: stride per spatial axis.
        padding: "same", "valid", "causal", "constant", "reflect", "symmetric", "circular".
    """
    factor = 1
    for k, s in zip(kernel_size, strides):
        factor *= _sup_coverage_1d(int(k), int(s), padding)
    return math.sqrt(factor)


def conv_transpose_lipschitz_factor(kernel_size: Sequence[int], strides: Sequence[int]) -> float:
    """Bound for a transposed convolution: the norm of its adjoint strided convolution.

    The adjoint reads the uncropped output with windows of size ``k`` at stride ``s``, so
    each output index is read at most ``ceil(k / s)`` times per axis; cropping ("same") and
    output padding can only lower the norm.
    """
    factor = 1
    for k, s in zip(kernel_size, strides):
        factor *= math.ceil(int(k) / int(s))
    return math.sqrt(factor)


def padding_operator_norm(kernel_size: Sequence[int], padding: str) -> float:
    """Norm of the padding map ``x -> pad(x)`` of the explicit modes, sup over input sizes.

    ``E^T E`` is diagonal with the number of copies of each input index in the padded
    signal, so ``||E|| = prod_d sqrt(max copies along axis d)``: 1 for zero and circular
    padding (a circular pad is followed by a circular convolution, bounded on its own),
    e.g. 3 for a 3x3 "reflect" (an input of 3 pixels: ``x1 x0 x1 x2 x1``). Inputs too small
    for the padding are refused by the layers (`check_padding_fits`).
    """
    mode = _padding_source(padding)
    if mode not in ("reflect", "symmetric"):
        return 1.0
    norm = 1.0
    for k in kernel_size:
        pads = _pads_1d(4 * int(k), int(k), 1, padding)
        n_min = max(pads) + 1 if mode == "reflect" else max(max(pads), 1)
        copies = max(
            conv_coverage_1d(n, 1, 1, *pads, mode) for n in range(n_min, n_min + 4 * sum(pads) + 8)
        )
        norm *= math.sqrt(copies)
    return norm


# ------------------------------------------------------- deel-lip's conv normaliser


def spectral_normalization_conv(
    kernel,
    u,
    stride=1,
    conv_first: bool = True,
    pad_func=None,
    eps: float = DEFAULT_EPS_SPECTRAL,
    maxiter: int = DEFAULT_MAXITER_SPECTRAL,
):
    """Divide a 2D convolution kernel by the power-iteration estimate of its operator norm.

    deel-lip's function, same arguments and returns. The operator is
    ``A x = conv(x, kernel)`` with "same" padding, or ``conv(pad_func(x), kernel)`` with
    "valid" padding, at stride ``stride``. With ``conv_first`` the iteration runs on
    ``A^T A`` in input space (``u`` of shape ``(1, h, w, c_in)``), otherwise on ``A A^T``
    in output space (``u`` of shape ``(1, h, w, c_out)``, input ``(1, h s, w s, c_in)``).
    ``maxiter`` steps run (``eps`` only shifts the divisor, as in deel-lip), the adjoint
    being the exact vector-Jacobian product.

    ``sigma`` approaches the operator norm *from below* on this input size only, so
    ``kernel / (sigma + eps)`` is not a certified bound; the constrained convolutions of
    `deel_lip.layers` use a certified factor valid for every size instead.

    Args:
        kernel: ``(kh, kw, c_in, c_out)`` kernel.
        u: start vector, 4D as above.
        stride: int or pair.
        conv_first: iterate in input space (True) or output space (False).
        pad_func: callable padding a 4D input, or None for "same" padding.
        eps: added to ``sigma`` in the divisor; ``eps < 0`` returns ``(kernel, u, 1.0)``.
        maxiter: number of power iterations (>= 1).

    Returns:
        ``(kernel / (sigma + eps), u, sigma)``.
    """
    if eps < 0:
        return kernel, u, 1.0
    kernel = ops.convert_to_tensor(kernel)
    if len(kernel.shape) != 4:
        raise ValueError(f"kernel must be 4D (kh, kw, c_in, c_out), received {kernel.shape}")
    if isinstance(maxiter, bool) or not isinstance(maxiter, (int, np.integer)) or maxiter < 1:
        raise ValueError(f"maxiter must be an integer >= 1, received: {maxiter!r}")
    strides = (int(stride), int(stride)) if np.ndim(stride) == 0 else tuple(map(int, stride))
    u = ops.cast(ops.convert_to_tensor(u), kernel.dtype)
    channels = kernel.shape[2] if conv_first else kernel.shape[3]
    if len(u.shape) != 4 or u.shape[0] != 1 or u.shape[-1] != channels:
        side = "input (c_in" if conv_first else "output (c_out"
        raise ValueError(
            f"u must have shape (1, h, w, {channels}) in the convolution's {side}="
            f"{channels}), received shape {tuple(u.shape)}"
        )
    kernel_const = ops.stop_gradient(kernel)

    def conv(x, k=kernel_const):
        return _conv_with(k, x, strides, pad_func)

    if conv_first:
        x_shape = tuple(u.shape)
    else:
        x_shape = (1, u.shape[1] * strides[0], u.shape[2] * strides[1], kernel.shape[2])
        if tuple(conv(ops.zeros(x_shape, kernel.dtype)).shape) != tuple(u.shape):
            raise ValueError(
                f"u of shape {tuple(u.shape)} is not an output of the convolution of inputs "
                f"of shape {x_shape} (stride {strides})"
            )
    zeros = ops.zeros(x_shape, kernel.dtype)

    def adjoint(y, k=kernel_const):
        return vjp(lambda x: conv(x, k), zeros, y)

    u = ops.stop_gradient(u) / safe_norm(u)
    for _ in range(int(maxiter)):
        new = adjoint(conv(u)) if conv_first else conv(adjoint(u))
        u = ops.stop_gradient(new / safe_norm(new))
    # sigma = ||A u|| (or ||A^T u||) with the kernel itself: the divisor has a gradient
    sigma = safe_norm(conv(u, kernel) if conv_first else adjoint(u, kernel))
    return kernel / (sigma + eps), u, sigma


def _conv_with(kernel, x, strides, pad_func):
    if pad_func is None:
        return ops.conv(x, kernel, strides=strides, padding="same")
    return ops.conv(pad_func(x), kernel, strides=strides, padding="valid")
