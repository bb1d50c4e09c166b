"""Label validation shared by the losses, the metrics and the certificates.

Each ``*_rows`` function returns a boolean tensor ``(rows,)``: True where the row of
``y_true`` (last axis = one label vector; a 1-D ``y_true`` has one label per row) has
the documented encoding. The computation is made of tensor ops only (no host round
trip, no ``py_function``), so it runs unchanged under ``tf.function``, XLA and on
accelerators.

`enforce` then applies the policy of the library:

* eagerly (a loss or metric called on arrays, ``run_eagerly=True``, `certified_radius`):
  a ValueError naming ``y_true``, the expected encoding and what was received;
* inside a traced function (``fit`` / ``evaluate``, ``jit_compile``), where no value is
  known: the caller receives the mask and makes invalid rows visible without stopping
  the program: the losses turn their values into NaN (the reported loss is NaN, the
  gradient of the valid rows is unchanged), the metrics count them as not certified.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from deel_lip import _backend

__all__: list[str] = []

#: tolerance on the sum of a probability (soft label) row
_SUM_TOLERANCE = 1e-3


def _rows(y_true):
    """``y_true`` as ``(rows, labels)`` float32 (a 1-D tensor is one label per row)."""
    y = ops.cast(y_true, "float32")
    if len(y.shape) <= 1:
        return ops.reshape(y, (-1, 1))
    return ops.reshape(y, (-1, y.shape[-1] if y.shape[-1] is not None else ops.shape(y)[-1]))


def _in(y, values):
    hit = ops.zeros_like(y, dtype="bool")
    for value in values:
        hit = ops.logical_or(hit, ops.equal(y, value))
    return hit


def sign_rows(y_true, one_positive: bool = False):
    """Labels in ``{0, 1}`` or in ``{-1, +1}`` (one set for the whole batch), finite.

    With ``one_positive`` every row must hold exactly one positive label (one-hot).
    """
    y = _rows(y_true)
    in_01 = ops.all(_in(y, (0.0, 1.0)))
    in_pm = ops.all(_in(y, (-1.0, 1.0)))
    valid = ops.logical_and(ops.all(_in(y, (-1.0, 0.0, 1.0)), axis=-1), in_01 | in_pm)
    if one_positive:
        valid = ops.logical_and(valid, ops.equal(ops.sum(ops.cast(y > 0, "int32"), -1), 1))
    return valid


def weight_rows(y_true):
    """Labels read by their sign: finite and non-zero (`process_labels_for_multi_gpu`)."""
    y = _rows(y_true)
    return ops.all(ops.logical_and(ops.isfinite(y), ops.not_equal(y, 0.0)), axis=-1)


def probability_rows(y_true):
    """One-hot or soft labels: entries in ``[0, 1]`` summing to 1 per row."""
    y = _rows(y_true)
    in_range = ops.all(ops.logical_and(y >= 0.0, y <= 1.0), axis=-1)  # False for NaN
    return ops.logical_and(in_range, ops.abs(ops.sum(y, axis=-1) - 1.0) <= _SUM_TOLERANCE)


def class_id_rows(y_true, classes: int):
    """Integer class ids in ``[0, classes)`` (one per row)."""
    y = ops.reshape(ops.cast(y_true, "float32"), (-1,))
    return ops.logical_and(
        ops.logical_and(y >= 0.0, y < float(classes)), ops.equal(y, ops.floor(y))
    )


def argmax_rows(y_true):
    """Finite rows with a single maximum (one-hot in ``{0, 1}`` / ``{-1, +1}``, smoothed)."""
    y = _rows(y_true)
    finite = ops.all(ops.isfinite(y), axis=-1)
    top = ops.max(ops.where(ops.isfinite(y), y, -np.inf), axis=-1, keepdims=True)
    single = ops.equal(ops.sum(ops.cast(ops.equal(y, top), "int32"), axis=-1), 1)
    return ops.logical_and(finite, single)


def _describe(values: np.ndarray, valid: np.ndarray) -> str:
    rows = values.reshape(len(valid), -1) if values.size else values.reshape(0, 1)
    bad = np.flatnonzero(~valid)
    shown = [rows[i].tolist() if rows.shape[1] > 1 else rows[i, 0].item() for i in bad[:3]]
    present = np.unique(values[~np.isnan(values)]) if values.size else values
    shown_set = present[:8].tolist() + (["..."] if present.size > 8 else [])
    nan = ", NaN" if np.isnan(values).any() else ""
    return (
        f"{bad.size} invalid row(s) of {len(valid)} in y_true of shape {values.shape}, "
        f"e.g. row {int(bad[0])}: {shown[0]!r} (values present: {shown_set}{nan})"
    )


def enforce(owner: str, y_true, valid, expected: str):
    """Raise eagerly when a row is invalid; return the mask ``valid`` otherwise.

    ``expected`` describes the encoding (it ends the message ``y_true must be ...``).
    Inside a traced function nothing is raised (see the module docstring).
    """
    if _backend.executing_eagerly():
        mask = np.asarray(ops.convert_to_numpy(valid), dtype=bool).reshape(-1)
        if not mask.all():
            values = np.asarray(ops.convert_to_numpy(y_true))
            raise ValueError(
                f"{owner}: y_true must be {expected}; received {_describe(values, mask)}"
            )
    return valid


def mislength(owner: str, y_true, y_pred, rows_true=None, rows_pred=None) -> None:
    """A ValueError when the static numbers of samples of y_true and y_pred differ."""
    n_true = y_true.shape[0] if rows_true is None else rows_true
    n_pred = y_pred.shape[0] if rows_pred is None else rows_pred
    if n_true is not None and n_pred is not None and n_true != n_pred:
        raise ValueError(
            f"{owner}: y_true and y_pred must hold the same number of samples, received "
            f"y_true.shape={tuple(y_true.shape)} and y_pred.shape={tuple(y_pred.shape)}"
        )
