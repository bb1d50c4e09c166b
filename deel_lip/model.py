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

__all__ = ["Sequential", "Model", "vanilla_export", "condense"]

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
)
#: deel_lip layers without a Lipschitz constant argument that are 1-Lipschitz.
_ONE_LIPSCHITZ_DEEL_LIP_LAYERS = (
    InvertibleDownSampling,
    InvertibleUpSampling,
    LipResidual,
    BatchCentering,
    LayerCentering,
)
_ONE_LIPSCHITZ_ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "softsign", "relu6")


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
    return layer.__class__.from_config(layer.get_config())


def vanilla_export(model: keras.Model) -> keras.Model:
    """Plain Keras copy of ``model`` with every constraint folded into its kernel.

    Each constrained layer exports the cached constrained kernel that inference uses, so
    the export equals ``model(x)`` (``training=False``) exactly, and ``model`` is not
    changed. After `fit` the cache holds the kernels of the last training step; call
    `condense(model)` first to project and refresh them from the current weights. The
    export shares no variable with the original and is not compiled.

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


class _ExportMixin:
    """`condense()` and `vanilla_export()` methods for the model wrappers."""

    def condense(self) -> None:
        """Refresh every constrained layer's inference state (see `condense`)."""
        condense(self)

    def vanilla_export(self) -> keras.Model:
        """Plain Keras export of this model (see `vanilla_export`)."""
        return vanilla_export(self)


@keras.saving.register_keras_serializable("deel_lip")
class Sequential(_ExportMixin, keras.Sequential):
    """`keras.Sequential` that spreads a Lipschitz constant over its layers.

    Each of the ``n`` Lipschitz layers gets the factor ``k_coef_lip ** (1 / n)``, so the
    composition is ``k_coef_lip``-Lipschitz. A `UserWarning` names every layer that is not
    known to be Lipschitz (it breaks the guarantee unless you know better).

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

    Use it exactly like `keras.Model(inputs, outputs)`.
    """
