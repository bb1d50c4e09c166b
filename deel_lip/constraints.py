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
import warnings

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


def _deprecated_alias(cls: str, old: str, new: str) -> None:
    warnings.warn(
        f"{cls}({old}=...) is deel-lip's spelling: use {new}=...", DeprecationWarning, stacklevel=3
    )


@keras.saving.register_keras_serializable("deel_lip")
class WeightClipConstraint(keras.constraints.Constraint):
    """Clip every weight to ``[-c_val, c_val]``.

    Each output unit's weight vector of ``n`` entries then has L2 norm at most
    ``c_val * sqrt(n)``.

    Args:
        c_val: clipping bound (> 0); ``c=`` is deel-lip's spelling (deprecated).

    Raises:
        ValueError: if ``c_val`` is not a finite number > 0.
    """

    def __init__(self, c_val: float = 2, *, c: float | None = None):
        if c is not None:
            _deprecated_alias("WeightClipConstraint", "c", "c_val")
            c_val = c
        _check_positive("c_val", c_val)
        self.c_val = c_val

    def __call__(self, w):
        return ops.clip(w, -self.c_val, self.c_val)

    def get_config(self) -> dict:
        return {"c_val": self.c_val}


@keras.saving.register_keras_serializable("deel_lip")
class AutoWeightClipConstraint(keras.constraints.Constraint):
    """Clip every weight to ``[-c, c]`` with ``c = 1 / (scale * sqrt(size(w)))``.

    deel-lip's semantics: the kernel matrix then has
    ``||W||_2 <= ||W||_F <= sqrt(size(w)) * c = 1 / scale``, so a Dense layer is
    ``1 / scale``-Lipschitz (a convolution up to its coverage factor more,
    `deel_lip.normalizers.conv_lipschitz_factor`). A larger ``scale`` clips tighter. The
    bound is reached by a constant kernel.

    Args:
        scale: divisor of the clipping value (> 0).

    Raises:
        ValueError: if ``scale`` is not a finite number > 0.
    """

    def __init__(self, scale: float = 1):
        _check_positive("scale", scale)
        self.scale = scale

    def __call__(self, w):
        c = 1.0 / (self.scale * math.sqrt(math.prod(w.shape)))
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
        u: start vector of the power iteration, ``(1, n)`` with ``n`` the small side of the
            kernel matrix or deel-lip's ``(1, kernel.shape[-1])``; None for a fixed seeded
            vector. It is not updated (the constraint is stateless).

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
        u=None,
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
        if u is not None:
            u = np.asarray(ops.convert_to_numpy(u), dtype="float64")
            if u.ndim != 2 or u.shape[0] != 1 or not np.all(np.isfinite(u)) or not u.any():
                raise ValueError(
                    f"u must be a finite non-zero (1, n) vector or None, received: {u!r}"
                )
        self.u = u

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        u = None if self.u is None else ops.convert_to_tensor(self.u, dtype=w.dtype)
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
            "u": None if self.u is None else self.u.tolist(),
        }
