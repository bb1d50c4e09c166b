"""Model wrappers: `Sequential`, `Model`, and `vanilla_export` for any Keras model.

Which layers are Lipschitz is decided by `layer_lipschitz_bound`: a layer's own
``lipschitz_bound()`` (the public contract of `deel_lip.layers.base`), else the registry
that `register_lipschitz` extends for plain Keras layers.

`vanilla_export(model)` turns a trained deel_lip model into a plain Keras model: every
constrained layer becomes its plain Keras counterpart (Dense, Conv1D, Conv2D,
Conv2DTranspose) holding the cached constrained kernel, every other layer is copied with
its weights. Layer names are kept, and the exported model computes exactly what the
original computes at inference (``training=False``), with no normalisation cost.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import keras

from deel_lip.layers.base import Condensable
from deel_lip.normalizers import check_k_coef_lip
from deel_lip.registry import layer_lipschitz_bound, register_lipschitz

__all__ = [
    "Sequential",
    "Model",
    "vanilla_export",
    "vanillaModel",
    "condense",
    "register_lipschitz",
    "layer_lipschitz_bound",
]


def _is_known_lipschitz(layer) -> bool:
    return layer_lipschitz_bound(layer) is not None


def _has_own_bound(layer) -> bool:
    """Layers stating their bound themselves (deel_lip layers, third-party ones)."""
    return not isinstance(layer, keras.Model) and callable(getattr(layer, "lipschitz_bound", None))


def _scalable_layers(layers: Iterable) -> list:
    """Layers a wrapper can give a factor: a bound of their own and `set_klip_factor`."""
    return [
        layer
        for layer in layers
        if _has_own_bound(layer) and callable(getattr(layer, "set_klip_factor", None))
    ]


def _sublayers(model) -> list:
    """Every layer of a model, recursing into nested models."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(_sublayers(layer))
        found.append(layer)
    return found


def _is_per_unit(layer) -> bool:
    """Layers whose bound holds per output unit only (``per_unit_bound``, e.g.
    ``FrobeniusDense(disjoint_neurons=True)`` with more than one unit): the layer as a
    whole is up to ``k * sqrt(units)``-Lipschitz."""
    return _has_own_bound(layer) and bool(getattr(layer, "per_unit_bound", False))


def _warn_per_unit(layer, follower) -> None:
    units = getattr(layer, "units", None) or getattr(layer, "filters", "n")
    warnings.warn(
        f"Layer {layer.name!r} ({type(layer).__name__}, per-unit bound, e.g. "
        f"disjoint_neurons=True, units={units}) bounds each output unit separately, but the "
        f"Lipschitz layer {follower.name!r} follows it: the model is then only guaranteed "
        f"sqrt({units}) times its constant. Use disjoint_neurons=False, or keep "
        "per-unit layers last.",
        UserWarning,
        stacklevel=3,
    )


def _downstream_layers(layer) -> list:
    """Layers reachable from ``layer``'s outputs in a functional graph."""
    found, stack, seen = [], [layer], {id(layer)}
    while stack:
        for node in getattr(stack.pop(), "_outbound_nodes", []):
            nxt = node.operation
            if id(nxt) not in seen:
                seen.add(id(nxt))
                found.append(nxt)
                stack.append(nxt)
    return found


def condense(model) -> None:
    """Call `condense()` on every `Condensable` layer of ``model`` (nested models too)."""
    for layer in _sublayers(model):
        if isinstance(layer, Condensable) and not isinstance(layer, keras.Model):
            layer.condense()


def _exports_itself(layer) -> bool:
    """Layers with their own ``vanilla_export()`` (`Condensable` ones, `PadConv2D`)."""
    return callable(getattr(layer, "vanilla_export", None))


def _export_layer(layer):
    if isinstance(layer, keras.Model):
        return vanilla_export(layer)
    if _exports_itself(layer):
        return layer.vanilla_export()
    config = layer.get_config()
    scalable = bool(_scalable_layers([layer]))
    if scalable and "k_coef_lip" in config:
        # a wrapper's factor (set_klip_factor) is not in the config: fold it into k_coef_lip
        # so that the copy, and the copy saved and loaded, compute the same map
        config["k_coef_lip"] = layer.lipschitz_bound()
    copy = layer.__class__.from_config(config)
    if scalable and "k_coef_lip" not in config:
        copy.set_klip_factor(getattr(layer, "klip_factor", 1.0))
    return copy


