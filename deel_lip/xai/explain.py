"""`explainer`: an Xplique attribution method ready for any deel_lip / Keras model.

``explainer("Saliency", model)`` returns an instance of Xplique's ``Saliency`` (a
subclass of it, so Xplique's metrics accept it) built on `logits_model(model)`; the
Xplique quirks it handles are listed in its docstring.
"""

from __future__ import annotations

import functools
import types
import weakref

import keras
import numpy as np
import tensorflow as tf  # Xplique is TensorFlow-only; tf.function for its traced methods

from deel_lip.xai._xplique import ATTRIBUTION_METHODS, attribution_class, require_xplique
from deel_lip.xai.models import last_conv_layer, logits_model
from deel_lip.xai.targets import targets_from_labels

__all__ = ["explainer", "IMAGE_METHODS", "CONV_METHODS"]

#: Methods that only explain images ``(N, H, W, C)``.
IMAGE_METHODS = (
    "GradCAM",
    "GradCAMPP",
    "FEM",
    "SobolAttributionMethod",
    "HsicAttributionMethod",
)
#: Methods that need a 2-D convolution layer (the last one of the model by default).
CONV_METHODS = ("GradCAM", "GradCAMPP", "FEM")


def _boundary_class(method):
    """`BIG` / `BSM` for their names (any case) or classes, else None."""
    from deel_lip.xai.boundary import BIG, BOUNDARY_METHODS, BSM, BoundaryAttributions

    if isinstance(method, str) and method.upper() in BOUNDARY_METHODS:
        return BIG if method.upper() == "BIG" else BSM
    if isinstance(method, type) and issubclass(method, BoundaryAttributions):
        return method
    return None


def _base_name(cls: type) -> str:
    """Name of the most specific Xplique attribution class ``cls`` derives from."""
    attributions = require_xplique().attributions
    for klass in cls.__mro__:
        name = klass.__name__
        if name in ATTRIBUTION_METHODS and klass is getattr(attributions, name, None):
            return name
    raise TypeError(f"{cls.__name__} is not an Xplique attribution method")


class _XpliqueReady:
    """Mixin for Xplique explainers: label conversion and model-replacement hooks."""

    def _xai_setup(self, num_classes) -> None:
        self._xai_num_classes = num_classes
        self._xai_initialised = True

    @property
    def model(self):
        return self.__dict__.get("_xai_model")

    @model.setter
    def model(self, value):
        if self.__dict__.get("_xai_initialised", False):
            value = self._adopt_model(value)
        self.__dict__["_xai_model"] = value

    def _adopt_model(self, model):
        """Called when ``model`` replaces the explained model after construction."""
        return model

    def __call__(self, inputs, labels=None):
        """Alias of `explain`."""
        return self.explain(inputs, labels)

    def explain(self, inputs, targets=None, *args, **kwargs):
        """Explain ``inputs`` for ``targets``: class indices ``(N,)`` or one-hot rows."""
        return super().explain(inputs, self._xai_targets(inputs, targets), *args, **kwargs)

    def _xai_targets(self, inputs, targets):
        if targets is None:
            if isinstance(inputs, tf.data.Dataset):
                return None
            raise ValueError(
                "targets must be given: class indices of shape (N,) or one-hot rows of "
                "shape (N, num_classes)"
            )
        if self._xai_num_classes is None:
            return targets
        return targets_from_labels(targets, self._xai_num_classes)


class _GradCAMHooks(_XpliqueReady):
    def _adopt_model(self, model):
        name = self.conv_layer.name
        layer = _find_layer_by_name(model, name)
        if layer is None:
            raise ValueError(f"The new model has no layer named {name!r} for Grad-CAM")
        self.conv_layer = layer
        gradient = type(self)._gradient.python_function
        self._gradient = tf.function(types.MethodType(gradient, self))
        return model


class _ReluOverrideHooks(_XpliqueReady):
    def _xai_setup(self, num_classes) -> None:
        commons = require_xplique().commons
        policies = {
            "GuidedBackprop": commons.guided_relu_policy,
            "DeconvNet": commons.deconv_relu_policy,
        }
        self._xai_policy = policies[_base_name(type(self))]
        self._xai_overridden = weakref.WeakSet([self.model])
        super()._xai_setup(num_classes)

    def _adopt_model(self, model):
        if model in self._xai_overridden:
            return model
        model = require_xplique().commons.override_relu_gradient(model, self._xai_policy)
        self._xai_overridden.add(model)
        return model


