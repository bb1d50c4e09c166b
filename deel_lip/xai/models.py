"""Xplique-ready views of Keras models: `logits_model`, `last_conv_layer`.

Xplique explains a score ``g(f, x, y) = sum_j f_j(x) y_j`` of a built, single-input
Keras model ``f`` for one-hot targets ``y``, in float32. Keras 3 models meet it with
these quirks, handled by `logits_model` (and the last one by `targets_from_labels` in
`deel_lip.xai.targets`):

* a final softmax makes every gradient method explain probabilities, whose gradients
  vanish on confident predictions: `logits_model` drops it (a `Softmax` layer, an
  ``Activation("softmax")``, a ``keras.ops.softmax`` node, or ``activation="softmax"``
  of the last layer - then the last layer is run without its activation, sharing its
  weights);
* an unbuilt ``Sequential`` has no input tensor: `logits_model` builds the view from
  ``input_shape`` (and raises a clear error when it is not given);
* under a non-float32 dtype policy (``float64``, ``mixed_float16``, ``mixed_bfloat16``)
  the model outputs float16/float64, which Xplique multiplies by float32 targets (a
  dtype error): the view casts the output to float32;
* integer labels are broadcast against the outputs by Xplique's operator, silently
  wrong when the batch size equals the number of classes: `targets_from_labels` turns
  them into one-hot rows and rejects any other encoding.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import keras
import numpy as np

__all__ = ["logits_model", "last_conv_layer"]

_SOFTMAX_NAMES = ("softmax", "softmax_v2", "log_softmax")

#: model -> {(input shape, output_layer): (layer ids, weak reference to the view)}: a view
#: is reused while it lives (Xplique's explainers keep the models they explain), and this
#: cache keeps neither the models nor the views alive.
_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# ------------------------------------------------------------------ logits view


@keras.saving.register_keras_serializable("deel_lip")
class _WithoutActivation(keras.layers.Layer):
    """Runs ``layer`` (sharing its weights) with its ``activation`` replaced by identity."""

    def __init__(self, layer, **kwargs):
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(**kwargs)
        self.layer = layer

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def call(self, inputs):
        activation = self.layer.activation
        self.layer.activation = keras.activations.linear
        try:
            return self.layer(inputs)
        finally:
            self.layer.activation = activation

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config["layer"] = keras.saving.serialize_keras_object(self.layer)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"))
        return cls(layer, **config)


def _is_softmax_function(function) -> bool:
    if function is None:
        return False
    name = getattr(function, "__name__", None)
    if name is None:
        try:
            name = keras.activations.serialize(function)
        except (TypeError, ValueError):
            return False
    return name in _SOFTMAX_NAMES


def _is_softmax_operation(operation) -> bool:
    """A softmax layer / activation layer / ``keras.ops.softmax`` node."""
    if isinstance(operation, keras.layers.Softmax):
        return True
    if isinstance(operation, keras.layers.Activation):
        return _is_softmax_function(operation.activation)
    if not isinstance(operation, keras.layers.Layer):
        return type(operation).__name__ in ("Softmax", "LogSoftmax")
    return False


def _drop_softmax(operation, inputs):
    """Output of ``operation`` on ``inputs`` without a final softmax, or None if none."""
    if _is_softmax_operation(operation):
        return inputs
    if isinstance(operation, keras.layers.Layer) and _is_softmax_function(
        getattr(operation, "activation", None)
    ):
        return _WithoutActivation(operation, name=f"{operation.name}_logits")(inputs)
    if isinstance(operation, keras.Model):
        return logits_model(operation, input_shape=tuple(inputs.shape[1:]))(inputs)
    return None


def _is_float32(tensor) -> bool:
    return keras.backend.standardize_dtype(tensor.dtype) == "float32"


def _float32(tensor):
    if _is_float32(tensor):
        return tensor
    return keras.layers.Activation("linear", dtype="float32")(tensor)


def _defined_input(model):
    """The model's single input tensor, or None when it has none yet."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    if len(inputs) != 1:
        raise ValueError(
            f"Xplique explains models with one input; model {model.name!r} has {len(inputs)}"
        )
    return inputs[0]


def _check_input_shape(input_shape):
    if input_shape is None:
        return None
    if isinstance(input_shape, (int, np.integer)):
        input_shape = (input_shape,)
    if not isinstance(input_shape, Sequence) or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in input_shape
    ):
        raise ValueError(
            "input_shape must be a tuple of positive ints (without the batch axis), "
            f"received: {input_shape!r}"
        )
    return tuple(int(d) for d in input_shape)


def _input_spec(model, input_shape):
    """(shape without batch, dtype) of the view's input; checks ``input_shape``."""
    tensor = None if _is_subclassed(model) else _defined_input(model)
    if tensor is None:
        if input_shape is None:
            raise ValueError(
                f"model {model.name!r} has no defined input (an unbuilt Sequential or a "
                "subclassed model): pass input_shape=(...) without the batch axis, e.g. "
                "input_shape=(28, 28, 1), or start the model with keras.Input(shape)"
            )
        return input_shape, "float32"
    shape = tuple(tensor.shape[1:])
    if input_shape is not None and input_shape != shape:
        raise ValueError(
            f"input_shape {input_shape} does not match the input shape {shape} of model "
            f"{model.name!r}"
        )
    return shape, tensor.dtype


def _is_subclassed(model) -> bool:
    return not isinstance(model, keras.Sequential) and not hasattr(model, "_run_through_graph")


