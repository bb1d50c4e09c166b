"""Kernel initializers for Lipschitz layers."""

from __future__ import annotations

import math

import keras
from keras import ops

from deel_lip.normalizers import (
    DEFAULT_BETA_BJORCK,
    DEFAULT_EPS_BJORCK,
    DEFAULT_EPS_SPECTRAL,
    check_normalization_args,
    reshaped_kernel_orthogonalization,
    start_vector,
)

__all__ = ["SpectralInitializer", "CenteredOrthogonal"]

#: Iteration caps of the one-off orthogonalisation: it runs until the tolerances are met.
_INIT_MAXITER = 100


@keras.saving.register_keras_serializable("deel_lip")
class SpectralInitializer(keras.initializers.Initializer):
    """Draw with a base initializer, then orthogonalise the kernel matrix.

    ``W = k_coef_lip * bjorck(W_0 / sigma)`` with ``W_0`` drawn by ``base_initializer``
    and ``sigma`` a scale from power iteration (see
    `deel_lip.normalizers.reshaped_kernel_orthogonalization`). The kernel matrix
    ``W.reshape(-1, shape[-1])`` has every singular value at most ``k_coef_lip``, and
    equal to it up to the Bjorck tolerance, for Dense
    ``(in, out)`` and Conv ``(*kernel_size, in, out)`` shapes alike. With
    ``eps_bjorck=None`` the draw is only divided by a certified bound of its spectral norm.
    The iterations run until their tolerance is met (at most 100 each): this is a one-off
    cost at build time.

    Args:
        eps_spectral: power-iteration tolerance (> 0).
        eps_bjorck: Bjorck tolerance (> 0), or None for spectral normalisation only.
        beta_bjorck: Bjorck coefficient in (0, 0.5].
        k_coef_lip: target singular value (> 0).
        base_initializer: Keras initializer (name, config dict or instance) for ``W_0``.

    Raises:
        ValueError: naming the first invalid normalisation argument, or if
            ``base_initializer`` is not a Keras initializer.
    """

    def __init__(
        self,
        eps_spectral: float = DEFAULT_EPS_SPECTRAL,
        eps_bjorck: float | None = DEFAULT_EPS_BJORCK,
        beta_bjorck: float = DEFAULT_BETA_BJORCK,
        k_coef_lip: float = 1.0,
        base_initializer: str | dict | keras.initializers.Initializer = "orthogonal",
    ):
        check_normalization_args(
            eps_spectral, eps_bjorck, beta_bjorck, _INIT_MAXITER, _INIT_MAXITER, k_coef_lip
        )
        try:
            initializer = keras.initializers.get(base_initializer)
        except (ValueError, TypeError) as error:
            raise ValueError(
                "base_initializer must be a Keras initializer (name, config or instance), "
                f"received: {base_initializer!r}"
            ) from error
        if initializer is None:
            raise ValueError(
                f"base_initializer must be a Keras initializer, received: {base_initializer!r}"
            )
        self.eps_spectral = eps_spectral
        self.eps_bjorck = eps_bjorck
        self.beta_bjorck = beta_bjorck
        self.k_coef_lip = k_coef_lip
        self.base_initializer = initializer

    def __call__(self, shape, dtype=None):
        shape = tuple(int(d) for d in shape)
        if len(shape) < 2:
            raise ValueError(
                f"SpectralInitializer needs a kernel shape of rank >= 2, received: {shape}"
            )
        dtype = keras.backend.standardize_dtype(dtype or keras.config.floatx())
        # Orthogonalise in at least float32 (the Bjorck polynomial loses accuracy below).
        work_dtype = "float64" if dtype == "float64" else "float32"
        w0 = ops.cast(self.base_initializer(shape, dtype=work_dtype), work_dtype)
        u = start_vector(min(math.prod(shape[:-1]), shape[-1]), work_dtype)
        w, _, _ = reshaped_kernel_orthogonalization(
            w0,
            u,
            self.k_coef_lip,
            eps_spectral=self.eps_spectral,
            eps_bjorck=self.eps_bjorck,
            beta_bjorck=self.beta_bjorck,
            maxiter_spectral=_INIT_MAXITER,
            maxiter_bjorck=_INIT_MAXITER,
        )
        return ops.cast(w, dtype)

    def get_config(self) -> dict:
        return {
            "eps_spectral": self.eps_spectral,
            "eps_bjorck": self.eps_bjorck,
            "beta_bjorck": self.beta_bjorck,
            "k_coef_lip": self.k_coef_lip,
            "base_initializer": keras.initializers.serialize(self.base_initializer),
        }


@keras.saving.register_keras_serializable("deel_lip")
class CenteredOrthogonal(keras.initializers.Initializer):
    """Convolution kernel that is zero except at its centre tap, an orthogonal
    ``c_in x c_out`` matrix: the convolution is then an isometry (a 1x1 orthogonal map,
    up to the border for "valid" padding), its Gram kernel has only the offset 0 with
    ``G[0] = I`` (on the side with fewer channels), so AOL leaves it unchanged and the
    layer starts exactly at its Lipschitz constant. Keras' "orthogonal" initialiser makes
    the reshaped ``(kh kw c_in, c_out)`` matrix orthogonal, not the convolution: AOL then
    starts at about half its budget (0.48 for a 3x3 16 -> 32 convolution at 10x10).

    Args:
        seed: seed of the orthogonal matrix.
    """

    def __init__(self, seed=None):
        self.seed = seed
        self._orthogonal = keras.initializers.Orthogonal(seed=seed)

    def __call__(self, shape, dtype=None):
        if len(shape) < 3:
            raise ValueError(
                f"CenteredOrthogonal needs a convolution kernel shape (spatial axes, c_in, "
                f"c_out), received shape {tuple(shape)}"
            )
        centre = tuple((k - 1) // 2 for k in shape[:-2])
        tap = ops.cast(self._orthogonal(tuple(shape[-2:]), dtype=dtype), dtype or "float32")
        one_hot = [ops.one_hot(c, k, dtype=tap.dtype) for c, k in zip(centre, shape[:-2])]
        mask = one_hot[0]
        for vector in one_hot[1:]:
            mask = ops.multiply(mask[..., None], vector)
        return mask[..., None, None] * tap

    def get_config(self):
        return {"seed": self.seed}
