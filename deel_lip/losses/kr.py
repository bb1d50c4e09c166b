r"""Kantorovich-Rubinstein (KR) and hinge losses, binary and one-vs-all multiclass.

Notation: ``f`` are the predictions (``(batch, outputs)``), ``s_ik = +1`` if the label of
sample ``i`` for output ``k`` is positive and ``-1`` otherwise, ``P_k`` / ``N_k`` are the
samples with a positive / non-positive label for output ``k``, ``m`` is ``min_margin``.

The KR term is a batch-level quantity (difference of class means of ``f``). Its
per-sample values are built so that their mean over the batch is exactly that term,
including under ``tf.distribute`` strategies: the class counts are summed across
replicas, so a global batch split over several devices gives the single-device loss.

Reference:
    Serrurier, Mamalet, Gonzalez-Sanz, Boissin, Loubes, del Barrio, "Achieving robustness
    in classification using optimal transport with hinge regularization", CVPR 2021.
"""

from __future__ import annotations

import keras
from keras import ops

from deel_lip.losses._base import (
    HyperParameter,
    LipLoss,
    check_alpha,
    check_positive,
    check_sign_labels,
    kr_values,
    match_shapes,
    need_classes,
    positives,
)

__all__ = ["KR", "HKR", "HingeMargin", "MulticlassKR", "MulticlassHinge", "MulticlassHKR"]


def _signs(y_true, dtype):
    return 2.0 * positives(y_true, dtype) - 1.0


def _hinge(y_true, y_pred, min_margin):
    """``relu(m/2 - s_ik f_ik)`` element-wise."""
    return ops.relu(min_margin / 2.0 - _signs(y_true, y_pred.dtype) * y_pred)


def _multiclass_hinge(y_true, y_pred, min_margin):
    """``mean_k c_ik relu(m/2 - s_ik f_ik)`` with ``c = C - 1`` on positives, 1 elsewhere."""
    classes = y_pred.shape[-1]
    weight = 1.0 + (classes - 2.0) * positives(y_true, y_pred.dtype)
    return ops.mean(weight * _hinge(y_true, y_pred, min_margin), axis=-1)


@keras.saving.register_keras_serializable("deel_lip")
class KR(LipLoss):
    r"""Kantorovich-Rubinstein estimate of the Wasserstein-1 distance between two classes.

    For each output ``k``: ``KR_k = mean_{i in P_k} f_ik - mean_{i in N_k} f_ik`` (0 if
    either class is absent from the batch); the value is ``mean_k KR_k``. For a
    1-Lipschitz ``f``, maximising it estimates ``W_1(P, N)``: train with ``-KR`` (or
    `HKR`), or use it as a metric. Labels ``(batch, 1)`` (binary) or ``(batch, C)``
    (multilabel, one binary problem per output) with values in ``{0, 1}`` or
    ``{-1, +1}``, positive = ``> 0``.

    Per-sample values (``reduction="none"``) are ``n * mean_k f_ik w_ik`` with
    ``w_ik = 1/|P_k|`` on positives and ``-1/|N_k|`` on negatives and ``n`` the batch
    size, so that the ``"sum_over_batch_size"`` reduction gives ``mean_k KR_k``; the
    class means are over the global batch under a ``tf.distribute`` strategy.

    Args:
        reduction: Keras reduction (``"sum_over_batch_size"``, ``"sum"``, ``"mean"``,
            ``"mean_with_sample_weight"``, ``"none"`` or None).
        name: name of the loss.
        dtype: dtype (policy) of the computation, Keras' float type by default.

    Input shape:
        ``y_true`` and ``y_pred``: ``(batch, outputs)`` (``(batch,)`` is read as
        ``(batch, 1)``).

    Output shape:
        a scalar, or ``(batch,)`` without reduction.

    Raises:
        ValueError: if the shapes of ``y_true`` and ``y_pred`` differ, or (eagerly) if
            ``y_true`` holds values outside ``{0, 1}`` and ``{-1, +1}``.
    """

    def __init__(self, reduction="sum_over_batch_size", name="KR", dtype=None):
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    def _prepare(self, y_true, y_pred):
        y_true, y_pred = match_shapes(self.name, y_true, y_pred, rank2=True)
        check_sign_labels(self.name, y_true)
        return y_true, y_pred

    def call(self, y_true, y_pred):
        y_true, y_pred = self._prepare(y_true, y_pred)
        return kr_values(y_true, y_pred)


