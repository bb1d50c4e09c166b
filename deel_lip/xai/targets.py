"""One-hot float32 targets from integer or one-hot labels, for Xplique.

Xplique's operator computes ``sum_j f_j(x) y_j`` with the targets ``y`` as given: integer
labels ``(N,)`` are broadcast against the ``(N, C)`` outputs, an error in general and a
silently wrong score when ``N == C``. `targets_from_labels` accepts class indices or
one-hot rows and rejects every other encoding with a message that says what to pass.
"""

from __future__ import annotations

import numpy as np

__all__ = ["targets_from_labels"]


def targets_from_labels(labels, num_classes: int) -> np.ndarray:
    """One-hot float32 targets ``(N, num_classes)`` from integer or one-hot labels.

    * ``num_classes >= 2``: class indices ``(N,)`` or ``(N, 1)`` in ``[0, num_classes)``
      become one-hot rows; one-hot rows ``(N, num_classes)`` (a single 1, zeros
      elsewhere) are returned as float32.
    * ``num_classes == 1`` (a single-logit binary classifier, class given by the sign of
      ``f``): labels in ``{0, 1}`` or ``{-1, +1}``, shape ``(N,)`` or ``(N, 1)``, become
      ``(N, 1)`` targets ``+1`` (explain ``f``) or ``-1`` (explain ``-f``).

    Args:
        labels: array-like of labels (numpy, list, tensor).
        num_classes: number of outputs of the explained model (>= 1).

    Returns:
        float32 array ``(N, num_classes)``.

    Raises:
        ValueError: if ``num_classes`` is not an int >= 1, or ``labels`` is not one of the
            encodings above (non-integer or out-of-range class indices, rows that are not
            one-hot, a width that matches neither encoding); the message names the
            argument, the expected encodings and what was received.
        TypeError: if ``labels`` is not numeric.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an int >= 1, received: {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, received: {num_classes!r}")
    num_classes = int(num_classes)
    array = np.asarray(labels)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"labels must be numeric, received an array of dtype {array.dtype}")
    expected = (
        f"expected class indices of shape (N,) or (N, 1), or one-hot rows of shape "
        f"(N, {num_classes})"
    )
    if array.ndim == 2 and array.shape[1] == num_classes and num_classes > 1:
        return _check_one_hot(array)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"labels: {expected}, received shape {array.shape}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array))):
        raise ValueError(f"labels: {expected} with integer values, received non-integer values")
    array = array.astype(np.int64)
    if num_classes == 1:
        if not np.all(np.isin(array, (-1, 0, 1))):
            raise ValueError(
                "labels of a single-output (binary) model must be in {0, 1} or {-1, +1}, "
                f"received values in [{array.min()}, {array.max()}]"
            )
        return np.where(array > 0, 1.0, -1.0).astype("float32")[:, None]
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(
            f"labels must be class indices in [0, {num_classes}) (num_classes={num_classes}), "
            f"received values in [{array.min()}, {array.max()}]"
        )
    return np.eye(num_classes, dtype="float32")[array]


def _check_one_hot(array: np.ndarray) -> np.ndarray:
    is_binary = (array == 0) | (array == 1)
    rows_ok = np.all(is_binary, axis=1) & (np.sum(array, axis=1) == 1)
    if not np.all(rows_ok):
        row = int(np.argmin(rows_ok))
        raise ValueError(
            f"labels of shape {array.shape} must be one-hot rows (a single 1, zeros "
            f"elsewhere), received row {row}: {array[row].tolist()}; pass class indices "
            "of shape (N,) for integer labels"
        )
    return array.astype("float32")
