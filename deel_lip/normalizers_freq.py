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

Levels: a coarse grid ranks the frequencies; the ``top`` cells with the largest upper
bounds are refined by a grid ``factor`` times finer, whose best cells are refined again
(`LEVELS`). With ``u`` the per-frequency upper bounds, ``M <= max(max_fine u / cos_fine,
cap_0, cap_1, ...)`` with ``cap_l = u_(top_l + 1) / cos_l`` at level ``l``: the point of a
level nearest to a maximiser is either refined (a point of the next level lies within
half of its step) or bounded by the ``(top + 1)``-th largest value. Sound whatever the
kernel; tight when the cells within ``cos_l`` of the peak are refined. Trained kernels
have flat spectra (``||T(w)||`` within 3.5 % of its peak on about half of the 24-per-degree
grid), hence the wide first refinements (halving the step: 4 points per 2D cell).

Per-frequency norm: Gram iteration (Delattre, Barthelemy, Araujo, Allauzen, ICML 2023,
"Efficient bound of Lipschitz constant for convolutional layers by Gram iteration"):
``lambda_max(G) <= ||G^(2^t)||_F^(1/2^t)`` for the Hermitian ``G = T^H T`` (small side),
rescaled at each squaring, in real arithmetic (``G = X + i Y``, two real products per
squaring), batched over frequencies; on the ranking levels, on ``G - s I`` (shifted,
`_gram_iteration`). ``G(w)`` itself is a trigonometric polynomial whose coefficients (the
kernel's autocorrelation, summed once in float64) are combined with a table of cosines
and sines: one product per level, no transfer matrix.
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

from deel_lip._backend import in_xla_context, xla_island

__all__ = ["conv_frequency_bound", "frequency_grid_sizes"]

#: Coarse grid points per unit of degree along each axis.
COARSE_PER_DEGREE = 24
#: Gram iterations on the coarse grid (ranking and cap).
COARSE_ITERATIONS = 4
#: Refinement levels after the coarse grid, each ``(cells, factor, iterations)``: the
#: ``cells`` points of the previous level with the largest bounds are refined by a grid
#: ``factor`` times finer, with ``iterations`` Gram iterations on the new points.
#: The last level gives the fine bound (angle ``2 pi / (24 * 16)`` per degree). Sized for
#: trained kernels, whose spectra are flat (about 20 % of the torus within 1 % of the
#: peak): every level keeps the cells within its correction of the peak, and 4 iterations
#: rank them within ~0.1 % (a trained 16 -> 32 kernel: bound / sup 1.0015; with 3
#: iterations and 160 / 96 / 32 / 8 cells: 1.009-1.012).
LEVELS = ((160, 2, 4), (160, 2, 4), (96, 2, 4), (16, 2, 8))
#: Gram matrices with a side above `LARGE_SIDE` (e.g. 64 -> 128 kernels) cost ``n^3`` per
#: point and squaring: fewer cells and iterations (looser on flat spectra, ~1 %; a 64 -> 128
#: kernel's bound forward + backward under XLA 94 ms against 158 ms with `LEVELS`).
LARGE_SIDE = 32
COARSE_ITERATIONS_LARGE = 2
LEVELS_LARGE = ((160, 2, 3), (96, 2, 3), (32, 2, 3), (8, 3, 10))
#: Coarse grid density factor when the Gram matrix is 1 x 1 (its points cost no squaring).
RANK_ONE_DENSITY = 3
#: Relative margin for float32 rounding of the Gram matrices and of their squarings
#: (relative error below 1e-6: the autocorrelation is summed in float64, each Gram matrix
#: is a float32 sum of at most a few dozen terms).
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


def _fine_offsets(steps: Sequence[float], factor: int) -> np.ndarray:
    """Offsets of the grid covering one cell of steps ``steps``: ``factor`` points per
    refined axis at the centres of its ``factor`` sub-cells (step ``steps_a / factor``),
    so every point of the cell lies within half a new step of one of them."""
    centres = (np.arange(factor) + 0.5) / factor - 0.5
    axes = [step * centres if step else np.zeros(1) for step in steps]
    return np.asarray(list(itertools.product(*axes)), np.float64)


def _tap_positions(taps: Sequence[int]) -> np.ndarray:
    return np.asarray(list(itertools.product(*(range(t) for t in taps))), np.float64)


def _lags(taps: Sequence[int]) -> np.ndarray:
    """Lags ``delta = p - q`` of the Gram polynomial: 0 then one of each pair ``{d, -d}``."""
    ranges = [range(1 - t, t) for t in taps]
    half = [d for d in itertools.product(*ranges) if d > tuple(-x for x in d)]
    return np.asarray([(0,) * len(taps)] + half, np.float64)


def _gram_taps(kernel, lags: np.ndarray):
    """Coefficients of the Hermitian Gram polynomial on the small side of ``T``.

    ``G(w) = T^H T = sum_delta C_delta e^{i <w, delta>}`` with
    ``C_delta = sum_p K_p^T K_{p + delta}`` (``T T^H`` and ``sum_q K_{q + delta} K_q^T`` when
    ``a < b``), ``C_{-delta} = C_delta^T``, so ``G = X + i Y`` with
    ``X(w) = sum_l S_l cos<w, d_l>``, ``Y(w) = sum_l A_l sin<w, d_l>`` over the half set of
    lags ``d_l`` (`_lags`), ``S_0 = C_0``, ``S_l = C_l + C_l^T``, ``A_l = C_l - C_l^T``.
    Summed in float64.

    ``kernel``: ``(g, *taps, a, b)``. Returns ``(sym, anti)``: ``(g, L, n * n)`` each, in
    the kernel's dtype.
    """
    rank = len(kernel.shape) - 3
    taps = kernel.shape[1 : 1 + rank]
    g, a, b = kernel.shape[0], kernel.shape[-2], kernel.shape[-1]
    k64 = ops.cast(kernel, "float64")
    axes = "ijklmn"[:rank]
    spec = f"g{axes}ab,g{axes}ac->gbc" if a >= b else f"g{axes}ab,g{axes}cb->gac"
    sym, anti = [], []
    for index, lag in enumerate(lags.astype(int)):
        # pairs (p, p + lag) (a >= b) or (q + lag, q) (a < b) inside the taps
        first = tuple(slice(max(0, -d), t - max(0, d)) for d, t in zip(lag, taps))
        second = tuple(slice(max(0, d), t - max(0, -d)) for d, t in zip(lag, taps))
        left, right = (first, second) if a >= b else (second, first)
        c = ops.einsum(spec, k64[(slice(None),) + left], k64[(slice(None),) + right])
        ct = ops.swapaxes(c, -1, -2)
        if index == 0:
            sym.append(0.5 * (c + ct))
            anti.append(ops.zeros_like(c))
        else:
            sym.append(c + ct)
            anti.append(c - ct)
    n = min(a, b)
    return tuple(
        ops.cast(ops.reshape(ops.stack(part, axis=1), (g, len(lags), n * n)), kernel.dtype)
        for part in (sym, anti)
    )


def _gram_at(sym, anti, lags, freqs):
    """``G(w) = X + i Y`` at the frequencies ``freqs``: ``(f, D)`` (shared, a constant
    table of cosines and sines) or ``(g, f, D)``. Returns ``(g, f, n, n)`` each."""
    g, _, nn = sym.shape
    n = math.isqrt(nn)
    if isinstance(freqs, np.ndarray):  # constant table, one matmul per part
        phase = freqs @ lags.T
        cos = ops.convert_to_tensor(np.cos(phase), sym.dtype)
        sin = ops.convert_to_tensor(np.sin(phase), sym.dtype)
        x = ops.einsum("fl,glk->gfk", cos, sym)
        y = ops.einsum("fl,glk->gfk", sin, anti)
    else:
        phase = ops.einsum("gfd,ld->gfl", freqs, ops.convert_to_tensor(lags, sym.dtype))
        x = ops.einsum("gfl,glk->gfk", ops.cos(phase), sym)
        y = ops.einsum("gfl,glk->gfk", ops.sin(phase), anti)
    f = x.shape[1]
    return ops.reshape(x, (g, f, n, n)), ops.reshape(y, (g, f, n, n))


def _transfer(flat, positions, freqs):
    """Real and imaginary parts of ``T(w) = sum_p K_p e^{i<w, p>}``: ``(g, f, a, b)`` each.

    ``flat``: ``(g, P, a, b)``; ``positions``: ``(P, D)``; ``freqs``: ``(g, f, D)``.
    """
    phase = ops.matmul(freqs, ops.transpose(positions))  # (g, f, P)
    cos, sin = ops.cos(phase), ops.sin(phase)
    return ops.einsum("gfp,gpab->gfab", cos, flat), ops.einsum("gfp,gpab->gfab", sin, flat)


def _mt(x):
    return ops.swapaxes(x, -1, -2)


#: Largest matrix side for which XLA's broadcast product beats its batched ``dot`` on CPU.
BROADCAST_MAX_SIDE = 16


def _bmm(a, b, xla: bool):
    """Batched product of small matrices: under XLA on CPU, for sides up to
    `BROADCAST_MAX_SIDE`, a broadcast product and a sum (faster than its batched ``dot``
    for thousands of 16 x 16); else matmul (the broadcast form materialises ``n^3``
    products per matrix: 2.5x slower than the old transfer-matrix bound at 64 x 64)."""
    if xla and a.shape[-1] <= BROADCAST_MAX_SIDE:
        return ops.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)
    return ops.matmul(a, b)