def _find_layer(model, output_layer):
    layers = model.layers
    if isinstance(output_layer, keras.layers.Layer):
        if any(layer is output_layer for layer in layers):
            return output_layer
    elif isinstance(output_layer, str):
        for layer in layers:
            if layer.name == output_layer:
                return layer
    elif isinstance(output_layer, (int, np.integer)) and not isinstance(output_layer, bool):
        if -len(layers) <= output_layer < len(layers):
            return layers[output_layer]
    names = [layer.name for layer in layers]
    raise ValueError(
        f"output_layer must be the name, index or instance of a top-level layer of model "
        f"{model.name!r} (layers: {names}), received: {output_layer!r}"
    )


def _sequential_output(model, inputs, output_layer):
    layers = list(model.layers)
    target = None if output_layer is None else _find_layer(model, output_layer)
    x = inputs
    for index, layer in enumerate(layers):
        last = index == len(layers) - 1
        if target is None and last:
            dropped = _drop_softmax(layer, x)
            return dropped if dropped is not None else layer(x)
        x = layer(x)
        if layer is target:
            return x
    return x


def _functional_output(model, output_layer):
    if output_layer is not None:
        return _find_layer(model, output_layer).output
    if len(model.outputs) != 1:
        raise ValueError(
            f"model {model.name!r} has {len(model.outputs)} outputs: pass output_layer= "
            "to choose the one to explain"
        )
    output = model.outputs[0]
    operation, node_index, _ = output._keras_history
    node = operation._inbound_nodes[node_index]
    if len(node.input_tensors) == 1:
        dropped = _drop_softmax(operation, node.input_tensors[0])
        if dropped is not None:
            return dropped
    return output


def _build_view(model, shape, dtype, output_layer) -> keras.Model:
    if isinstance(model, keras.Sequential) or _is_subclassed(model):
        inputs = keras.Input(shape=shape, dtype=dtype)
        if isinstance(model, keras.Sequential):
            output = _sequential_output(model, inputs, output_layer)
        elif output_layer is not None:
            raise ValueError(
                "output_layer needs a Sequential or functional model, received the "
                f"subclassed model {model.name!r}"
            )
        else:
            output = model(inputs)
    else:
        inputs = model.inputs[0]
        output = _functional_output(model, output_layer)
        if output is model.outputs[0] and _is_float32(output):
            return model
    return keras.Model(inputs, _float32(output), name=f"{model.name}_xai")


def logits_model(model: keras.Model, input_shape=None, output_layer=None) -> keras.Model:
    """Float32, single-output functional view of ``model`` that Xplique explains as is.

    The view shares every layer (and weight) with ``model``: it follows training, costs
    no copy, and gradients through it are the model's gradients. It computes
    ``model``'s output with three changes: a final softmax (or log-softmax) is dropped
    (so attributions explain logits), the output is cast to float32 (non-float32 dtype
    policies), and with ``output_layer`` the output is that layer's output instead (the
    argument Xplique's white-box methods accept but silently ignore). A functional model
    that needs none of these changes is returned unchanged. A view is reused while it
    lives, so repeated calls do not rebuild (nor make Xplique re-trace) anything.

    Handles: `deel_lip.Sequential` / ``keras.Sequential`` (built or not: an unbuilt one
    is viewed from ``input_shape`` without building the model itself), functional models,
    models exported by `deel_lip.vanilla_export`, nested models whose last layer is a
    model (its softmax is dropped too), and subclassed models given ``input_shape`` (a
    softmax inside a subclassed ``call`` cannot be seen and is kept).

    Args:
        model: a `keras.Model` with one input.
        input_shape: input shape without the batch axis, e.g. ``(28, 28, 1)``; needed
            when ``model`` has no defined input (unbuilt Sequential, subclassed model),
            checked against the model's input otherwise.
        output_layer: name, index or instance of a top-level layer of ``model`` whose
            output to explain instead of the logits (kept as is, softmax included).

    Returns:
        A functional `keras.Model` with one float32 output.

    Raises:
        TypeError: if ``model`` is not a `keras.Model`.
        ValueError: if ``model`` has no defined input and ``input_shape`` is not given,
            ``input_shape`` is invalid or does not match, ``model`` has several inputs (or
            several outputs and no ``output_layer``), or ``output_layer`` is not one of
            its top-level layers.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, received: {type(model).__name__}")
    input_shape = _check_input_shape(input_shape)
    layer_key = output_layer
    if isinstance(output_layer, keras.layers.Layer):
        layer_key = ("layer", id(output_layer))
    elif not isinstance(output_layer, (str, int, np.integer, type(None))):
        raise ValueError(
            f"output_layer must be a layer name, index or instance, received: {output_layer!r}"
        )
    shape, dtype = _input_spec(model, input_shape)
    key = (shape, layer_key)
    signature = tuple(id(layer) for layer in model.layers)
    cached = _VIEWS.get(model, {}).get(key)
    if cached is not None and cached[0] == signature and cached[1]() is not None:
        return cached[1]()
    view = _build_view(model, shape, dtype, output_layer)
    if view is not model:
        _VIEWS.setdefault(model, {})[key] = (signature, weakref.ref(view))
    return view


def last_conv_layer(model: keras.Model):
    """The last layer of ``model`` (searching nested models) with a 4-D output and filters.

    This is the layer Grad-CAM weighs: a 2-D convolution (``Conv2D``, `SpectralConv2D`,
    ``Conv2DTranspose``...) whose output is ``(batch, height, width, channels)``. Xplique
    picks the last top-level layer with a ``filters`` attribute instead, which can be a
    1-D convolution and never looks inside nested models.

    Returns:
        The layer, or None when the model has none.
    """
    for layer in reversed(model.layers):
        if isinstance(layer, keras.Model):
            found = last_conv_layer(layer)
            if found is not None:
                return found
            continue
        if not hasattr(layer, "filters"):
            continue
        try:
            rank = len(layer.output.shape)
        except (AttributeError, ValueError):
            continue
        if rank == 4:
            return layer
    return None
