"""Frequency-domain bound of a convolution's operator norm, sound for every input size.

A stride-1 convolution on ``l2(Z^D)`` with taps ``K_p`` (``c_in x c_out`` matrices) is
diagonalised by the Fourier transform: its norm is ``sup_w ||T(w)||_2`` with the transfer
matrix ``T(w) = sum_p K_p e^{i<w, p>}``. A zero-padded ("same", "valid", "causal",
"constant") convolution of a finite input is a compression ``R T E`` of it (``E`` extends
by zeros, ``R`` restricts: both of norm <= 1), and a circular one of size ``n`` has norm
``max`` over the ``n``-point grid ``<= sup``. A stride-``s`` convolution equals a stride-1
one on the space-to-depth (polyphase) input, a unitary rearrangement of ``l2(Z^D)``:
its bound is the one of the polyphase kernel ``P[q, (r, c), o] = K[s q + r, c, o]``
(``c_in s^D`` input channels, ``ceil(k / s)`` taps). A transposed convolution is the
(cropped) adjoint of a strided one: same bound.

Certified grid correction. After centring, every entry of ``u^* T(w) v`` is a
trigonometric polynomial of degree ``d_a = floor(taps_a / 2)`` along axis ``a``. For the
real polynomial ``q(w) = Re(e^{i phi} u^* T(w) v)`` with ``u, v, phi`` chosen so that
``q(w*) = M = sup_w ||T(w)||``, Szego's inequality ``q'^2 + d^2 q^2 <= d^2 M^2`` gives
``q(w* + t) >= M cos(d |t|)`` along one axis, hence ``q(g) >= M cos(sum_a d_a |g_a -
w*_a|)`` at the grid point ``g`` nearest to ``w*`` (one axis after the other). So
``M <= max_grid ||T|| / cos(sum_a pi d_a / N_a)`` for a grid of ``N_a`` points per axis
(Araujo, Negrevergne, Chevaleyre, Atif, "On Lipschitz regularization of convolutional
layers using Toeplitz matrix theory", AAAI 2021, use the same correction, per axis).

Two levels: a coarse grid ranks the frequencies; the ``top`` coarse cells with the largest
upper bounds are refined by a grid ``refine`` times finer. With ``u`` the per-frequency
upper bounds, ``M <= max(max_fine u / cos_fine, u_(top + 1) / cos_coarse)``: if the coarse
point nearest to a maximiser is refined, a fine point lies within half a fine step of it,
otherwise its bound is at most the ``(top + 1)``-th largest. Sound whatever the kernel;
tight when the peak of ``||T||`` is localised (the usual case).

Per-frequency norm: Gram iteration (Delattre, Barthelemy, Araujo, Allauzen, ICML 2023,
"Efficient bound of Lipschitz constant for convolutional layers by Gram iteration"):
``lambda_max(G) <= ||G^(2^t)||_F^(1/2^t)`` for the Hermitian ``G = T^H T`` (small side),
rescaled at each squaring, in real arithmetic (``G = X + i Y``), batched over frequencies.
Computed without gradient; the gradient is the one of ``||T(w*) v||`` at the maximising
fine frequency ``w*`` with ``v`` from the last Gram iterate (a subgradient of the top
singular value, finite at repeated singular values; no eigh / svd).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from keras import ops

__all__ = ["conv_frequency_bound", "frequency_grid_sizes"]

#: Coarse grid points per unit of degree along each axis.
COARSE_PER_DEGREE = 48
#: Refinement factor of the top coarse cells (odd).
REFINE = 5
#: Number of coarse cells refined.
TOP_CELLS = 8
#: Gram iterations on the coarse grid (ranking) and on the fine grids (the bound).
COARSE_ITERATIONS = 3
FINE_ITERATIONS = 12
#: Relative margin for float32 rounding of the transfer matrices and Gram products
#: (their relative error is below 1e-6 for kernels of up to a few thousand entries).
ROUNDING_SAFETY = 1e-5
_TINY = 1e-30


def _as_tuple(value, rank: int) -> tuple[int, ...]:
    if np.ndim(value) == 0:
        return (int(value),) * rank
    return tuple(int(v) for v in value)


def _polyphase(kernel, strides: Sequence[int]):
    """Stride-1 kernel of the space-to-depth input: ``(g, *taps, a * prod s, b)``.

    ``kernel`` is ``(g, *k, a, b)`` (``g`` independent groups, e.g. depthwise channels);
    ``P[..., q, ..., (r, c), o] = K[..., s q + r, ..., c, o]`` (zero beyond the kernel).
    """
    rank = len(strides)
    if all(s == 1 for s in strides):
        return kernel
    shape = tuple(kernel.shape)
    g, taps, a, b = shape[0], shape[1 : 1 + rank], shape[-2], shape[-1]
    pads = [(0, 0)] + [(0, -k % s) for k, s in zip(taps, strides)] + [(0, 0), (0, 0)]
    kernel = ops.pad(kernel, pads)
    split = [g]
    for k, s in zip(taps, strides):
        split += [-(-k // s), s]
    kernel = ops.reshape(kernel, split + [a, b])
    # axes: 0, (q_0, r_0), (q_1, r_1), ..., a, b  ->  0, q_0, q_1, ..., r_0, r_1, ..., a, b
    q_axes = [1 + 2 * i for i in range(rank)]
    r_axes = [2 + 2 * i for i in range(rank)]
    kernel = ops.transpose(kernel, [0] + q_axes + r_axes + [1 + 2 * rank, 2 + 2 * rank])
    new_taps = [-(-k // s) for k, s in zip(taps, strides)]
    return ops.reshape(kernel, [g] + new_taps + [a * math.prod(strides), b])


def frequency_grid_sizes(taps: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Degrees ``d_a = floor(taps_a / 2)`` and coarse grid sizes ``N_a`` (1 if ``d_a = 0``)."""
    degrees = tuple(t // 2 for t in taps)
    sizes = tuple(COARSE_PER_DEGREE * d if d else 1 for d in degrees)
    return degrees, sizes


def _coarse_grid(sizes: Sequence[int]) -> np.ndarray:
    """Frequencies ``2 pi j / N`` of the grid, one of each pair ``{w, -w}`` (``T(-w)`` is
    the conjugate of ``T(w)`` for a real kernel: same singular values)."""
    points = []
    for index in itertools.product(*(range(n) for n in sizes)):
        mirror = tuple((-j) % n for j, n in zip(index, sizes))
        if index <= mirror:
            points.append(index)
    return 2.0 * np.pi * np.asarray(points, np.float64) / np.asarray(sizes, np.float64)


def _fine_offsets(sizes: Sequence[int]) -> np.ndarray:
    """Offsets of the fine grid covering one coarse cell (``REFINE`` points per refined
    axis, step ``2 pi / (REFINE N_a)``, the farthest point of the cell within half a step)."""
    axes = []
    for n in sizes:
        if n == 1:
            axes.append(np.zeros(1))
        else:
            half = (REFINE - 1) // 2
            axes.append(2.0 * np.pi * np.arange(-half, half + 1) / (REFINE * n))
    return np.asarray(list(itertools.product(*axes)), np.float64)


def _tap_positions(taps: Sequence[int]) -> np.ndarray:
    return np.asarray(list(itertools.product(*(range(t) for t in taps))), np.float64)


def _transfer(flat, positions, freqs):
    """Real and imaginary parts of ``T(w) = sum_p K_p e^{i<w, p>}``: ``(g, f, a, b)`` each.

    ``flat``: ``(g, P, a, b)``; ``positions``: ``(P, D)``; ``freqs``: ``(f, D)`` or
    ``(g, f, D)``.
    """
    phase = ops.matmul(freqs, ops.transpose(positions))  # (f, P) or (g, f, P)
    cos, sin = ops.cos(phase), ops.sin(phase)
    if len(phase.shape) == 2:
        return ops.einsum("fp,gpab->gfab", cos, flat), ops.einsum("fp,gpab->gfab", sin, flat)
    return ops.einsum("gfp,gpab->gfab", cos, flat), ops.einsum("gfp,gpab->gfab", sin, flat)


def _mt(x):
    return ops.swapaxes(x, -1, -2)


def _bmm(a, b):
    """Batched product of small matrices as a broadcast product and a sum: XLA on CPU
    runs it faster than its batched ``dot`` at these sizes (thousands of 16 x 16)."""
    return ops.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def _gram(re, im):
    """``G = X + i Y`` on the small side of ``T = re + i im``: ``T^H T`` or ``T T^H``."""
    a, b = re.shape[-2], re.shape[-1]
    if a >= b:
        x = ops.matmul(_mt(re), re) + ops.matmul(_mt(im), im)
        y = ops.matmul(_mt(re), im) - ops.matmul(_mt(im), re)
    else:
        x = ops.matmul(re, _mt(re)) + ops.matmul(im, _mt(im))
        y = ops.matmul(im, _mt(re)) - ops.matmul(re, _mt(im))
    return x, y


def _gram_iteration(x, y, iterations: int):
    """``log`` of an upper bound of ``lambda_max(X + i Y)`` per matrix, and the last
    normalised iterate (a power of ``G``, dominated by its top eigenvectors)."""
    log_bound = ops.zeros(x.shape[:-2], x.dtype)
    for j in range(iterations + 1):
        sq = ops.sum(ops.square(x), axis=(-2, -1)) + ops.sum(ops.square(y), axis=(-2, -1))
        norm = ops.sqrt(ops.maximum(sq, _TINY))
        log_bound = log_bound + ops.log(norm) / (2.0**j)
        x = x / norm[..., None, None]
        y = y / norm[..., None, None]
        if j < iterations:  # (X + iY)^2 = X^2 - Y^2 + i (XY + YX)
            x, y = (
                _bmm(x, x) - _bmm(y, y),
                _bmm(x, y) + _bmm(y, x),
            )
    return log_bound, x, y


def _top_vector_gain(re, im, vx, vy):
    """``||T v|| / ||v||`` (or ``||T^H v||``, matching `_gram`'s side), differentiable in T.

    ``re, im``: ``(g, a, b)``; ``vx + i vy``: ``(g, n)`` with ``n`` the small side.
    """
    a, b = re.shape[-2], re.shape[-1]
    if a >= b:  # T v = (re vx - im vy) + i (re vy + im vx)
        real = ops.einsum("gab,gb->ga", re, vx) - ops.einsum("gab,gb->ga", im, vy)
        imag = ops.einsum("gab,gb->ga", re, vy) + ops.einsum("gab,gb->ga", im, vx)
    else:  # T^H v = (re^T vx + im^T vy) + i (re^T vy - im^T vx)
        real = ops.einsum("gab,ga->gb", re, vx) + ops.einsum("gab,ga->gb", im, vy)
        imag = ops.einsum("gab,ga->gb", re, vy) - ops.einsum("gab,ga->gb", im, vx)
    out = ops.sum(ops.square(real), axis=-1) + ops.sum(ops.square(imag), axis=-1)
    v = ops.sum(ops.square(vx), axis=-1) + ops.sum(ops.square(vy), axis=-1)
    return ops.sqrt(ops.maximum(out, _TINY) / ops.maximum(v, _TINY))


def _sup_transfer_norm(kernel):
    """Certified upper bound of ``sup_w ||T(w)||_2`` per group of a ``(g, *taps, a, b)``
    kernel (stride 1), with a gradient (see the module docstring)."""
    rank = len(kernel.shape) - 3
    taps = tuple(kernel.shape[1 : 1 + rank])
    g, a, b = kernel.shape[0], kernel.shape[-2], kernel.shape[-1]
    dtype = kernel.dtype
    degrees, sizes = frequency_grid_sizes(taps)
    positions = ops.convert_to_tensor(_tap_positions(taps), dtype)
    flat = ops.reshape(kernel, (g, -1, a, b))
    const = ops.stop_gradient(flat)
    small = min(a, b)
    fine_iterations = FINE_ITERATIONS if small > 1 else 0  # a rank-1 Gram is exact
    coarse_iterations = COARSE_ITERATIONS if small > 1 else 0

    coarse = _coarse_grid(sizes)
    angle0 = sum(math.pi * d / n for d, n in zip(degrees, sizes))
    if len(coarse) <= TOP_CELLS or angle0 == 0.0:  # few frequencies: no refinement
        freqs = ops.broadcast_to(ops.convert_to_tensor(coarse, dtype), (g,) + coarse.shape)
        re, im = _transfer(const, positions, freqs)
        log_up, x, y = _gram_iteration(*_gram(re, im), fine_iterations)
        cap = None
        angle = angle0
    else:
        re, im = _transfer(const, positions, ops.convert_to_tensor(coarse, dtype))
        log0, _, _ = _gram_iteration(*_gram(re, im), coarse_iterations)
        values, index = ops.top_k(log0, TOP_CELLS + 1)  # (g, top + 1)
        cap = 0.5 * values[:, TOP_CELLS] - math.log(math.cos(angle0))  # log sigma bound
        centres = ops.take(ops.convert_to_tensor(coarse, dtype), index[:, :TOP_CELLS], axis=0)
        offsets = ops.convert_to_tensor(_fine_offsets(sizes), dtype)
        freqs = ops.reshape(centres[:, :, None, :] + offsets[None, None], (g, -1, rank))
        re, im = _transfer(const, positions, freqs)
        log_up, x, y = _gram_iteration(*_gram(re, im), fine_iterations)
        angle = sum(math.pi * d / (REFINE * n) for d, n in zip(degrees, sizes))
    log_sigma = 0.5 * log_up - math.log(math.cos(angle))  # (g, f)
    best = ops.argmax(log_sigma, axis=-1)  # (g,)
    bound = ops.max(log_sigma, axis=-1)
    if cap is not None:
        bound = ops.maximum(bound, cap)
    bound = ops.exp(bound) * (1.0 + ROUNDING_SAFETY)

    # gradient: ||T(w*) v|| with v a column of the last iterate (largest norm) at w*
    pick = ops.one_hot(best, log_sigma.shape[-1], dtype=dtype)  # (g, f)
    x_best = ops.einsum("gf,gfij->gij", pick, x)
    y_best = ops.einsum("gf,gfij->gij", pick, y)
    col = ops.argmax(ops.sum(ops.square(x_best) + ops.square(y_best), axis=-2), axis=-1)
    col_pick = ops.one_hot(col, small, dtype=dtype)
    vx = ops.stop_gradient(ops.einsum("gij,gj->gi", x_best, col_pick))
    vy = ops.stop_gradient(ops.einsum("gij,gj->gi", y_best, col_pick))
    w_best = ops.einsum("gf,gfd->gd", pick, ops.stop_gradient(freqs))
    re_b, im_b = _transfer(flat, positions, w_best[:, None, :])
    gain = _top_vector_gain(re_b[:, 0], im_b[:, 0], vx, vy)
    bound = ops.stop_gradient(bound)
    return bound * gain / ops.stop_gradient(gain)


def conv_frequency_bound(
    kernel,
    strides: Sequence[int] | int = 1,
    padding: str = "same",
    *,
    depthwise: bool = False,
):
    """Certified upper bound of a convolution's operator norm for every input size.

    Args:
        kernel: ``(*k, c_in, c_out)`` kernel of a Keras ``Conv1D/2D`` (or the
            ``(*k, filters, c_in)`` kernel of a ``Conv2DTranspose``: the bound of the adjoint
            strided convolution, equal to the transposed one's), or with
            ``depthwise=True`` a ``(*k, channels, multiplier)`` depthwise kernel.
        strides: stride per spatial axis (or one int).
        padding: a zero padding ("same", "valid", "causal", "constant"): the polyphase
            bound; "circular": the stride-1 bound (a strided circular convolution is a
            subsampled stride-1 one; the polyphase bound does not hold when the stride
            does not divide the size). Reflect / symmetric padding is not a compression:
            multiply by the padding operator's norm (the layers do).
        depthwise: bound each channel's map separately.

    Returns:
        Scalar bound, or ``(channels,)`` bounds with ``depthwise=True``; differentiable in
        the kernel (see the module docstring).
    """
    kernel = ops.convert_to_tensor(kernel)
    rank = len(kernel.shape) - 2
    if rank < 1:
        raise ValueError(f"kernel must have >= 3 axes (*k, in, out), received {kernel.shape}")
    strides = _as_tuple(strides, rank)
    if padding == "circular":
        strides = (1,) * rank
    if depthwise:  # (*k, C, m) -> (C, *k, 1, m)
        perm = [rank] + list(range(rank)) + [rank + 1]
        grouped = ops.expand_dims(ops.transpose(kernel, perm), -2)
    else:
        grouped = ops.expand_dims(kernel, 0)
    scale = ops.stop_gradient(ops.max(ops.abs(grouped)))
    scale = ops.where(scale > 0, scale, ops.ones_like(scale))
    bounds = _sup_transfer_norm(_polyphase(grouped / scale, strides)) * scale
    return bounds if depthwise else bounds[0]
