r"""Kantorovich-Rubinstein (KR) and hinge losses, binary and one-vs-all multiclass.

Notation: ``f`` are the predictions (``(batch, outputs)``), ``s_ik = +1`` if the label of
sample ``i`` for output ``k`` is positive and ``-1`` otherwise, ``P_k`` / ``N_k`` are the
samples with a positive / non-positive label for output ``k``, ``m`` is ``min_margin``.

The KR term is a batch-level quantity (difference of class means of ``f``). Its
per-sample values are built so that their mean over the batch is exactly that term,
including under ``tf.distribute`` strategies: the class counts are summed across
replicas, so a global batch split over several devices gives the single-device loss.

Conventions (deel-lip's, by default): ``HKR`` and ``MulticlassHKR`` are
``-KR + alpha * hinge`` with ``alpha >= 0`` (``alpha = inf``: hinge only); the convex
``(1 - alpha) * (-KR) + alpha * hinge`` with ``alpha`` in ``[0, 1]`` is available with
``convex=True`` (same minimiser as ``alpha / (1 - alpha)`` in the default form, loss
multiplied by ``1 - alpha``). Labels: see `KR`; invalid labels raise eagerly and give a
NaN loss inside a traced ``fit`` (`deel_lip.losses._labels`). NaN predictions give NaN
values (nothing is raised): keep `keras.callbacks.TerminateOnNaN` in long trainings.

Reference:
    Serrurier, Mamalet, Gonzalez-Sanz, Boissin, Loubes, del Barrio, "Achieving robustness
    in classification using optimal transport with hinge regularization", CVPR 2021.
"""

from __future__ import annotations

import warnings

import keras
from keras import ops

from deel_lip.losses._base import (
    HyperParameter,
    LipLoss,
    check_bool,
    check_convex_alpha,
    check_hinge_weight,
    check_positive,
    hinge_weights,
    kr_values,
    legacy_convex_config,
    match_shapes,
    need_classes,
    positives,
)
from deel_lip.losses._labels import enforce, sign_rows, weight_rows

__all__ = ["KR", "HKR", "HingeMargin", "MulticlassKR", "MulticlassHinge", "MulticlassHKR"]

_SIGN_LABELS = "labels in {0, 1} or in {-1, +1} (one set per batch)"
_WEIGHT_LABELS = (
    "finite non-zero labels read by their sign (multi_gpu=True, e.g. the output of "
    "process_labels_for_multi_gpu)"
)


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


class _SignLabelLoss(LipLoss):
    """A loss on sign labels; ``multi_gpu`` (deel-lip) accepts pre-processed labels."""

    multi_gpu = False

    def _set_multi_gpu(self, multi_gpu) -> None:
        self.multi_gpu = check_bool("multi_gpu", multi_gpu)
        if self.multi_gpu:
            warnings.warn(
                f"{type(self).__name__}(multi_gpu=True): not needed in deel_lip, whose KR "
                "term is exact under tf.distribute strategies; labels are read by their "
                "sign, so labels from process_labels_for_multi_gpu give the same loss as "
                "the raw labels.",
                UserWarning,
                stacklevel=3,
            )

    def _labels(self, y_true, y_pred, rank2=False, classes=False):
        """Matched shapes and the mask of valid label rows (eagerly: raise)."""
        y_true, y_pred = match_shapes(self.name, y_true, y_pred, rank2=rank2)
        if classes:
            need_classes(self.name, y_pred)
        if self.multi_gpu:
            valid = enforce(self.name, y_true, weight_rows(y_true), _WEIGHT_LABELS)
        else:
            valid = enforce(self.name, y_true, sign_rows(y_true), _SIGN_LABELS)
        return y_true, y_pred, valid

    def get_config(self) -> dict:
        config = super().get_config()
        if "multi_gpu" in self._config_flags:
            config["multi_gpu"] = self.multi_gpu
        if "convex" in self._config_flags:
            config["convex"] = self.convex
        return config

    _config_flags: tuple[str, ...] = ()


