"""Certified-robustness metrics: streaming `keras.metrics.Metric`s for Lipschitz classifiers.

For an ``L``-Lipschitz classifier ``f`` (in L2), the prediction at ``x`` cannot change
inside the L2 ball of radius ``r(x)`` around ``x``, with

* binary (one output, class given by the sign of ``f``): ``r(x) = |f(x)| / L``;
* multiclass, margin ``m(x) = f_y(x) - max_{j != y} f_j(x)``:
  ``r(x) = m(x) / (sqrt(2) L)`` when the output vector ``f`` as a whole is
  ``L``-Lipschitz (``disjoint_neurons=False``), since ``f_y - f_j`` is then
  ``sqrt(2) L``-Lipschitz; ``r(x) = m(x) / (2 L)`` when only each output ``f_j`` is
  ``L``-Lipschitz on its own (``disjoint_neurons=True``, e.g. a last `FrobeniusDense`
  layer with ``disjoint_neurons=True``). The ``2 L`` certificate is valid for every
  ``L``-Lipschitz network, the ``sqrt(2) L`` one is tighter but needs the whole output
  vector to be ``L``-Lipschitz (e.g. a last `SpectralDense` layer).

With the true label ``y`` the *signed* radius is ``m(x) / (c L)`` (``c`` = 1, ``sqrt(2)``
or 2): positive when ``x`` is correctly classified, negative otherwise.

The metrics accumulate a weighted sum and a weight total in state variables, so their
value over several batches equals their value over the concatenated batch (``fit`` and
``evaluate`` report the value over the whole epoch / dataset). `reset_state` starts over.

Reference:
    Serrurier, Mamalet, Gonzalez-Sanz, Boissin, Loubes, del Barrio, "Achieving robustness
    in classification using optimal transport with hinge regularization", CVPR 2021.
    Tsuzuku, Sato, Sugiyama, "Lipschitz-margin training", NeurIPS 2018.
"""

from __future__ import annotations

import math
import numbers

import keras
from keras import ops

__all__ = [
    "CategoricalProvableRobustAccuracy",
    "BinaryProvableRobustAccuracy",
    "CategoricalProvableAvgRobustness",
    "BinaryProvableAvgRobustness",
]


# ------------------------------------------------------------------ argument checks


def _check_lip_const(lip_const) -> float:
    if (
        isinstance(lip_const, bool)
        or not isinstance(lip_const, numbers.Real)
        or not math.isfinite(lip_const)
        or lip_const <= 0
    ):
        raise ValueError(f"lip_const must be a finite number > 0, received: {lip_const!r}")
    return float(lip_const)


def _check_epsilon(epsilon) -> float:
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, numbers.Real)
        or not math.isfinite(epsilon)
        or epsilon < 0
    ):
        raise ValueError(f"epsilon must be a finite number >= 0, received: {epsilon!r}")
    return float(epsilon)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, received: {value!r}")
    return value


def _certificate_factor(lip_const: float, disjoint_neurons: bool) -> float:
    """``c L`` with ``c = 2`` for disjoint neurons and ``c = sqrt(2)`` otherwise."""
    return (2.0 if disjoint_neurons else math.sqrt(2.0)) * lip_const


# ------------------------------------------------------------------ signed margins
# Shared with `deel_lip.robustness` (which sits above this module and imports them).


def _multiclass_margin(y_true, y_pred):
    """Signed margin ``f_y - max_{j != y} f_j`` of each sample, shape ``(batch,)``.

    ``y_pred`` has shape ``(batch, n_classes)`` with ``n_classes >= 2``. ``y_true`` is
    either one-hot like (same shape as ``y_pred``; the class is its argmax, so labels in
    {0, 1}, {-1, +1} or smoothed all work) or integer class ids of shape ``(batch,)`` or
    ``(batch, 1)``.
    """
    if len(y_pred.shape) != 2:
        raise ValueError(
            "multiclass predictions must have shape (batch, n_classes), "
            f"received shape {tuple(y_pred.shape)}"
        )
    n_classes = y_pred.shape[-1]
    if n_classes is None or n_classes < 2:
        raise ValueError(
            "multiclass predictions need a known number of classes >= 2 on the last axis, "
            f"received shape {tuple(y_pred.shape)}; use the Binary metrics for one output"
        )
    if len(y_true.shape) == 2 and y_true.shape[-1] == n_classes:
        class_ids = ops.argmax(y_true, axis=-1)
    elif len(y_true.shape) == 1 or (len(y_true.shape) == 2 and y_true.shape[-1] == 1):
        class_ids = ops.reshape(y_true, (-1,))
    else:
        raise ValueError(
            f"labels must be one-hot of shape (batch, {n_classes}) or class ids of shape "
            f"(batch,) or (batch, 1), received shape {tuple(y_true.shape)}"
        )
    mask = ops.one_hot(ops.cast(class_ids, "int32"), n_classes, dtype=y_pred.dtype)
    true_score = ops.sum(y_pred * mask, axis=-1)
    lowest = ops.min(y_pred) - 1.0  # a value below every score, keeps gradients finite
    best_other = ops.max(ops.where(mask > 0, lowest, y_pred), axis=-1)
    return true_score - best_other


