"""Building blocks of the private twin: input norm clipping and kernel projections.

* `ClipNorm`: ``x -> x * min(1, c / ||x||)`` per sample (the norm over every non-batch
  axis), the projection on the ball of radius ``c``: 1-Lipschitz, no parameter. It makes
  the input-norm bound ``c`` of the sensitivity analysis true for every input.
* `KernelProjection`: the constraint the private twin puts on each kernel. Keras applies
  it after every optimizer update (``w <- projection(w)``), so the kernel trained as a
  plain parameter (forward pass ``x -> W x + b``) stays in the constraint set of the
  layer it comes from: ``||W||_2 <= bound`` (Bjorck orthogonalisation ending with a
  ``beta = 1/2`` step, `deel_lip.normalizers.reshaped_kernel_orthogonalization`) or
  ``||W||_F = bound`` (Frobenius, whole or per output unit). The map is data-independent:
  applying it to a privatised update is post-processing.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from deel_lip.normalizers import (
    DEFAULT_BETA_BJORCK,
    DEFAULT_EPS_BJORCK,
    DEFAULT_EPS_SPECTRAL,
    DEFAULT_MAXITER_BJORCK,
    DEFAULT_MAXITER_SPECTRAL,
    frobenius_normalization,
    reshaped_kernel_orthogonalization,
)

__all__ = ["ClipNorm", "KernelProjection"]

_KINDS = ("spectral", "frobenius", "frobenius_per_unit")


def _check_bound(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a finite number > 0, received: {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, received: {value!r}")
    return float(value)


@keras.saving.register_keras_serializable("deel_lip")
class ClipNorm(keras.layers.Layer):
    """Project each sample on the L2 ball of radius ``max_norm``.

    ``y = x * min(1, max_norm / ||x||)`` with ``||x||`` over all non-batch axes. Samples
    inside the ball pass unchanged. 1-Lipschitz (a projection on a convex set).

    Args:
        max_norm: radius of the ball (> 0).

    Raises:
        ValueError: if ``max_norm`` is not a finite number > 0.
    """

    def __init__(self, max_norm: float, **kwargs):
        super().__init__(**kwargs)
        self.max_norm = _check_bound("max_norm", max_norm)

    def call(self, inputs):
        axes = tuple(range(1, len(inputs.shape)))
        norms = ops.sqrt(ops.sum(ops.square(inputs), axis=axes, keepdims=True))
        scale = ops.minimum(1.0, self.max_norm / ops.maximum(norms, 1e-12))
        return inputs * ops.cast(scale, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config["max_norm"] = self.max_norm
        return config


@keras.saving.register_keras_serializable("deel_lip")
class KernelProjection(keras.constraints.Constraint):
    """Map a kernel back onto its constraint set after an optimizer step.

    * ``"spectral"``: ``bound * bjorck(W / sigma)`` on the kernel matrix (reshape to
      ``(-1, last)``): every singular value ``<= bound`` up to float rounding.
    * ``"frobenius"``: ``bound * W / ||W||_F``.
    * ``"frobenius_per_unit"``: each output unit (last axis) to Frobenius norm ``bound``.

    Stateless (the power iteration starts from a fixed vector): it can be saved and shared.

    Args:
        bound: the norm bound (> 0).
        kind: one of "spectral", "frobenius", "frobenius_per_unit".
        eps_spectral, eps_bjorck, beta_bjorck, maxiter_spectral, maxiter_bjorck: as in
            `deel_lip.normalizers.reshaped_kernel_orthogonalization` ("spectral" only).

    Raises:
        ValueError: naming the invalid argument.
    """

    def __init__(
        self,
        bound: float = 1.0,
        kind: str = "spectral",
        eps_spectral: float = DEFAULT_EPS_SPECTRAL,
        eps_bjorck: float = DEFAULT_EPS_BJORCK,
        beta_bjorck: float = DEFAULT_BETA_BJORCK,
        maxiter_spectral: int = DEFAULT_MAXITER_SPECTRAL,
        maxiter_bjorck: int = DEFAULT_MAXITER_BJORCK,
    ):
        self.bound = _check_bound("bound", bound)
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, received: {kind!r}")
        if kind == "spectral" and eps_bjorck is None:
            raise ValueError(
                "eps_bjorck must be a number > 0 for the spectral projection (Bjorck keeps "
                "||W||_2 <= bound exactly), received: None"
            )
        self.kind = kind
        self.eps_spectral = eps_spectral
        self.eps_bjorck = eps_bjorck
        self.beta_bjorck = beta_bjorck
        self.maxiter_spectral = maxiter_spectral
        self.maxiter_bjorck = maxiter_bjorck

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        if self.kind == "frobenius":
            return frobenius_normalization(w, disjoint_neurons=False) * self.bound
        if self.kind == "frobenius_per_unit":
            return frobenius_normalization(w, disjoint_neurons=True) * self.bound
        w_bar, _, _ = reshaped_kernel_orthogonalization(
            w,
            None,
            self.bound,
            eps_spectral=self.eps_spectral,
            eps_bjorck=self.eps_bjorck,
            beta_bjorck=self.beta_bjorck,
            maxiter_spectral=self.maxiter_spectral,
            maxiter_bjorck=self.maxiter_bjorck,
        )
        return w_bar

    def get_config(self) -> dict:
        return {
            "bound": self.bound,
            "kind": self.kind,
            "eps_spectral": self.eps_spectral,
            "eps_bjorck": self.eps_bjorck,
            "beta_bjorck": self.beta_bjorck,
            "maxiter_spectral": self.maxiter_spectral,
            "maxiter_bjorck": self.maxiter_bjorck,
        }