class _HKRMixin:
    """``alpha`` checked by the convention chosen with ``convex``."""

    def check_hyper(self, name: str, value) -> float:
        if name == "alpha":
            check = check_convex_alpha if self.convex else check_hinge_weight
            return check(name, value)
        return super().check_hyper(name, value)

    @classmethod
    def from_config(cls, config: dict):
        return super().from_config(legacy_convex_config(cls, config))

    def _combine(self, kr, hinge, dtype):
        alpha = self.hyper("alpha", dtype)
        if self.convex:
            return (1.0 - alpha) * (-kr) + alpha * hinge
        w_kr, w_hinge = hinge_weights(alpha)
        return w_kr * (-kr) + w_hinge * hinge


@keras.saving.register_keras_serializable("deel_lip")
class KR(_SignLabelLoss):
    r"""Kantorovich-Rubinstein estimate of the Wasserstein-1 distance between two classes.

    For each output ``k``: ``KR_k = mean_{i in P_k} f_ik - mean_{i in N_k} f_ik`` (a
    class absent from the batch contributes 0: ``-mean f_k`` without positives); the
    value is ``mean_k KR_k``. For a 1-Lipschitz ``f``, maximising it estimates
    ``W_1(P, N)``: train with ``-KR`` (or `HKR`), or use it as a metric. Labels
    ``(batch, 1)`` (binary) or ``(batch, C)`` (multilabel, one binary problem per
    output) with values in ``{0, 1}`` or ``{-1, +1}``, positive = ``> 0``.

    Per-sample values (``reduction="none"``) are ``n * mean_k f_ik w_ik`` with
    ``w_ik = 1/|P_k|`` on positives and ``-1/|N_k|`` on negatives and ``n`` the batch
    size, so that the ``"sum_over_batch_size"`` reduction gives ``mean_k KR_k``; the
    class means are over the global batch under a ``tf.distribute`` strategy.

    Args:
        multi_gpu: deel-lip's flag for its distributed mode. Not needed here (the KR
            term is exact under every strategy); True warns and accepts labels
            pre-processed by `process_labels_for_multi_gpu` (read by their sign).
        reduction: Keras reduction (``"sum_over_batch_size"``, ``"sum"``, ``"mean"``,
            ``"mean_with_sample_weight"``, ``"none"`` or None; ``"auto"`` is
            ``"sum_over_batch_size"``).
        name: name of the loss.
        dtype: dtype (policy) of the computation, Keras' float type by default.

    Input shape:
        ``y_true`` and ``y_pred``: ``(batch, outputs)`` (``(batch,)`` is read as
        ``(batch, 1)``).

    Output shape:
        a scalar, or ``(batch,)`` without reduction.

    Raises:
        ValueError: if the shapes of ``y_true`` and ``y_pred`` differ, or (eagerly) if
            ``y_true`` is not in ``{0, 1}`` or ``{-1, +1}`` (NaN included). Traced (in
            ``fit``), the rows with invalid labels give NaN values instead.
    """

    _config_flags = ("multi_gpu",)

    def __init__(self, multi_gpu=False, reduction="sum_over_batch_size", name="KR", dtype=None):
        self._set_multi_gpu(multi_gpu)
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    def _prepare(self, y_true, y_pred):
        return self._labels(y_true, y_pred, rank2=True)

    def call(self, y_true, y_pred):
        y_true, y_pred, valid = self._prepare(y_true, y_pred)
        return self.invalid_to_nan(kr_values(y_true, y_pred), valid)


