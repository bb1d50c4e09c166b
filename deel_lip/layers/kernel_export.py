"""Export, config and `.keras` saving of a `ConstrainedKernel` layer (a mixin).

`vanilla_export()` builds the plain Keras layer (``_export_class()``) holding the kernel
used at inference; `save_own_variables` / `load_own_variables` write and read the raw
kernel, bias, normalisation state and cache (a stale cache is refreshed first, so that a
reloaded model equals the saved one); `get_config` adds ``k_coef_lip`` and the
normalisation arguments. It relies on `ConstrainedKernel`'s ``current_constrained_kernel``,
``_refresh_cache``, ``_cache_ready`` and its ``cache_stale`` / ``condense_pending`` flags.
"""

from __future__ import annotations

import keras
from keras import ops

from deel_lip._backend import eager_scope

__all__ = ["KernelExportAndSaving"]


class KernelExportAndSaving:
    """`vanilla_export`, `get_config` and `.keras` save/load of a constrained layer."""

    def _export_config(self) -> dict:
        """Config of the plain Keras layer `vanilla_export` builds."""
        cls = self._export_class()
        config = cls.get_config(self)
        config["name"] = self.name
        config.pop("kernel_constraint", None)
        config.pop("kernel_regularizer", None)
        return config

    def vanilla_export(self) -> keras.layers.Layer:
        """Plain Keras layer holding the constrained kernel; same name and outputs.

        The kernel is the one inference uses, computed from the current weights when the
        cache is stale (after `fit`, the cache of the last step predates the last optimizer
        update), so the export equals the layer at ``training=False`` exactly. The layer
        itself is not changed.
        """
        if not self.built:
            raise ValueError(f"Layer {self.name!r} must be built before vanilla_export().")
        with eager_scope():
            kernel = ops.convert_to_numpy(self.current_constrained_kernel())
            bias = ops.convert_to_numpy(self.bias) if self.use_bias else None
        layer = self._export_class().from_config(self._export_config())
        layer.build(self._lip_input_shape)
        layer.set_weights([kernel] if bias is None else [kernel, bias])
        return layer

    # ------------------------------------------------------------ config / saving

    def get_config(self) -> dict:
        config = super().get_config()
        config["k_coef_lip"] = self.k_coef_lip
        config.update(self._lipschitz_args)
        return config

    def _saved_variables(self) -> list:
        """Variables written to a ``.keras`` file, in creation order (the flags excluded)."""
        variables = self._trainable_variables + self._non_trainable_variables
        flags = (self.cache_stale, self.condense_pending)
        return [v for v in variables if not any(v is flag for flag in flags)]

    def save_own_variables(self, store) -> None:
        """Save raw kernel, bias, state and the cache, brought to the current weights.

        A stale cache is first refreshed as the next inference call would refresh it (the
        layer's function does not change), so a reloaded model equals this one.
        """
        if not self._cache_ready:
            with eager_scope():
                self._refresh_cache()
        for i, variable in enumerate(self._saved_variables()):
            store[f"{i}"] = variable

    def load_own_variables(self, store) -> None:
        """Load the variables `save_own_variables` wrote; the loaded cache is current."""
        variables = self._saved_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"Layer {self.name!r} expects {len(variables)} saved variables "
                f"({[v.name for v in variables]}), received {len(store.keys())}"
            )
        for i, variable in enumerate(variables):
            variable.assign(store[f"{i}"])
        self.cache_stale.assign(False)
        self.condense_pending.assign(False)  # the loaded kernel is the trained one
