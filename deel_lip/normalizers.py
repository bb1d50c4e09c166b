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
import warnings

import keras
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
    "spectral_normalization_conv",
    "reshaped_kernel_orthogonalization",
    "frobenius_normalization",
    "conv_coverage_1d",
    "conv_lipschitz_factor",
    "conv_transpose_lipschitz_factor",
    "padding_operator_norm",
    "conv_frequency_bound",
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


def check_k_coef_lip(k_coef_lip: float, name: str = "k_coef_lip") -> None:
    """Raise `ValueError` naming ``name`` unless ``k_coef_lip`` is a finite number > 0."""
    if not _is_positive_number(k_coef_lip) or not math.isfinite(k_coef_lip):
        raise ValueError(f"{name} must be a finite number > 0, received: {k_coef_lip!r}")


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


def safe_norm(x, axis=None, keepdims=False, floor: float = _TINY):
    """``sqrt(max(sum x^2, floor^2))``: never a square root at 0, so the gradient is
    finite everywhere (``sqrt`` has an infinite derivative at 0, and ``max(sqrt(.), tiny)``
    multiplies it by 0: NaN)."""
    return ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=keepdims), floor**2))


def _normalize_rows(u):
    return u / safe_norm(u, axis=-1, keepdims=True)


def _prescale(x, axis=None):
    """``(x / m, m)`` with ``m = max |x|`` (over ``axis``), without gradient through ``m``.

    Every normalisation here is scale invariant, ``f(W / m) = f(W)``, so dividing by a
    constant first changes nothing but the range: the Gram matrix of ``W / m`` has entries
    at most ``rows``, never overflowing float32 for a kernel of 1e17 nor underflowing for
    one of 1e-20. ``m`` is 1 where ``x`` is zero (or subnormal).
    """
    m = ops.stop_gradient(ops.max(ops.abs(x), axis=axis, keepdims=axis is not None))
    tiny = float(np.finfo(keras.backend.standardize_dtype(x.dtype)).tiny)
    m = ops.where(m > tiny, m, ops.ones_like(m))
    return x / m, m


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
    u = _normalize_rows(ops.stop_gradient(ops.cast(u, gram_matrix.dtype)))

    def cond(i, u, delta):  # delta = ||u_{k+1} - u_k||^2, compared with eps^2 (no sqrt)
        return ops.logical_and(i < maxiter, delta >= eps**2)

    def body(i, u, delta):
        new_u = _normalize_rows(ops.matmul(u, gram_matrix))
        return i + 1, new_u, ops.stop_gradient(ops.sum(ops.square(new_u - u)))

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
        norm = safe_norm(a)
        log_bound = log_bound + ops.log(norm) / (2.0**j)
        a = a / norm
        a = ops.matmul(a, a)
    norm = safe_norm(a)
    log_bound = log_bound + ops.log(norm) / (2.0**iterations)
    return ops.exp(log_bound)


def _gershgorin_bound(gram_matrix):
    """``max_i sum_j |G_ij|``: an upper bound of ``lambda_max`` of a symmetric ``G``."""
    return ops.max(ops.sum(ops.abs(gram_matrix), axis=-1))


def start_vector(size: int, dtype="float32"):
    """Fixed ``(1, size)`` unit vector for a power iteration without a persisted one.

    Drawn from a seeded generator: deterministic, and almost surely not orthogonal to the
    top singular vector.
    """
    vector = np.random.default_rng(0).standard_normal((1, int(size)))
    return ops.convert_to_tensor(vector / np.linalg.norm(vector), dtype=dtype)


def _small_side_vector(matrix, u):
    """The power-iteration vector on the small side of ``matrix`` (``(1, min(r, c))``).

    Accepts ``None`` (a fixed start vector), our ``(1, min(rows, cols))`` vector, or
    deel-lip's ``(1, cols)`` right singular vector, mapped by ``u W^T`` for a wide matrix.
    Returns ``(u_small, deel_lip_shape)``: whether to return the vector in deel-lip's shape.
    """
    rows, cols = matrix.shape
    small = min(rows, cols)
    if u is None:
        return start_vector(small, matrix.dtype), cols != small
    u = ops.cast(ops.convert_to_tensor(u), matrix.dtype)
    if tuple(u.shape) == (1, small):
        return u, False
    if tuple(u.shape) == (1, cols):
        return _normalize_rows(ops.matmul(u, ops.transpose(ops.stop_gradient(matrix)))), True
    raise ValueError(
        f"u must have shape (1, {small}) (small side of the {rows}x{cols} kernel matrix) or "
        f"(1, {cols}) (deel-lip's right singular vector), received shape {tuple(u.shape)}"
    )


