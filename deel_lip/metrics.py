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
or 2): positive when ``x`` is correctly classified, negative otherwise. Margins are
computed row by row in (at least) float32.

The metrics accumulate a weighted sum and a weight total in state variables, so their
value over several batches equals their value over the concatenated batch (``fit`` and
``evaluate`` report the value over the whole epoch / dataset). `reset_state` starts over.
Their default names are snake_case (``History`` keys such as
``categorical_provable_robust_accuracy``), as Keras' own metrics.

Invalid labels (class ids outside ``[0, C)``, multi-hot or tied rows, NaN, binary labels
outside {0, 1} and {-1, +1}) raise a ValueError naming ``y_true`` when the metric runs
eagerly; inside a traced ``fit`` / ``evaluate`` (no value known, no host round trip) the
sample counts as not certified (value 0), as does a sample with a non-finite logit
(an ``inf`` logit never certifies an infinite radius).

Reference:
    Serrurier, Mamalet, Gonzalez-Sanz, Boissin, Loubes, del Barrio, "Achieving robustness
    in classification using optimal transport with hinge regularization", CVPR 2021.
    Tsuzuku, Sato, Sugiyama, "Lipschitz-margin training", NeurIPS 2018.
"""

from __future__ import annotations

import keras
from keras import ops

from deel_lip._certify import (
    binary_margins,
    certificate_factor,
    labels_to_class_ids,
    margin_from_ids,
)
from deel_lip._checks import check_bool, check_epsilon, check_lip_const

__all__ = [
    "CategoricalProvableRobustAccuracy",
    "BinaryProvableRobustAccuracy",
    "CategoricalProvableAvgRobustness",
    "BinaryProvableAvgRobustness",
]


# ------------------------------------------------------------------ metrics

_REDUCTIONS = ("auto", "sum_over_batch_size", "mean", "sum")


class _StreamingMean(keras.metrics.Metric):
    """Weighted mean of a per-sample value over every sample seen since the last reset.

    State: ``total = sum_i w_i v_i`` and ``count = sum_i w_i`` (both summed across
    replicas under a distribution strategy); ``result() = total / count`` (0 before any
    update), or ``total`` with ``reduction="sum"``. Samples whose labels are invalid or
    whose predictions are not finite count with the value 0 (not certified): eagerly
    invalid labels raise, inside ``fit`` (traced, no value known) they are counted so.
    """

    def __init__(self, name=None, dtype=None, reduction="auto"):
        if reduction not in _REDUCTIONS:
            raise ValueError(
                f"reduction must be one of {_REDUCTIONS} for a streaming metric (per-sample "
                "values: deel_lip.robustness.certified_radius), received: "
                f"{reduction!r}"
            )
        self.reduction = reduction
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def _signed_radius(self, y_true, y_pred):
        raise NotImplementedError

    def _values(self, signed_radius):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add a batch: ``y_true`` labels, ``y_pred`` logits, optional per-sample weights."""
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        radius, ok = self._signed_radius(y_true, y_pred)
        values = ops.cast(ops.where(ok, self._values(radius), 0.0), self.dtype)
        if sample_weight is None:
            weights = ops.ones_like(values)
        else:
            weights = ops.cast(ops.convert_to_tensor(sample_weight), self.dtype)
            if len(weights.shape) == 1 or (len(weights.shape) == 2 and weights.shape[-1] == 1):
                weights = ops.reshape(weights, (-1, 1))
            weights = ops.broadcast_to(weights, ops.shape(values))
        self.total.assign_add(ops.sum(values * weights))
        self.count.assign_add(ops.sum(weights))

    def result(self):
        if self.reduction == "sum":
            return ops.convert_to_tensor(self.total)
        return ops.divide_no_nan(self.total, self.count)

    def get_config(self):
        return {**super().get_config(), "reduction": self.reduction}


class _CategoricalMixin:
    def _signed_radius(self, y_true, y_pred):
        class_ids, valid = labels_to_class_ids(self.name, y_true, y_pred)
        margin = margin_from_ids(class_ids, y_pred)
        finite = ops.all(ops.isfinite(ops.cast(y_pred, margin.dtype)), axis=-1)
        factor = certificate_factor(self.lip_const, self.disjoint_neurons)
        ok = ops.logical_and(valid, finite)
        return ops.reshape(margin / factor, (-1, 1)), ops.reshape(ok, (-1, 1))


class _BinaryMixin:
    def _signed_radius(self, y_true, y_pred):
        margin, ok = binary_margins(self.name, y_true, y_pred)
        return margin / self.lip_const, ok


