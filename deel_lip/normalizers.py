"""Normalisation math on tensors: no layers, no state.

Every function here maps a raw kernel to a constrained one with `keras.ops`, so that
the constrained layers (`deel_lip.layers`) share one implementation.

The guarantees, with ``G = W^T W`` the Gram matrix of the reshaped kernel ``W``:

* Power iteration on ``G`` gives ``sigma_est <= sigma_max(W)``: it approaches from below,
  so dividing by it alone is *not* a bound.
* Gershgorin: ``sigma_max(W)^2 <= max_i sum_j |G_ij|``; scaling by it puts every singular
  value in ``[0, sqrt(3)]``.
* Bjorck step ``W <- (1 + beta) W - beta W W^T W`` acts on each singular value as
  ``s <- (1 + beta) s - beta s^3``. For ``beta = 1/2`` this map sends ``[0, sqrt(3)]`` into
  ``[0, 1]``, and for any ``beta`` in ``(0, 1/2]`` it keeps ``[0, sqrt(3)]`` invariant. So a
  Bjorck run that ends with a ``beta = 1/2`` step yields ``sigma_max <= 1`` exactly, up to
  float rounding, however few iterations ran.
* Without Bjorck, the Gram iteration bound (Delattre et al., 2023)
  ``sigma_max(W)^2 <= ||G^(2^k)||_F^(1/2^k)`` gives a certified upper bound.

Every Bjorck iterate is ``W_k = W_0 M_k`` with ``M_k`` a polynomial in the small Gram
matrix ``G_0 = W_0^T W_0`` (``n x n`` with ``n = min`` of the kernel's two dimensions), so
the iterations run on ``n x n`` matrices and the large kernel is multiplied once.

References:
    Anil, Lucas, Grosse, "Sorting out Lipschitz function approximation", ICML 2019.
    Serrurier et al., "Achieving robustness in classification using optimal transport
    with hinge regularization", CVPR 2021.
    Delattre, Barthelemy, Araujo, Allauzen, "Efficient bound of Lipschitz constant for
    convolutional layers by Gram iteration", ICML 2023.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from keras import ops

DEFAULT_EPS_SPECTRAL = 1e-3
DEFAULT_EPS_BJORCK = 1e-3
DEFAULT_BETA_BJORCK = 0.5
DEFAULT_MAXITER_SPECTRAL = 10
DEFAULT_MAXITER_BJORCK = 15
DEFAULT_GRAM_ITERATIONS = 10
#: Scaling margin so that the Gershgorin-scaled singular values stay below sqrt(3).
_SQRT3_SAFETY = 2.9
_TINY = 1e-12

__all__ = [
    "DEFAULT_EPS_SPECTRAL",
    "DEFAULT_EPS_BJORCK",
    "DEFAULT_BETA_BJORCK",
    "DEFAULT_MAXITER_SPECTRAL",
    "DEFAULT_MAXITER_BJORCK",
    "DEFAULT_GRAM_ITERATIONS",
    "check_normalization_args",
    "kernel_matrix",
    "gram",
    "power_iteration",
    "gram_iteration_bound",
    "bjorck_normalization",
    "spectral_normalization",
    "reshaped_kernel_orthogonalization",
    "frobenius_normalization",
    "conv_coverage_1d",
    "conv_lipschitz_factor",
    "conv_transpose_lipschitz_factor",
]


def check_normalization_args(
    eps_spectral: float = DEFAULT_EPS_SPECTRAL,
    eps_bjorck: float | None = DEFAULT_EPS_BJORCK,
    beta_bjorck: float = DEFAULT_BETA_BJORCK,
    maxiter_spectral: int = DEFAULT_MAXITER_SPECTRAL,
    maxiter_bjorck: int = DEFAULT_MAXITER_BJORCK,
    k_coef_lip: float = 1.0,
) -> None:
    """Validate normalisation arguments; raise `ValueError` naming the first bad one.

    ``eps_bjorck=None`` disables Bjorck orthogonalisation (spectral normalisation only).
    """
    if not _is_positive_number(eps_spectral):
        raise ValueError(f"eps_spectral must be a number > 0, received: {eps_spectral!r}")
    if eps_bjorck is not None and not _is_positive_number(eps_bjorck):
        raise ValueError(f"eps_bjorck must be a number > 0 or None, received: {eps_bjorck!r}")
    if not _is_number(beta_bjorck) or not 0.0 < beta_bjorck <= 0.5:
        raise ValueError(f"beta_bjorck must be in (0, 0.5], received: {beta_bjorck!r}")
    for name, value in (("maxiter_spectral", maxiter_spectral), ("maxiter_bjorck", maxiter_bjorck)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, received: {value!r}")
    check_k_coef_lip(k_coef_lip)


def check_k_coef_lip(k_coef_lip: float) -> None:
    """Raise `ValueError` unless ``k_coef_lip`` is a finite number > 0."""
    if not _is_positive_number(k_coef_lip) or not math.isfinite(k_coef_lip):
        raise ValueError(f"k_coef_lip must be a finite number > 0, received: {k_coef_lip!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _is_positive_number(value) -> bool:
    return _is_number(value) and value > 0


# --------------------------------------------------------------------------- shapes


def kernel_matrix(kernel):
    """Reshape a kernel to the matrix whose spectral norm the layer constrains.

    The last axis is the one the patches are projected on: ``(..., last) -> (-1, last)``.
    For Dense and Conv kernels ``(..., in, out)`` this is the ``(patch, out)`` matrix; for
    Conv2DTranspose kernels ``(kh, kw, out, in)`` it is the matrix of the adjoint
    convolution, whose norm equals the transposed convolution's.
    """
    return ops.reshape(kernel, (-1, kernel.shape[-1]))


def gram(matrix):
    """Gram matrix on the small side: ``W^T W`` if ``W`` is tall, else ``W W^T``."""
    rows, cols = matrix.shape
    if rows >= cols:
        return ops.matmul(ops.transpose(matrix), matrix)
    return ops.matmul(matrix, ops.transpose(matrix))


def _right_multiply(matrix, poly):
    """``W M`` for tall ``W``, ``M W`` for wide ``W`` (``M`` acts on the small side)."""
    rows, cols = matrix.shape
    if rows >= cols:
        return ops.matmul(matrix, poly)
    return ops.matmul(poly, matrix)


# ------------------------------------------------------------------ spectral norm


def _normalize_rows(u):
    return u / ops.maximum(ops.sqrt(ops.sum(ops.square(u), axis=-1, keepdims=True)), _TINY)


def power_iteration(gram_matrix, u, eps: float = DEFAULT_EPS_SPECTRAL, maxiter: int = 10):
    """Top eigenvector of a symmetric PSD matrix by warm-started power iteration.

    Iterates ``u <- u G / ||u G||`` until ``||u_{k+1} - u_k|| < eps`` or ``maxiter`` steps.

    Args:
        gram_matrix: ``(n, n)`` symmetric positive semi-definite tensor.
        u: ``(1, n)`` starting vector (the persisted vector of the previous step).
        eps: stopping tolerance on the change of ``u``.
        maxiter: maximum number of iterations.

    Returns:
        The ``(1, n)`` unit vector, without gradient.
    """
    gram_matrix = ops.stop_gradient(gram_matrix)
    u = _normalize_rows(ops.cast(u, gram_matrix.dtype))

    def cond(i, u, delta):
        return ops.logical_and(i < maxiter, delta >= eps)

    def body(i, u, delta):
        new_u = _normalize_rows(ops.matmul(u, gram_matrix))
        return i + 1, new_u, ops.sqrt(ops.sum(ops.square(new_u - u)))

    start = (ops.convert_to_tensor(0), u, ops.convert_to_tensor(np.inf, dtype=u.dtype))
    _, u, _ = ops.while_loop(cond, body, start, maximum_iterations=maxiter)
    return ops.stop_gradient(u)


def _rayleigh(gram_matrix, u):
    """``u G u^T`` for a unit row ``u``: a lower bound of ``lambda_max(G)``."""
    return ops.sum(ops.matmul(u, gram_matrix) * u)


def gram_iteration_bound(gram_matrix, scale=None, iterations: int = DEFAULT_GRAM_ITERATIONS):
    """Certified upper bound on ``lambda_max`` of a symmetric PSD matrix ``G``.

    Uses ``lambda_max(G) <= ||G^(2^k)||_F^(1/2^k)`` with rescaling at each squaring:
    ``A_0 = G / c``, ``A_{j+1} = (A_j / ||A_j||_F)^2``, so that
    ``log lambda_max <= log c + sum_j 2^-j log ||A_j||_F + 2^-k log ||A_k||_F``.
    The bound exceeds ``lambda_max`` by at most a factor ``rank^(1/2^k)``.

    Args:
        gram_matrix: ``(n, n)`` symmetric PSD tensor.
        scale: optional estimate of ``lambda_max`` used as ``c`` (better conditioning).
        iterations: number of squarings ``k``.
    """
    if scale is None:
        scale = ops.max(ops.abs(gram_matrix))
    scale = ops.maximum(scale, _TINY)
    a = gram_matrix / scale
    log_bound = ops.log(scale)
    for j in range(iterations):
        norm = ops.maximum(ops.sqrt(ops.sum(ops.square(a))), _TINY)
        log_bound = log_bound + ops.log(norm) / (2.0**j)
        a = a / norm
        a = ops.matmul(a, a)
    norm = ops.maximum(ops.sqrt(ops.sum(ops.square(a))), _TINY)
    log_bound = log_bound + ops.log(norm) / (2.0**iterations)
    return ops.exp(log_bound)


def _gershgorin_bound(gram_matrix):
    """``max_i sum_j |G_ij|``: an upper bound of ``lambda_max`` of a symmetric ``G``."""
    return ops.max(ops.sum(ops.abs(gram_matrix), axis=-1))


def spectral_normalization(
    kernel,
    u,
    eps: float = DEFAULT_EPS_SPECTRAL,
    maxiter: int = DEFAULT_MAXITER_SPECTRAL,
    gram_iterations: int = DEFAULT_GRAM_ITERATIONS,
):
    """Divide a kernel by a certified upper bound of the spectral norm of its matrix.

    ``W_bar = W / sigma_up`` with ``sigma_up >= sigma_max(W)`` from the Gram iteration
    bound warm-started at the power-iteration estimate, so ``||W_bar||_2 <= 1``.

    Args:
        kernel: kernel tensor; its matrix is ``kernel_matrix(kernel)``.
        u: ``(1, n)`` persisted power-iteration vector, ``n`` = small side of the matrix.
        eps: power-iteration tolerance.
        maxiter: power-iteration maximum number of steps.
        gram_iterations: number of squarings of the Gram iteration bound.

    Returns:
        ``(W_bar, u, sigma_up)``, ``W_bar`` with the kernel's shape.
    """
    matrix = kernel_matrix(kernel)
    g = gram(matrix)
    u = power_iteration(g, u, eps, maxiter)
    lam_est = _rayleigh(g, u)
    lam_up = gram_iteration_bound(g, ops.maximum(lam_est, _TINY), gram_iterations)
    sigma = ops.sqrt(ops.maximum(lam_up, _TINY))
    return ops.reshape(matrix / sigma, kernel.shape), u, sigma


def bjorck_normalization(
    matrix,
    eps: float = DEFAULT_EPS_BJORCK,
    beta: float = DEFAULT_BETA_BJORCK,
    maxiter: int = DEFAULT_MAXITER_BJORCK,
):
    """Bjorck orthogonalisation of a 2D matrix whose singular values lie in [0, sqrt(3)].

    Runs ``W <- W Q`` with ``Q = (1 + beta) I - beta W^T W`` until
    ``||W_{k+1} - W_k||_F < eps`` or ``maxiter`` steps, then one final step with
    ``beta = 1/2`` computed on the actual matrix, which maps every singular value of
    ``[0, sqrt(3)]`` into ``[0, 1]``: the result has spectral norm <= 1 up to rounding.

    The iterations run on the small side: ``W_k = W_0 M_k`` and ``P_k = W_k^T W_k`` obey
    ``M_{k+1} = M_k Q_k`` and ``P_{k+1} = Q_k P_k Q_k`` (all polynomials in ``W_0^T W_0``
    commute), so each iteration costs three ``n x n`` products instead of two products
    with the full matrix.

    Args:
        matrix: 2D tensor.
        eps: stopping tolerance on the Frobenius norm of the update.
        beta: Bjorck coefficient in ``(0, 0.5]``.
        maxiter: maximum number of iterations before the final step.
    """
    g0 = gram(matrix)
    eye = ops.eye(g0.shape[0], dtype=matrix.dtype)

    def cond(i, m, p, delta):
        return ops.logical_and(i < maxiter, delta >= eps)

    def body(i, m, p, delta):
        q = (1.0 + beta) * eye - beta * p
        step = q - eye
        # ||W_k (Q_k - I)||_F^2 = trace((Q_k - I) P_k (Q_k - I))
        change = ops.sqrt(ops.maximum(ops.sum(step * ops.matmul(p, step)), 0.0))
        return i + 1, ops.matmul(m, q), ops.matmul(ops.matmul(q, p), q), change

    start = (ops.convert_to_tensor(0), eye, g0, ops.convert_to_tensor(np.inf, matrix.dtype))
    _, m, _, _ = ops.while_loop(cond, body, start, maximum_iterations=maxiter)
    w = _right_multiply(matrix, m)
    return _right_multiply(w, 1.5 * eye - 0.5 * gram(w))


def reshaped_kernel_orthogonalization(
    kernel,
    u,
    adjustment_coef: float,
    eps_spectral: float = DEFAULT_EPS_SPECTRAL,
    eps_bjorck: float | None = DEFAULT_EPS_BJORCK,
    beta_bjorck: float = DEFAULT_BETA_BJORCK,
    maxiter_spectral: int = DEFAULT_MAXITER_SPECTRAL,
    maxiter_bjorck: int = DEFAULT_MAXITER_BJORCK,
):
    """Constrain a kernel so that its matrix has spectral norm <= ``adjustment_coef``.

    1. ``sigma^2 = max(u G u^T, gershgorin(G) / 2.9)`` with ``u`` from power iteration:
       every singular value of ``W_0 = W / sigma`` is then below ``sqrt(3)``.
    2. Bjorck orthogonalisation of ``W_0`` (skipped if ``eps_bjorck`` is None, then
       spectral normalisation by the certified Gram-iteration bound).
    3. Multiply by ``adjustment_coef`` (``k_coef_lip`` over the convolution factor).

    Returns:
        ``(W_bar, u, sigma)`` with ``W_bar`` of the kernel's shape.
    """
    if eps_bjorck is None:
        w_bar, u, sigma = spectral_normalization(kernel, u, eps_spectral, maxiter_spectral)
        return w_bar * adjustment_coef, u, sigma
    matrix = kernel_matrix(kernel)
    g = gram(matrix)
    u = power_iteration(g, u, eps_spectral, maxiter_spectral)
    lam = ops.maximum(_rayleigh(g, u), _gershgorin_bound(g) / _SQRT3_SAFETY)
    sigma = ops.sqrt(ops.maximum(lam, _TINY))
    w_bar = bjorck_normalization(matrix / sigma, eps_bjorck, beta_bjorck, maxiter_bjorck)
    return ops.reshape(w_bar, kernel.shape) * adjustment_coef, u, sigma


def frobenius_normalization(kernel, disjoint_neurons: bool = False, eps: float = _TINY):
    """Divide by the Frobenius norm (``||W||_2 <= ||W||_F``).

    With ``disjoint_neurons=True`` each output unit (last axis) is normalised separately:
    every output is then 1-Lipschitz on its own, not the output vector as a whole.
    """
    if disjoint_neurons:
        axes = tuple(range(len(kernel.shape) - 1))
        norm = ops.sqrt(ops.sum(ops.square(kernel), axis=axes, keepdims=True))
    else:
        norm = ops.sqrt(ops.sum(ops.square(kernel)))
    return kernel / ops.maximum(norm, eps)


# ------------------------------------------------------------- convolution factor

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
