r"""Cross-entropies with a temperature ``tau``, for 1-Lipschitz networks.

A 1-Lipschitz network cannot make its logits arbitrarily large, so the usual
cross-entropy saturates early; scaling the logits by ``tau`` before the softmax (and the
loss by ``1/tau``) sets the trade-off: a small ``tau`` asks for large margins
(robustness), a large one for accuracy (the loss tends to a hinge with zero margin).
Every per-sample value is divided by ``tau`` so that gradients keep a comparable scale
across temperatures (deel-lip's definition).

Labels outside the documented encodings raise eagerly and give NaN values inside a
traced ``fit``; NaN predictions give NaN values (nothing is raised).

Reference:
    Bethune, Boissin, Serrurier, Mamalet, Friedrich, Gonzalez-Sanz, "Pay attention to
    your loss: understanding misconceptions about 1-Lipschitz neural networks",
    NeurIPS 2022.
"""

from __future__ import annotations

import keras
from keras import ops

from deel_lip.losses._base import (
    HyperParameter,
    LipLoss,
    check_positive,
    match_shapes,
    need_classes,
    positives,
)
from deel_lip.losses._labels import class_id_rows, enforce, probability_rows, sign_rows

__all__ = [
    "TauCategoricalCrossentropy",
    "TauSparseCategoricalCrossentropy",
    "TauBinaryCrossentropy",
]


@keras.saving.register_keras_serializable("deel_lip")
class TauCategoricalCrossentropy(LipLoss):
    r"""``-(1/tau) * sum_k y_ik log softmax(tau f_i)_k``.

    Labels are one-hot or probability vectors (soft labels) ``(..., C)``: entries in
    ``[0, 1]`` summing to 1 (``{-1, +1}`` and multi-hot labels are refused).

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
        ValueError: for ``tau`` not > 0, differing shapes, fewer than 2 classes, or
            (eagerly) labels that are not probability rows.
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
        valid = enforce(
            self.name,
            y_true,
            probability_rows(y_true),
            "one-hot or probability rows (entries in [0, 1] summing to 1)",
        )
        tau = self.hyper("tau", y_pred.dtype)
        y_true = ops.cast(y_true, y_pred.dtype)
        values = -ops.sum(y_true * ops.log_softmax(tau * y_pred, axis=-1), axis=-1) / tau
        return self.invalid_to_nan(values, valid)


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
        valid = enforce(
            self.name, y_true, class_id_rows(y_true, classes), f"integer labels in [0, {classes})"
        )
        ids = ops.where(ops.reshape(valid, ops.shape(y_true)), y_true, ops.zeros_like(y_true))
        one_hot = ops.one_hot(ops.cast(ids, "int32"), classes, dtype=y_pred.dtype)
        tau = self.hyper("tau", y_pred.dtype)
        values = -ops.sum(one_hot * ops.log_softmax(tau * y_pred, axis=-1), axis=-1) / tau
        return self.invalid_to_nan(values, valid)


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
        valid = enforce(
            self.name, y_true, sign_rows(y_true), "labels in {0, 1} or in {-1, +1} (one set)"
        )
        tau = self.hyper("tau", y_pred.dtype)
        signs = 2.0 * positives(y_true, y_pred.dtype) - 1.0
        values = ops.mean(ops.softplus(-tau * signs * y_pred), axis=-1) / tau
        return self.invalid_to_nan(values, valid)