class _RobustAccuracyMixin:
    def _values(self, signed_radius):
        return ops.cast(signed_radius > self.epsilon, signed_radius.dtype)


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
        reduction: deel-lip's argument: ``"auto"``, ``"sum_over_batch_size"`` or
            ``"mean"`` (the weighted mean), ``"sum"`` (the weighted sum).
        name: metric name.
        dtype: dtype of the state and of the computation.

    Input shape:
        ``y_true``: one-hot ``(batch, n_classes)`` (class = the single argmax of the row;
        {0,1}, {-1,+1} or smoothed labels) or class ids ``(batch,)`` / ``(batch, 1)``;
        ``y_pred``: logits ``(batch, n_classes)``, ``n_classes >= 2``.

    Output shape:
        Scalar.

    Raises:
        ValueError: ``epsilon < 0``, ``lip_const <= 0``, a bad ``reduction``, or (at an
            update) shapes that do not fit or, eagerly, invalid labels.
        TypeError: ``disjoint_neurons`` not a bool.
    """

    def __init__(
        self,
        epsilon=36 / 255,
        lip_const=1.0,
        disjoint_neurons=True,
        reduction="auto",
        name="categorical_provable_robust_accuracy",
        dtype=None,
    ):
        self.epsilon = check_epsilon(epsilon)
        self.lip_const = check_lip_const(lip_const)
        self.disjoint_neurons = check_bool("disjoint_neurons", disjoint_neurons)
        super().__init__(name=name, dtype=dtype, reduction=reduction)

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
    otherwise: the class is the sign of the output ``f``. With ``(batch, outputs)``
    predictions (multilabel, as deel-lip) each output is a binary problem and the mean
    runs over every (sample, output) pair.

    Args:
        epsilon: L2 radius to certify (>= 0).
        lip_const: Lipschitz constant ``L`` of the network (> 0).
        reduction: deel-lip's argument: ``"auto"``, ``"sum_over_batch_size"`` or
            ``"mean"`` (the weighted mean), ``"sum"`` (the weighted sum).
        name: metric name.
        dtype: dtype of the state and of the computation.

    Input shape:
        ``y_true``: labels in {0, 1} or {-1, +1} of the shape of ``y_pred``
        (``(batch,)`` accepted for one output); ``y_pred``: ``(batch,)``, ``(batch, 1)``
        or ``(batch, outputs)``.

    Output shape:
        Scalar.

    Raises:
        ValueError: ``epsilon < 0``, ``lip_const <= 0``, a bad ``reduction``, or (at an
            update) shapes that do not fit or, eagerly, labels outside {0, 1}, {-1, +1}.
    """

    def __init__(
        self,
        epsilon=36 / 255,
        lip_const=1.0,
        reduction="auto",
        name="binary_provable_robust_accuracy",
        dtype=None,
    ):
        self.epsilon = check_epsilon(epsilon)
        self.lip_const = check_lip_const(lip_const)
        super().__init__(name=name, dtype=dtype, reduction=reduction)

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
        reduction: deel-lip's argument: ``"auto"``, ``"sum_over_batch_size"`` or
            ``"mean"`` (the weighted mean), ``"sum"`` (the weighted sum).
        name: metric name.
        dtype: dtype of the state and of the computation.

    Input shape:
        As `CategoricalProvableRobustAccuracy`.

    Output shape:
        Scalar.

    Raises:
        ValueError: ``lip_const <= 0``, a bad ``reduction``, or (at an update) shapes that
            do not fit or, eagerly, invalid labels.
        TypeError: ``disjoint_neurons`` or ``negative_robustness`` not a bool.
    """

    def __init__(
        self,
        lip_const=1.0,
        disjoint_neurons=True,
        negative_robustness=False,
        reduction="auto",
        name="categorical_provable_avg_robustness",
        dtype=None,
    ):
        self.lip_const = check_lip_const(lip_const)
        self.disjoint_neurons = check_bool("disjoint_neurons", disjoint_neurons)
        self.negative_robustness = check_bool("negative_robustness", negative_robustness)
        super().__init__(name=name, dtype=dtype, reduction=reduction)

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
        reduction: deel-lip's argument: ``"auto"``, ``"sum_over_batch_size"`` or
            ``"mean"`` (the weighted mean), ``"sum"`` (the weighted sum).
        name: metric name.
        dtype: dtype of the state and of the computation.

    Input shape:
        As `BinaryProvableRobustAccuracy`.

    Output shape:
        Scalar.

    Raises:
        ValueError: ``lip_const <= 0``, a bad ``reduction``, or (at an update) shapes that
            do not fit or, eagerly, labels outside {0, 1} and {-1, +1}.
        TypeError: ``negative_robustness`` not a bool.
    """

    def __init__(
        self,
        lip_const=1.0,
        negative_robustness=False,
        reduction="auto",
        name="binary_provable_avg_robustness",
        dtype=None,
    ):
        self.lip_const = check_lip_const(lip_const)
        self.negative_robustness = check_bool("negative_robustness", negative_robustness)
        super().__init__(name=name, dtype=dtype, reduction=reduction)

    def get_config(self):
        return {
            **super().get_config(),
            "lip_const": self.lip_const,
            "negative_robustness": self.negative_robustness,
        }
