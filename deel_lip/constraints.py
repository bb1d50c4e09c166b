"""Weight constraints for any Keras layer (``kernel_constraint=...``).

Keras applies a constraint after each optimizer update: ``w <- constraint(w)``. These
constraints bound the norm of the weights so that a plain Keras layer becomes Lipschitz
(with the bound stated in each class). They are stateless: every call starts from
scratch, so they cost more per step than the warm-started layers of `deel_lip.layers`
and are meant for layers that have no constrained counterpart.

The *kernel matrix* of a kernel is its reshape to ``(-1, kernel.shape[-1])``
(`deel_lip.normalizers.kernel_matrix`); for Dense and Conv kernels its columns are the
weight vectors of the output units.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from deel_lip.normalizers import (
    DEFAULT_BETA_BJORCK,
    DEFAULT_EPS_BJORCK,
    DEFAULT_EPS_SPECTRAL,
    DEFAULT_MAXITER_BJORCK,
    DEFAULT_MAXITER_SPECTRAL,
    check_normalization_args,
    frobenius_normalization,
    reshaped_kernel_orthogonalization,
)

__all__ = [
    "WeightClipConstraint",
    "AutoWeightClipConstraint",
    "FrobeniusConstraint",
    "SpectralConstraint",
]


def _check_positive(name: str, value) -> None:
    is_number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if not is_number or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number > 0, received: {value!r}")


def _start_vector(size: int, dtype="float32"):
    """Fixed ``(1, size)`` unit start vector for a power iteration without persisted state.

    Drawn once from a seeded generator, so every call gives the same vector (deterministic
    results) and the vector is almost surely not orthogonal to the top singular vector.
    """
    vector = np.random.default_rng(0).standard_normal((1, int(size)))
    return ops.convert_to_tensor(vector / np.linalg.norm(vector), dtype=dtype)


@keras.saving.register_keras_serializable("deel_lip")
class WeightClipConstraint(keras.constraints.Constraint):
    """Clip every weight to ``[-c_val, c_val]``.

    Each output unit's weight vector of ``n`` entries then has L2 norm at most
    ``c_val * sqrt(n)``.

    Args:
        c_val: clipping bound (> 0).

    Raises:
        ValueError: if ``c_val`` is not a finite number > 0.
    """

    def __init__(self, c_val: float = 2):
        _check_positive("c_val", c_val)
        self.c_val = c_val

    def __call__(self, w):
        return ops.clip(w, -self.c_val, self.c_val)

    def get_config(self) -> dict:
        return {"c_val": self.c_val}


@keras.saving.register_keras_serializable("deel_lip")
class AutoWeightClipConstraint(keras.constraints.Constraint):
    """Clip every weight to ``[-c, c]`` with ``c = scale / sqrt(n)``.

    ``n = prod(w.shape[:-1])`` is the number of entries per output unit (the rows of the
    kernel matrix; 1 for a vector). Each unit's weight vector then has L2 norm at most
    ``sqrt(n) * c = scale``: each output unit is ``scale``-Lipschitz on its own, and the
    whole layer at most ``scale * sqrt(units)``-Lipschitz.

    Args:
        scale: bound on the norm of each output unit's weight vector (> 0).

    Raises:
        ValueError: if ``scale`` is not a finite number > 0.
    """

    def __init__(self, scale: float = 1):
        _check_positive("scale", scale)
        self.scale = scale

    def __call__(self, w):
        n = math.prod(w.shape[:-1]) if len(w.shape) > 1 else 1
        c = self.scale / math.sqrt(n)
        return ops.clip(w, -c, c)

    def get_config(self) -> dict:
        return {"scale": self.scale}


@keras.saving.register_keras_serializable("deel_lip")
class FrobeniusConstraint(keras.constraints.Constraint):
    """Divide the weights by their Frobenius norm: ``w / max(||w||_F, eps)``.

    The kernel matrix then has ``||W||_2 <= ||W||_F = 1`` (for ``||w||_F >= eps``).

    Args:
        eps: lower bound of the divisor, to avoid dividing by zero (> 0).

    Raises:
        ValueError: if ``eps`` is not a finite number > 0.
    """

    def __init__(self, eps: float = 1e-7):
        _check_positive("eps", eps)
        self.eps = eps

    def __call__(self, w):
        return frobenius_normalization(w, disjoint_neurons=False, eps=self.eps)

    def get_config(self) -> dict:
        return {"eps": self.eps}


@keras.saving.register_keras_serializable("deel_lip")
class SpectralConstraint(keras.constraints.Constraint):
    """Orthogonalise the kernel matrix and scale it to ``k_coef_lip``.

    ``W_bar = k_coef_lip * bjorck(W / sigma)`` through
    `deel_lip.normalizers.reshaped_kernel_orthogonalization`: every singular value of the
    kernel matrix is at most ``k_coef_lip`` after the constraint (and equal to it up to the
    Bjorck tolerance when Bjorck converged). With ``eps_bjorck=None`` the kernel is only
    divided by a certified bound of its spectral norm.

    The power iteration starts from the same fixed vector at every call: the
    constraint holds no state, so it can be shared, serialised and used under any
    distribution strategy. The bound does not depend on the iteration's accuracy.

    For a Dense kernel the bound is the layer's Lipschitz constant; for a convolution the
    operator norm can exceed it by `deel_lip.normalizers.conv_lipschitz_factor`.

    Args:
        k_coef_lip: bound on the spectral norm of the kernel matrix (> 0).
        eps_spectral: power-iteration tolerance (> 0).
        eps_bjorck: Bjorck tolerance (> 0), or None for spectral normalisation only.
        beta_bjorck: Bjorck coefficient in (0, 0.5].
        maxiter_spectral: maximum number of power iterations (>= 1).
        maxiter_bjorck: maximum number of Bjorck iterations (>= 1).

    Raises:
        ValueError: naming the first invalid argument.
    """

    def __init__(
        self,
        k_coef_lip: float = 1.0,
        eps_spectral: float = DEFAULT_EPS_SPECTRAL,
        eps_bjorck: float | None = DEFAULT_EPS_BJORCK,
        beta_bjorck: float = DEFAULT_BETA_BJORCK,
        maxiter_spectral: int = DEFAULT_MAXITER_SPECTRAL,
        maxiter_bjorck: int = DEFAULT_MAXITER_BJORCK,
    ):
        check_normalization_args(
            eps_spectral, eps_bjorck, beta_bjorck, maxiter_spectral, maxiter_bjorck, k_coef_lip
        )
        self.k_coef_lip = k_coef_lip
        self.eps_spectral = eps_spectral
        self.eps_bjorck = eps_bjorck
        self.beta_bjorck = beta_bjorck
        self.maxiter_spectral = maxiter_spectral
        self.maxiter_bjorck = maxiter_bjorck

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        rows = math.prod(w.shape[:-1])
        u = _start_vector(min(rows, w.shape[-1]), w.dtype)
        w_bar, _, _ = reshaped_kernel_orthogonalization(
            w,
            u,
            self.k_coef_lip,
            eps_spectral=self.eps_spectral,
            eps_bjorck=self.eps_bjorck,
            beta_bjorck=self.beta_bjorck,
            maxiter_spectral=self.maxiter_spectral,
            maxiter_bjorck=self.maxiter_bjorck,
        )
        return w_bar

    def get_config(self) -> dict:
        return {
            "k_coef_lip": self.k_coef_lip,
            "eps_spectral": self.eps_spectral,
            "eps_bjorck": self.eps_bjorck,
            "beta_bjorck": self.beta_bjorck,
            "maxiter_spectral": self.maxiter_spectral,
            "maxiter_bjorck": self.maxiter_bjorck,
        }