@keras.saving.register_keras_serializable("deel_lip")
class HingeMargin(LipLoss):
    r"""Hinge loss with a margin ``m`` between the classes: ``mean_k relu(m/2 - s_ik f_ik)``.

    Each sample should be on its side of the decision boundary ``f = 0`` at a distance of
    at least ``m/2`` in output (so ``m/2`` in input for a 1-Lipschitz ``f``). Labels as in
    `KR` (``{0, 1}`` or ``{-1, +1}``, binary or multilabel).

    Args:
        min_margin: margin ``m`` (> 0), a variable that can be changed during training.
        reduction: Keras reduction.
        name: name of the loss.
        dtype: dtype (policy) of the computation.

    Input shape:
        ``y_true`` and ``y_pred``: ``(batch, outputs)`` (``(batch,)`` is ``(batch, 1)``).

    Output shape:
        a scalar, or ``(batch,)`` without reduction.

    Raises:
        ValueError: for ``min_margin`` not > 0, differing shapes, or (eagerly) labels
            outside ``{0, 1}`` and ``{-1, +1}``.
    """

    _hyper_parameters = ("min_margin",)
    min_margin = HyperParameter(check_positive)

    def __init__(
        self, min_margin=1.0, reduction="sum_over_batch_size", name="HingeMargin", dtype=None
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype, min_margin=min_margin)

    def call(self, y_true, y_pred):
        y_true, y_pred = match_shapes(self.name, y_true, y_pred)
        check_sign_labels(self.name, y_true)
        hinge = _hinge(y_true, y_pred, self.hyper("min_margin", y_pred.dtype))
        return ops.mean(hinge, axis=-1)


@keras.saving.register_keras_serializable("deel_lip")
class HKR(KR):
    r"""Hinge-regularised KR loss: ``(1 - alpha) * (-KR) + alpha * HingeMargin``.

    Per sample ``i``: ``(1 - alpha) * (-kr_i) + alpha * mean_k relu(m/2 - s_ik f_ik)``
    with ``kr_i`` the per-sample KR values of `KR`, so the batch mean is
    ``-(1 - alpha) mean_k (mean_{P_k} f_k - mean_{N_k} f_k) + alpha * hinge``.
    ``alpha = 0`` is the pure (negated) KR loss, ``alpha = 1`` the pure hinge loss.

    ``alpha > 1`` follows the convention of deel-lip < 1.5 (``-KR + alpha * hinge``) and
    is converted to ``alpha / (1 + alpha)`` with a warning (same minimiser).

    Args:
        alpha: weight of the hinge term in ``[0, 1]`` (a variable).
        min_margin: margin ``m`` (> 0, a variable).
        reduction: Keras reduction.
        name: name of the loss.
        dtype: dtype (policy) of the computation.

    Input shape:
        ``y_true`` and ``y_pred``: ``(batch, outputs)``; labels ``{0, 1}`` or ``{-1, +1}``.

    Output shape:
        a scalar, or ``(batch,)`` without reduction.

    Raises:
        ValueError: for ``alpha < 0`` or NaN, ``min_margin`` not > 0, differing shapes, or
            (eagerly) labels outside ``{0, 1}`` and ``{-1, +1}``.
    """

    _hyper_parameters = ("alpha", "min_margin")
    alpha = HyperParameter(check_alpha)
    min_margin = HyperParameter(check_positive)

    def __init__(
        self, alpha, min_margin=1.0, reduction="sum_over_batch_size", name="HKR", dtype=None
    ):
        LipLoss.__init__(
            self, reduction=reduction, name=name, dtype=dtype, alpha=alpha, min_margin=min_margin
        )

    def _hinge_values(self, y_true, y_pred):
        hinge = _hinge(y_true, y_pred, self.hyper("min_margin", y_pred.dtype))
        return ops.mean(hinge, axis=-1)

    def call(self, y_true, y_pred):
        y_true, y_pred = self._prepare(y_true, y_pred)
        alpha = self.hyper("alpha", y_pred.dtype)
        kr = kr_values(y_true, y_pred)
        return (1.0 - alpha) * (-kr) + alpha * self._hinge_values(y_true, y_pred)


@keras.saving.register_keras_serializable("deel_lip")
class MulticlassKR(KR):
    r"""Mean over the ``C`` outputs of the one-vs-all KR terms (see `KR`).

    ``mean_k (mean_{i: y_i = k} f_ik - mean_{i: y_i != k} f_ik)``. Labels are one-hot
    ``(batch, C)`` (``{0, 1}`` or ``{-1, +1}``); multi-hot labels (multilabel problems)
    are accepted and give one binary KR term per output.

    Args:
        reduction: Keras reduction.
        name: name of the loss.
        dtype: dtype (policy) of the computation.

    Input shape:
        ``y_true`` and ``y_pred``: ``(batch, C)``, ``C >= 2``.

    Output shape:
        a scalar, or ``(batch,)`` without reduction.

    Raises:
        ValueError: for differing shapes, fewer than 2 classes, or (eagerly) labels
            outside ``{0, 1}`` and ``{-1, +1}``.
    """

    def __init__(self, reduction="sum_over_batch_size", name="MulticlassKR", dtype=None):
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    def _prepare(self, y_true, y_pred):
        y_true, y_pred = super()._prepare(y_true, y_pred)
        need_classes(self.name, y_pred)
        return y_true, y_pred


