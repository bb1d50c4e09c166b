"""Optimal-transport counterfactuals: follow the input gradient to the decision boundary.

For a 1-Lipschitz network ``f`` trained with an optimal-transport (hKR) loss, the input
gradient has unit norm almost everywhere and points along the transport plan: the
straight line from ``x`` along ``-f(x) grad f(x)`` reaches the decision boundary in one
step (Serrurier et al., 2023). A counterfactual is then the explanation "what ``x`` would
look like if the model classified it as the other class", not an adversarial artefact.

* `transport_counterfactual`: Newton steps on the margin of the target class until the
  decision flips. Binary: ``x' = x - t f(x) grad f(x) / ||grad f(x)||^2`` (``x - t f grad f``
  for an OTNN); multiclass: the same step on ``m(x) = max_{k != j} f_k(x) - f_j(x)``, which
  is ``f_y - f_j`` while the source class ``y`` is the strongest competitor of the target
  ``j``.
* `boundary_point`: the point where the segment from ``x`` to its counterfactual leaves
  the region of the source class, found by bisection.

Both return a `CounterfactualResult`. They need only Keras/TensorFlow, not Xplique.

Reference:
    Serrurier, Mamalet, Fel, Bethune, Boissin, "On the explainable properties of
    1-Lipschitz neural networks: an optimal transport perspective", NeurIPS 2023.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np
from keras import ops

from deel_lip._certify import certificate_factor, class_targets, is_binary, predict_logits
from deel_lip._checks import (
    check_batch_size,
    check_bool,
    check_lip_const,
    check_positive_float,
    check_positive_int,
)
from deel_lip.robustness._attack_utils import (
    TINY,
    check_batch_in_range,
    clip_batch,
    compiled_functions,
    per_sample,
    progress_bar,
    sample_norms,
)

__all__ = ["CounterfactualResult", "transport_counterfactual", "boundary_point"]

#: Each Newton step aims at a target margin of ``_CROSSING * |m_0|`` beyond the boundary
#: (``m_0`` the margin at ``x``), so that iterates cross it instead of converging to it.
_CROSSING = 1e-3


@dataclasses.dataclass(frozen=True)
class CounterfactualResult:
    """Counterfactuals of a batch and how they were reached.

    Attributes:
        counterfactuals: float32 array of the shape of ``x`` (for `boundary_point`: the
            boundary points). Where ``success`` is False: the last iterate.
        distances: L2 distances ``||x' - x||`` ``(n,)`` (float64).
        steps: gradient steps taken per sample ``(n,)`` (int; 0 when ``x`` already is of the
            target class; for `boundary_point`, the steps of the counterfactual search).
        success: ``(n,)`` bool: ``x'`` is classified as ``target`` (for `boundary_point`:
            the segment from ``x`` to the counterfactual leaves the source class).
        source: class of ``x`` the explanation starts from ``(n,)`` (the label ``y`` if
            given, else the prediction; binary: 1 for ``f > 0``, 0 otherwise).
        target: class asked for ``(n,)``.
        radius: certified L2 radius of ``x`` for its source class ``(n,)``: no point closer
            than it can be classified otherwise, so ``distances >= radius`` wherever the
            decision flipped (0 when ``x`` is not classified as ``source``).
    """

    counterfactuals: np.ndarray
    distances: np.ndarray
    steps: np.ndarray
    success: np.ndarray
    source: np.ndarray
    target: np.ndarray
    radius: np.ndarray

    def __len__(self) -> int:
        return len(self.distances)

    @property
    def flip_rate(self) -> float:
        """Fraction of samples whose counterfactual reached the target class."""
        return float(np.mean(self.success)) if len(self) else 0.0


# ------------------------------------------------------------------ argument checks


def _source_and_target(logits: np.ndarray, y, target) -> tuple[np.ndarray, np.ndarray]:
    """Source and target class ids ``(n,)`` from the logits at ``x`` and the arguments."""
    n = len(logits)
    if is_binary(logits.shape):
        if target is not None:
            raise ValueError(
                "target must be None for a binary model (one output): its counterfactual "
                f"always goes to the other class; received: {target!r}"
            )
        if y is None:
            source = (logits.reshape(n) > 0).astype("int64")
        else:
            source = (class_targets(y, logits.shape) > 0).astype("int64")
        return source, 1 - source
    n_classes = logits.shape[-1]
    source = np.argmax(logits, axis=-1) if y is None else class_targets(y, logits.shape)
    if target is None:
        others = logits.astype("float64").copy()
        others[np.arange(n), source] = -np.inf
        return source, np.argmax(others, axis=-1)
    target = np.asarray(ops.convert_to_numpy(target))
    if target.ndim == 0:
        target = np.full((n,), target)
    if target.shape != (n,) or not np.issubdtype(target.dtype, np.integer):
        raise ValueError(
            f"target must be a class id or an integer array of shape ({n},), received "
            f"dtype {target.dtype} and shape {target.shape}"
        )
    if target.min() < 0 or target.max() >= n_classes:
        raise ValueError(
            f"target class ids must be in [0, {n_classes}), received values in "
            f"[{target.min()}, {target.max()}]"
        )
    if np.any(target == source):
        raise ValueError(
            "target must differ from the source class (y, or the prediction when y is None) "
            f"of every sample; equal for samples {np.flatnonzero(target == source)[:8].tolist()}"
        )
    return source, target.astype("int64")


def _margin_targets(classes: np.ndarray, binary: bool) -> np.ndarray:
    """Class ids in the encoding of the signed-margin helpers (binary: signs +-1)."""
    return np.where(classes > 0, 1.0, -1.0).astype("float32") if binary else classes


def _signed(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Signed margin of ``classes`` in numpy: positive where ``logits`` predict them."""
    if is_binary(logits.shape):
        return np.where(classes > 0, 1.0, -1.0) * logits.reshape(len(logits))
    others = logits.astype("float64").copy()
    rows = np.arange(len(logits))
    others[rows, classes] = -np.inf
    return logits[rows, classes] - others.max(axis=-1)