def _hermitian_square(x, y, xla: bool):
    """``(X + i Y)^2`` for a Hermitian ``X + i Y`` (``X`` symmetric, ``Y`` antisymmetric)
    with two real products: ``P = X Y`` (so ``Y X = -P^T``) and ``Q = (X + Y)(X - Y)``,
    ``X^2 - Y^2 = Q + P + P^T`` and ``X Y + Y X = P - P^T``."""
    p = _bmm(x, y, xla)
    q = _bmm(x + y, x - y, xla)
    pt = _mt(p)
    return q + p + pt, p - pt


def _gram_iteration(x, y, iterations: int, xla: bool, shift: bool = False):
    """``log`` of an upper bound of ``lambda_max(X + i Y)`` per Hermitian matrix, and the
    last normalised iterate (a power of ``G``, dominated by its top eigenvectors).

    ``shift``: iterate on ``G - s I``: ``lambda_max <= s + ||(G - s I)^(2^t)||_F^(1/2^t)``
    for every real ``s`` (the right side is ``>= max_i |lambda_i - s|``). With
    ``s = (tr G - max_i G_ii) / (n - 1)``, about the mean of the other eigenvalues
    (``max_i G_ii <= lambda_max``), the bound is much tighter when the eigenvalues are
    close; the iterate is then not used (it may follow another eigenvalue).
    """
    n = x.shape[-1]
    if shift:
        diagonal = ops.diagonal(x, axis1=-2, axis2=-1)
        s = (ops.sum(diagonal, axis=-1) - ops.max(diagonal, axis=-1)) / max(n - 1, 1)
        x = x - s[..., None, None] * ops.eye(n, dtype=x.dtype)
    log_bound = ops.zeros(x.shape[:-2], x.dtype)
    for j in range(iterations + 1):
        sq = ops.sum(ops.square(x), axis=(-2, -1)) + ops.sum(ops.square(y), axis=(-2, -1))
        norm = ops.sqrt(ops.maximum(sq, _TINY))
        log_bound = log_bound + ops.log(norm) / (2.0**j)
        x = x / norm[..., None, None]
        y = y / norm[..., None, None]
        if j < iterations:
            x, y = _hermitian_square(x, y, xla)
    if shift:
        log_bound = ops.log(ops.maximum(s + ops.exp(log_bound), _TINY))
    return log_bound, x, y


