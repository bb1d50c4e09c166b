"""Boundary attributions: BSM and BIG, explanations taken at the closest decision boundary.

Wang, Fredrikson and Datta (ICML 2022) explain a classifier at the decision-boundary point
``x_b`` closest to the input ``x`` rather than at ``x`` itself:

* **BSM** (boundary-based saliency map): ``BSM(x) = grad g(x_b)``;
* **BIG** (boundary-based integrated gradients): integrated gradients with the per-sample
  baseline ``x_b``::

      BIG(x)_i = (x_i - x_b,i) * integral_0^1 d g / d x_i (x_b + a (x - x_b)) da

  so that ``sum_i BIG(x)_i = g(x) - g(x_b)`` (completeness);

with ``g(z) = sum_k f_k(z) y_k`` Xplique's score of the one-hot target ``y``. The integral
is the trapezoidal rule on ``steps`` points (Xplique's ``IntegratedGradients`` rule).

The boundary point ``x_b`` (`find_boundary`) comes from

* ``"transport"``: the transport counterfactual of a 1-Lipschitz optimal-transport network
  (a Newton step on the margin, `transport_counterfactual`) refined by bisection
  (`boundary_point`): one or two gradient evaluations and ~15 forward passes;
* ``"minimal_l2"``: the library's minimal L2 attack (`minimal_adversarial_l2`, DDN);
* ``"pgd"``: `pgd_l2` in a ball of radius ``eps``;

each attack result shortened to the boundary by the same bisection. `BIG` and `BSM` are
Xplique white-box explainers: Xplique's metrics and `deel_lip.xai.explainer` accept them.

References:
    Wang, Fredrikson, Datta, "Robust models are more interpretable because attributions
    look normal", ICML 2022.
    Serrurier, Mamalet, Fel, Bethune, Boissin, "On the explainable properties of
    1-Lipschitz neural networks: an optimal transport perspective", NeurIPS 2023.
"""

from __future__ import annotations

import dataclasses
import numbers
import time

import keras
import numpy as np
import tensorflow as tf  # Xplique explainers return tf tensors

from deel_lip.robustness import minimal_adversarial_l2, pgd_l2
from deel_lip.xai._xplique import require_xplique
from deel_lip.xai.counterfactuals import CounterfactualResult, boundary_point
from deel_lip.xai.models import logits_model
from deel_lip.xai.targets import targets_from_labels

require_xplique()
from xplique.attributions.base import WhiteBoxExplainer  # noqa: E402
from xplique.commons import tensor_sanitize  # noqa: E402

__all__ = [
    "BOUNDARIES",
    "BOUNDARY_METHODS",
    "BoundaryResult",
    "find_boundary",
    "BoundaryAttributions",
    "BIG",
    "BSM",
]

#: Boundary searches accepted by `find_boundary` and the boundary explainers.
BOUNDARIES = ("transport", "minimal_l2", "pgd")
#: Attribution methods of this module (`BIG`, `BSM`).
BOUNDARY_METHODS = ("BIG", "BSM")


@dataclasses.dataclass(frozen=True)
class BoundaryResult:
    """Boundary points of a batch.

    Attributes:
        points: float32 array of the shape of ``x``: within ``tol`` (L2) of the decision
            boundary of the source class, on its far side (``x`` itself where the search
            failed or ``x`` is not classified as its source class).
        distances: ``||points - x||`` ``(n,)`` (float64).
        success: ``(n,)`` bool: a boundary point was found.
        source: class ids ``(n,)`` whose region the points leave.
        boundary: the search used (`BOUNDARIES`).
        seconds: wall-clock time of the search.
    """

    points: np.ndarray
    distances: np.ndarray
    success: np.ndarray
    source: np.ndarray
    boundary: str
    seconds: float

    def __len__(self) -> int:
        return len(self.distances)


def _check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, received: {value!r}")
    return value


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, received: {value!r}")
    return int(value)


