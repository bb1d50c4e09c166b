"""The public layer contract of deel_lip.

The contract (what the model wrappers, `deel_lip.utils` and the exports rely on):

* `LipschitzBounded`: a layer with ``lipschitz_bound() -> float``, the constant ``L`` it
  guarantees, ``||f(x) - f(y)||_2 <= L ||x - y||_2`` for every input size (wrapper factor
  included). Duck typed: any layer, a third-party one too, that has the method is
  accepted by `deel_lip.model.Sequential` / `Model`. A layer whose bound holds per output
  unit only also has ``per_unit_bound = True``.
* `LipschitzLayer`: the mixin for layers with deel-lip's ``k_coef_lip`` argument:
  ``lipschitz_bound() = k_coef_lip * klip_factor``, ``set_klip_factor`` (how a wrapper
  spreads a model-level constant).
* `Condensable`: ``condense()`` (bring the trainable parameters to the constrained ones,
  refresh the inference state; the function does not change) and ``vanilla_export()``
  (an equivalent plain Keras layer or model).
* A layer with a linear part exposes ``linear_map(inputs, kernel=None)`` (bias and
  activation excluded) and ``current_constrained_kernel()``: `deel_lip.utils` measures
  exact singular values through them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import keras

from deel_lip.normalizers import check_k_coef_lip

__all__ = [
    "LipschitzBounded",
    "LipschitzLayer",
    "Condensable",
    "refuse_unsupported_keras_arguments",
]

# Variable dtypes whose rounding (1e-2 to 1e-3) would void the bound.
_TOO_NARROW_DTYPES = ("float16", "bfloat16")


def refuse_unsupported_keras_arguments(layer) -> None:
    """Raise `ValueError` for Keras settings a constrained layer cannot honour.

    * LoRA (``lora_rank`` / ``lora_alpha``): Keras adds a low-rank term to the raw kernel,
      which the constraint would ignore or break;
    * quantization (``quantization_config``, quantized dtype policies such as
      ``"int8_from_float32"``): a quantized kernel does not keep the bound;
    * 16-bit variable dtypes (``"float16"``, ``"bfloat16"``): their rounding (1e-2 to
      1e-3) voids the bound; mixed policies (float32 variables) are fine.
    """
    name = type(layer).__name__
    for argument in ("lora_rank", "lora_alpha"):
        value = getattr(layer, argument, None)
        if value is not None:
            raise ValueError(
                f"{name} does not support LoRA: {argument} must be None (a low-rank update of "
                f"the raw kernel would bypass the Lipschitz constraint), received: {value!r}"
            )
    config = getattr(layer, "quantization_config", None)
    if config is not None:
        raise ValueError(
            f"{name} cannot be quantized: quantization_config must be None, received: {config!r}"
        )
    policy = layer.dtype_policy
    if getattr(policy, "quantization_mode", None) is not None:
        raise ValueError(
            f"{name} cannot use a quantized dtype policy (the quantized kernel would not keep "
            f"the Lipschitz bound): dtype must be a float policy, received {policy.name!r}"
        )
    variable_dtype = keras.backend.standardize_dtype(policy.variable_dtype)
    if variable_dtype in _TOO_NARROW_DTYPES:
        raise ValueError(
            f"{name} needs float32 or float64 variables (its normalisation "
            f"is not exact in 16 bits): use a mixed policy such as 'mixed_bfloat16', "
            f"received dtype policy {policy.name!r}"
        )


@runtime_checkable
class LipschitzBounded(Protocol):
    """Structural type of a layer that states its Lipschitz constant.

    ``isinstance(layer, LipschitzBounded)`` is True for every layer with a
    ``lipschitz_bound`` method, whatever its base classes.
    """

    def lipschitz_bound(self) -> float:
        """The constant ``L`` with ``||f(x) - f(y)||_2 <= L ||x - y||_2`` for all inputs."""
        raise NotImplementedError


@runtime_checkable
class Condensable(Protocol):
    """Layers whose training-time parametrisation can be frozen and exported.

    Structural: any layer with both methods is `Condensable`.
    """

    def condense(self) -> None:
        """Bring the trainable parameters to the constrained ones and refresh the
        inference state; the layer's function does not change."""
        raise NotImplementedError

    def vanilla_export(self) -> keras.layers.Layer:
        """Return an equivalent plain Keras layer (no constraint, no overhead)."""
        raise NotImplementedError


class LipschitzLayer:
    """Mixin for layers with a Lipschitz constant ``k_coef_lip`` (deel-lip's name).

    ``lipschitz_bound() = k_coef_lip * klip_factor``; `deel_lip.model.Sequential` spreads a
    model-level constant over these layers with `set_klip_factor`. Subclasses call
    `_init_lipschitz` in their constructor and use `lipschitz_bound()` (or its internal
    alias `_get_coef()`) as the constant they enforce.
    """

    def _init_lipschitz(self, k_coef_lip: float = 1.0) -> None:
        check_k_coef_lip(k_coef_lip)
        self.k_coef_lip = float(k_coef_lip)
        self._klip_factor = 1.0

    @property
    def klip_factor(self) -> float:
        """The factor a model wrapper set with `set_klip_factor` (1 by default)."""
        return getattr(self, "_klip_factor", 1.0)

    def set_klip_factor(self, klip_factor: float) -> None:
        """Multiply the layer's constant by ``klip_factor`` (set by a model wrapper)."""
        check_k_coef_lip(klip_factor, "klip_factor")
        self._klip_factor = float(klip_factor)
        self._on_lipschitz_change()

    def _on_lipschitz_change(self) -> None:
        """Hook for layers that cache something depending on the constant."""

    def _get_coef(self) -> float:
        """Effective Lipschitz constant: ``k_coef_lip * klip_factor``."""
        return self.k_coef_lip * self.klip_factor

    def lipschitz_bound(self) -> float:
        """The Lipschitz constant the layer guarantees: ``k_coef_lip * klip_factor``.

        Per output unit when `per_unit_bound` is True.
        """
        return self._get_coef()

    @property
    def per_unit_bound(self) -> bool:
        """True when `lipschitz_bound()` holds for each output unit separately only."""
        return False
