r"""Multiclass margin losses on the difference between the true and the other logits.

The margin ``f_y - f_k`` of a 1-Lipschitz network certifies robustness (radius
``(f_y - max_{k != y} f_k) / sqrt(2)``), so these losses ask for a margin of at least
``min_margin``. Labels are one-hot ``(..., C)`` in ``{0, 1}`` or ``{-1, +1}`` with exactly
one positive per row: other labels raise eagerly and give NaN values inside a traced
``fit``; NaN predictions give NaN values (nothing is raised).
"""

from __future__ import annotations

import math

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
from deel_lip.losses._labels import enforce, sign_rows

__all__ = ["MultiMargin", "CategoricalHinge"]


def _prepare(loss, y_true, y_pred):
    y_true, y_pred = match_shapes(loss, y_true, y_pred)
    need_classes(loss, y_pred)
    valid = enforce(
        loss,
        y_true,
        sign_rows(y_true, one_positive=True),
        "one-hot labels in {0, 1} or {-1, +1} (exactly one positive per row)",
    )
    pos = positives(y_true, y_pred.dtype)
    return pos, y_pred, ops.sum(pos * y_pred, axis=-1, keepdims=True), valid


@keras.saving.register_keras_serializable("deel_lip")
class MultiMargin(LipLoss):
    r"""Multiclass margin loss (PyTorch ``multi_margin_loss`` with ``p = 1``).

    ``(1/C) * sum_{k != y} relu(m - (f_iy - f_ik))``: every wrong class is penalised
    until the true logit exceeds it by ``m``.

    Args:
        min_margin: margin ``m`` (> 0, a variable).
        reduction: Keras reduction.
        name: name of the loss.
        dtype: dtype (policy) of the computation.

    Input shape:
        ``y_true`` (one-hot) and ``y_pred``: ``(..., C)``, ``C >= 2``.

    Output shape:
        a scalar, or ``y_pred.shape[:-1]`` without reduction.

    Raises:
        ValueError: for ``min_margin`` not > 0, differing shapes, fewer than 2 classes,
            or (eagerly) labels that are not one-hot in ``{0, 1}`` or ``{-1, +1}``.
    """

    _hyper_parameters = ("min_margin",)
    min_margin = HyperParameter(check_positive)

    def __init__(
        self, min_margin=1.0, reduction="sum_over_batch_size", name="MultiMargin", dtype=None
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype, min_margin=min_margin)

    def call(self, y_true, y_pred):
        pos, y_pred, true_logit, valid = _prepare(self.name, y_true, y_pred)
        margin = self.hyper("min_margin", y_pred.dtype)
        violations = (1.0 - pos) * ops.relu(margin - true_logit + y_pred)
        return self.invalid_to_nan(ops.mean(violations, axis=-1), valid)


@keras.saving.register_keras_serializable("deel_lip")
class CategoricalHinge(LipLoss):
    r"""Crammer-Singer hinge with a margin: ``relu(m - (f_iy - max_{k != y} f_ik))``.

    Zero once the true logit exceeds the highest other logit by ``m``. Keras' and
    deel-lip's ``CategoricalHinge`` take ``max_k (1 - y_k) f_k``, which is 0 instead of
    the highest wrong logit when every wrong logit is negative (a margin measured to 0,
    not to the other classes); this one measures the certifying margin.

    Args:
        min_margin: margin ``m`` (> 0, a variable).
        reduction: Keras reduction.
        name: name of the loss.
        dtype: dtype (policy) of the computation.

    Input shape:
        ``y_true`` (one-hot) and ``y_pred``: ``(..., C)``, ``C >= 2``.

    Output shape:
        a scalar, or ``y_pred.shape[:-1]`` without reduction.

    Raises:
        ValueError: for ``min_margin`` not > 0, differing shapes, fewer than 2 classes,
            or (eagerly) labels that are not one-hot in ``{0, 1}`` or ``{-1, +1}``.
    """

    _hyper_parameters = ("min_margin",)
    min_margin = HyperParameter(check_positive)

    def __init__(
        self, min_margin=1.0, reduction="sum_over_batch_size", name="CategoricalHinge", dtype=None
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype, min_margin=min_margin)

    def call(self, y_true, y_pred):
        pos, y_pred, true_logit, valid = _prepare(self.name, y_true, y_pred)
        best_wrong = ops.max(ops.where(pos > 0, -math.inf, y_pred), axis=-1)
        margin = self.hyper("min_margin", y_pred.dtype)
        values = ops.relu(margin - (true_logit[..., 0] - best_wrong))
        return self.invalid_to_nan(values, valid)
