"""Concept deletion / insertion fidelity of a fitted `LipschitzCraft` (CRAFT, Sec. 4).

Split from `deel_lip.xai.concepts` (re-exported there and in `deel_lip.xai`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from deel_lip.xai.concepts import LipschitzCraft

__all__ = ["concept_fidelity"]


def _area(scores: np.ndarray) -> float:
    """Area under ``k/r -> mean score_k`` (trapezoids), in logits."""
    curve = scores.mean(axis=0)
    return float(np.mean((curve[1:] + curve[:-1]) / 2))


def concept_fidelity(
    craft: LipschitzCraft, images, *, random_orders: int = 8, seed: int = 0
) -> dict[str, float]:
    """Concept deletion / insertion (CRAFT, Sec. 4) on ``images`` of the fitted class.

    Concepts are removed (deletion: ``U``'s coefficients of the ``k`` most important set
    to 0) or added (insertion: only those kept) for ``k = 0..r``, and the class logit
    ``h((U * m) W)`` is averaged over the images: the area under that curve (``k/r`` in
    ``[0, 1]``) is ``deletion_logit`` / ``insertion_logit``, for the Sobol order and for
    random orders (mean over ``random_orders`` permutations). A faithful ranking has a
    *lower* deletion and a *higher* insertion area than random. ``deletion`` /
    ``insertion`` are the same areas normalised by the end points, ``(a - empty) /
    (full - empty)`` with ``full`` the score of all concepts and ``empty`` of none (1 and 0
    for curves that stay between them); they are unstable when ``full`` is close to
    ``empty``. Sobol indices measure how much a concept moves the logit, not in which
    direction, so a concept that lowers it can rank first.

    Returns:
        ``{"deletion", "insertion", "deletion_random", "insertion_random"}`` (normalised),
        the same keys with ``_logit`` (areas in logits), ``"full"`` and ``"empty"``.
    """
    if craft.importances is None:
        raise ValueError("call craft.estimate_importance() before concept_fidelity()")
    r = craft.number_of_concepts
    steps = np.arange(r + 1)[:, None]

    def areas(order):
        rank = np.empty(r, dtype=int)
        rank[order] = np.arange(r)
        kept_first = (rank[None, :] < steps).astype("float32")  # top-k kept
        scores = craft.class_scores(images, np.concatenate([1.0 - kept_first, kept_first]))
        return np.array(
            [
                _area(scores[:, : r + 1]),
                _area(scores[:, r + 1 :]),
                scores[:, 0].mean(),
                scores[:, r].mean(),
            ]
        )

    deletion, insertion, full, empty = areas(np.argsort(craft.importances)[::-1])
    rng = np.random.default_rng(seed)
    random_areas = np.mean([areas(rng.permutation(r))[:2] for _ in range(random_orders)], 0)
    span = full - empty if full != empty else 1.0
    logits = {
        "deletion": deletion,
        "insertion": insertion,
        "deletion_random": random_areas[0],
        "insertion_random": random_areas[1],
    }
    result = {key: float((value - empty) / span) for key, value in logits.items()}
    result.update({f"{key}_logit": float(value) for key, value in logits.items()})
    result.update(full=float(full), empty=float(empty))
    return result
