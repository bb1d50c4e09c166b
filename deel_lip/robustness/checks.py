"""Check certified radii against empirical attacks.

A certificate claims that no perturbation of L2 norm below ``r(x)`` changes the
prediction at ``x``. `check_certificates` attacks every correctly classified point and
counts the points where an attack changed the class closer than the certificate allows:
``d(x) < r(x) (1 - tolerance) - tolerance`` (the tolerance absorbs float32 rounding).
A sound certificate gives zero violations whatever the attack; a wrong Lipschitz
constant (e.g. an unconstrained network certified as if it were 1-Lipschitz) shows up as
violations when the attack is strong enough. The ratio ``d(x) / r(x)`` of the points where
the attack succeeded measures how tight the certificate is (``>= 1`` when sound).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable

import numpy as np
from keras import ops

from deel_lip._certify import class_targets, predict_logits, signed_margin
from deel_lip._checks import check_batch_size
from deel_lip.robustness._attack_utils import check_inputs
from deel_lip.robustness.attacks import minimal_adversarial_l2, pgd_l2
from deel_lip.robustness.certificates import certified_radius

__all__ = ["CertificateReport", "check_certificates", "ATTACKS"]

#: Named attacks of `check_certificates`.
ATTACKS = ("minimal", "pgd")


@dataclasses.dataclass(frozen=True)
class CertificateReport:
    """Outcome of `check_certificates`.

    Attributes:
        points_checked: correctly classified points that were attacked.
        violations: points whose attack distance is below the certified radius
            (``d < r (1 - tolerance) - tolerance``).
        attacks_succeeded: points where the attack changed the class.
        ratio_min: smallest ``d / r`` over the points where the attack succeeded
            (nan when it never did).
        ratio_median: median of ``d / r`` over the same points.
        tolerance: the tolerance used.
        indices: ``(points_checked,)`` indices into ``x`` of the checked points.
        radii: ``(points_checked,)`` certified radii ``r``.
        distances: ``(points_checked,)`` attack distances ``d`` (``inf`` where the attack
            failed).
        violated: ``(points_checked,)`` boolean mask of the violations.
    """

    points_checked: int
    violations: int
    attacks_succeeded: int
    ratio_min: float
    ratio_median: float
    tolerance: float
    indices: np.ndarray
    radii: np.ndarray
    distances: np.ndarray
    violated: np.ndarray

    @property
    def passed(self) -> bool:
        """True when no certificate was violated."""
        return self.violations == 0

    def summary(self) -> str:
        """One line: points checked, violations, successful attacks and ratios."""
        return (
            f"{self.points_checked} points checked, {self.violations} violations, "
            f"{self.attacks_succeeded} successful attacks, attack distance / certified "
            f"radius: min {self.ratio_min:.4f}, median {self.ratio_median:.4f}"
        )


def _attack_distances(model, x, y, attack, radii, batch_size, attack_kwargs) -> np.ndarray:
    """Distance of the attack on each point, ``inf`` where it did not change the class."""
    if attack == "minimal":
        _, distances, _ = minimal_adversarial_l2(
            model, x, y, batch_size=batch_size, **attack_kwargs
        )
        return distances
    if attack == "pgd":
        adversarials = pgd_l2(model, x, y, radii, batch_size=batch_size, **attack_kwargs)
    else:
        adversarials = np.asarray(ops.convert_to_numpy(attack(model, x, y, **attack_kwargs)))
        if adversarials.shape != x.shape:
            raise ValueError(
                f"the attack must return an array of the shape of x {x.shape}, "
                f"received shape {adversarials.shape}"
            )
    logits = predict_logits(model, adversarials.astype("float32"), batch_size)
    targets = class_targets(y, logits.shape)
    flipped = ops.convert_to_numpy(
        signed_margin(ops.convert_to_tensor(logits), ops.convert_to_tensor(targets)) < 0
    )
    distances = np.linalg.norm((adversarials.astype("float64") - x).reshape(len(x), -1), axis=1)
    return np.where(flipped, distances, np.inf)


def check_certificates(
    model,
    x,
    y,
    lip_const: float = 1.0,
    disjoint_neurons: bool = True,
    attack: str | Callable = "minimal",
    tolerance: float = 1e-4,
    batch_size: int = 256,
    attack_kwargs: dict | None = None,
) -> CertificateReport:
    """Attack every correctly classified point and compare with its certified radius.

    The certified radius ``r`` is `certified_radius` of the logits with the true labels.
    The attack gives a distance ``d`` per point (``inf`` when it did not change the
    class), and a violation is ``d < r (1 - tolerance) - tolerance``.

    Attacks:
        * ``"minimal"`` (default): `minimal_adversarial_l2`, ``d`` = distance found.
        * ``"pgd"``: `pgd_l2` with a per-point budget ``eps = r``: any success inside the
          ball is reported with its distance.
        * a callable ``attack(model, x, y, **attack_kwargs) -> adversarials`` (array of the
          shape of ``x``): ``d = ||adv - x||`` where ``adv`` is misclassified.

    Args:
        model: Keras model returning logits.
        x: inputs ``(n, ...)``.
        y: labels: class ids, one-hot, or binary labels in {0, 1} / {-1, +1}.
        lip_const: Lipschitz constant the certificate assumes (> 0).
        disjoint_neurons: see `certified_radius`.
        attack: "minimal", "pgd" or a callable (see above).
        tolerance: relative and absolute slack of the comparison (>= 0).
        batch_size: batch size of the forward passes and of the attacks.
        attack_kwargs: keyword arguments passed to the attack (e.g. ``clip_min``,
            ``clip_max``, ``steps``, ``max_eps``).

    Returns:
        A `CertificateReport`.

    Raises:
        ValueError / TypeError: for bad arguments, or when no point is correctly classified.
    """
    if not (attack in ATTACKS or callable(attack)):
        raise ValueError(f"attack must be one of {ATTACKS} or a callable, received: {attack!r}")
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, numbers.Real)
        or not math.isfinite(tolerance)
        or tolerance < 0
    ):
        raise ValueError(f"tolerance must be a finite number >= 0, received: {tolerance!r}")
    if attack_kwargs is not None and not isinstance(attack_kwargs, dict):
        raise TypeError(f"attack_kwargs must be a dict or None, received: {attack_kwargs!r}")
    attack_kwargs = dict(attack_kwargs or {})
    batch_size = check_batch_size(batch_size)
    clip = (attack_kwargs.get("clip_min"), attack_kwargs.get("clip_max"))
    x = check_inputs(x, y, *clip)
    y = np.asarray(ops.convert_to_numpy(y))
    logits = predict_logits(model, x, batch_size)
    signed = certified_radius(
        logits, y, lip_const, disjoint_neurons=disjoint_neurons, negative=True
    ).astype("float64")
    indices = np.flatnonzero(signed > 0)
    if indices.size == 0:
        raise ValueError("check_certificates found no correctly classified point to check")
    radii = signed[indices]
    distances = _attack_distances(
        model, x[indices], y[indices], attack, radii, batch_size, attack_kwargs
    )
    violated = distances < radii * (1.0 - tolerance) - tolerance
    succeeded = np.isfinite(distances)
    ratios = distances[succeeded] / radii[succeeded]
    return CertificateReport(
        points_checked=int(indices.size),
        violations=int(violated.sum()),
        attacks_succeeded=int(succeeded.sum()),
        ratio_min=float(ratios.min()) if ratios.size else math.nan,
        ratio_median=float(np.median(ratios)) if ratios.size else math.nan,
        tolerance=float(tolerance),
        indices=indices,
        radii=radii,
        distances=distances,
        violated=violated,
    )