def _output_vector(matrix, u_small, deel_lip_shape: bool):
    """The vector returned to the caller, in the shape it gave (see `_small_side_vector`)."""
    if deel_lip_shape:
        return ops.stop_gradient(_normalize_rows(ops.matmul(u_small, matrix)))
    return u_small


def spectral_normalization(
    kernel,
    u=None,
    eps: float = DEFAULT_EPS_SPECTRAL,
    maxiter: int = DEFAULT_MAXITER_SPECTRAL,
    gram_iterations: int = DEFAULT_GRAM_ITERATIONS,
):
    """Divide a kernel by a certified upper bound of the spectral norm of its matrix.

    ``W_bar = W / sigma_up`` with ``sigma_up >= sigma_max(W)`` from the Gram iteration
    bound warm-started at the power-iteration estimate, so ``||W_bar||_2 <= 1`` (deel-lip
    divides by the estimate ``sigma + eps`` from below instead). The matrix is first
    divided by its largest entry (`_prescale`), so no float32 Gram overflows.

    Args:
        kernel: kernel tensor; its matrix is ``kernel_matrix(kernel)``.
        u: persisted power-iteration vector: ``(1, n)`` with ``n`` the small side of the
            matrix, or deel-lip's ``(1, kernel.shape[-1])``, or None (fixed start vector;
            the returned vector then has deel-lip's shape).
        eps: power-iteration tolerance.
        maxiter: power-iteration maximum number of steps.
        gram_iterations: number of squarings of the Gram iteration bound.

    Returns:
        ``(W_bar, u, sigma_up)``, ``W_bar`` with the kernel's shape, ``u`` in the shape given.
    """
    matrix = kernel_matrix(kernel)
    scaled, m = _prescale(matrix)
    u, deel_lip_shape = _small_side_vector(scaled, u)
    g = gram(scaled)
    u = power_iteration(g, u, eps, maxiter)
    lam_est = ops.maximum(_rayleigh(g, u), ops.max(ops.abs(g)))  # both <= lambda_max
    lam_up = gram_iteration_bound(g, ops.maximum(lam_est, _TINY), gram_iterations)
    sigma = ops.sqrt(ops.maximum(lam_up, _TINY))
    w_bar = ops.reshape(scaled / sigma, kernel.shape)
    return w_bar, _output_vector(scaled, u, deel_lip_shape), sigma * ops.reshape(m, ())


def bjorck_normalization(
    matrix=None,
    eps: float = DEFAULT_EPS_BJORCK,
    beta: float = DEFAULT_BETA_BJORCK,
    maxiter: int = DEFAULT_MAXITER_BJORCK,
    *,
    w=None,
):
    """Bjorck orthogonalisation of a 2D matrix whose singular values lie in [0, sqrt(3)].

    Runs ``W <- W Q`` with ``Q = (1 + beta) I - beta W^T W`` until
    ``||W_{k+1} - W_k||_F < eps`` or ``maxiter`` steps, then one final step with
    ``beta = 1/2`` computed on the actual matrix, which maps every singular value of
    ``[0, sqrt(3)]`` into ``[0, 1]``: the result has spectral norm <= 1 up to rounding.

    The iterations run on the small side: ``W_k = W_0 M_k`` and ``P_k = W_k^T W_k`` obey
    ``M_{k+1} = M_k Q_k`` and ``P_{k+1} = Q_k P_k Q_k`` (all polynomials in ``W_0^T W_0``
    commute), so each iteration costs three ``n x n`` products instead of two products
    with the full matrix. The stopping test compares the squared change with ``eps^2``
    without gradient: differentiating ``sqrt`` at 0 (an already orthogonal matrix) gave
    NaN gradients under XLA.

    Args:
        matrix: 2D tensor (``w=`` is deel-lip's spelling, deprecated).
        eps: stopping tolerance on the Frobenius norm of the update.
        beta: Bjorck coefficient in ``(0, 0.5]``.
        maxiter: maximum number of iterations before the final step.
    """
    if w is not None:
        if matrix is not None:
            raise TypeError("bjorck_normalization got both matrix and w (deel-lip's name)")
        warnings.warn(
            "bjorck_normalization(w=...) is deel-lip's spelling: use matrix=...",
            DeprecationWarning,
            stacklevel=2,
        )
        matrix = w
    if matrix is None:
        raise TypeError("bjorck_normalization() missing required argument: 'matrix'")
    matrix = ops.convert_to_tensor(matrix)
    g0 = gram(matrix)
    eye = ops.eye(g0.shape[0], dtype=matrix.dtype)

    def cond(i, m, p, delta):
        return ops.logical_and(i < maxiter, delta >= eps**2)

    def body(i, m, p, delta):
        q = (1.0 + beta) * eye - beta * p
        step = ops.stop_gradient(q - eye)
        # ||W_k (Q_k - I)||_F^2 = trace((Q_k - I) P_k (Q_k - I)), without gradient
        change = ops.sum(step * ops.matmul(ops.stop_gradient(p), step))
        return i + 1, ops.matmul(m, q), ops.matmul(ops.matmul(q, p), q), change

    start = (ops.convert_to_tensor(0), eye, g0, ops.convert_to_tensor(np.inf, matrix.dtype))
    _, m, _, _ = ops.while_loop(cond, body, start, maximum_iterations=maxiter)
    w_k = _right_multiply(matrix, m)
    return _right_multiply(w_k, 1.5 * eye - 0.5 * gram(w_k))


