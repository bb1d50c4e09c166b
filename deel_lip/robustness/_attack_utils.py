"""Shared machinery of the L2 attacks: argument checks, per-sample tensor helpers, the
attack losses, and the compiled margin / gradient functions (cached per model).

A private module (its names are internal API, shared with `deel_lip.xai.counterfactuals`);
the public attacks are in `attacks`. Argument checks are in `deel_lip._checks`.
"""

from __future__ import annotations

import numbers
import weakref

import keras
import numpy as np
from keras import ops

from deel_lip import _backend
from deel_lip._certify import class_targets, is_binary, predict_logits, signed_margin

__all__ = [
    "LOSSES",
    "TINY",
    "check_batch_in_range",
    "check_inputs",
    "check_loss",
    "per_sample_eps",
    "sample_norms",
    "per_sample",
    "clip_batch",
    "compiled_functions",
    "checked_targets",
    "progress_bar",
]

#: Per-sample losses the attacks can ascend.
LOSSES = ("margin", "crossentropy")
TINY = 1e-12


# ------------------------------------------------------------------ argument checks


def check_batch_in_range(x, clip_min, clip_max) -> np.ndarray:
    """``x`` as a float32 batch ``(n, ...)``, checked to lie in ``[clip_min, clip_max]``."""
    x = np.asarray(ops.convert_to_numpy(x), dtype="float32")
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty batch (n, ...), received shape {x.shape}")
    for name, bound in (("clip_min", clip_min), ("clip_max", clip_max)):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, numbers.Real)):
            raise TypeError(f"{name} must be a number or None, received: {bound!r}")
    if clip_min is not None and clip_max is not None and clip_min >= clip_max:
        raise ValueError(f"clip_min must be < clip_max, received: {clip_min!r}, {clip_max!r}")
    if (clip_min is not None and x.min() < clip_min) or (
        clip_max is not None and x.max() > clip_max
    ):
        raise ValueError(
            f"x must lie in [clip_min, clip_max] = [{clip_min}, {clip_max}], received values "
            f"in [{x.min()}, {x.max()}]"
        )
    return x


def check_inputs(x, y, clip_min, clip_max) -> np.ndarray:
    """`check_batch_in_range`, and one label of ``y`` per input."""
    x = check_batch_in_range(x, clip_min, clip_max)
    if y is None or len(y) != len(x):
        received = None if y is None else len(y)
        raise ValueError(f"y must have one label per input ({len(x)}), received: {received}")
    return x


def check_loss(loss) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, received: {loss!r}")
    return loss


def per_sample_eps(eps, n: int) -> np.ndarray:
    eps = np.asarray(eps, dtype="float32")
    if eps.ndim == 0:
        eps = np.full((n,), eps, dtype="float32")
    if eps.shape != (n,) or not np.all(np.isfinite(eps)) or np.any(eps < 0):
        raise ValueError(
            f"eps must be a finite radius >= 0 or an array of {n} such radii, "
            f"received shape {eps.shape} with values {eps[:4]}..."
        )
    return eps


# ------------------------------------------------------------------ tensor helpers


def sample_norms(t):
    """Per-sample L2 norm ``(n,)`` of a batch."""
    flat = ops.reshape(t, (ops.shape(t)[0], -1))
    return ops.sqrt(ops.sum(flat * flat, axis=1))


def per_sample(v, like):
    """Reshape ``(n,)`` to ``(n, 1, ..., 1)`` to broadcast against ``like``."""
    return ops.reshape(v, (-1,) + (1,) * (len(like.shape) - 1))


def clip_batch(x, clip_min, clip_max):
    if clip_min is None and clip_max is None:
        return x
    low = -np.inf if clip_min is None else clip_min
    high = np.inf if clip_max is None else clip_max
    return ops.clip(x, low, high)


def _objective(loss: str):
    """Per-sample loss ``objective(logits, targets)`` that the attack ascends."""

    def objective(logits, targets):
        logits = ops.cast(logits, "float32")
        if loss == "margin":
            return -signed_margin(logits, targets)
        if is_binary(tuple(logits.shape)):
            return ops.softplus(-signed_margin(logits, targets))
        mask = ops.one_hot(ops.cast(targets, "int32"), logits.shape[-1], dtype=logits.dtype)
        return ops.logsumexp(logits, axis=-1) - ops.sum(logits * mask, axis=-1)

    return objective


class _Compiled:
    """The two computations an attack repeats, traced into graphs once per model and loss.

    ``margin_and_gradient(z, targets)``: signed margin of ``z`` and input gradient of the
    loss; ``margin(z, targets)``: signed margin only. The functions hold a weak reference
    to the model, and `compiled_functions` keeps them in a `weakref.WeakKeyDictionary` keyed by the
    model: they are reused by later attacks on the same model and freed with it.
    """

    def __init__(self, model, loss: str):
        objective = _objective(loss)
        model_ref = weakref.ref(model)

        def forward(z):
            return model_ref()(z, training=False)

        def margin_and_gradient(z, targets):
            logits, grad = _backend.value_and_input_gradient(
                forward, z, lambda out: objective(out, targets)
            )
            margin = signed_margin(ops.cast(logits, "float32"), targets)
            return margin, ops.cast(grad, "float32")

        def margin(z, targets):
            return signed_margin(ops.cast(forward(z), "float32"), targets)

        self.margin_and_gradient = _backend.compile_function(margin_and_gradient)
        self.margin = _backend.compile_function(margin)


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_functions(model, loss: str) -> _Compiled:
    """The `_Compiled` functions of ``model`` for ``loss`` (built on first use)."""
    try:
        per_model = _COMPILED.setdefault(model, {})
    except TypeError:  # a model that cannot be weakly referenced: compile for this call
        return _Compiled(model, loss)
    if loss not in per_model:
        per_model[loss] = _Compiled(model, loss)
    return per_model[loss]


def checked_targets(model, x, y) -> np.ndarray:
    """Labels of ``y`` checked against the model's output shape (one forward pass)."""
    output_shape = predict_logits(model, x[:1], 1).shape
    return class_targets(y, (len(x),) + output_shape[1:])


def progress_bar(verbose: bool, target: int):
    return keras.utils.Progbar(target, verbose=1, unit_name="step") if verbose else None
