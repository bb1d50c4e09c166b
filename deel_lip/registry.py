"""Which layers are Lipschitz, and with which constant: `layer_lipschitz_bound`.

A layer states its own constant with a ``lipschitz_bound()`` method (every deel_lip layer;
any third-party layer can implement it: the contract of `deel_lip.layers.base`). Plain
Keras layers cannot carry the method: their constants are in a registry, extended with
`register_lipschitz`. Both are re-exported by `deel_lip.model`, whose wrappers decide
through them.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from deel_lip.normalizers import check_k_coef_lip

__all__ = ["register_lipschitz", "layer_lipschitz_bound"]

#: A layer's bound: a constant, or ``fn(layer) -> float | None`` (None: not Lipschitz).
Bound = float | Callable[[keras.layers.Layer], "float | None"]


def _relu_bound(layer) -> float | None:
    """`keras.layers.ReLU`: ``max(1, |negative_slope|)``, capped or not; a threshold
    other than 0 makes it discontinuous (not Lipschitz)."""
    if float(layer.threshold) != 0.0:
        return None
    return max(1.0, abs(float(layer.negative_slope)))


#: Plain Keras layer classes that cannot carry ``lipschitz_bound()``, with their bound.
#: Matched on the class or its closest registered base class; `register_lipschitz` adds to it.
_KERAS_LAYER_BOUNDS: dict[type, Bound] = {
    keras.layers.InputLayer: 1.0,
    keras.layers.Flatten: 1.0,
    keras.layers.Reshape: 1.0,
    keras.layers.Permute: 1.0,
    keras.layers.ReLU: _relu_bound,
    keras.layers.Cropping1D: 1.0,
    keras.layers.Cropping2D: 1.0,
    keras.layers.ZeroPadding1D: 1.0,
    keras.layers.ZeroPadding2D: 1.0,
    keras.layers.Identity: 1.0,
    keras.layers.Softmax: 1.0,  # in L2: its Jacobian diag(p) - p p^T has norm <= 1
}
#: Activations (by their serialised name) of `keras.layers.Activation` layers, with their
#: bound (the supremum of ``|a'|``).
_ACTIVATION_BOUNDS: dict[str, float] = {
    "linear": 1.0,
    "relu": 1.0,
    "tanh": 1.0,
    "sigmoid": 0.25,
    "softsign": 1.0,
    "relu6": 1.0,
    "softmax": 1.0,
}


def register_lipschitz(layer_type: type | str, bound: Bound) -> None:
    """Declare the Lipschitz constant of a layer class that cannot carry ``lipschitz_bound()``.

    deel_lip layers (and any layer with a ``lipschitz_bound()`` method) need no
    registration. The registry is for plain Keras or third-party layers: `Sequential` and
    `Model` then accept them without a warning, and `layer_lipschitz_bound` returns
    ``bound``. Subclasses of a registered class inherit its entry (the closest registered
    base class wins).

    Args:
        layer_type: a `keras.layers.Layer` subclass, or the name of an activation for
            `keras.layers.Activation` layers (e.g. ``"elu"``).
        bound: the constant ``L`` (finite, > 0) with ``||f(x) - f(y)|| <= L ||x - y||`` in L2,
            or a function ``layer -> float | None`` deciding from the layer's settings
            (None: this instance is not Lipschitz).

    Raises:
        TypeError: if ``layer_type`` is neither a layer class nor a string, or ``bound`` is
            neither a number nor a callable.
        ValueError: if a constant ``bound`` is not finite and > 0.
    """
    if not callable(bound):
        check_k_coef_lip(bound, "bound")
        bound = float(bound)
    if isinstance(layer_type, str):
        if callable(bound):
            raise TypeError(f"bound must be a number for an activation name, received: {bound!r}")
        _ACTIVATION_BOUNDS[layer_type] = bound
    elif isinstance(layer_type, type) and issubclass(layer_type, keras.layers.Layer):
        _KERAS_LAYER_BOUNDS[layer_type] = bound
    else:
        raise TypeError(
            "layer_type must be a keras.layers.Layer subclass or an activation name, "
            f"received: {layer_type!r}"
        )


def layer_lipschitz_bound(layer) -> float | None:
    """The Lipschitz constant a layer guarantees, or None when none is known.

    In order: the layer's own ``lipschitz_bound()`` (every deel_lip layer, any layer
    implementing the method); the registry of `register_lipschitz` (plain Keras layers such
    as ``Flatten`` or ``ReLU``, by class); for a `keras.layers.Activation`, its activation's
    registered bound. Models are not layers here: None.
    """
    if isinstance(layer, keras.Model):
        return None
    method = getattr(layer, "lipschitz_bound", None)
    if callable(method):
        return float(method())
    for cls in type(layer).__mro__:
        if cls in _KERAS_LAYER_BOUNDS:
            bound = _KERAS_LAYER_BOUNDS[cls]
            value = bound(layer) if callable(bound) else bound
            return None if value is None else float(value)
    if isinstance(layer, keras.layers.Activation):
        name = keras.activations.serialize(layer.activation)
        if isinstance(name, str) and name in _ACTIVATION_BOUNDS:
            return _ACTIVATION_BOUNDS[name]
    return None