# ------------------------------------------------------------------ the search


def _newton_batch(fns, x, targets, config, bar):
    """Newton steps on the target margin for one batch: ``(iterate, steps)``."""
    step_size, max_steps, clip = config
    margin = fns.margin(x, targets)
    aim = _CROSSING * ops.maximum(ops.abs(margin), TINY)
    z = x
    steps = ops.zeros_like(margin)
    for step in range(max_steps):
        margin, grad = fns.margin_and_gradient(z, targets)
        active = margin <= 0
        if not bool(ops.any(active)):
            if bar is not None:
                bar.add(max_steps - step)  # the whole batch reached its targets
            break
        # grad is the gradient of -margin: z + c grad with c < 0 raises the margin, and the
        # linearised margin reaches `aim` for c = -(aim - margin) / ||grad||^2.
        sq_norm = ops.square(sample_norms(grad))
        moving = ops.logical_and(active, sq_norm > TINY)
        coef = -step_size * (aim - margin) / ops.maximum(sq_norm, TINY)
        coef = ops.where(moving, coef, 0.0)
        z = clip_batch(z + per_sample(coef, x) * grad, *clip)
        steps = steps + ops.cast(moving, steps.dtype)
        if bar is not None:
            bar.add(1)
    return z, steps


def transport_counterfactual(
    model,
    x,
    y=None,
    target=None,
    step_size: float = 1.0,
    max_steps: int = 20,
    overshoot: float = 0.0,
    clip_min: float | None = None,
    clip_max: float | None = None,
    lip_const: float = 1.0,
    disjoint_neurons: bool = True,
    batch_size: int = 256,
    verbose: bool = False,
) -> CounterfactualResult:
    """Counterfactuals of ``x`` along the transport direction of the model's gradient.

    Let ``j`` be the target class and ``m(z) = max_{k != j} f_k(z) - f_j(z)`` (binary:
    ``m(z) = -s_j f(z)``, ``s_j = +1`` for class 1 and ``-1`` for class 0), positive until
    ``z`` is classified as ``j``. From ``z_0 = x`` each step is a damped Newton step on
    ``m``::

        z_{k+1} = clip(z_k - t (m(z_k) + e) grad m(z_k) / ||grad m(z_k)||^2)

    with ``t = step_size`` and ``e = 1e-3 |m(x)|`` so the linearised margin lands just past
    the boundary. For a binary OTNN (``||grad f|| = 1``) the first step is
    ``x - t f(x) grad f(x)``, which reaches the boundary when ``f`` is the transport
    potential. A sample stops once classified as ``j``, or after ``max_steps``. The result
    is then ``x + (1 + overshoot) (z - x)``, clipped to the input range.

    Args:
        model: Keras model returning logits, binary ``(n, 1)`` or ``(n, n_classes)``.
        x: inputs ``(n, ...)``, inside ``[clip_min, clip_max]``.
        y: labels of ``x`` (class ids, one-hot, or binary labels in {0, 1} / {-1, +1});
            None: the predicted classes are the source classes.
        target: multiclass only: target class id, or ids ``(n,)``, different from the source
            classes; None: for each sample the class with the largest logit after the source
            class (the closest class by margin). Must be None for binary models.
        step_size: damping ``t`` of the Newton step (> 0; 1 = full step).
        max_steps: largest number of steps per sample (>= 1).
        overshoot: relative extension of the final perturbation (>= 0).
        clip_min, clip_max: input range applied after every step (None: unbounded).
        lip_const: Lipschitz constant ``L`` of the model, for the certified radius.
        disjoint_neurons: certificate factor, as in `deel_lip.robustness.certified_radius`
            (True: ``2 L``, valid for every network; False: ``sqrt(2) L``, when the output
            vector is ``L``-Lipschitz as a whole, e.g. a last `SpectralDense`).
        batch_size: samples processed together.
        verbose: show a `keras.utils.Progbar` over the steps.

    Returns:
        A `CounterfactualResult`; ``result.flip_rate`` is the fraction that reached the
        target class.

    Raises:
        ValueError: for an empty or non-batched ``x``, ``x`` outside the clip range, labels
            of the wrong shape, target classes out of range or equal to the source class,
            ``target`` given for a binary model, or a non-positive numeric argument.
        TypeError: for non-numeric clip bounds, a non-int ``batch_size`` or a non-bool flag.

    Reference:
        Serrurier et al., "On the explainable properties of 1-Lipschitz neural networks: an
        optimal transport perspective", NeurIPS 2023.
    """
    x = check_batch_in_range(x, clip_min, clip_max)
    step_size = check_positive_float("step_size", step_size)
    max_steps = check_positive_int("max_steps", max_steps)
    if isinstance(overshoot, bool) or not isinstance(overshoot, numbers.Real):
        raise TypeError(f"overshoot must be a number >= 0, received: {overshoot!r}")
    if not math.isfinite(overshoot) or overshoot < 0:
        raise ValueError(f"overshoot must be a finite number >= 0, received: {overshoot!r}")
    lip_const = check_lip_const(lip_const)
    check_bool("disjoint_neurons", disjoint_neurons)
    check_bool("verbose", verbose)
    batch_size = check_batch_size(batch_size)

    logits = predict_logits(model, x, batch_size).astype("float32")
    binary = is_binary(logits.shape)
    source, target = _source_and_target(logits, y, target)
    factor = lip_const if binary else certificate_factor(lip_const, disjoint_neurons)
    radius = np.maximum(_signed(logits, source), 0.0) / factor

    fns = compiled_functions(model, "margin")
    targets = _margin_targets(target, binary)
    bar = progress_bar(verbose, max_steps * math.ceil(len(x) / batch_size))
    iterates, steps = [], []
    for lo in range(0, len(x), batch_size):
        hi = lo + batch_size
        z, n_steps = _newton_batch(
            fns,
            ops.convert_to_tensor(x[lo:hi]),
            ops.convert_to_tensor(targets[lo:hi]),
            (step_size, max_steps, (clip_min, clip_max)),
            bar,
        )
        iterates.append(ops.convert_to_numpy(z))
        steps.append(ops.convert_to_numpy(n_steps))
    z = np.concatenate(iterates, axis=0)
    if overshoot > 0:
        z = x + (1.0 + overshoot) * (z - x)
        z = np.clip(z, clip_min, clip_max) if (clip_min, clip_max) != (None, None) else z
    z = z.astype("float32")
    final = predict_logits(model, z, batch_size).astype("float32")
    n = len(x)
    return CounterfactualResult(
        counterfactuals=z,
        distances=np.linalg.norm((z.astype("float64") - x).reshape(n, -1), axis=1),
        steps=np.concatenate(steps).astype("int64"),
        success=_signed(final, target) > 0,
        source=source,
        target=target,
        radius=radius.astype("float64"),
    )


