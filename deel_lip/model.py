"""Model wrappers: `Sequential`, `Model`, and `vanilla_export` for any Keras model.

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

from deel_lip.layers.base import LipschitzLayer
from deel_lip.layers.resampling import InvertibleDownSampling, InvertibleUpSampling
from deel_lip.layers.residual import BatchCentering, LayerCentering, LipResidual
from deel_lip.normalizers import check_k_coef_lip

__all__ = ["Sequential", "Model", "vanilla_export", "vanillaModel", "condense"]

#: Plain Keras layers that are 1-Lipschitz (no warning in `Sequential`).
_ONE_LIPSCHITZ_KERAS_LAYERS = (
    keras.layers.InputLayer,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.ReLU,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.Identity,
    keras.layers.Softmax,  # 1-Lipschitz in L2 (its Jacobian diag(p) - p p^T has norm <= 1)
)
#: deel_lip layers without a Lipschitz constant argument that are 1-Lipschitz.
_ONE_LIPSCHITZ_DEEL_LIP_LAYERS = (
    InvertibleDownSampling,
    InvertibleUpSampling,
    LipResidual,
    BatchCentering,
    LayerCentering,
)
_ONE_LIPSCHITZ_ACTIVATIONS = (
    "linear",
    "relu",
    "tanh",
    "sigmoid",
    "softsign",
    "relu6",
    "softmax",
)


def _is_known_lipschitz(layer) -> bool:
    known = (LipschitzLayer, *_ONE_LIPSCHITZ_KERAS_LAYERS, *_ONE_LIPSCHITZ_DEEL_LIP_LAYERS)
    if isinstance(layer, known):
        return True
    if isinstance(layer, keras.layers.Activation):
        name = keras.activations.serialize(layer.activation)
        return name in _ONE_LIPSCHITZ_ACTIVATIONS
    return False


def _lipschitz_layers(layers: Iterable) -> list:
    return [layer for layer in layers if isinstance(layer, LipschitzLayer)]


def _sublayers(model) -> list:
    """Every layer of a model, recursing into nested models."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(_sublayers(layer))
        found.append(layer)
    return found


def _is_per_unit(layer) -> bool:
    """Layers whose bound holds per output unit only (``FrobeniusDense`` with
    ``disjoint_neurons=True`` and more than one unit): the layer as a whole is up to
    ``k * sqrt(units)``-Lipschitz."""
    return bool(getattr(layer, "disjoint_neurons", False)) and getattr(layer, "units", 1) > 1


