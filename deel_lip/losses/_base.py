"""Shared machinery of the losses: hyper-parameter variables, label checks, KR weights.

Every loss of `deel_lip.losses` is a `keras.losses.Loss` whose ``call`` returns one value
per sample; Keras then applies ``sample_weight`` and the reduction. Hyper-parameters are
non-trainable ``keras.Variable`` s, so assigning them (``loss.alpha = 0.5`` or
`deel_lip.callbacks.LossParamScheduler`) reaches an already compiled train step.
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
from keras import ops

from deel_lip import _backend

__all__: list[str] = []


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))


def _as_float(name: str, value) -> float:
    if isinstance(value, keras.Variable):
        value = ops.convert_to_numpy(value)
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if not _is_number(value) or math.isnan(value):
        raise ValueError(f"{name} must be a number, received: {value!r}")
    return float(value)


def check_positive(name: str, value) -> float:
    """A finite number > 0."""
    value = _as_float(name, value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, received: {value!r}")
    return value


def check_unit_interval(name: str, value) -> float:
    """A number in ``[0, 1]``."""
    value = _as_float(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], received: {value!r}")
    return value


def check_alpha(name: str, value) -> float:
    """``alpha`` in ``[0, 1]`` (convex weighting); legacy values > 1 are converted.

    Used by `LseHKR` (whose reference, deel-torchlip, weights ``(1 - alpha) KR + alpha
    hinge``): ``alpha > 1`` in ``KR + alpha * hinge`` has the same minimiser as
    ``alpha / (1 + alpha)`` in the convex form (loss divided by ``1 + alpha``); ``inf``
    (hinge only) becomes 1. The conversion warns.
    """
    value = _as_float(name, value)
    if value < 0:
        raise ValueError(f"{name} must be in [0, 1] (or > 1, legacy), received: {value!r}")
    if value > 1:
        converted = 1.0 if math.isinf(value) else value / (1.0 + value)
        warnings.warn(
            f"{name}={value!r} > 1 follows the convention 'KR + {name} * hinge'; "
            f"using {name}={converted!r} in '(1 - {name}) * KR + {name} * hinge' (same "
            f"minimiser, loss divided by 1 + {name}).",
            UserWarning,
            stacklevel=5,
        )
        value = converted
    return value


def check_hinge_weight(name: str, value) -> float:
    """deel-lip's ``alpha``: a number ``>= 0`` or ``inf`` (hinge only)."""
    value = _as_float(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0 (or inf: hinge only), received: {value!r}")
    return value


def check_positive_or_inf(name: str, value) -> float:
    """A number ``> 0`` or ``inf``."""
    value = _as_float(name, value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0 (or inf), received: {value!r}")
    return value


def check_convex_alpha(name: str, value) -> float:
    """``alpha`` of the convex form ``(1 - alpha) KR + alpha hinge``: in ``[0, 1]``."""
    value = _as_float(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{name} must be in [0, 1] with convex=True, received: {value!r} (with the "
            f"default convex=False, '-KR + {name} * hinge' accepts any {name} >= 0)"
        )
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, received: {value!r}")
    return bool(value)


def legacy_convex_config(cls, config: dict) -> dict:
    """A config saved before ``convex`` existed keeps the objective it was saved with.

    deel_lip < 2 wrote ``"dtype"`` and no ``"convex"`` (its hKR losses were convex);
    deel-lip's own configs have no ``"dtype"`` and keep deel-lip's semantics.
    """
    config = dict(config)
    if "convex" not in config and "dtype" in config:
        warnings.warn(
            f"{cls.__name__}: config saved by deel_lip < 2, whose alpha weighted "
            f"'(1 - alpha) * KR + alpha * hinge': loaded with convex=True (the same "
            f"objective); deel-lip's form is alpha / (1 - alpha) with convex=False.",
            UserWarning,
            stacklevel=3,
        )
        config["convex"] = True
    return config


def hinge_weights(alpha):
    """``(w_kr, w_hinge)`` of ``-w_kr KR + w_hinge hinge`` for deel-lip's ``alpha``.

    ``(1, alpha)``, and ``(0, 1)`` for ``alpha = inf`` (hinge only), without forming
    ``inf * 0`` (whose gradient would be NaN).
    """
    infinite = ops.isinf(alpha)
    zero, one = ops.zeros_like(alpha), ops.ones_like(alpha)
    return ops.where(infinite, zero, one), ops.where(infinite, one, alpha)


def float32_value(variable) -> float:
    """The value of a float32 variable as the shortest Python float that round-trips."""
    return float(str(np.float32(ops.convert_to_numpy(variable))))


class HyperParameter:
    """A loss hyper-parameter held in a non-trainable float32 ``keras.Variable``.

    Reading the attribute returns the variable (so `LossParamScheduler` can ``assign``
    it); setting it to a number checks the number and assigns it to the variable, so the
    change reaches a compiled train step. ``check(name, value) -> float`` validates (a
    loss may refine it per instance in `LipLoss.check_hyper`); assigning the variable
    itself (as `LossParamScheduler` does) bypasses the check.
    """

    def __init__(self, check):
        self.check = check

    def __set_name__(self, owner, name):
        self.name = name
        self.slot = f"_hyper_{name}"

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        return instance.__dict__[self.slot]

    def __set__(self, instance, value):
        value = instance.check_hyper(self.name, value)
        variable = instance.__dict__.get(self.slot)
        if variable is None:
            instance.__dict__[self.slot] = keras.Variable(
                value, dtype="float32", trainable=False, name=self.name
            )
        else:
            variable.assign(value)


class LipLoss(keras.losses.Loss):
    """Base of the deel_lip losses: hyper-parameter variables and a complete config.

    Subclasses declare their hyper-parameters as `HyperParameter` class attributes and
    list them in ``_hyper_parameters`` (a tuple, in constructor order).
    """

    _hyper_parameters: tuple[str, ...] = ()

    def __init__(self, reduction="sum_over_batch_size", name=None, dtype=None, **hyper):
        if reduction == "auto":  # deel-lip's default (Keras 2's Reduction.AUTO)
            reduction = "sum_over_batch_size"
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._dtype_argument = dtype
        for key in self._hyper_parameters:
            setattr(self, key, hyper.pop(key))
        if hyper:
            raise TypeError(f"unexpected arguments: {sorted(hyper)}")

    def check_hyper(self, name: str, value) -> float:
        """The checked value of hyper-parameter ``name`` (ValueError if invalid)."""
        return getattr(type(self), name).check(name, value)

    def hyper(self, name: str, dtype):
        """The current value of a hyper-parameter, cast to ``dtype``."""
        return ops.cast(getattr(self, name), dtype)

    def get_config(self) -> dict:
        config = super().get_config()
        for key in self._hyper_parameters:
            config[key] = float32_value(getattr(self, key))
        dtype = self._dtype_argument
        if dtype is not None and not isinstance(dtype, str):
            dtype = keras.dtype_policies.serialize(dtype)
        config["dtype"] = dtype
        return config

    def invalid_to_nan(self, values, valid):
        """``values`` with NaN on the rows whose labels are invalid (traced mode).

        Eagerly, invalid labels already raised; inside ``fit`` the reported loss becomes
        NaN while the gradient of the valid rows is unchanged (no host round trip).
        """
        valid = ops.reshape(valid, ops.shape(values))
        return ops.where(valid, values, ops.cast(float("nan"), values.dtype))

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)


# --------------------------------------------------------------------------------------
# shapes and labels


def _shape_error(loss: str, y_true, y_pred, requirement: str) -> ValueError:
    return ValueError(
        f"{loss}: {requirement}; received y_true.shape={tuple(y_true.shape)} "
        f"and y_pred.shape={tuple(y_pred.shape)}"
    )


def match_shapes(loss: str, y_true, y_pred, rank2: bool = False):
    """``(y_true, y_pred)`` with identical static shapes, or a ValueError naming both.

    A prediction of shape ``(batch,)`` is read as ``(batch, 1)``, and labels of shape
    ``(batch,)`` are accepted for predictions of shape ``(batch, 1)``. With ``rank2``
    the predictions must be ``(batch, outputs)``.
    """
    if len(y_pred.shape) == 0:
        raise _shape_error(loss, y_true, y_pred, "y_pred must have rank >= 1")
    if len(y_pred.shape) == 1:
        y_pred = ops.expand_dims(y_pred, -1)
        if len(y_true.shape) == 1:
            y_true = ops.expand_dims(y_true, -1)
    if len(y_true.shape) == len(y_pred.shape) - 1 and y_pred.shape[-1] == 1:
        y_true = ops.expand_dims(y_true, -1)
    if len(y_true.shape) != len(y_pred.shape) or any(
        a is not None and b is not None and a != b for a, b in zip(y_true.shape, y_pred.shape)
    ):
        raise _shape_error(loss, y_true, y_pred, "y_true must have the shape of y_pred")
    if rank2 and len(y_pred.shape) != 2:
        raise _shape_error(
            loss, y_true, y_pred, "y_true and y_pred must have shape (batch, outputs)"
        )
    return y_true, y_pred


def need_classes(loss: str, y_pred, minimum: int = 2) -> int:
    """The static number of classes (last axis), at least ``minimum``."""
    classes = y_pred.shape[-1]
    if classes is None or classes < minimum:
        raise ValueError(
            f"{loss}: y_pred must have a known last axis of at least {minimum} classes, "
            f"received y_pred.shape={tuple(y_pred.shape)}"
        )
    return int(classes)


def positives(y_true, dtype):
    """1 where the label is positive (> 0), 0 elsewhere."""
    return ops.cast(ops.greater(y_true, 0), dtype)


def kr_values(y_true, y_pred):
    """Per-sample values whose mean over the global batch is the mean class-wise KR term.

    For each output ``k`` with positive samples ``P_k`` and negative samples ``N_k`` in
    the global batch (all replicas of a ``tf.distribute`` strategy),
    ``KR_k = mean_{P_k} f_k - mean_{N_k} f_k`` (an absent class contributes 0 to it,
    e.g. ``KR_k = -mean f_k`` in a batch without positives, as in deel-lip). The
    value of sample ``i`` is ``n * mean_k f_ik w_ik`` with ``w_ik = 1/|P_k|`` if
    ``i in P_k`` and ``-1/|N_k|`` otherwise, so that ``mean_i value_i = mean_k KR_k``.

    ``n`` is the local batch size times the number of replicas: the size Keras divides
    the local sum by under ``"sum_over_batch_size"``, so the replicas' losses add up to
    the global one exactly. The class counts are summed across replicas.
    """
    pos = positives(y_true, y_pred.dtype)
    local_batch = ops.cast(ops.shape(y_pred)[0], y_pred.dtype)
    counts = ops.concatenate([ops.sum(pos, axis=0), ops.reshape(local_batch, (1,))])
    counts = ops.cast(_backend.cross_replica_sum(counts), y_pred.dtype)
    n_pos, n_all = counts[:-1], counts[-1]
    n_neg = n_all - n_pos
    inv_pos = ops.where(n_pos > 0, 1.0 / ops.maximum(n_pos, 1.0), 0.0)
    inv_neg = ops.where(n_neg > 0, 1.0 / ops.maximum(n_neg, 1.0), 0.0)
    weights = pos * inv_pos - (1.0 - pos) * inv_neg
    scale = local_batch * _backend.num_replicas_in_sync()
    return scale * ops.mean(y_pred * weights, axis=-1)


def process_labels_for_multi_gpu(labels):
    """deel-lip's label pre-processing for its ``multi_gpu=True`` KR losses.

    Returns ``n / |P_k|`` where the label of output ``k`` is positive (``> 0``) and
    ``-n / |N_k|`` elsewhere, ``n`` the number of rows of ``labels`` (the KR weights of
    `kr_values` times ``n``). deel_lip's losses need no pre-processing (their KR term is
    exact under ``tf.distribute``): they read such labels by their sign, so code written
    for deel-lip runs unchanged and gives the same value as with the raw labels.

    Args:
        labels: ``(batch, outputs)`` labels in ``{0, 1}`` or ``{-1, +1}``.

    Returns:
        float32 tensor of the shape of ``labels``.

    Raises:
        ValueError: (eagerly) labels outside ``{0, 1}`` and ``{-1, +1}``.
    """
    from deel_lip.losses._labels import enforce, sign_rows

    labels = ops.convert_to_tensor(labels)
    enforce(
        "process_labels_for_multi_gpu", labels, sign_rows(labels), "labels in {0, 1} or {-1, +1}"
    )
    pos = positives(labels, "float32")
    n = ops.cast(ops.shape(pos)[0], "float32")
    n_pos = ops.sum(pos, axis=0)
    inv_pos = n / ops.maximum(n_pos, 1.0)
    inv_neg = n / ops.maximum(n - n_pos, 1.0)
    return pos * inv_pos - (1.0 - pos) * inv_neg
