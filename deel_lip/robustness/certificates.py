"""Certified L2 radii of Lipschitz classifiers and certified accuracy over a dataset.

For an ``L``-Lipschitz classifier (in L2) the prediction cannot change in the L2 ball of
radius ``r(x)`` around ``x``:

* binary (one output, class = sign of ``f``): ``r(x) = |f(x)| / L``;
* multiclass, margin ``m(x) = f_y(x) - max_{j != y} f_j(x)``: ``r(x) = m(x) / (sqrt(2) L)``
  when the output vector is ``L``-Lipschitz as a whole (``disjoint_neurons=False``),
  ``r(x) = m(x) / (2 L)`` when each output is ``L``-Lipschitz on its own
  (``disjoint_neurons=True``, valid for every ``L``-Lipschitz network).

The formulas are those of `deel_lip.metrics` (same code), evaluated eagerly on arrays,
row by row and in at least float32. A certificate is never optimistic by construction:

* a row with a non-finite logit (NaN, ``inf``) gets the radius NaN (no certificate:
  ``NaN > eps`` is False, so `certified_accuracy` counts it as not certified) and leaves
  the other rows untouched;
* invalid labels (class ids outside ``[0, C)``, multi-hot or tied one-hot rows, binary
  labels outside {0, 1} and {-1, +1}, NaN) raise a ValueError naming ``labels``;
* 16-bit logits (``mixed_bfloat16`` / ``mixed_float16`` models) warn: the margin is
  computed in float32, but the network's low-precision inference map itself is not
  exactly ``L``-Lipschitz (measured 1.002-1.003 for ``L = 1`` in bfloat16, whose
  rounding unit is 2^-8): certify such a model with a float32 policy at evaluation, or
  pass ``lip_const = 1.01 * L``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Iterator

import keras
import numpy as np
from keras import ops

from deel_lip import _backend
from deel_lip._certify import certificate_factor, class_targets, is_binary, signed_margin
from deel_lip._checks import check_batch_size, check_bool, check_lip_const

__all__ = ["certified_radius", "certified_accuracy"]


# ------------------------------------------------------------------ shared helpers


def _radius_factor(logits_shape, lip_const: float, disjoint_neurons: bool) -> float:
    """``L`` (binary) or ``c L`` (multiclass) so that radius = margin / factor."""
    if is_binary(logits_shape):
        return lip_const
    return certificate_factor(lip_const, disjoint_neurons)


def _batches(x, y, batch_size: int) -> Iterator[tuple]:
    """``(x_batch, y_batch)`` from arrays (sliced) or from a batched `tf.data.Dataset`."""
    if _backend.is_dataset(x):
        if y is not None:
            raise ValueError("y must be None when x is a tf.data.Dataset of (x, y) batches")
        for element in x:
            if not isinstance(element, (tuple, list)) or len(element) < 2:
                raise ValueError("a dataset passed as x must yield (x, y) batches")
            yield element[0], element[1]
        return
    if y is None:
        raise ValueError("y (labels) is required when x is an array")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x and y must have the same length, received {n} and {len(y)}")
    for start in range(0, n, batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


# ------------------------------------------------------------------ public API


def certified_radius(
    logits,
    labels=None,
    lip_const: float = 1.0,
    disjoint_neurons: bool = True,
    negative: bool = False,
) -> np.ndarray:
    """Per-sample certified L2 radius of a Lipschitz classifier's outputs.

    Without labels, the radius of the *predicted* class: ``|f| / L`` (binary) or
    ``(top1(f) - top2(f)) / (c L)`` (multiclass, ``c = 2`` if ``disjoint_neurons`` else
    ``sqrt(2)``). With labels, the signed margin of the *true* class is used:
    ``s f / L`` (binary, ``s = +1`` for labels > 0, else ``-1``) or
    ``(f_y - max_{j != y} f_j) / (c L)``; misclassified samples then get radius 0, or
    their (negative) signed value when ``negative=True``: ``-r`` means the sample stays
    misclassified in the L2 ball of radius ``r``.

    Args:
        logits: model outputs, ``(n,)`` or ``(n, 1)`` (binary) or ``(n, n_classes)``.
        labels: None, or class ids ``(n,)`` / ``(n, 1)`` or one-hot ``(n, n_classes)``
            (class = argmax), or binary labels in {0, 1} / {-1, +1}.
        lip_const: Lipschitz constant ``L`` of the network (> 0).
        disjoint_neurons: True when each output is ``L``-Lipschitz on its own (``2 L``,
            valid for every ``L``-Lipschitz network); False when the output vector is
            ``L``-Lipschitz as a whole (``sqrt(2) L``, e.g. a last `SpectralDense`).
            Binary outputs have one neuron: both settings give ``|f| / L``.
        negative: with labels, return the signed radius instead of clipping it at 0.

    Returns:
        ``(n,)`` numpy array of radii, float32 (float64 for float64 logits); NaN for the
        rows with a non-finite logit (no certificate; the other rows are unaffected).
        16-bit logits warn (see the module docstring: the low-precision network is
        about 1.003-Lipschitz, not 1).

    Raises:
        ValueError: for logits or labels of the wrong shape, class ids out of range,
            ``lip_const <= 0``, or ``negative=True`` without labels.
        TypeError: ``disjoint_neurons`` or ``negative`` not a bool.
    """
    lip_const = check_lip_const(lip_const)
    check_bool("disjoint_neurons", disjoint_neurons)
    check_bool("negative", negative)
    logits = ops.convert_to_tensor(logits)
    dtype = keras.backend.standardize_dtype(logits.dtype)
    if dtype in ("bfloat16", "float16"):
        warnings.warn(
            f"certified_radius: {dtype} logits; the margin is computed in float32, but a "
            f"{dtype} network is only about 1.003-Lipschitz for L = 1 (rounding): evaluate "
            "certificates with a float32 policy, or pass lip_const = 1.01 * L.",
            UserWarning,
            stacklevel=2,
        )
    if dtype not in ("float32", "float64"):
        logits = ops.cast(logits, "float32")
    shape = tuple(logits.shape)
    factor = _radius_factor(shape, lip_const, disjoint_neurons)
    if labels is None:
        if negative:
            raise ValueError("negative=True needs labels (the sign comes from the true class)")
        if is_binary(shape):
            margin = ops.abs(ops.reshape(logits, (-1,)))
        elif len(shape) == 2:
            top2 = ops.top_k(logits, k=2, sorted=True)[0]
            margin = top2[:, 0] - top2[:, 1]
        else:
            raise ValueError(
                f"logits must have shape (n,), (n, 1) or (n, n_classes), received shape {shape}"
            )
    else:
        targets = class_targets(labels, shape)
        margin = signed_margin(logits, ops.convert_to_tensor(targets))
        if not negative:
            margin = ops.relu(margin)
    finite = ops.all(ops.isfinite(ops.reshape(logits, (shape[0], -1))), axis=-1)
    radius = ops.where(finite, margin / factor, ops.cast(math.nan, margin.dtype))
    return ops.convert_to_numpy(radius)


def certified_accuracy(
    model,
    x,
    y=None,
    epsilons: float | Iterable[float] = (36 / 255,),
    lip_const: float = 1.0,
    disjoint_neurons: bool = True,
    batch_size: int = 256,
) -> dict[float, float]:
    """Certified accuracy of ``model`` at each L2 radius of ``epsilons``.

    ``acc(eps) = mean_i [ r_i > eps ]`` with ``r_i`` the signed certified radius of sample
    ``i`` for its true label (`certified_radius` with labels): the sample is correctly
    classified and no L2 perturbation of norm ``<= eps`` changes its prediction.
    The model runs in inference mode (``training=False``), batch by batch.

    Args:
        model: a callable Keras model returning logits.
        x: inputs (array), or a batched `tf.data.Dataset` yielding ``(x, y)``.
        y: labels (class ids, one-hot, or binary labels); None when ``x`` is a dataset.
        epsilons: one radius or an iterable of radii (each finite, >= 0).
        lip_const: Lipschitz constant of the model (> 0).
        disjoint_neurons: see `certified_radius`.
        batch_size: batch size for arrays (ignored for a dataset, which is batched).

    Returns:
        ``{eps: certified accuracy}`` with float keys, in the order of ``epsilons``.

    Raises:
        ValueError: for bad radii, mismatched ``x`` / ``y``, ``y`` given with a dataset,
            or an empty input.
    """
    if isinstance(epsilons, numbers.Real):
        epsilons = (epsilons,)
    eps_list = [float(eps) for eps in epsilons]
    if not eps_list or any(not math.isfinite(eps) or eps < 0 for eps in eps_list):
        raise ValueError(f"epsilons must be one or more finite radii >= 0, received: {epsilons!r}")
    batch_size = check_batch_size(batch_size)
    radii = []
    for x_batch, y_batch in _batches(x, y, batch_size):
        logits = model(x_batch, training=False)
        radii.append(
            certified_radius(
                logits, y_batch, lip_const, disjoint_neurons=disjoint_neurons, negative=True
            )
        )
    if not radii:
        raise ValueError("certified_accuracy received no sample")
    radii = np.concatenate(radii)
    return {eps: float(np.mean(radii > eps)) for eps in eps_list}