@keras.saving.register_keras_serializable("deel_lip")
class HingeMargin(_SignLabelLoss):
    r"""Hinge loss with a margin ``m`` between the classes: ``mean_k relu(m/2 - s_ik f_ik)``.

    Each sample should be on its side of the decision boundary ``f = 0`` at a distance of
    at least ``m/2`` in output (so ``m/2`` in input for a 1-Lipschitz ``f``), as in
    deel-lip. Labels as in `KR` (``{0, 1}`` or ``{-1, +1}``, binary or multilabel).

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
            outside ``{0, 1}`` and ``{-1, +1}`` (NaN rows when traced).
    """

    _hyper_parameters = ("min_margin",)
    min_margin = HyperParameter(check_positive)

    def __init__(
        self, min_margin=1.0, reduction="sum_over_batch_size", name="HingeMargin", dtype=None
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype, min_margin=min_margin)

    def call(self, y_true, y_pred):
        y_true, y_pred, valid = self._labels(y_true, y_pred)
        hinge = _hinge(y_true, y_pred, self.hyper("min_margin", y_pred.dtype))
        return self.invalid_to_nan(ops.mean(hinge, axis=-1), valid)


@keras.saving.register_keras_serializable("deel_lip")
class HKR(_HKRMixin, KR):
    r"""Hinge-regularised KR loss (deel-lip): ``-KR + alpha * HingeMargin``.

    Per sample ``i``: ``-kr_i + alpha * mean_k relu(m/2 - s_ik f_ik)``, ``kr_i`` the
    per-sample values of `KR` (batch mean: ``-mean_k (mean_{P_k} f_k - mean_{N_k} f_k)
    + alpha * hinge``). ``alpha = 0`` is the pure (negated) KR loss, ``alpha = inf`` the
    pure hinge loss.

    With ``convex=True``: ``(1 - alpha) * (-kr_i) + alpha * hinge_i``, ``alpha`` in
    ``[0, 1]`` (the convention of deel_lip < 2 and of deel-torchlip); ``alpha_c`` there
    is ``alpha = alpha_c / (1 - alpha_c)`` here, the loss multiplied by ``1 - alpha_c``.

    Args:
        alpha: weight of the hinge term (a variable): ``>= 0`` or ``inf``; in ``[0, 1]``
            with ``convex=True``.
        min_margin: margin ``m`` (> 0, a variable).
        multi_gpu: see `KR` (not needed, accepted for deel-lip code).
        reduction: Keras reduction.
        name: name of the loss.
        dtype: dtype (policy) of the computation.
        convex: use ``(1 - alpha) * (-KR) + alpha * hinge``.

    Input shape:
        ``y_true`` and ``y_pred``: ``(batch, outputs)``; labels ``{0, 1}`` or ``{-1, +1}``.

    Output shape:
        a scalar, or ``(batch,)`` without reduction.

    Raises:
        ValueError: for ``alpha`` out of range or NaN, ``min_margin`` not > 0, differing
            shapes, or (eagerly) labels outside ``{0, 1}`` and ``{-1, +1}``.
    """

    _hyper_parameters = ("alpha", "min_margin")
    _config_flags = ("multi_gpu", "convex")
    alpha = HyperParameter(check_hinge_weight)
    min_margin = HyperParameter(check_positive)

    def __init__(
        self,
        alpha,
        min_margin=1.0,
        multi_gpu=False,
        reduction="sum_over_batch_size",
        name="HKR",
        dtype=None,
        convex=False,
    ):
        self.convex = check_bool("convex", convex)
        self._set_multi_gpu(multi_gpu)
        LipLoss.__init__(
            self, reduction=reduction, name=name, dtype=dtype, alpha=alpha, min_margin=min_margin
        )

    def call(self, y_true, y_pred):
        y_true, y_pred, valid = self._prepare(y_true, y_pred)
        hinge = ops.mean(_hinge(y_true, y_pred, self.hyper("min_margin", y_pred.dtype)), -1)
        values = self._combine(kr_values(y_true, y_pred), hinge, y_pred.dtype)
        return self.invalid_to_nan(values, valid)