def vanilla_export(model: keras.Model) -> keras.Model:
    """Plain Keras copy of ``model`` with every constraint folded into its kernel.

    Each constrained layer exports the constrained kernel of its current weights (the
    kernel inference uses: the cache, recomputed if a training step left it stale), so the
    export equals ``model(x)`` (``training=False``) exactly, after `fit` too, and ``model``
    is not changed. The export shares no variable with the original and is not compiled.

    Args:
        model: a built `keras.Sequential` or functional `keras.Model` (deel_lip's or
            Keras').

    Returns:
        A `keras.Sequential` or functional `keras.Model` with the same layer names.

    Raises:
        TypeError: if ``model`` is not a `keras.Model`.
        ValueError: if the model is not built or is a subclassed model.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, received: {type(model).__name__}")
    if not model.built:
        raise ValueError(f"model {model.name!r} must be built before vanilla_export().")
    if not isinstance(model, keras.Sequential) and not hasattr(model, "_run_through_graph"):
        raise ValueError(
            "vanilla_export supports Sequential and functional models, received a "
            f"subclassed model of type {type(model).__name__}"
        )
    compiled = getattr(model, "compiled", False)
    model.compiled = False  # clone_model would re-compile the copy from the compile config
    try:
        exported = keras.models.clone_model(model, clone_function=_export_layer)
    finally:
        model.compiled = compiled
    if not isinstance(model, keras.Sequential) and type(exported) is not keras.Model:
        exported = keras.Model(exported.inputs, exported.outputs, name=model.name)
    for layer in model.layers:
        if isinstance(layer, keras.Model) or _exports_itself(layer):
            continue
        if layer.weights:
            exported.get_layer(layer.name).set_weights(layer.get_weights())
    return exported


class _ExportMixin:
    """`condense()` and `vanilla_export()` methods for the model wrappers.

    ``compile`` is Keras's own: ``jit_compile="auto"`` (the default) means no XLA on a
    CPU-only machine, where the frequency bound and the sort kernels run as XLA islands
    (`deel_lip._backend.xla_island`) and the convolutions keep TensorFlow's oneDNN
    kernels (faster than whole-model XLA on CPU, docs/benchmarks.md), and XLA with a GPU.
    """

    def compile_from_config(self, config):
        """Compile a loaded model as saved, optimizer variables built (ready to load)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if hasattr(self, "optimizer") and self.built:
            self.optimizer.build(self.trainable_variables)  # optimizer variables to load

    def condense(self) -> None:
        """Refresh every constrained layer's inference state (see `condense`)."""
        condense(self)

    def vanilla_export(self) -> keras.Model:
        """Plain Keras export of this model (see `vanilla_export`)."""
        return vanilla_export(self)

    def vanillaModel(self) -> keras.Model:  # noqa: N802 (deel-lip's name)
        """deel-lip's name of `vanilla_export` (deprecated)."""
        return vanillaModel(self)


def vanillaModel(model: keras.Model) -> keras.Model:  # noqa: N802 (deel-lip's name)
    """deel-lip's ``vanillaModel(model)``: `vanilla_export` under its deprecated name.

    Unlike deel-lip's, it does not condense the model first (call `condense` for that).
    """
    warnings.warn(
        "vanillaModel(model) is deel-lip's name: use vanilla_export(model)",
        DeprecationWarning,
        stacklevel=2,
    )
    return vanilla_export(model)