def _warn_per_unit(layer, follower) -> None:
    warnings.warn(
        f"Layer {layer.name!r} ({type(layer).__name__}, disjoint_neurons=True, "
        f"units={layer.units}) bounds each output unit separately, but the Lipschitz layer "
        f"{follower.name!r} follows it: the model is then only guaranteed "
        f"sqrt({layer.units}) times its constant. Use disjoint_neurons=False, or keep "
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
    """Call `condense()` on every layer of ``model`` that has it (nested models too)."""
    for layer in _sublayers(model):
        if hasattr(layer, "condense") and not isinstance(layer, keras.Model):
            layer.condense()


def _export_layer(layer):
    if isinstance(layer, keras.Model):
        return vanilla_export(layer)
    if hasattr(layer, "vanilla_export"):
        return layer.vanilla_export()
    config = layer.get_config()
    if isinstance(layer, LipschitzLayer) and "k_coef_lip" in config:
        # a wrapper's factor (set_klip_factor) is not in the config: fold it into k_coef_lip
        # so that the copy, and the copy saved and loaded, compute the same map
        config["k_coef_lip"] = layer._get_coef()
    copy = layer.__class__.from_config(config)
    if isinstance(layer, LipschitzLayer) and "k_coef_lip" not in config:
        copy.set_klip_factor(layer._klip_factor)
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
        if isinstance(layer, keras.Model) or hasattr(layer, "vanilla_export"):
            continue
        if layer.weights:
            exported.get_layer(layer.name).set_weights(layer.get_weights())
    return exported


def _auto_jit_compile(model) -> bool | str:
    """deel_lip's resolution of ``jit_compile="auto"``: XLA wherever it can run.

    Keras resolves "auto" to no XLA on CPU-only machines. deel_lip models train faster
    with XLA on CPU as well (the normalisation loops compile with the step: 1.25 against
    1.69 s per epoch on the small reference CNN, docs/benchmarks.md), so "auto" means XLA
    on the TensorFlow backend whenever Keras's other conditions hold: every layer supports
    it, no ``tf.distribute`` strategy, no op determinism. Other backends keep "auto".
    """
    if keras.backend.backend() != "tensorflow":
        return "auto"
    import tensorflow as tf
    from tensorflow.python.framework.config import is_op_determinism_enabled

    if getattr(model, "_distribute_strategy", None) is not None or tf.distribute.has_strategy():
        return False
    if is_op_determinism_enabled():  # not every op has a deterministic XLA kernel
        return False
    return all(layer.supports_jit for layer in model._flatten_layers())


#: Position of ``run_eagerly`` and ``jit_compile`` in `keras.Model.compile`'s arguments.
_RUN_EAGERLY_POSITION, _JIT_COMPILE_POSITION = 5, 7


class _ExportMixin:
    """`condense()` and `vanilla_export()` methods for the model wrappers, and `compile`
    resolving ``jit_compile="auto"`` (Keras's default) to XLA when every layer supports it.
    """

    def compile(self, *args, **kwargs):
        """`keras.Model.compile`, except that ``jit_compile="auto"`` (the default) means XLA.

        On the TensorFlow backend "auto" resolves to ``True`` when every layer supports
        XLA, outside ``tf.distribute`` strategies and op determinism, on CPU too (Keras
        itself disables XLA on CPU-only machines; deel_lip models train about 1.35x faster
        with it, docs/benchmarks.md). An explicit ``jit_compile=True`` or ``False`` is
        honoured, and ``run_eagerly=True`` still disables XLA.
        """
        if len(args) <= _JIT_COMPILE_POSITION and kwargs.get("jit_compile", "auto") == "auto":
            run_eagerly = (
                args[_RUN_EAGERLY_POSITION]
                if len(args) > _RUN_EAGERLY_POSITION
                else kwargs.get("run_eagerly", False)
            )
            if not run_eagerly:
                kwargs["jit_compile"] = _auto_jit_compile(self)
        return super().compile(*args, **kwargs)

    def compile_from_config(self, config):
        """Compile a loaded model as saved (Keras skips models that override `compile`)."""
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

    Each of the ``n`` Lipschitz layers gets the factor ``k_coef_lip ** (1 / n)``, so the
    composition is ``k_coef_lip``-Lipschitz. A `UserWarning` names every layer that is not
    known to be Lipschitz (it breaks the guarantee unless you know better), and every
    per-unit layer (``FrobeniusDense(disjoint_neurons=True)``) followed by another layer
    with a Lipschitz constant: a per-unit bound only covers the model as its last such
    layer. The factors are spread again whenever the layer list changes (`add`, `pop`).

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
                "Lipschitz: the model's Lipschitz guarantee does not cover it.",
                stacklevel=2,
            )
        if isinstance(added, LipschitzLayer):
            for earlier in self._layers[:-1]:
                if _is_per_unit(earlier):
                    _warn_per_unit(earlier, added)
        self._spread_lipschitz_constant()

    def pop(self, rebuild=True):
        """Remove the last layer and spread ``k_coef_lip`` over the remaining ones.

        The removed layer gets back its own constant (factor 1).
        """
        layer = super().pop(rebuild=rebuild)
        if isinstance(layer, LipschitzLayer):
            layer.set_klip_factor(1.0)
        self._spread_lipschitz_constant()
        return layer

    def set_klip_factor(self, klip_factor: float) -> None:
        """Set the model's constant to ``klip_factor`` and spread it (deel-lip's method)."""
        check_k_coef_lip(klip_factor)
        self.k_coef_lip = float(klip_factor)
        self._spread_lipschitz_constant()

    def _spread_lipschitz_constant(self) -> None:
        lip_layers = _lipschitz_layers(self._layers)
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
    (`UserWarning`) for every per-unit layer (``FrobeniusDense(disjoint_neurons=True)``)
    from which another layer with a Lipschitz constant is reachable.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if hasattr(self, "_run_through_graph"):  # functional
            for layer in self.layers:
                if _is_per_unit(layer):
                    followers = [
                        nxt for nxt in _downstream_layers(layer) if isinstance(nxt, LipschitzLayer)
                    ]
                    if followers:
                        _warn_per_unit(layer, followers[0])