def _top_vector_gain(re, im, vx, vy):
    """``||T v|| / ||v||`` (or ``||T^H v||``, matching `_gram_taps`'s side), differentiable
    in T.

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


def _refined(points, index, offsets, rank: int):
    """The points ``(g, top * m, D)`` of the grids ``offsets`` (``(m, D)``) centred on
    ``points[index]`` (``points``: ``(f, D)`` shared or ``(g, f, D)``; ``index``: ``(g, top)``)."""
    if isinstance(points, np.ndarray):
        centres = ops.take(ops.convert_to_tensor(points, offsets.dtype), index, axis=0)
    else:
        g, top = index.shape
        index = ops.broadcast_to(index[..., None], (g, top, rank))
        centres = ops.take_along_axis(points, index, axis=1)
    g, top = index.shape[:2]
    return ops.reshape(centres[:, :, None, :] + offsets[None, None], (g, -1, rank))


def _sup_transfer_norm(kernel):
    """Certified upper bound of ``sup_w ||T(w)||_2`` per group of a ``(g, *taps, a, b)``
    kernel (stride 1), with a gradient (see the module docstring)."""
    rank = len(kernel.shape) - 3
    taps = tuple(kernel.shape[1 : 1 + rank])
    g, a, b = kernel.shape[0], kernel.shape[-2], kernel.shape[-1]
    dtype = kernel.dtype
    xla = in_xla_context()
    degrees, sizes = frequency_grid_sizes(taps)
    positions = ops.convert_to_tensor(_tap_positions(taps), dtype)
    flat = ops.reshape(kernel, (g, -1, a, b))
    small = min(a, b)
    lags = _lags(taps)
    sym, anti = _gram_taps(ops.stop_gradient(kernel), lags)

    def iterations(count):
        return count if small > 1 else 0  # a rank-1 Gram is exact

    large = small > LARGE_SIDE
    levels = LEVELS_LARGE if large else LEVELS
    if small == 1:  # no squaring: a grid RANK_ONE_DENSITY times denser, one refinement
        sizes = tuple(n * RANK_ONE_DENSITY if n > 1 else 1 for n in sizes)
        levels = LEVELS[-1:]
    coarse = _coarse_grid(sizes)
    steps = [2.0 * math.pi / n if n > 1 else 0.0 for n in sizes]
    angle = sum(d * s / 2.0 for d, s in zip(degrees, steps))
    if angle == 0.0:
        levels = ()
    # ranking levels: shifted Gram iteration (tighter caps); the last one: the iterate
    # gives the gradient's vector
    counts = [COARSE_ITERATIONS_LARGE if large else COARSE_ITERATIONS]
    counts += [count for _, _, count in levels]
    if not levels:
        counts = [LEVELS[-1][2]]
    points = coarse
    log_up, x, y = _gram_iteration(
        *_gram_at(sym, anti, lags, coarse), iterations(counts[0]), xla, shift=bool(levels)
    )
    caps = []
    for level, (top, factor, _) in enumerate(levels):
        available = log_up.shape[-1]
        if top < available:  # the cells not refined: bounded by the (top + 1)-th value
            values, index = ops.top_k(log_up, top + 1)  # (g, top + 1)
            caps.append(0.5 * values[:, top] - math.log(math.cos(angle)))  # log sigma bound
            index = index[:, :top]
        else:  # every cell refined
            index = ops.broadcast_to(ops.arange(available)[None], (g, available))
        offsets = ops.convert_to_tensor(_fine_offsets(steps, factor), dtype)
        points = _refined(points, index, offsets, rank)
        steps = [s / factor for s in steps]
        angle /= factor
        last = level == len(levels) - 1
        log_up, x, y = _gram_iteration(
            *_gram_at(sym, anti, lags, points), iterations(counts[level + 1]), xla, not last
        )
    if isinstance(points, np.ndarray):
        points = ops.broadcast_to(ops.convert_to_tensor(points, dtype), (g,) + points.shape)
    log_sigma = 0.5 * log_up - math.log(math.cos(angle))  # (g, f)
    best = ops.argmax(log_sigma, axis=-1)  # (g,)
    bound = ops.max(log_sigma, axis=-1)
    for cap in caps:
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
    w_best = ops.einsum("gf,gfd->gd", pick, ops.stop_gradient(points))
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
    key = (strides, bool(depthwise))
    if key not in _BOUND_ISLANDS:
        _BOUND_ISLANDS[key] = xla_island(lambda k: _stride_bound(k, strides, bool(depthwise)))
    return _BOUND_ISLANDS[key](kernel)


#: `xla_island` of the bound per ``(strides, depthwise)`` (shared by every layer: a graph
#: that XLA does not compile runs the bound as one XLA cluster, retraced per kernel shape).
_BOUND_ISLANDS: dict = {}


def _stride_bound(kernel, strides: tuple, depthwise: bool):
    rank = len(strides)
    if depthwise:  # (*k, C, m) -> (C, *k, 1, m)
        perm = [rank] + list(range(rank)) + [rank + 1]
        grouped = ops.expand_dims(ops.transpose(kernel, perm), -2)
    else:
        grouped = ops.expand_dims(kernel, 0)
    scale = ops.stop_gradient(ops.max(ops.abs(grouped)))
    scale = ops.where(scale > 0, scale, ops.ones_like(scale))
    bounds = _sup_transfer_norm(_polyphase(grouped / scale, strides)) * scale
    return bounds if depthwise else bounds[0]
