"""The two kernel normalisations that constrained layers declare.

* `SpectralKernel`: power iteration + Bjorck orthogonalisation (or spectral normalisation
  only when ``eps_bjorck=None``) of the reshaped kernel.
* `FrobeniusKernel`: division by the Frobenius norm (whole kernel or per output unit).
"""

from __future__ import annotations

from deel_lip.layers.base import ConstrainedKernel
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

__all__ = ["SpectralKernel", "FrobeniusKernel"]


class SpectralKernel(ConstrainedKernel):
    """Bjorck-orthogonalised kernel with a persisted power-iteration vector ``u``."""

    def _init_spectral(
        self,
        k_coef_lip: float = 1.0,
        eps_spectral: float = DEFAULT_EPS_SPECTRAL,
        eps_bjorck=DEFAULT_EPS_BJORCK,
        beta_bjorck: float = DEFAULT_BETA_BJORCK,
        maxiter_spectral: int = DEFAULT_MAXITER_SPECTRAL,
        maxiter_bjorck: int = DEFAULT_MAXITER_BJORCK,
        condense_on_build=None,
        keep_raw_scale=None,
    ) -> None:
        check_normalization_args(
            eps_spectral, eps_bjorck, beta_bjorck, maxiter_spectral, maxiter_bjorck, k_coef_lip
        )
        self._init_constraint(
            k_coef_lip=k_coef_lip,
            condense_on_build=condense_on_build,
            keep_raw_scale=keep_raw_scale,
            eps_spectral=eps_spectral,
            eps_bjorck=eps_bjorck,
            beta_bjorck=beta_bjorck,
            maxiter_spectral=maxiter_spectral,
            maxiter_bjorck=maxiter_bjorck,
        )

    def _state_shapes(self, kernel_shape):
        rows = 1
        for dim in kernel_shape[:-1]:
            rows *= dim
        return {"u": (1, min(rows, kernel_shape[-1]))}

    def _normalize(self, kernel, state):
        w_bar, u, _ = reshaped_kernel_orthogonalization(
            kernel,
            state["u"],
            self._coef(),
            eps_spectral=self.eps_spectral,
            eps_bjorck=self.eps_bjorck,
            beta_bjorck=self.beta_bjorck,
            maxiter_spectral=self.maxiter_spectral,
            maxiter_bjorck=self.maxiter_bjorck,
        )
        return w_bar, {"u": u}


class FrobeniusKernel(ConstrainedKernel):
    """Kernel divided by its Frobenius norm (``disjoint_neurons``: per output unit)."""

    def _init_frobenius(
        self,
        k_coef_lip: float = 1.0,
        disjoint_neurons: bool = False,
        condense_on_build=None,
        keep_raw_scale=None,
    ) -> None:
        if not isinstance(disjoint_neurons, bool):
            raise ValueError(f"disjoint_neurons must be a bool, received: {disjoint_neurons!r}")
        self._init_constraint(
            k_coef_lip=k_coef_lip,
            condense_on_build=condense_on_build,
            keep_raw_scale=keep_raw_scale,
            disjoint_neurons=disjoint_neurons,
        )

    @property
    def per_unit_bound(self) -> bool:
        """True with ``disjoint_neurons=True`` and more than one output unit: each unit is
        ``lipschitz_bound()``-Lipschitz, the layer as a whole up to ``sqrt(units)`` times it."""
        units = getattr(self, "units", None) or getattr(self, "filters", 1)
        return bool(self.disjoint_neurons) and units > 1

    def _normalize(self, kernel, state):
        return frobenius_normalization(kernel, self.disjoint_neurons) * self._coef(), {}