@keras.saving.register_keras_serializable("deel_lip")
class MulticlassHinge(LipLoss):
    r"""One-vs-all hinge loss with the true class reweighted.

    ``(1/C) * [(C - 1) relu(m/2 - f_iy) + sum_{k != y} relu(m/2 + f_ik)]``: the true
    output should be ``>= m/2`` and every other output ``<= -m/2``; the weight ``C - 1``
    balances the single positive against the ``C - 1`` negatives. This differs from
    the Crammer-Singer hinge (`CategoricalHinge`) and matches the binary `HingeMargin`
    applied per output. One-hot labels ``(batch, C)`` in ``{0, 1}`` or ``{-1, +1}``;
    with multi-hot labels every positive output gets the weight ``C - 1``.

    Args:
        min_margin: margin ``m`` (> 0, a variable).
        reduction: Keras reduction.
        name: name of the loss.
        dtype: dtype (policy) of the computation.

    Input shape:
        ``y_true`` and ``y_pred``: ``(..., C)``, ``C >= 2``.

    Output shape:
        a scalar, or ``y_pred.shape[:-1]`` without reduction.

    Raises:
        ValueError: for ``min_margin`` not > 0, differing shapes, fewer than 2 classes,
            or (eagerly) labels outside ``{0, 1}`` and ``{-1, +1}``.
    """

    _hyper_parameters = ("min_margin",)
    min_margin = HyperParameter(check_positive)

    def __init__(
        self, min_margin=1.0, reduction="sum_over_batch_size", name="MulticlassHinge", dtype=None
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype, min_margin=min_margin)

    def call(self, y_true, y_pred):
        y_true, y_pred = match_shapes(self.name, y_true, y_pred)
        need_classes(self.name, y_pred)
        check_sign_labels(self.name, y_true)
        return _multiclass_hinge(y_true, y_pred, self.hyper("min_margin", y_pred.dtype))


@keras.saving.register_keras_serializable("deel_lip")
class MulticlassHKR(MulticlassKR):
    r"""Multiclass hKR: ``(1 - alpha) * (-MulticlassKR) + alpha * MulticlassHinge``.

    Per sample ``i`` with true class ``y``: ``(1 - alpha) * (-kr_i) + alpha * (1/C) *
    [(C - 1) relu(m/2 - f_iy) + sum_{k != y} relu(m/2 + f_ik)]``, ``kr_i`` the per-sample
    values of `MulticlassKR` (batch mean = ``mean_k`` of the one-vs-all KR terms).
    ``alpha > 1`` (deel-lip < 1.5 convention) is converted to ``alpha / (1 + alpha)``
    with a warning. Labels as in `MulticlassKR` (one-hot; multi-hot for multilabel).

    Args:
        alpha: weight of the hinge term in ``[0, 1]`` (a variable).
        min_margin: margin ``m`` (> 0, a variable).
        reduction: Keras reduction.
        name: name of the loss.
        dtype: dtype (policy) of the computation.

    Input shape:
        ``y_true`` and ``y_pred``: ``(batch, C)``, ``C >= 2``.

    Output shape:
        a scalar, or ``(batch,)`` without reduction.

    Raises:
        ValueError: for ``alpha < 0`` or NaN, ``min_margin`` not > 0, differing shapes,
            fewer than 2 classes, or (eagerly) labels outside ``{0, 1}`` and ``{-1, +1}``.
    """

    _hyper_parameters = ("alpha", "min_margin")
    alpha = HyperParameter(check_alpha)
    min_margin = HyperParameter(check_positive)

    def __init__(
        self,
        alpha=0.9,
        min_margin=1.0,
        reduction="sum_over_batch_size",
        name="MulticlassHKR",
        dtype=None,
    ):
        LipLoss.__init__(
            self, reduction=reduction, name=name, dtype=dtype, alpha=alpha, min_margin=min_margin
        )

    def call(self, y_true, y_pred):
        y_true, y_pred = self._prepare(y_true, y_pred)
        alpha = self.hyper("alpha", y_pred.dtype)
        kr = kr_values(y_true, y_pred)
        hinge = _multiclass_hinge(y_true, y_pred, self.hyper("min_margin", y_pred.dtype))
        return (1.0 - alpha) * (-kr) + alpha * hinge