@keras.saving.register_keras_serializable("deel_lip")
class Sequential(_ExportMixin, keras.Sequential):
    """`keras.Sequential` that spreads a Lipschitz constant over its layers.

    A layer is known to be Lipschitz when `layer_lipschitz_bound` finds its bound: its own
    ``lipschitz_bound()`` method (every deel_lip layer, any third-party layer implementing
    it) or the registry of `register_lipschitz` (plain Keras layers such as ``Flatten``,
    ``ReLU``, 1-Lipschitz activations). Each of the ``n`` layers with their own bound and a
    ``set_klip_factor`` method gets the factor ``k_coef_lip ** (1 / n)``, so the
    composition of 1-Lipschitz layers is ``k_coef_lip``-Lipschitz. A `UserWarning` names
    every layer that is not known to be Lipschitz (it breaks the guarantee unless you know
    better), and every per-unit layer (``per_unit_bound``, e.g.
    ``FrobeniusDense(disjoint_neurons=True)``) followed by another layer with its own
    bound: a per-unit bound only covers the model as its last such layer. The factors are
    spread again whenever the layer list changes (`add`, `pop`).

    Args:
        layers: list of layers.
        trainable: as in `keras.Sequential`.
        name: model name.
        k_coef_lip: Lipschitz constant of the whole model (> 0).
    """

    def __init__(self, layers=None, trainable=True, name=None, k_coef_lip=1.0):
        check_k_coef_lip(k_coef_lip)
        self.k_coef_lip = float(k_coef_lip)
        super().__init__(layers=None, trainable=trainable, name=name)
        for layer in layers or []:
            self.add(layer, rebuild=False)
        if self._layers:
            self._maybe_rebuild()

    def add(self, layer, rebuild=True):
        super().add(layer, rebuild=rebuild)
        added = self._layers[-1]
        if not _is_known_lipschitz(added):
            warnings.warn(
                f"Layer {added.name!r} ({type(added).__name__}) is not known to be "
                "Lipschitz: the model's Lipschitz guarantee does not cover it (give it a "
                "lipschitz_bound() method, or declare its class with "
                "deel_lip.model.register_lipschitz).",
                stacklevel=2,
            )
        if _has_own_bound(added):
            for earlier in self._layers[:-1]:
                if _is_per_unit(earlier):
                    _warn_per_unit(earlier, added)
        self._spread_lipschitz_constant()

    def pop(self, rebuild=True):
        """Remove the last layer and spread ``k_coef_lip`` over the remaining ones.

        The removed layer gets back its own constant (factor 1).
        """
        layer = super().pop(rebuild=rebuild)
        if _scalable_layers([layer]):
            layer.set_klip_factor(1.0)
        self._spread_lipschitz_constant()
        return layer

    def set_klip_factor(self, klip_factor: float) -> None:
        """Set the model's constant to ``klip_factor`` and spread it (deel-lip's method)."""
        check_k_coef_lip(klip_factor)
        self.k_coef_lip = float(klip_factor)
        self._spread_lipschitz_constant()

    def _spread_lipschitz_constant(self) -> None:
        lip_layers = _scalable_layers(self._layers)
        if not lip_layers:
            return
        factor = math.pow(self.k_coef_lip, 1.0 / len(lip_layers))
        for layer in lip_layers:
            layer.set_klip_factor(factor)

    def get_config(self):
        config = super().get_config()
        config["k_coef_lip"] = self.k_coef_lip
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        k_coef_lip = config.pop("k_coef_lip", 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = super().from_config(config, custom_objects=custom_objects)
        check_k_coef_lip(k_coef_lip)
        model.k_coef_lip = float(k_coef_lip)
        model._spread_lipschitz_constant()
        return model


@keras.saving.register_keras_serializable("deel_lip")
class Model(_ExportMixin, keras.Model):
    """`keras.Model` (functional or subclassed) with `condense()` and `vanilla_export()`.

    Use it exactly like `keras.Model(inputs, outputs)`. A functional model warns
    (`UserWarning`) for every per-unit layer (``per_unit_bound``, e.g.
    ``FrobeniusDense(disjoint_neurons=True)``) from which another layer with its own
    ``lipschitz_bound()`` is reachable.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if hasattr(self, "_run_through_graph"):  # functional
            for layer in self.layers:
                if _is_per_unit(layer):
                    followers = [nxt for nxt in _downstream_layers(layer) if _has_own_bound(nxt)]
                    if followers:
                        _warn_per_unit(layer, followers[0])