def _binary_margin(y_true, y_pred):
    """Signed score ``s f(x)`` with ``s = +1`` for labels > 0, ``-1`` otherwise.

    Labels in {0, 1} and in {-1, +1} both work. ``y_pred`` has shape ``(batch,)`` or
    ``(batch, 1)``; the result has shape ``(batch,)``.
    """
    if len(y_pred.shape) > 2 or (len(y_pred.shape) == 2 and y_pred.shape[-1] != 1):
        raise ValueError(
            "binary predictions must have shape (batch,) or (batch, 1), "
            f"received shape {tuple(y_pred.shape)}"
        )
    y_pred = ops.reshape(y_pred, (-1,))
    sign = ops.where(ops.reshape(y_true, (-1,)) > 0, 1.0, -1.0)
    return ops.cast(sign, y_pred.dtype) * y_pred


# ------------------------------------------------------------------ metrics


class _StreamingMean(keras.metrics.Metric):
    """Weighted mean of a per-sample value over every sample seen since the last reset.

    State: ``total = sum_i w_i v_i`` and ``count = sum_i w_i`` (both summed across
    replicas under a distribution strategy); ``result() = total / count`` (0 before any
    update).
    """

    def __init__(self, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def _signed_radius(self, y_true, y_pred):
        raise NotImplementedError

    def _values(self, signed_radius):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add a batch: ``y_true`` labels, ``y_pred`` logits, optional per-sample weights."""
        y_pred = ops.cast(ops.convert_to_tensor(y_pred), self.dtype)
        y_true = ops.convert_to_tensor(y_true)
        values = self._values(self._signed_radius(y_true, y_pred))
        if sample_weight is None:
            weights = ops.ones_like(values)
        else:
            weights = ops.cast(ops.convert_to_tensor(sample_weight), self.dtype)
            if len(weights.shape) > 1:
                weights = ops.reshape(weights, (-1,))
            weights = ops.broadcast_to(weights, ops.shape(values))
        self.total.assign_add(ops.sum(values * weights))
        self.count.assign_add(ops.sum(weights))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)


class _CategoricalMixin:
    def _signed_radius(self, y_true, y_pred):
        factor = _certificate_factor(self.lip_const, self.disjoint_neurons)
        return _multiclass_margin(y_true, y_pred) / factor


class _BinaryMixin:
    def _signed_radius(self, y_true, y_pred):
        return _binary_margin(y_true, y_pred) / self.lip_const


class _RobustAccuracyMixin:
    def _values(self, signed_radius):
        return ops.cast(signed_radius > self.epsilon, self.dtype)


class _AvgRobustnessMixin:
    def _values(self, signed_radius):
        return signed_radius if self.negative_robustness else ops.relu(signed_radius)


@keras.saving.register_keras_serializable("deel_lip")
class CategoricalProvableRobustAccuracy(_CategoricalMixin, _RobustAccuracyMixin, _StreamingMean):
    """Fraction of samples correctly classified with a certified L2 radius above ``epsilon``.

    ``mean_i [ (f_{y_i}(x_i) - max_{j != y_i} f_j(x_i)) / (c L) > epsilon ]`` with
    ``c = 2`` when ``disjoint_neurons`` and ``c = sqrt(2)`` otherwise (see the module
    docstring). Misclassified samples have a negative margin and never count. With
    ``epsilon=0`` the metric is the accuracy (ties excluded).

    Args:
        epsilon: L2 radius to certify (>= 0).
        lip_const: Lipschitz constant ``L`` of the network (> 0).
        disjoint_neurons: True when each output is ``L``-Lipschitz separately (``2 L``
            certificate, valid for every ``L``-Lipschitz network, deel-lip's default);
            False when the whole output vector is ``L``-Lipschitz (tighter
            ``sqrt(2) L`` certificate, e.g. a network ending with `SpectralDense`).
        name: metric name.
        dtype: dtype of the state and of the computation.

    Input shape:
        ``y_true``: one-hot ``(batch, n_classes)`` (argmax = class; {0,1}, {-1,+1} or
        smoothed labels all work) or class ids ``(batch,)`` / ``(batch, 1)``;
        ``y_pred``: logits ``(batch, n_classes)``, ``n_classes >= 2``.

    Output shape:
        Scalar.

    Raises:
        ValueError: ``epsilon < 0``, ``lip_const <= 0``, or label / prediction shapes
            that do not fit (at the first update).
        TypeError: ``disjoint_neurons`` not a bool.
    """

    def __init__(
        self,
        epsilon=36 / 255,
        lip_const=1.0,
        disjoint_neurons=True,
        name="CategoricalProvableRobustAccuracy",
        dtype=None,
    ):
        self.epsilon = _check_epsilon(epsilon)
        self.lip_const = _check_lip_const(lip_const)
        self.disjoint_neurons = _check_bool("disjoint_neurons", disjoint_neurons)
        super().__init__(name=name, dtype=dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "epsilon": self.epsilon,
            "lip_const": self.lip_const,
            "disjoint_neurons": self.disjoint_neurons,
        }


@keras.saving.register_keras_serializable("deel_lip")
class BinaryProvableRobustAccuracy(_BinaryMixin, _RobustAccuracyMixin, _StreamingMean):
    """Fraction of samples correctly classified with a certified L2 radius above ``epsilon``.

    ``mean_i [ s_i f(x_i) / L > epsilon ]`` with ``s_i = +1`` for a label > 0 and ``-1``
    otherwise: the class is the sign of the single output ``f``.

    Args:
        epsilon: L2 radius to certify (>= 0).
        lip_const: Lipschitz constant ``L`` of the network (> 0).
        name: metric name.
        dtype: dtype of the state and of the computation.

    Input shape:
        ``y_true``: labels in {0, 1} or {-1, +1}, ``(batch,)`` or ``(batch, 1)``;
        ``y_pred``: scores ``(batch,)`` or ``(batch, 1)``.

    Output shape:
        Scalar.

    Raises:
        ValueError: ``epsilon < 0``, ``lip_const <= 0``, or predictions with more than one
            output (at the first update).
    """

    def __init__(
        self, epsilon=36 / 255, lip_const=1.0, name="BinaryProvableRobustAccuracy", dtype=None
    ):
        self.epsilon = _check_epsilon(epsilon)
        self.lip_const = _check_lip_const(lip_const)
        super().__init__(name=name, dtype=dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "lip_const": self.lip_const}


@keras.saving.register_keras_serializable("deel_lip")
class CategoricalProvableAvgRobustness(_CategoricalMixin, _AvgRobustnessMixin, _StreamingMean):
    """Mean certified L2 radius ``mean_i phi(m(x_i) / (c L))``.

    ``m(x) = f_y(x) - max_{j != y} f_j(x)``, ``c = 2`` when ``disjoint_neurons`` and
    ``c = sqrt(2)`` otherwise. ``phi = relu`` by default: a misclassified sample counts as
    radius 0 (it stays in the mean). With ``negative_robustness=True``, ``phi`` is the
    identity: a misclassified sample counts as minus the radius of the ball in which it
    stays misclassified.

    Args:
        lip_const: Lipschitz constant ``L`` of the network (> 0).
        disjoint_neurons: see `CategoricalProvableRobustAccuracy`.
        negative_robustness: count misclassified samples negatively instead of as 0.
        name: metric name.
        dtype: dtype of the state and of the computation.

    Input shape:
        As `CategoricalProvableRobustAccuracy`.

    Output shape:
        Scalar.

    Raises:
        ValueError: ``lip_const <= 0`` or label / prediction shapes that do not fit.
        TypeError: ``disjoint_neurons`` or ``negative_robustness`` not a bool.
    """

    def __init__(
        self,
        lip_const=1.0,
        disjoint_neurons=True,
        negative_robustness=False,
        name="CategoricalProvableAvgRobustness",
        dtype=None,
    ):
        self.lip_const = _check_lip_const(lip_const)
        self.disjoint_neurons = _check_bool("disjoint_neurons", disjoint_neurons)
        self.negative_robustness = _check_bool("negative_robustness", negative_robustness)
        super().__init__(name=name, dtype=dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "lip_const": self.lip_const,
            "disjoint_neurons": self.disjoint_neurons,
            "negative_robustness": self.negative_robustness,
        }


@keras.saving.register_keras_serializable("deel_lip")
class BinaryProvableAvgRobustness(_BinaryMixin, _AvgRobustnessMixin, _StreamingMean):
    """Mean certified L2 radius ``mean_i phi(s_i f(x_i) / L)`` of a binary classifier.

    ``s_i = +1`` for a label > 0 and ``-1`` otherwise; ``phi = relu`` by default
    (misclassified samples count as 0), the identity with ``negative_robustness=True``.

    Args:
        lip_const: Lipschitz constant ``L`` of the network (> 0).
        negative_robustness: count misclassified samples negatively instead of as 0.
        name: metric name.
        dtype: dtype of the state and of the computation.

    Input shape:
        As `BinaryProvableRobustAccuracy`.

    Output shape:
        Scalar.

    Raises:
        ValueError: ``lip_const <= 0`` or predictions with more than one output.
        TypeError: ``negative_robustness`` not a bool.
    """

    def __init__(
        self,
        lip_const=1.0,
        negative_robustness=False,
        name="BinaryProvableAvgRobustness",
        dtype=None,
    ):
        self.lip_const = _check_lip_const(lip_const)
        self.negative_robustness = _check_bool("negative_robustness", negative_robustness)
        super().__init__(name=name, dtype=dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "lip_const": self.lip_const,
            "negative_robustness": self.negative_robustness,
        }