# ------------------------------------------------------------------ boundary points


def boundary_point(
    model,
    x,
    y=None,
    target=None,
    result: CounterfactualResult | None = None,
    tol: float = 1e-3,
    batch_size: int = 256,
    **counterfactual_kwargs,
) -> CounterfactualResult:
    """Points where the segment from ``x`` to its counterfactual leaves the source class.

    With ``x'`` the counterfactual (``result``, or ``transport_counterfactual(model, x, y,
    target, **counterfactual_kwargs)``), bisection on ``t`` in ``[0, 1]`` keeps
    ``x + t_low (x' - x)`` classified as the source class and ``x + t_high (x' - x)`` not,
    until ``(t_high - t_low) ||x' - x|| <= tol``. The returned point is
    ``x + t_high (x' - x)``: within ``tol`` (L2) of the decision boundary, on its far side.

    Args:
        model: Keras model returning logits, binary ``(n, 1)`` or ``(n, n_classes)``.
        x: inputs ``(n, ...)``.
        y, target: as in `transport_counterfactual` (ignored when ``result`` is given).
        result: a `transport_counterfactual` result for this ``model`` and ``x``, or None.
        tol: L2 tolerance of the bisection (> 0).
        batch_size: samples processed together.
        **counterfactual_kwargs: passed to `transport_counterfactual` when ``result`` is None.

    Returns:
        A `CounterfactualResult` whose ``counterfactuals`` are the boundary points and
        ``distances`` their distances to ``x``; ``success`` is False where the
        counterfactual is still classified as the source class (the counterfactual is
        then returned unchanged). Samples not classified as their source class at ``x``
        give ``x`` itself (distance 0).

    Raises:
        ValueError: for ``tol <= 0``, a ``result`` of another length than ``x``, and the
            errors of `transport_counterfactual`.
    """
    tol = check_positive_float("tol", tol)
    batch_size = check_batch_size(batch_size)
    if result is None:
        result = transport_counterfactual(
            model, x, y, target, batch_size=batch_size, **counterfactual_kwargs
        )
    elif not isinstance(result, CounterfactualResult):
        raise TypeError(f"result must be a CounterfactualResult or None, received: {result!r}")
    x = check_batch_in_range(x, None, None)
    if len(result) != len(x) or result.counterfactuals.shape != x.shape:
        raise ValueError(
            f"result must hold one counterfactual per input of shape {x.shape}, received "
            f"counterfactuals of shape {result.counterfactuals.shape}"
        )
    binary = is_binary(predict_logits(model, x[:1], 1).shape)
    sources = _margin_targets(result.source, binary)
    direction = result.counterfactuals.astype("float32") - x
    lengths = np.linalg.norm(direction.reshape(len(x), -1).astype("float64"), axis=1)
    iterations = int(math.ceil(math.log2(max(lengths.max(), tol) / tol))) + 1
    fns = compiled_functions(model, "margin")
    points = []
    for lo in range(0, len(x), batch_size):
        hi = lo + batch_size
        x_b, d_b = ops.convert_to_tensor(x[lo:hi]), ops.convert_to_tensor(direction[lo:hi])
        s_b = ops.convert_to_tensor(sources[lo:hi])
        low = ops.zeros((x_b.shape[0],))
        high = ops.where(fns.margin(x_b, s_b) > 0, 1.0, 0.0)
        for _ in range(iterations):
            mid = 0.5 * (low + high)
            in_source = fns.margin(x_b + per_sample(mid, x_b) * d_b, s_b) > 0
            low = ops.where(in_source, mid, low)
            high = ops.where(in_source, high, mid)
        points.append(ops.convert_to_numpy(x_b + per_sample(high, x_b) * d_b))
    points = np.concatenate(points, axis=0).astype("float32")
    left = _signed(predict_logits(model, result.counterfactuals, batch_size), result.source) <= 0
    points[~left] = result.counterfactuals[~left]
    return dataclasses.replace(
        result,
        counterfactuals=points,
        distances=np.linalg.norm((points.astype("float64") - x).reshape(len(x), -1), axis=1),
        success=left,
    )
