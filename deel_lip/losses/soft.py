r"""Multiclass hKR losses that focus on the most competitive wrong classes.

`MulticlassHKR` gives every wrong class the same weight. These two losses weight the
wrong classes by how close they are to winning: a softmax over the wrong logits
(`MulticlassSoftHKR`) or a log-sum-exp, a smooth maximum (`LseHKR`). Both act per
sample (no batch-level class means); `MulticlassSoftHKR`'s running mean of ``|f|`` is
taken over the global batch.

Notation: ``f`` predictions ``(batch, C)``, ``y`` the true class (one-hot labels),
``m`` = ``min_margin``. Invalid labels raise eagerly and give NaN values inside a traced
``fit``; NaN predictions give NaN values (nothing is raised).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from deel_lip import _backend
from deel_lip.losses._base import (
    HyperParameter,
    LipLoss,
    check_alpha,
    check_bool,
    check_convex_alpha,
    check_positive,
    check_positive_or_inf,
    check_unit_interval,
    float32_value,
    legacy_convex_config,
    match_shapes,
    need_classes,
    positives,
)
from deel_lip.losses._labels import enforce, sign_rows

__all__ = ["MulticlassSoftHKR", "LseHKR"]

_SIGN_LABELS = "labels in {0, 1} or in {-1, +1} (one set per batch)"

# bounds of the running mean of |f| and of the effective softmax temperature
_MEAN_BOUNDS = (0.005, 1000.0)
_TEMPERATURE_BOUNDS = (0.005, 250.0)


@keras.saving.register_keras_serializable("deel_lip")
class MulticlassSoftHKR(LipLoss):
    r"""Softmax-weighted multiclass hKR (Serrurier et al., NeurIPS 2023; deel-lip's).

    Each wrong class ``k != y`` gets the weight
    ``w_ik = exp(T f_ik) / sum_{j != y} exp(T f_ij)`` and the true class the weight 1:

    * KR term: ``KR_i = -(f_iy - sum_{k != y} w_ik f_ik)``;
    * hinge term: ``H_i = relu(m/2 - f_iy) + sum_{k != y} w_ik relu(m/2 + f_ik)``;
    * loss (deel-lip): ``KR_i / alpha + H_i`` (``alpha = inf``: ``H_i`` alone), the
      minimiser of ``-KR + alpha * hinge`` of the other hKR losses, divided by
      ``alpha``; with ``convex=True``: ``(1 - alpha) * KR_i + alpha * H_i``, ``alpha``
      in ``[0, 1]`` (``alpha_c`` there is ``alpha = alpha_c / (1 - alpha_c)`` here).

    The effective temperature adapts to the scale of the logits: a running mean
    ``mu <- clip(alpha_mean * mu + (1 - alpha_mean) * mean|f|, 0.005, 1000)`` (``mu``
    starts at ``min_margin``; ``mean|f|`` over the global batch under a distribution
    strategy) is updated at every call (validation and `evaluate` included, as in deel-lip:
    a Keras loss cannot tell training from evaluation), and
    ``T = clip(temperature * m / max(mu, m), 0.005, 250)``. A batch whose ``mean|f|`` is
    not finite leaves ``mu`` unchanged (one NaN batch does not poison the next ones).
    ``mu`` is saved in the config (``current_mean``), so a model saved with `model.save`
    and reloaded resumes with the same temperature. With ``alpha_mean = 1`` the running
    mean stays at ``m`` and ``T = temperature``. The gradient flows through the weights
    ``w``; ``T`` and ``mu`` carry none.

    Labels are one-hot ``(batch, C)`` in ``{0, 1}`` or ``{-1, +1}``; with multi-hot
    labels every positive output gets the weight 1 and the softmax runs over the
    negatives.

    Args:
        alpha: hinge weight (a variable), ``> 0`` or ``inf``, default 10 (deel-lip's);
            in ``[0, 1]`` with ``convex=True``.
        min_margin: margin ``m`` (> 0, a variable).
        alpha_mean: momentum of the running mean of ``|f|`` in ``[0, 1]`` (a variable).
        temperature: softmax temperature factor (> 0, a variable).
        reduction: Keras reduction.
        name: name of the loss.
        dtype: dtype (policy) of the computation.
        convex: use ``(1 - alpha) * KR + alpha * hinge``.
        current_mean: initial running mean (None: ``min_margin``); set from a config.

    Attributes:
        current_mean: the running mean ``mu`` (a non-trainable variable).

    Input shape:
        ``y_true`` and ``y_pred``: ``(batch, C)``, ``C >= 2``.

    Output shape:
        a scalar, or ``(batch,)`` without reduction.

    Raises:
        ValueError: for an invalid hyper-parameter, differing shapes, fewer than 2
            classes, or (eagerly) labels outside ``{0, 1}`` and ``{-1, +1}``.

    Reference:
        Serrurier, Mamalet, Fel, Bethune, Boissin, "On the explainable properties of
        1-Lipschitz neural networks: an optimal transport perspective", NeurIPS 2023.
    """

    _hyper_parameters = ("alpha", "min_margin", "alpha_mean", "temperature")
    alpha = HyperParameter(check_positive_or_inf)
    min_margin = HyperParameter(check_positive)
    alpha_mean = HyperParameter(check_unit_interval)
    temperature = HyperParameter(check_positive)

    def __init__(
        self,
        alpha=10.0,
        min_margin=1.0,
        alpha_mean=0.99,
        temperature=1.0,
        reduction="sum_over_batch_size",
        name="MulticlassSoftHKR",
        dtype=None,
        convex=False,
        current_mean=None,
    ):
        self.convex = check_bool("convex", convex)
        super().__init__(
            reduction=reduction,
            name=name,
            dtype=dtype,
            alpha=alpha,
            min_margin=min_margin,
            alpha_mean=alpha_mean,
            temperature=temperature,
        )
        start = ops.convert_to_numpy(self.min_margin) if current_mean is None else current_mean
        start = check_positive("current_mean", start)
        self.current_mean = keras.Variable(
            min(max(start, _MEAN_BOUNDS[0]), _MEAN_BOUNDS[1]),
            dtype="float32",
            trainable=False,
            aggregation="only_first_replica",
            name="current_mean",
        )

    def check_hyper(self, name: str, value) -> float:
        if name == "alpha" and self.convex:
            return check_convex_alpha(name, value)
        return super().check_hyper(name, value)

    @classmethod
    def from_config(cls, config: dict):
        return super().from_config(legacy_convex_config(cls, config))

    def get_config(self) -> dict:
        config = super().get_config()
        config["convex"] = self.convex
        config["current_mean"] = float32_value(self.current_mean)
        return config

    def _effective_temperature(self, y_pred):
        """Update the running mean of ``|f|`` and return ``T`` (no gradient)."""
        abs_pred = ops.cast(ops.stop_gradient(ops.abs(y_pred)), "float32")
        size = ops.cast(ops.size(abs_pred), "float32")
        totals = _backend.cross_replica_sum(ops.stack([ops.sum(abs_pred), size]))
        batch_mean = totals[0] / ops.maximum(totals[1], 1.0)
        momentum = ops.cast(self.alpha_mean, "float32")
        previous = ops.cast(self.current_mean, "float32")
        mean = ops.clip(momentum * previous + (1.0 - momentum) * batch_mean, *_MEAN_BOUNDS)
        mean = ops.where(ops.isfinite(batch_mean), mean, previous)
        self.current_mean.assign(mean)
        margin = ops.cast(self.min_margin, "float32")
        temperature = ops.cast(self.temperature, "float32") * margin / ops.maximum(mean, margin)
        return ops.cast(ops.clip(temperature, *_TEMPERATURE_BOUNDS), y_pred.dtype)

    def call(self, y_true, y_pred):
        y_true, y_pred = match_shapes(self.name, y_true, y_pred, rank2=True)
        need_classes(self.name, y_pred)
        valid = enforce(self.name, y_true, sign_rows(y_true), _SIGN_LABELS)
        pos = positives(y_true, y_pred.dtype)
        temperature = self._effective_temperature(y_pred)
        wrong_logits = ops.where(pos > 0, -math.inf, temperature * y_pred)
        weights = ops.where(pos > 0, 1.0, ops.softmax(wrong_logits, axis=-1))
        signed = (2.0 * pos - 1.0) * y_pred
        margin = self.hyper("min_margin", y_pred.dtype)
        alpha = self.hyper("alpha", y_pred.dtype)
        kr = -ops.sum(weights * signed, axis=-1)
        hinge = ops.sum(weights * ops.relu(margin / 2.0 - signed), axis=-1)
        if self.convex:
            values = (1.0 - alpha) * kr + alpha * hinge
        else:
            kr_weight = ops.where(ops.isinf(alpha), ops.zeros_like(alpha), 1.0 / alpha)
            values = kr_weight * kr + hinge
        return self.invalid_to_nan(values, valid)


@keras.saving.register_keras_serializable("deel_lip")
class LseHKR(LipLoss):
    r"""Multiclass hKR on the margin to a log-sum-exp of the wrong classes.

    With ``z = temperature * f`` and ``t = log(C - 1) / (penalty * m / 2)``, the wrong
    classes are summarised by the smooth maximum
    ``L_i = (1/t) log sum_{k != y} exp(t z_ik)``, which satisfies
    ``max_{k != y} z_ik <= L_i <= max_{k != y} z_ik + penalty * m / 2`` (for ``C = 2``,
    ``L_i`` is the single wrong logit). Then:

    * KR term: ``KR_i = -(z_iy - L_i)``;
    * hinge term: ``H_i = relu(m/2 - z_iy) + relu(m/2 + L_i)``;
    * loss: ``(1 - alpha) * KR_i + alpha * H_i``.

    The hinge is zero when the true logit is above ``m/2`` and the smooth maximum of the
    others below ``-m/2``; the KR term pushes the (smooth) margin ``z_iy - L_i`` up.
    Labels are one-hot ``(batch, C)`` in ``{0, 1}`` or ``{-1, +1}``, exactly one positive
    per row. ``alpha`` weights the terms convexly, as in deel-torchlip (LseHKR is not a
    deel-lip loss); ``alpha > 1`` is converted to ``alpha / (1 + alpha)`` with a warning.

    Args:
        alpha: weight of the hinge term in ``[0, 1]`` (a variable).
        min_margin: margin ``m`` (> 0, a variable).
        temperature: factor applied to the logits (> 0, a variable).
        penalty: largest gap between ``L`` and the true maximum, in units of ``m/2``
            (> 0, a variable).
        reduction: Keras reduction.
        name: name of the loss.
        dtype: dtype (policy) of the computation.

    Input shape:
        ``y_true`` and ``y_pred``: ``(..., C)``, ``C >= 2``.

    Output shape:
        a scalar, or ``y_pred.shape[:-1]`` without reduction.

    Raises:
        ValueError: for an invalid hyper-parameter, differing shapes, fewer than 2
            classes, or (eagerly) labels outside ``{0, 1}`` and ``{-1, +1}`` or rows
            without exactly one positive label.

    Reference:
        the ``LseHKRMulticlassLoss`` of deel-torchlip (the PyTorch sibling of deel-lip),
        which defines the same quantities.
    """

    _hyper_parameters = ("alpha", "min_margin", "temperature", "penalty")
    alpha = HyperParameter(check_alpha)
    min_margin = HyperParameter(check_positive)
    temperature = HyperParameter(check_positive)
    penalty = HyperParameter(check_positive)

    def __init__(
        self,
        alpha=0.9,
        min_margin=1.0,
        temperature=1.0,
        penalty=1.0,
        reduction="sum_over_batch_size",
        name="LseHKR",
        dtype=None,
    ):
        super().__init__(
            reduction=reduction,
            name=name,
            dtype=dtype,
            alpha=alpha,
            min_margin=min_margin,
            temperature=temperature,
            penalty=penalty,
        )

    def call(self, y_true, y_pred):
        y_true, y_pred = match_shapes(self.name, y_true, y_pred)
        classes = need_classes(self.name, y_pred)
        valid = enforce(
            self.name,
            y_true,
            sign_rows(y_true, one_positive=True),
            "one-hot labels in {0, 1} or {-1, +1} (exactly one positive per row)",
        )
        pos = positives(y_true, y_pred.dtype)
        margin = self.hyper("min_margin", y_pred.dtype)
        alpha = self.hyper("alpha", y_pred.dtype)
        z = self.hyper("temperature", y_pred.dtype) * y_pred
        true_logit = ops.sum(pos * z, axis=-1)
        wrong = ops.where(pos > 0, -math.inf, z)
        if classes == 2:
            smooth_max = ops.max(wrong, axis=-1)
        else:
            t = math.log(classes - 1) / (self.hyper("penalty", y_pred.dtype) * margin / 2.0)
            smooth_max = ops.logsumexp(t * wrong, axis=-1) / t
        kr = -(true_logit - smooth_max)
        hinge = ops.relu(margin / 2.0 - true_logit) + ops.relu(margin / 2.0 + smooth_max)
        return self.invalid_to_nan((1.0 - alpha) * kr + alpha * hinge, valid)