def reshaped_kernel_orthogonalization(
    kernel,
    u=None,
    adjustment_coef: float = 1.0,
    eps_spectral: float = DEFAULT_EPS_SPECTRAL,
    eps_bjorck: float | None = DEFAULT_EPS_BJORCK,
    beta_bjorck: float = DEFAULT_BETA_BJORCK,
    maxiter_spectral: int = DEFAULT_MAXITER_SPECTRAL,
    maxiter_bjorck: int = DEFAULT_MAXITER_BJORCK,
    *,
    beta: float | None = None,
):
    """Constrain a kernel so that its matrix has spectral norm <= ``adjustment_coef``.

    0. Divide the matrix by its largest entry (scale invariant; no float32 overflow).
    1. ``sigma^2 = max(u G u^T, gershgorin(G) / 2.9)`` with ``u`` from power iteration:
       every singular value of ``W_0 = W / sigma`` is then below ``sqrt(3)``.
    2. Bjorck orthogonalisation of ``W_0`` (skipped if ``eps_bjorck`` is None, then
       spectral normalisation by the certified Gram-iteration bound).
    3. Multiply by ``adjustment_coef`` (``k_coef_lip`` over the convolution factor).

    ``u`` is as in `spectral_normalization` (None, ours or deel-lip's shape); ``beta`` is
    deel-lip's name of ``beta_bjorck`` (deprecated).

    Returns:
        ``(W_bar, u, sigma)`` with ``W_bar`` of the kernel's shape and ``sigma`` the scale
        of step 1 in the kernel's units.
    """
    if beta is not None:
        warnings.warn(
            "reshaped_kernel_orthogonalization(beta=...) is deel-lip's spelling: use "
            "beta_bjorck=...",
            DeprecationWarning,
            stacklevel=2,
        )
        beta_bjorck = beta
    if eps_bjorck is None:
        w_bar, u, sigma = spectral_normalization(kernel, u, eps_spectral, maxiter_spectral)
        return w_bar * adjustment_coef, u, sigma
    scaled, m = _prescale(kernel_matrix(kernel))
    u, deel_lip_shape = _small_side_vector(scaled, u)
    g = gram(scaled)
    u = power_iteration(g, u, eps_spectral, maxiter_spectral)
    lam = ops.maximum(_rayleigh(g, u), _gershgorin_bound(g) / _SQRT3_SAFETY)
    sigma = ops.sqrt(ops.maximum(lam, _TINY))
    w_bar = bjorck_normalization(scaled / sigma, eps_bjorck, beta_bjorck, maxiter_bjorck)
    u = _output_vector(scaled, u, deel_lip_shape)
    return ops.reshape(w_bar, kernel.shape) * adjustment_coef, u, sigma * ops.reshape(m, ())


def frobenius_normalization(kernel, disjoint_neurons: bool = False, eps: float = _TINY):
    """Divide by the Frobenius norm (``||W||_2 <= ||W||_F``).

    With ``disjoint_neurons=True`` each output unit (last axis) is normalised separately:
    every output is then 1-Lipschitz on its own, not the output vector as a whole (the
    layer up to ``sqrt(units)``). Computed on the kernel divided by its largest entry
    (no overflow), with ``sqrt(max(sum, eps^2))`` (finite gradient at a zero kernel).
    """
    axes = tuple(range(len(kernel.shape) - 1)) if disjoint_neurons else None
    scaled, _ = _prescale(kernel, axis=axes)
    return scaled / safe_norm(scaled, axis=axes, keepdims=axes is not None, floor=eps)


# Convolution factors and deel-lip's convolution normaliser live in `normalizers_conv`.
from deel_lip.normalizers_conv import (  # noqa: E402
    conv_coverage_1d,
    conv_lipschitz_factor,
    conv_transpose_lipschitz_factor,
    padding_operator_norm,
    spectral_normalization_conv,
)
from deel_lip.normalizers_freq import conv_frequency_bound  # noqa: E402