@keras.saving.register_keras_serializable("deel_lip")
class MulticlassKR(KR):
    r"""Mean over the ``C`` outputs of the one-vs-all KR terms (see `KR`).

    ``mean_k (mean_{i: y_i = k} f_ik - mean_{i: y_i != k} f_ik)``. Labels are one-hot
    ``(batch, C)`` (``{0, 1}`` or ``{-1, +1}``); multi-hot labels (multilabel problems)
    are accepted and give one binary KR term per output, as in deel-lip.

    Args:
        multi_gpu: see `KR` (not needed, accepted for deel-lip code).
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

    def __init__(
        self, multi_gpu=False, reduction="sum_over_batch_size", name="MulticlassKR", dtype=None
    ):
        super().__init__(multi_gpu=multi_gpu, reduction=reduction, name=name, dtype=dtype)

    def _prepare(self, y_true, y_pred):
        return self._labels(y_true, y_pred, rank2=True, classes=True)


@keras.saving.register_keras_serializable("deel_lip")
class MulticlassHinge(_SignLabelLoss):
    r"""One-vs-all hinge loss with the true class reweighted (deel-lip's).

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
        y_true, y_pred, valid = self._labels(y_true, y_pred, classes=True)
        values = _multiclass_hinge(y_true, y_pred, self.hyper("min_margin", y_pred.dtype))
        return self.invalid_to_nan(values, valid)


@keras.saving.register_keras_serializable("deel_lip")
class MulticlassHKR(_HKRMixin, MulticlassKR):
    r"""Multiclass hKR (deel-lip): ``-MulticlassKR + alpha * MulticlassHinge``.

    Per sample ``i`` with true class ``y``: ``-kr_i + alpha * (1/C) * [(C - 1)
    relu(m/2 - f_iy) + sum_{k != y} relu(m/2 + f_ik)]``, ``kr_i`` the per-sample values
    of `MulticlassKR`. ``alpha = inf`` is the hinge alone. With ``convex=True``:
    ``(1 - alpha) * (-kr_i) + alpha * hinge_i``, ``alpha`` in ``[0, 1]`` (see `HKR`).
    Labels as in `MulticlassKR` (one-hot; multi-hot for multilabel).

    Args:
        alpha: weight of the hinge term (a variable), ``>= 0`` or ``inf``, default 10
            (deel-lip's); in ``[0, 1]`` with ``convex=True``.
        min_margin: margin ``m`` (> 0, a variable).
        multi_gpu: see `KR` (not needed, accepted for deel-lip code).
        reduction: Keras reduction.
        name: name of the loss.
        dtype: dtype (policy) of the computation.
        convex: use ``(1 - alpha) * (-KR) + alpha * hinge``.

    Input shape:
        ``y_true`` and ``y_pred``: ``(batch, C)``, ``C >= 2``.

    Output shape:
        a scalar, or ``(batch,)`` without reduction.

    Raises:
        ValueError: for ``alpha`` out of range or NaN, ``min_margin`` not > 0, differing
            shapes, fewer than 2 classes, or (eagerly) labels outside ``{0, 1}`` and
            ``{-1, +1}``.
    """

    _hyper_parameters = ("alpha", "min_margin")
    _config_flags = ("multi_gpu", "convex")
    alpha = HyperParameter(check_hinge_weight)
    min_margin = HyperParameter(check_positive)

    def __init__(
        self,
        alpha=10.0,
        min_margin=1.0,
        multi_gpu=False,
        reduction="sum_over_batch_size",
        name="MulticlassHKR",
        dtype=None,
        convex=False,
    ):
        self.convex = check_bool("convex", convex)
        self._set_multi_gpu(multi_gpu)
        LipLoss.__init__(
            self, reduction=reduction, name=name, dtype=dtype, alpha=alpha, min_margin=min_margin
        )

    def call(self, y_true, y_pred):
        y_true, y_pred, valid = self._prepare(y_true, y_pred)
        hinge = _multiclass_hinge(y_true, y_pred, self.hyper("min_margin", y_pred.dtype))
        values = self._combine(kr_values(y_true, y_pred), hinge, y_pred.dtype)
        return self.invalid_to_nan(values, valid)