def find_boundary(
    model,
    x,
    y,
    boundary: str = "transport",
    tol: float = 1e-3,
    clip_min: float | None = None,
    clip_max: float | None = None,
    batch_size: int = 256,
    verbose: bool = False,
    **search_kwargs,
) -> BoundaryResult:
    """Points of the decision boundary of class ``y`` close to ``x``.

    ``"transport"``: `boundary_point` (Newton steps of `transport_counterfactual`, then
    bisection). ``"minimal_l2"``: `minimal_adversarial_l2`; ``"pgd"``: `pgd_l2` with
    radius ``eps`` (``search_kwargs``, default 3.0: pixels in [0, 1] of MNIST-sized
    images). Both attacks are followed by the same bisection on the segment from ``x``
    to the adversarial point, to L2 tolerance ``tol``.

    Args:
        model: Keras model returning logits (binary ``(n, 1)`` or ``(n, n_classes)``).
        x: inputs ``(n, ...)``.
        y: source classes: class ids, one-hot rows, or binary labels.
        boundary: one of `BOUNDARIES`.
        tol: L2 tolerance of the bisection (> 0).
        clip_min, clip_max: input range kept by the search (None: unbounded).
        batch_size: samples processed together.
        verbose: progress bars of the search.
        **search_kwargs: arguments of the search (``max_steps`` of the transport,
            ``steps`` of the attacks, ``eps`` of PGD, ...).

    Returns:
        A `BoundaryResult`.

    Raises:
        ValueError: for an unknown ``boundary`` and the errors of the searches.
    """
    boundary = _check_choice("boundary", boundary, BOUNDARIES)
    start = time.perf_counter()
    clip = {"clip_min": clip_min, "clip_max": clip_max}
    if boundary == "transport":
        result = boundary_point(
            model, x, y, tol=tol, batch_size=batch_size, verbose=verbose, **clip, **search_kwargs
        )
    else:
        x = np.asarray(keras.ops.convert_to_numpy(x), dtype="float32")
        if boundary == "minimal_l2":
            adv, _, _ = minimal_adversarial_l2(
                model, x, y, batch_size=batch_size, verbose=verbose, **clip, **search_kwargs
            )
        else:
            eps = search_kwargs.pop("eps", 3.0)
            adv = pgd_l2(
                model, x, y, eps, batch_size=batch_size, verbose=verbose, **clip, **search_kwargs
            )
        logits = model.predict(x, batch_size=batch_size, verbose=0)
        if logits.shape[-1] == 1:
            source = (targets_from_labels(y, 1)[:, 0] > 0).astype("int64")
        else:
            source = targets_from_labels(y, logits.shape[-1]).argmax(-1)
        n = len(x)
        attack = CounterfactualResult(
            counterfactuals=adv,
            distances=np.zeros(n),
            steps=np.zeros(n, "int64"),
            success=np.zeros(n, bool),
            source=source,
            target=source,  # unused by the bisection
            radius=np.full(n, np.nan),  # no certificate for an attack
        )
        result = boundary_point(model, x, result=attack, tol=tol, batch_size=batch_size)
    return BoundaryResult(
        points=result.counterfactuals,
        distances=result.distances,
        success=np.asarray(result.success, bool) & (result.distances > 0),
        source=result.source,
        boundary=boundary,
        seconds=time.perf_counter() - start,
    )


