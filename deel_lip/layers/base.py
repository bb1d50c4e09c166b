"""The one mechanism behind every constrained-kernel layer.

A constrained layer subclasses its Keras counterpart and `ConstrainedKernel`. It declares
three things and nothing else:

* `_normalize(kernel, state) -> (constrained_kernel, new_state)` - which normalisation
  (via a `normalizers` function), with ``state`` the persisted tensors of `_state_shapes`;
* `_lipschitz_factor()` - the factor by which the operator norm can exceed the norm of
  the kernel matrix (1 for Dense, the coverage factor for convolutions);
* `_linear(inputs, kernel)` and `_export_class()` - the linear map and the plain Keras
  layer it exports to.

`ConstrainedKernel` owns the rest: the persisted state (power-iteration vector, cached
constrained kernel), the training/inference split (``training=False`` reads the cache,
no normalisation cost), `condense()`, `vanilla_export()`, `get_config()` plumbing and
`.keras` save/load of the whole state.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from deel_lip._backend import eager_scope, eager_value, executing_eagerly, no_autocast
from deel_lip.normalizers import check_k_coef_lip

__all__ = ["LipschitzLayer", "Condensable", "ConstrainedKernel"]

# Distributed training: every replica computes the same state, keep the first one.
_STATE_AGGREGATION = "only_first_replica"
# Variable dtypes whose rounding (1e-2 to 1e-3) would void the bound.
_TOO_NARROW_DTYPES = ("float16", "bfloat16")


class LipschitzLayer:
    """Mixin for layers with a Lipschitz constant ``k_coef_lip`` (deel-lip's name).

    `deel_lip.model.Sequential` spreads a model-level constant over these layers with
    `set_klip_factor`.
    """

    def _init_lipschitz(self, k_coef_lip: float = 1.0) -> None:
        check_k_coef_lip(k_coef_lip)
        self.k_coef_lip = float(k_coef_lip)
        self._klip_factor = 1.0

    def set_klip_factor(self, klip_factor: float) -> None:
        """Multiply the layer's constant by ``klip_factor`` (set by a model wrapper)."""
        check_k_coef_lip(klip_factor)
        self._klip_factor = float(klip_factor)
        self._on_lipschitz_change()

    def _on_lipschitz_change(self) -> None:
        """Hook for layers that cache something depending on the constant."""

    def _get_coef(self) -> float:
        """Effective Lipschitz constant: ``k_coef_lip * klip_factor``."""
        return self.k_coef_lip * self._klip_factor


class Condensable:
    """Layers whose training-time parametrisation can be frozen and exported."""

    def condense(self) -> None:
        """Refresh the inference state from the current weights."""
        raise NotImplementedError

    def vanilla_export(self) -> keras.layers.Layer:
        """Return an equivalent plain Keras layer (no constraint, no overhead)."""
        raise NotImplementedError


class ConstrainedKernel(LipschitzLayer, Condensable):
    """Shared reparametrisation ``kernel -> constrained kernel`` of a Keras layer.

    Subclasses list this class *before* the Keras layer class, call the Keras
    ``__init__`` then `_init_constraint(**lipschitz_args)`, and implement `_normalize`,
    `_state_shapes`, `_lipschitz_factor`, `_linear`, `_export_class`.
    """

    # ------------------------------------------------------------ declarations

    def _state_shapes(self, kernel_shape: tuple) -> dict[str, tuple]:
        """Shapes of the persisted normalisation state (e.g. ``{"u": (1, n)}``)."""
        return {}

    def _normalize(self, kernel, state: dict) -> tuple[Any, dict]:
        """Map the raw kernel to a kernel whose matrix has spectral norm <= coef."""
        raise NotImplementedError

    def _lipschitz_factor(self) -> float:
        """Operator norm of the layer / spectral norm of its kernel matrix (upper bound)."""
        return 1.0

    def _linear(self, inputs, kernel):
        """The layer's linear map with a given kernel."""
        raise NotImplementedError

    def _export_class(self) -> type:
        """Plain Keras class used by `vanilla_export`."""
        raise NotImplementedError

    # ------------------------------------------------------------ construction

    def _init_constraint(self, k_coef_lip: float = 1.0, **normalization_args) -> None:
        """Store the Lipschitz arguments; they all go to `get_config`."""
        variable_dtype = keras.backend.standardize_dtype(self.dtype_policy.variable_dtype)
        if variable_dtype in _TOO_NARROW_DTYPES:
            raise ValueError(
                f"{type(self).__name__} needs float32 or float64 variables (its normalisation "
                f"is not exact in 16 bits): use a mixed policy such as 'mixed_bfloat16', "
                f"received dtype policy {self.dtype_policy.name!r}"
            )
        self._init_lipschitz(k_coef_lip)
        self._lipschitz_args = dict(normalization_args)
        for name, value in normalization_args.items():
            setattr(self, name, value)

    def _raw_kernel(self):
        kernel = getattr(self, "_kernel", None)
        return kernel if kernel is not None else self.kernel

    def _expected_input_ndim(self) -> int | None:
        """Exact input rank the layer accepts (None: any rank Keras accepts)."""
        rank = getattr(self, "rank", None)
        return None if rank is None else rank + 2

    def build(self, input_shape):
        ndim = self._expected_input_ndim()
        if ndim is not None and len(input_shape) != ndim:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expects inputs of ndim={ndim} "
                f"(batch, spatial axes, channels), received input_shape={tuple(input_shape)}"
            )
        super().build(input_shape)
        self._lip_input_shape = tuple(input_shape)
        kernel = self._raw_kernel()
        self._state = {}
        for name, shape in self._state_shapes(tuple(kernel.shape)).items():
            self._state[name] = self.add_weight(
                name=name,
                shape=shape,
                initializer=keras.initializers.RandomNormal(seed=0),
                trainable=False,
                autocast=False,
                aggregation=_STATE_AGGREGATION,
            )
        self.constrained_kernel = self.add_weight(
            name="constrained_kernel",
            shape=kernel.shape,
            initializer="zeros",
            trainable=False,
            autocast=False,
            aggregation=_STATE_AGGREGATION,
        )
        self.built = True
        # Built inside a traced function (e.g. an unbuilt Sequential's first `fit` step),
        # the variables have no eager value yet: the cache is computed by the first call,
        # and inference reads it once `_cache_holds_value` sees it filled.
        self._cache_ready = executing_eagerly()
        if self._cache_ready:
            self._refresh()

    def _cache_holds_value(self) -> bool:
        """Whether the cached kernel has been computed (checked eagerly, at trace time).

        An uncomputed cache is all zeros (or has no value yet in the traced function that
        created it); a computed one is zero only for a zero raw kernel, whose refresh is
        zero too, so reading it then is exact as well.
        """
        value = eager_value(self.constrained_kernel)
        return value is not None and value.size > 0 and bool(value.any())

    # ------------------------------------------------------------ computation

    def _coef(self) -> float:
        return self._get_coef() / self._lipschitz_factor()

    def compute_constrained_kernel(self):
        """Constrained kernel from the current raw kernel, and the new state.

        The computation runs in the variables' dtype (float32 under mixed precision).
        """
        with no_autocast():
            kernel = ops.convert_to_tensor(self._raw_kernel().value)
            state = {name: ops.convert_to_tensor(var.value) for name, var in self._state.items()}
        w_bar, new_state = self._normalize(kernel, state)
        return w_bar, new_state

    def _assign(self, w_bar, new_state) -> None:
        self.constrained_kernel.assign(ops.stop_gradient(w_bar))
        for name, value in new_state.items():
            self._state[name].assign(ops.stop_gradient(value))

    def _refresh(self):
        w_bar, new_state = self.compute_constrained_kernel()
        self._assign(w_bar, new_state)
        return w_bar

    def _on_lipschitz_change(self) -> None:
        if self.built:
            with eager_scope():
                self._refresh()
            self._cache_ready = True

    def _inference_kernel(self):
        """The kernel used with ``training=False``: the cache, computed once if needed."""
        if not self._cache_ready:
            self._cache_ready = self._cache_holds_value()
        if self._cache_ready:
            return self.constrained_kernel
        # Traced before the cache existed: compute it at the first run of the function.
        cache = self.constrained_kernel
        return ops.cond(ops.any(ops.not_equal(cache, 0)), lambda: cache.value, self._refresh)

    def call(self, inputs, training=None):
        kernel = self._refresh() if training else self._inference_kernel()
        kernel = ops.cast(kernel, self.compute_dtype)
        outputs = self._linear(inputs, kernel)
        if self.use_bias:
            outputs = self._add_bias(outputs)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def _add_bias(self, outputs):
        bias = ops.cast(self.bias, outputs.dtype)
        if getattr(self, "data_format", "channels_last") == "channels_first":
            shape = (1, -1) + (1,) * (len(outputs.shape) - 2)
            bias = ops.reshape(bias, shape)
        return outputs + bias

    # ------------------------------------------------------------ condense / export

    def condense(self) -> None:
        """Project the raw kernel on the constraint set and refresh the cache.

        ``kernel <- constrained kernel`` (the normalisations are scale invariant, so the
        layer's function does not change), then the cache and state are recomputed.
        """
        if not self.built:
            return
        with eager_scope():
            self._refresh()
            self._raw_kernel().assign(self.constrained_kernel)
            self._refresh()
        self._cache_ready = True

    def vanilla_export(self) -> keras.layers.Layer:
        """Plain Keras layer holding the cached constrained kernel; same name and outputs.

        The export reads the cache that inference reads, without refreshing it, so it
        equals the layer at ``training=False`` exactly. After `fit`, the cache holds the
        kernel of the last training step's weights; call `condense()` first to bring it to
        the current weights (`deel_lip.callbacks.CondenseCallback` does it at train end).
        """
        if not self.built:
            raise ValueError(f"Layer {self.name!r} must be built before vanilla_export().")
        if not self._cache_ready:
            with eager_scope():
                self._refresh()
            self._cache_ready = True
        cls = self._export_class()
        config = cls.get_config(self)
        config["name"] = self.name
        config.pop("kernel_constraint", None)
        config.pop("kernel_regularizer", None)
        layer = cls.from_config(config)
        layer.build(self._lip_input_shape)
        weights = [ops.convert_to_numpy(self.constrained_kernel)]
        if self.use_bias:
            weights.append(ops.convert_to_numpy(self.bias))
        layer.set_weights(weights)
        return layer

    # ------------------------------------------------------------ config / saving

    def get_config(self) -> dict:
        config = super().get_config()
        config["k_coef_lip"] = self.k_coef_lip
        config.update(self._lipschitz_args)
        return config

    def save_own_variables(self, store) -> None:
        """Save every variable (raw kernel, bias, state, cache) in creation order."""
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store) -> None:
        keras.layers.Layer.load_own_variables(self, store)