@functools.cache
def _ready_class(cls: type) -> type:
    base = _base_name(cls)
    mixin = _XpliqueReady
    if base in ("GradCAM", "GradCAMPP"):
        mixin = _GradCAMHooks
    elif base in ("GuidedBackprop", "DeconvNet"):
        mixin = _ReluOverrideHooks
    namespace = {"__module__": cls.__module__, "__doc__": cls.__doc__}
    return type(cls.__name__, (mixin, cls), namespace)


def _walk(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _walk(layer)


def _find_layer_by_name(model, name):
    for layer in _walk(model):
        if layer.name == name:
            return layer
    return None


def _conv_layer(view, model, conv_layer, method_name):
    if conv_layer is None:
        layer = last_conv_layer(view)
        if layer is None:
            raise ValueError(
                f"{method_name} needs a 2-D convolution layer (4-D output) and model "
                f"{model.name!r} has none: use a gradient or perturbation method instead "
                "(Saliency, IntegratedGradients, Occlusion, ...)"
            )
        return layer
    if isinstance(conv_layer, keras.layers.Layer):
        layer = _find_layer_by_name(view, conv_layer.name)
        layer = layer if layer is conv_layer else None
    elif isinstance(conv_layer, str):
        layer = _find_layer_by_name(view, conv_layer)
    else:
        raise ValueError(f"conv_layer must be a layer name or instance, received {conv_layer!r}")
    if layer is None or len(layer.output.shape) != 4:
        raise ValueError(
            f"conv_layer must be a layer of model {model.name!r} with a 4-D output "
            f"(batch, height, width, channels), received: {conv_layer!r}"
        )
    return layer


def _connected_output(view, layer):
    """The output of ``layer`` in the graph of ``view`` (``layer.output`` is the one of its
    first call, which a view built on a new input does not contain)."""
    for node in getattr(layer, "_inbound_nodes", []):
        for tensor in getattr(node, "output_tensors", None) or getattr(node, "outputs", []):
            try:
                return keras.Model(view.inputs, tensor)
            except ValueError:
                continue
    raise ValueError(f"layer {layer.name!r} is not reached from the inputs of the model")


def _fem(ready: type, view, conv, kwargs: dict):
    """Xplique's FEM on ``conv`` as called in ``view``.

    FEM builds its feature model from ``conv_layer.output`` at construction, which fails
    on a view; the instance gets the same attributes with the connected feature model.
    """
    unknown = sorted(set(kwargs) - {"batch_size", "k", "conv_layer"})
    if unknown:
        raise TypeError(f"FEM accepts batch_size, k and conv_layer, received: {unknown}")
    instance = ready.__new__(ready)
    instance.batch_size = kwargs.get("batch_size", 32)
    instance.k = tf.cast(kwargs.get("k", 2.0), tf.float32)
    instance.conv_layer = conv
    instance.model = _connected_output(view, conv)
    return instance


def _check_method_arguments(base: str, input_shape: tuple, model, kwargs: dict) -> None:
    if base in IMAGE_METHODS and len(input_shape) != 3:
        raise ValueError(
            f"{base} explains images of shape (N, height, width, channels), and model "
            f"{model.name!r} takes inputs of shape (N, {', '.join(map(str, input_shape))}): "
            "for other inputs use Saliency, GradientInput, IntegratedGradients, SmoothGrad, "
            "Occlusion, Rise, Lime or KernelShap"
        )
    if base == "SobolAttributionMethod":
        nb_design = kwargs.get("nb_design", 32)
        if not isinstance(nb_design, (int, np.integer)) or nb_design < 1:
            raise ValueError(f"nb_design must be a power of two, received: {nb_design!r}")
        if nb_design & (nb_design - 1):
            raise ValueError(f"nb_design must be a power of two, received: {nb_design!r}")
    if base in ("Lime", "KernelShap") and len(input_shape) == 3 and input_shape[-1] not in (1, 3):
        missing = [k for k in ("map_to_interpret_space", "ref_value") if kwargs.get(k) is None]
        if missing:
            raise ValueError(
                f"{base} has defaults for images with 1 or 3 channels only; inputs have "
                f"{input_shape[-1]} channels: pass {' and '.join(missing)}"
            )


def explainer(method, model: keras.Model, *, input_shape=None, output_layer=None, **kwargs):
    """An Xplique attribution method explaining the logits of ``model``.

    ``explainer(method, model, **kwargs)`` is ``Method(logits_model(model), **kwargs)``
    with these Xplique quirks handled:

    * **labels**: ``e.explain(inputs, labels)`` (and ``e(inputs, labels)``) accepts
      class indices as well as one-hot rows (`targets_from_labels`); Xplique itself
      broadcasts integer labels against the outputs, silently wrong when the batch size
      equals the number of classes;
    * **output_layer**: Xplique's white-box methods accept ``output_layer`` but compute the
      gradients of the full model anyway; here the explained model is truncated at that
      layer, for every method (black-box ones included);
    * **Grad-CAM / Grad-CAM++**: the default layer is the last 2-D convolution of the model,
      nested models included (Xplique takes the last top-level layer with ``filters``,
      possibly a 1-D convolution, and fails on nested models); image inputs are checked;
      replacing ``explainer.model`` (``ModelRandomizationMetric`` does it) re-targets the
      layer of the same name in the new model and re-traces the gradient, where Xplique
      keeps the traced function of the first model and silently explains it again;
    * **GuidedBackprop / DeconvNet**: a model assigned to ``explainer.model`` gets the
      ReLU-gradient override too (Xplique applies it only at construction, so a randomised
      copy would be explained with plain gradients). On networks without ReLU (GroupSort,
      MaxMin: most 1-Lipschitz networks) both methods equal the plain gradient;
    * **FEM** (gradient-free, class-agnostic) takes the last 2-D convolution by default,
      like Grad-CAM;
    * **BIG / BSM** (`deel_lip.xai.boundary`, not Xplique's) are built on the logits
      view as well, with their own arguments (``boundary``, ``steps``, ``clip_min``...);
    * **image-only methods** (Grad-CAM, Grad-CAM++, FEM, Sobol, HSIC) raise a clear error on
      non-image inputs instead of failing deep inside TensorFlow; Sobol's ``nb_design`` and
      LIME / KernelSHAP's defaults for images with other than 1 or 3 channels are checked.

    Use the result as any Xplique explainer: ``explanations = e(inputs, labels)``, or
    pass it to Xplique's metrics. With a custom ``operator=`` the targets are passed to
    it unchanged, and so are the labels carried by a ``tf.data.Dataset`` of inputs
    (they must be one-hot there).

    Args:
        method: name of an Xplique attribution method (`ATTRIBUTION_METHODS`, any case)
            or the class itself; ``"BIG"`` / ``"BSM"`` (or `BIG` / `BSM`) for the boundary
            attributions of `deel_lip.xai.boundary`.
        model: the model to explain (see `logits_model`: a final softmax is dropped).
        input_shape: input shape without the batch axis, for models without a defined
            input (unbuilt Sequential, subclassed model).
        output_layer: explain the output of this top-level layer (name, index or
            instance) instead of the logits.
        **kwargs: the method's own arguments (``batch_size``, ``nb_samples``,
            ``steps``, ``conv_layer`` for Grad-CAM: a layer name or instance...).

    Returns:
        An instance of (a subclass of) the Xplique method.

    Raises:
        ValueError: for an unknown method name, a model without a defined input and no
            ``input_shape``, an image-only method (`IMAGE_METHODS`) on non-image inputs,
            Grad-CAM on a model without 2-D convolution, or invalid method arguments
            checked here (Sobol's ``nb_design``, LIME's image defaults).
        TypeError: if ``method`` is neither a name nor an Xplique attribution class.
    """
    boundary_cls = _boundary_class(method)
    if boundary_cls is not None:
        view = logits_model(model, input_shape=input_shape, output_layer=output_layer)
        return boundary_cls(view, **kwargs)
    cls = attribution_class(method)
    base = _base_name(cls)
    view = logits_model(model, input_shape=input_shape, output_layer=output_layer)
    input_shape = tuple(view.inputs[0].shape[1:])
    _check_method_arguments(base, input_shape, model, kwargs)
    conv = None
    if base in CONV_METHODS:
        conv = _conv_layer(view, model, kwargs.pop("conv_layer", None), base)
        # Grad-CAM: any top-level layer, replaced by the real one below.
        if base == "FEM":
            instance = _fem(_ready_class(cls), view, conv, kwargs)
            instance._xai_setup(None)
            return instance
        kwargs["conv_layer"] = 0
    output_shape = view.outputs[0].shape
    num_classes = None
    if kwargs.get("operator") is None and len(output_shape) == 2:
        num_classes = int(output_shape[-1])
    instance = _ready_class(cls)(view, **kwargs)
    if conv is not None:
        instance.conv_layer = conv
    instance._xai_setup(num_classes)
    return instance
