"""Certificate arithmetic shared by `deel_lip.metrics`, `deel_lip.robustness` and
`deel_lip.xai` (a private module: its names are the library's internal API).

The certificate factor ``c L``, the signed margins (row by row, in at
least float32, with label validation from `deel_lip.losses._labels`). See the
`deel_lip.metrics` module docstring for the formulas.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from deel_lip.losses._labels import (
    argmax_rows,
    class_id_rows,
    enforce,
    mislength,
    sign_rows,
)

__all__ = [
    "certificate_factor",
    "labels_to_class_ids",
    "margin_from_ids",
    "multiclass_margin",
    "binary_margin",
    "binary_margins",
    "is_binary",
    "class_targets",
    "signed_margin",
    "predict_logits",
]


# ------------------------------------------------------------------ certificate factor


def certificate_factor(lip_const: float, disjoint_neurons: bool) -> float:
    """``c L`` with ``c = 2`` for disjoint neurons and ``c = sqrt(2)`` otherwise."""
    return (2.0 if disjoint_neurons else math.sqrt(2.0)) * lip_const


# ------------------------------------------------------------------ signed margins
# Shared with `deel_lip.robustness` (which sits above this module and imports them).


def _margin_dtype(dtype) -> str:
    """float32 for 16-bit floats (and integers), else the float dtype itself."""
    dtype = keras.backend.standardize_dtype(dtype)
    return dtype if dtype in ("float32", "float64") else "float32"


def _check_multiclass_pred(y_pred) -> int:
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
    return int(n_classes)


def labels_to_class_ids(owner: str, y_true, y_pred):
    """``(class ids (batch,) int32, valid rows (batch,) bool)``; eagerly, invalid raises."""
    n_classes = _check_multiclass_pred(y_pred)
    mislength(owner, y_true, y_pred)
    if len(y_true.shape) == 2 and y_true.shape[-1] == n_classes:
        valid = enforce(
            owner,
            y_true,
            argmax_rows(y_true),
            "one-hot rows (a single, finite maximum per row: {0, 1}, {-1, +1} or "
            "smoothed labels; not multi-hot)",
        )
        return ops.cast(ops.argmax(y_true, axis=-1), "int32"), valid
    if len(y_true.shape) == 1 or (len(y_true.shape) == 2 and y_true.shape[-1] == 1):
        ids = ops.reshape(y_true, (-1,))
        valid = enforce(
            owner, ids, class_id_rows(ids, n_classes), f"class ids: integers in [0, {n_classes})"
        )
        ids = ops.where(valid, ops.cast(ids, "float32"), 0.0)
        return ops.cast(ids, "int32"), valid
    raise ValueError(
        f"{owner}: y_true must be one-hot of shape (batch, {n_classes}) or class ids of shape "
        f"(batch,) or (batch, 1), received y_true.shape={tuple(y_true.shape)}"
    )


def margin_from_ids(class_ids, y_pred):
    """``f_y - max_{j != y} f_j`` per row, in at least float32; NaN / inf stay in their row."""
    y_pred = ops.cast(y_pred, _margin_dtype(y_pred.dtype))
    mask = ops.one_hot(class_ids, y_pred.shape[-1], dtype="bool")
    true_score = ops.sum(ops.where(mask, y_pred, 0.0), axis=-1)
    best_other = ops.max(ops.where(mask, -math.inf, y_pred), axis=-1)
    return true_score - best_other


def multiclass_margin(y_true, y_pred):
    """Signed margin ``f_y - max_{j != y} f_j`` of each sample, shape ``(batch,)``.

    ``y_pred`` has shape ``(batch, n_classes)`` with ``n_classes >= 2``. ``y_true`` is
    either one-hot like (same shape as ``y_pred``; the class is its unique argmax, so
    labels in {0, 1}, {-1, +1} or smoothed all work) or integer class ids of shape
    ``(batch,)`` or ``(batch, 1)``. Each row is computed on its own (a NaN row does not
    touch the others), in float32 for 16-bit predictions.
    """
    class_ids, _ = labels_to_class_ids("labels", y_true, y_pred)
    return margin_from_ids(class_ids, y_pred)


def binary_margin(y_true, y_pred):
    """Signed score ``s f(x)`` with ``s = +1`` for labels > 0, ``-1`` otherwise.

    Labels in {0, 1} and in {-1, +1} both work. ``y_pred`` has shape ``(batch,)`` or
    ``(batch, 1)``; the result has shape ``(batch,)`` (at least float32).
    """
    if len(y_pred.shape) > 2 or (len(y_pred.shape) == 2 and y_pred.shape[-1] != 1):
        raise ValueError(
            "binary predictions must have shape (batch,) or (batch, 1), "
            f"received shape {tuple(y_pred.shape)}"
        )
    y_pred = ops.reshape(ops.cast(y_pred, _margin_dtype(y_pred.dtype)), (-1,))
    sign = ops.where(ops.reshape(y_true, (-1,)) > 0, 1.0, -1.0)
    return ops.cast(sign, y_pred.dtype) * y_pred


def binary_margins(owner: str, y_true, y_pred):
    """``(s f (batch, outputs), valid labels and finite f (batch, outputs))``.

    Binary ``(batch,)`` / ``(batch, 1)`` or multilabel ``(batch, outputs)`` predictions
    (one binary problem per output, as deel-lip); labels of the same shape (a
    ``(batch,)`` label vector is accepted for one output) in {0, 1} or {-1, +1}.
    """
    if len(y_pred.shape) == 1:
        y_pred = ops.reshape(y_pred, (-1, 1))
    if len(y_pred.shape) != 2:
        raise ValueError(
            f"{owner}: binary predictions must have shape (batch,), (batch, 1) or "
            f"(batch, outputs), received y_pred.shape={tuple(y_pred.shape)}"
        )
    if len(y_true.shape) == 1 and y_pred.shape[-1] == 1:
        y_true = ops.reshape(y_true, (-1, 1))
    mislength(owner, y_true, y_pred)
    if len(y_true.shape) != 2 or y_true.shape[-1] != y_pred.shape[-1]:
        raise ValueError(
            f"{owner}: y_true must have the shape of y_pred, received "
            f"y_true.shape={tuple(y_true.shape)} and y_pred.shape={tuple(y_pred.shape)}"
        )
    valid = enforce(owner, y_true, sign_rows(y_true), "labels in {0, 1} or in {-1, +1}")
    y_pred = ops.cast(y_pred, _margin_dtype(y_pred.dtype))
    sign = ops.where(y_true > 0, 1.0, -1.0)
    ok = ops.logical_and(ops.reshape(valid, (-1, 1)), ops.isfinite(y_pred))
    return ops.cast(sign, y_pred.dtype) * y_pred, ok


# ------------------------------------------------------------------ labels of arrays
# Used by `deel_lip.robustness` and `deel_lip.xai` (eager numpy validation).


def is_binary(logits_shape) -> bool:
    return len(logits_shape) == 1 or (len(logits_shape) == 2 and logits_shape[-1] == 1)


def class_targets(labels, logits_shape) -> np.ndarray:
    """Validated labels as class ids ``(n,)`` (multiclass) or signs in {-1, +1} (binary).

    Multiclass labels are class ids ``(n,)`` / ``(n, 1)`` or one-hot ``(n, n_classes)``
    (class = argmax). Binary labels are in {0, 1} or {-1, +1}, shape ``(n,)`` or ``(n, 1)``.
    """
    labels = np.asarray(keras.ops.convert_to_numpy(labels))
    n = logits_shape[0]
    if len(logits_shape) not in (1, 2):
        raise ValueError(
            "logits must have shape (n,), (n, 1) or (n, n_classes), "
            f"received shape {tuple(logits_shape)}"
        )
    if labels.shape[:1] != (n,):
        raise ValueError(
            f"labels must have one entry per sample ({n}), received shape {labels.shape}"
        )
    if is_binary(logits_shape):
        if labels.size != n:
            raise ValueError(
                f"binary labels must have shape ({n},) or ({n}, 1), received shape {labels.shape}"
            )
        present = set(np.unique(labels).tolist())
        if not (present <= {0.0, 1.0} or present <= {-1.0, 1.0}):
            raise ValueError(
                "labels (y_true) must be binary labels in {0, 1} or in {-1, +1}, received "
                f"values {sorted(present, key=str)[:6]} in labels of shape {labels.shape}"
            )
        return np.where(labels.reshape(n) > 0, 1.0, -1.0)
    n_classes = logits_shape[-1]
    if labels.shape == (n, n_classes):
        finite = np.all(np.isfinite(labels), axis=-1)
        top = np.max(np.where(np.isfinite(labels), labels, -np.inf), axis=-1, keepdims=True)
        single = np.sum(labels == top, axis=-1) == 1
        if not np.all(finite & single):
            bad = int(np.flatnonzero(~(finite & single))[0])
            raise ValueError(
                "labels (y_true) must be one-hot rows with a single, finite maximum (not "
                f"multi-hot), received row {bad}: {labels[bad].tolist()} in labels of shape "
                f"{labels.shape}"
            )
        return np.argmax(labels, axis=-1).astype("int64")
    if labels.size != n:
        raise ValueError(
            f"labels must be class ids of shape ({n},) or ({n}, 1) or one-hot of shape "
            f"({n}, {n_classes}), received shape {labels.shape}"
        )
    ids = labels.reshape(n)
    if ids.size and (
        not np.all(np.equal(np.mod(ids, 1), 0)) or ids.min() < 0 or ids.max() >= n_classes
    ):
        raise ValueError(
            f"labels (y_true) must be class ids: integers in [0, {n_classes}), received "
            f"values in [{ids.min()}, {ids.max()}] (NaN: {bool(np.isnan(ids).any())})"
        )
    return ids.astype("int64")


def signed_margin(logits, targets):
    """Signed margin (tensor ``(n,)``) for targets from `class_targets`."""
    if is_binary(tuple(logits.shape)):
        return binary_margin(targets, logits)
    return multiclass_margin(targets, logits)


def predict_logits(model, x, batch_size: int) -> np.ndarray:
    """``model(x, training=False)`` over batches, as a numpy array."""
    outputs = [
        ops.convert_to_numpy(model(x[start : start + batch_size], training=False))
        for start in range(0, len(x), batch_size)
    ]
    return np.concatenate(outputs, axis=0)
