"""The one mechanism behind every constrained-kernel layer (`ConstrainedKernel`).

The public contract every deel_lip layer follows (`lipschitz_bound()`, `Condensable`,
`linear_map`) is in `deel_lip.layers.contract`, re-exported here.

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
no normalisation cost), `condense()` (also once at build, so the raw kernel starts at the
constrained scale: ``condense_on_build``), `vanilla_export()`, `get_config()` plumbing and
`.keras` save/load of the whole state (those three in the mixin
`deel_lip.layers.kernel_export.KernelExportAndSaving`), and the refusal of Keras
arguments it cannot honour (LoRA, quantization).

The cache is kept current by a flag, never by a host round trip: a training call
refreshes the cache from the weights it sees and raises the flag (the optimizer step that
follows makes the cache one step old); the next inference call finds the flag raised,
recomputes the cache from the current weights inside the same graph
(``ops.cond(stale, refresh, cache)``) and lowers it. So `predict`, `evaluate`, `save` and
`vanilla_export` after `fit` (or a `train_on_batch` loop) use the final weights, and an
inference call on a current cache costs one boolean read.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from deel_lip._backend import (
    eager_scope,
    eager_value,
    executing_eagerly,
    no_autocast,
    num_replicas_in_sync,
)
from deel_lip._checks import check_bool
from deel_lip.layers.contract import (
    Condensable,
    LipschitzBounded,
    LipschitzLayer,
    refuse_unsupported_keras_arguments,
)
from deel_lip.layers.kernel_export import KernelExportAndSaving

__all__ = [
    "LipschitzBounded",
    "LipschitzLayer",
    "Condensable",
    "ConstrainedKernel",
    "refuse_unsupported_keras_arguments",
]

# Distributed training: every replica computes the same state, keep the first one.
_STATE_AGGREGATION = "only_first_replica"


def _has_eager_value(variable) -> bool:
    """Whether the variable can be read outside the trace (a variable created inside a
    user's `tf.function` reads as an empty array until that function runs)."""
    value = eager_value(variable)
    return value is not None and value.shape == tuple(variable.shape)


class ConstrainedKernel(KernelExportAndSaving, LipschitzLayer, Condensable):
    """Shared reparametrisation ``kernel -> constrained kernel`` of a Keras layer.

    Subclasses list this class *before* the Keras layer class, call the Keras
    ``__init__`` then `_init_constraint(**lipschitz_args)`, and implement `_normalize`,
    `_state_shapes`, `_lipschitz_factor`, `_linear`, `_export_class`.

    Public contract: `lipschitz_bound()`, `condense()`, `vanilla_export()`,
    `current_constrained_kernel()`, `linear_map(inputs, kernel=None)`,
    `built_input_shape`. At build the layer calls its own `condense()` once (unless
    ``condense_on_build=False``): the trainable kernel starts at the constrained kernel's
    scale, so Adam's steps, which do not scale with the weights, have the size the
    learning rate sets relative to the kernel actually used (the constrained kernel is
    invariant to the raw kernel's scale; docs/guide/tight_convolutions.md measures it).
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

    def _init_constraint(
        self,
        k_coef_lip: float = 1.0,
        condense_on_build=None,
        keep_raw_scale=None,
        **normalization_args,
    ) -> None:
        """Refuse what the layer cannot honour; store the Lipschitz arguments (all go to
        `get_config`). ``condense_on_build`` / ``keep_raw_scale``: None (the default, not in
        the config: for layers whose constructor does not take them) or a bool (stored)."""
        refuse_unsupported_keras_arguments(self)
        self._init_lipschitz(k_coef_lip)
        self._lipschitz_args = dict(normalization_args)
        for name, value, default in (
            ("condense_on_build", condense_on_build, True),
            ("keep_raw_scale", keep_raw_scale, False),
        ):
            if value is None:
                setattr(self, name, default)
            else:
                setattr(self, name, check_bool(name, value))
                self._lipschitz_args[name] = value
        for name, value in normalization_args.items():
            setattr(self, name, value)

    def enable_lora(self, *args, **kwargs):
        """Refused: a low-rank update would bypass the constraint (see the class docstring)."""
        raise ValueError(
            f"{type(self).__name__} does not support LoRA: its kernel is reparametrised by "
            "the Lipschitz constraint, which a low-rank update of the raw kernel would "
            f"bypass; lora_rank must be None, received enable_lora{args or ''}"
        )

    def quantize(self, mode=None, *args, **kwargs):
        """Refused: quantized kernels do not keep the exact Lipschitz bound."""
        raise ValueError(
            f"{type(self).__name__} cannot be quantized (mode={mode!r}): the quantized kernel "
            "would not keep the Lipschitz bound. Quantize the plain Keras model of "
            "vanilla_export() instead, knowing the bound is then approximate."
        )

    def _raw_kernel(self):
        kernel = getattr(self, "_kernel", None)
        return kernel if kernel is not None else self.kernel

    def _expected_input_ndim(self) -> int | None:
        """Exact input rank the layer accepts (None: any rank Keras accepts)."""
        rank = getattr(self, "rank", None)
        return None if rank is None else rank + 2

    @property
    def built_input_shape(self) -> tuple | None:
        """The input shape (batch axis included) the layer was built with; None unbuilt."""
        return getattr(self, "_lip_input_shape", None)

    def linear_map(self, inputs, kernel=None):
        """The layer's linear part ``A x`` (bias and activation excluded).

        Args:
            inputs: a batch of inputs.
            kernel: the kernel to use; default `current_constrained_kernel()` (the one
                inference uses), cast to the inputs' dtype.
        """
        if kernel is None:
            kernel = self.current_constrained_kernel()
        inputs = ops.convert_to_tensor(inputs)
        return self._linear(inputs, ops.cast(kernel, inputs.dtype))

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
        # True when the cache may not be the constrained kernel of the current weights
        # (raised by every training call, lowered by the refresh). Not saved: the saved
        # cache is always current.
        self.cache_stale = self.add_weight(
            name="cache_stale",
            shape=(),
            dtype="bool",
            initializer="ones",
            trainable=False,
            autocast=False,
            aggregation=_STATE_AGGREGATION,
        )
        self.built = True
        # Built inside a traced function (e.g. an unbuilt Sequential's first `fit` trace),
        # the variables may have no eager value yet: the cache then starts stale (the first
        # inference call computes it) and the raw kernel is condensed by the first training
        # call, in the graph, before it reads the kernel (one replica; under a
        # `tf.distribute` strategy it keeps its initializer's scale).
        if self.keep_raw_scale:
            kernel.constraint = self._scale_keeping_constraint(kernel.constraint)
        eager_build = executing_eagerly() or _has_eager_value(kernel)
        # Python flag: only a layer built in a trace adds the in-graph condense to its
        # training call. The variable exists in every layer, so the weight list of a model
        # does not depend on where it was built (clone_model + set_weights work across).
        self._condense_in_graph = (
            not eager_build and self.condense_on_build and num_replicas_in_sync() == 1
        )
        self.condense_pending = self.add_weight(
            name="condense_pending",
            shape=(),
            dtype="bool",
            initializer="ones" if self._condense_in_graph else "zeros",
            trainable=False,
            autocast=False,
            aggregation=_STATE_AGGREGATION,
        )
        if eager_build:
            with eager_scope():
                if self.condense_on_build:
                    self.condense()
                else:
                    self._refresh()
                    self.cache_stale.assign(False)

    def _scale_keeping_constraint(self, user_constraint):
        """Constraint run by the optimizer after each update (in the train step): the user's
        ``kernel_constraint`` if any, then ``K <- K ||K_bar||_F / ||K||_F`` with ``K_bar``
        the cached constrained kernel of the step. The normalisations are scale invariant,
        so the function does not change; the raw kernel stays at the constrained scale."""

        def keep_scale(kernel):
            if user_constraint is not None:
                kernel = user_constraint(kernel)
            target = ops.sqrt(ops.sum(ops.square(ops.cast(self.constrained_kernel, kernel.dtype))))
            norm = ops.sqrt(ops.sum(ops.square(kernel)))
            ok = ops.logical_and(target > 0, norm > 0)
            return ops.where(ok, kernel * (target / ops.where(ok, norm, 1.0)), kernel)

        return keep_scale

    @property
    def _cache_ready(self) -> bool:
        """Whether the cache is known to be current (read eagerly)."""
        value = eager_value(self.cache_stale)
        return value is not None and not bool(value)

    # ------------------------------------------------------------ computation

    def _coef(self) -> float:
        return self._get_coef() / self._lipschitz_factor()

    def compute_constrained_kernel(self):
        """Constrained kernel from the current raw kernel, and the new state.

        The computation runs in the variables' dtype (float32 under mixed precision).
        """
        with no_autocast():
            kernel = ops.convert_to_tensor(self._raw_kernel().value)
            values = [ops.convert_to_tensor(var.value) for var in self._state.values()]
        w_bar, new_state = self._normalize(kernel, dict(zip(self._state, values)))
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
                self.cache_stale.assign(False)

    def _refresh_cache(self):
        """Inference refresh: the cache from the current weights; the state is not moved.

        The next training step starts from the same state, so inference never changes
        the training trajectory, and the cache equals the kernel that step would compute.
        """
        w_bar = ops.stop_gradient(self.compute_constrained_kernel()[0])
        self.constrained_kernel.assign(w_bar)
        self.cache_stale.assign(False)
        return w_bar

    def _inference_kernel(self):
        """The kernel used with ``training=False``: the cache, refreshed first if stale."""
        cache, stale = self.constrained_kernel, self.cache_stale
        if num_replicas_in_sync() > 1:
            # A cross-replica variable update cannot sit in a branch of a cond: select the
            # kernel in the cond, then write it back (one kernel-sized copy per call).
            w_bar = ops.cond(
                stale.value,
                lambda: ops.stop_gradient(self.compute_constrained_kernel()[0]),
                lambda: cache.value,
            )
            cache.assign(w_bar)
            stale.assign(False)
            return w_bar
        cached = cache.value  # read outside the branches (a strategy may cache reads)
        return ops.cond(stale.value, self._refresh_cache, lambda: cached)

    def current_constrained_kernel(self):
        """The constrained kernel of the current weights, changing no variable.

        The cache when it is current, otherwise the kernel the next inference call will
        compute and cache. Used by `vanilla_export` and saving.
        """
        if self._cache_ready:
            return ops.convert_to_tensor(self.constrained_kernel.value)
        return self.compute_constrained_kernel()[0]

    def _condensed_raw_kernel(self, raw, w_bar):
        """The raw kernel `condense()` writes (graph-safe): the constrained kernel itself,
        for normalisations that are idempotent. A layer whose normalisation is not (AOL)
        returns a rescaled ``raw`` instead, so that its function does not change."""
        return w_bar

    def _condense_if_pending(self) -> None:
        """In the graph: `condense()`'s raw kernel, once, if the build could not."""

        def condense():
            raw = self._raw_kernel()
            w_bar = ops.stop_gradient(self.compute_constrained_kernel()[0])
            raw.assign(self._condensed_raw_kernel(ops.convert_to_tensor(raw.value), w_bar))
            self.condense_pending.assign(False)
            return ops.zeros((), "bool")

        ops.cond(self.condense_pending.value, condense, lambda: ops.zeros((), "bool"))

    def call(self, inputs, training=None):
        if training:
            if self._condense_in_graph:
                self._condense_if_pending()
            kernel = self._refresh()
            # The optimizer step that follows this call makes the cache stale.
            self.cache_stale.assign(True)
        else:
            kernel = self._inference_kernel()
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

        ``kernel <- constrained kernel`` (the normalisations are scale invariant and
        idempotent, so the layer's function does not change; see `_condensed_raw_kernel`),
        then the cache and state are recomputed.
        """
        if not self.built:
            return
        with eager_scope():
            w_bar = self._refresh()
            raw = self._raw_kernel()
            raw.assign(self._condensed_raw_kernel(ops.convert_to_tensor(raw.value), w_bar))
            self._refresh()
            self.cache_stale.assign(False)