class BoundaryAttributions(WhiteBoxExplainer):
    """Xplique white-box explainer: BIG or BSM from the closest boundary point.

    ``e = BoundaryAttributions(model, method="BIG", boundary="transport")`` then
    ``e(inputs, labels)`` (class ids or one-hot rows) gives maps ``(N, H, W, 1)`` for
    images (channels reduced by ``reducer``) like Xplique's ``IntegratedGradients``.
    The boundary points of the last call are kept in ``last_boundary`` (a
    `BoundaryResult`, with the search time). The boundary is the one of the class given
    by the target (``argmax`` of the one-hot row; binary models: the sign), so a sample
    the model misclassifies has ``x_b = x`` and a zero BIG map.

    Args:
        model: Keras model returning logits (see `logits_model`).
        method: ``"BIG"`` or ``"BSM"``.
        boundary: boundary search, one of `BOUNDARIES` (`find_boundary`).
        steps: points of the integration path for BIG (>= 2; endpoints included).
        batch_size: inputs explained together (the BIG path holds ``batch_size * steps``
            points, evaluated by gradient batches of ``batch_size``).
        tol: L2 tolerance of the boundary bisection.
        clip_min, clip_max: input range kept by the boundary search.
        boundary_kwargs: extra arguments of the search (`find_boundary`).
        output_layer: explain this top-level layer's output (the boundary stays the one of
            the model's decision: the output of ``output_layer`` is what is searched).
        operator: Xplique operator ``g(f, x, y)`` (default: ``sum_k f_k(x) y_k``).
        reducer: channel reducer of Xplique ("mean", "sum", "min", "max" or None);
            "sum" keeps BIG's completeness on multi-channel images.
        verbose: progress bars of the search and of the integration.

    Raises:
        ValueError: for an unknown ``method`` or ``boundary``, ``steps < 2``, a
            non-positive ``batch_size``.
    """

    def __init__(
        self,
        model,
        method: str = "BIG",
        boundary: str = "transport",
        steps: int = 16,
        batch_size: int | None = 64,
        tol: float = 1e-3,
        clip_min: float | None = None,
        clip_max: float | None = None,
        boundary_kwargs: dict | None = None,
        output_layer=None,
        operator=None,
        reducer: str | None = "mean",
        verbose: bool = False,
    ):
        self.method = _check_choice("method", method, BOUNDARY_METHODS)
        self.boundary = _check_choice("boundary", boundary, BOUNDARIES)
        self.steps = _check_int("steps", steps, 2)
        if batch_size is not None:
            batch_size = _check_int("batch_size", batch_size, 1)
        if boundary_kwargs is not None and not isinstance(boundary_kwargs, dict):
            raise ValueError(
                f"boundary_kwargs must be a dict or None, received: {boundary_kwargs!r}"
            )
        if not isinstance(verbose, bool):
            raise ValueError(f"verbose must be a bool, received: {verbose!r}")
        if output_layer is not None:
            model = logits_model(model, output_layer=output_layer)
        super().__init__(model, None, batch_size, operator, reducer)
        self.tol = tol
        self.clip = {"clip_min": clip_min, "clip_max": clip_max}
        self.boundary_kwargs = dict(boundary_kwargs or {})
        self.verbose = verbose
        self.last_boundary: BoundaryResult | None = None

    def _targets(self, inputs, targets):
        if targets is None and not isinstance(inputs, tf.data.Dataset):
            raise ValueError(
                "targets must be given: class indices of shape (N,) or one-hot rows of "
                "shape (N, num_classes)"
            )
        inputs, targets = tensor_sanitize(inputs, targets)
        width = int(self.model.outputs[0].shape[-1]) if hasattr(self.model, "outputs") else None
        if width is not None and (len(targets.shape) == 1 or targets.shape[-1] != width):
            targets = tf.constant(targets_from_labels(targets.numpy(), width))
        return tf.cast(inputs, tf.float32), tf.cast(targets, tf.float32)

    def _sources(self, targets: np.ndarray) -> np.ndarray:
        if targets.shape[-1] == 1:
            return (targets[:, 0] > 0).astype("int64")
        return targets.argmax(-1)

    def boundary_points(self, inputs, targets) -> BoundaryResult:
        """`find_boundary` of ``inputs`` for ``targets`` (kept in ``last_boundary``)."""
        inputs, targets = self._targets(inputs, targets)
        result = find_boundary(
            self.model,
            inputs.numpy(),
            self._sources(targets.numpy()),
            self.boundary,
            tol=self.tol,
            batch_size=self.batch_size or len(inputs),
            verbose=self.verbose,
            **self.clip,
            **self.boundary_kwargs,
        )
        self.last_boundary = result
        return result

    def _integrate(self, inputs, baselines, targets):
        """Trapezoidal integrated gradients from ``baselines`` to ``inputs``."""
        n = int(inputs.shape[0])
        chunk = self.batch_size or n
        alpha = tf.reshape(
            tf.linspace(0.0, 1.0, self.steps), (1, -1) + (1,) * (len(inputs.shape) - 1)
        )
        bar = keras.utils.Progbar(n, unit_name="sample") if self.verbose else None
        out = []
        for lo in range(0, n, chunk):
            x, b, t = inputs[lo : lo + chunk], baselines[lo : lo + chunk], targets[lo : lo + chunk]
            path = b[:, None] + alpha * (x - b)[:, None]
            path = tf.reshape(path, (-1,) + tuple(x.shape[1:]))
            grads = self.batch_gradient(
                self.model, path, tf.repeat(t, self.steps, axis=0), self.batch_size
            )
            grads = tf.reshape(grads, (-1, self.steps) + tuple(x.shape[1:]))
            mean = 0.5 * tf.reduce_mean(grads[:, :-1] + grads[:, 1:], axis=1)
            out.append((x - b) * mean)
            if bar is not None:
                bar.add(int(x.shape[0]))
        return tf.concat(out, axis=0)

    def _raw_explain(self, inputs, targets):
        points = tf.constant(self.boundary_points(inputs, targets).points)
        if self.method == "BSM":
            return self.batch_gradient(self.model, points, targets, self.batch_size)
        return self._integrate(inputs, points, targets)

    @WhiteBoxExplainer._harmonize_channel_dimension
    def _harmonized(self, inputs, targets):
        return self._raw_explain(inputs, targets)

    def explain(self, inputs, targets=None):
        """BIG / BSM maps of ``inputs`` for ``targets`` (class ids or one-hot rows)."""
        inputs, targets = self._targets(inputs, targets)
        return self._harmonized(inputs, targets)

    def __call__(self, inputs, labels=None):
        """Alias of `explain`."""
        return self.explain(inputs, labels)


class BIG(BoundaryAttributions):
    """Boundary-based integrated gradients (`BoundaryAttributions` with ``method="BIG"``)."""

    method = "BIG"

    def __init__(self, model, boundary: str = "transport", steps: int = 16, **kwargs):
        kwargs.pop("method", None)
        super().__init__(model, "BIG", boundary, steps, **kwargs)


class BSM(BoundaryAttributions):
    """Boundary-based saliency map (`BoundaryAttributions` with ``method="BSM"``)."""

    method = "BSM"

    def __init__(self, model, boundary: str = "transport", **kwargs):
        kwargs.pop("method", None)
        kwargs.pop("steps", None)
        super().__init__(model, "BSM", boundary, **kwargs)
