r"""Cross-entropies with a temperature ``tau``, for 1-Lipschitz networks.

A 1-Lipschitz network cannot make its logits arbitrarily large, so the usual
cross-entropy saturates early; scaling the logits by ``tau`` before the softmax (and the
loss by ``1/tau``) sets the trade-off: a small ``tau`` asks for large margins
(robustness), a large one for accuracy (the loss tends to a hinge with zero margin).
Every per-sample value is divided by ``tau`` so that gradients keep a comparable scale
across temperatures.

Reference:
    Bethune, Boissin, Serrurier, Mamalet, Friedrich, Gonzalez-Sanz, "Pay attention to
    your loss: understanding misconceptions about 1-Lipschitz neural networks",
    NeurIPS 2022.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from deel_lip import _backend
from deel_lip.losses._base import (
    HyperParameter,
    LipLoss,
    check_positive,
    check_sign_labels,
    match_shapes,
    need_classes,
    positives,
)

__all__ = [
    "TauCategoricalCrossentropy",
    "TauSparseCategoricalCrossentropy",
    "TauBinaryCrossentropy",
]


@keras.saving.register_keras_serializable("deel_lip")
class TauCategoricalCrossentropy(LipLoss):
    r"""``-(1/tau) * sum_k y_ik log softmax(tau f_i)_k``.

    Labels are one-hot or probability vectors (soft labels) ``(..., C)``.

    Args:
        tau: temperature (> 0, a variable).
        reduction: Keras reduction.
        name: name of the loss.
        dtype: dtype (policy) of the computation.

    Input shape:
        ``y_true`` and ``y_pred``: ``(..., C)``, ``C >= 2``.

    Output shape:
        a scalar, or ``y_pred.shape[:-1]`` without reduction.

    Raises:
        ValueError: for ``tau`` not > 0, differing shapes or fewer than 2 classes.
    """

    _hyper_parameters = ("tau",)
    tau = HyperParameter(check_positive)

    def __init__(
        self,
        tau=1.0,
        reduction="sum_over_batch_size",
        name="TauCategoricalCrossentropy",
        dtype=None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype, tau=tau)

    def call(self, y_true, y_pred):
        y_true, y_pred = match_shapes(self.name, y_true, y_pred)
        need_classes(self.name, y_pred)
        tau = self.hyper("tau", y_pred.dtype)
        return -ops.sum(y_true * ops.log_softmax(tau * y_pred, axis=-1), axis=-1) / tau


@keras.saving.register_keras_serializable("deel_lip")
class TauSparseCategoricalCrossentropy(LipLoss):
    r"""``-(1/tau) * log softmax(tau f_i)_{y_i}`` with integer labels ``y_i``.

    Args:
        tau: temperature (> 0, a variable).
        reduction: Keras reduction.
        name: name of the loss.
        dtype: dtype (policy) of the computation.

    Input shape:
        ``y_true``: ``(batch,)`` or ``(batch, 1)`` integers in ``[0, C)``;
        ``y_pred``: ``(batch, C)``, ``C >= 2``.

    Output shape:
        a scalar, or ``(batch,)`` without reduction.

    Raises:
        ValueError: for ``tau`` not > 0, labels whose shape does not match
            ``y_pred.shape[:-1]``, fewer than 2 classes, or (eagerly) labels that are not
            integers in ``[0, C)``.
    """

    _hyper_parameters = ("tau",)
    tau = HyperParameter(check_positive)

    def __init__(
        self,
        tau=1.0,
        reduction="sum_over_batch_size",
        name="TauSparseCategoricalCrossentropy",
        dtype=None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype, tau=tau)

    def call(self, y_true, y_pred):
        classes = need_classes(self.name, y_pred)
        if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1:
            y_true = ops.squeeze(y_true, -1)
        if len(y_true.shape) != len(y_pred.shape) - 1 or any(
            a is not None and b is not None and a != b
            for a, b in zip(y_true.shape, y_pred.shape[:-1])
        ):
            raise ValueError(
                f"{self.name}: y_true must hold one integer label per row of y_pred "
                f"(shape y_pred.shape[:-1]); received y_true.shape={tuple(y_true.shape)} "
                f"and y_pred.shape={tuple(y_pred.shape)}"
            )
        if _backend.executing_eagerly():
            labels = np.asarray(ops.convert_to_numpy(y_true))
            bad = (labels != np.round(labels)) | (labels < 0) | (labels >= classes)
            if np.any(bad):
                raise ValueError(
                    f"{self.name}: y_true must hold integer labels in [0, {classes}), "
                    f"received {sorted(set(labels[bad].tolist()))[:6]}"
                )
        one_hot = ops.one_hot(ops.cast(y_true, "int32"), classes, dtype=y_pred.dtype)
        tau = self.hyper("tau", y_pred.dtype)
        return -ops.sum(one_hot * ops.log_softmax(tau * y_pred, axis=-1), axis=-1) / tau


@keras.saving.register_keras_serializable("deel_lip")
class TauBinaryCrossentropy(LipLoss):
    r"""``(1/tau) * mean_k softplus(-tau s_ik f_ik)``, the logistic loss of ``tau f``.

    ``s_ik = +1`` for a positive label, ``-1`` otherwise; this equals the binary
    cross-entropy of the logits ``tau f`` divided by ``tau``. Labels in ``{0, 1}`` or
    ``{-1, +1}``, ``(batch, 1)`` (binary) or ``(batch, C)`` (multilabel).

    Args:
        tau: temperature (> 0, a variable).
        reduction: Keras reduction.
        name: name of the loss.
        dtype: dtype (policy) of the computation.

    Input shape:
        ``y_true`` and ``y_pred``: ``(..., outputs)`` (``(batch,)`` is ``(batch, 1)``).

    Output shape:
        a scalar, or ``y_pred.shape[:-1]`` without reduction.

    Raises:
        ValueError: for ``tau`` not > 0, differing shapes, or (eagerly) labels outside
            ``{0, 1}`` and ``{-1, +1}``.
    """

    _hyper_parameters = ("tau",)
    tau = HyperParameter(check_positive)

    def __init__(
        self, tau=1.0, reduction="sum_over_batch_size", name="TauBinaryCrossentropy", dtype=None
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype, tau=tau)

    def call(self, y_true, y_pred):
        y_true, y_pred = match_shapes(self.name, y_true, y_pred)
        check_sign_labels(self.name, y_true)
        tau = self.hyper("tau", y_pred.dtype)
        signs = 2.0 * positives(y_true, y_pred.dtype) - 1.0
        return ops.mean(ops.softplus(-tau * signs * y_pred), axis=-1) / tau
