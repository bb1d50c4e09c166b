"""Adversarial alignment: does the minimal adversarial perturbation hit what matters?

Fel, Linsley et al. (2023) measure how well the smallest perturbation that changes a
model's decision aligns with human feature-importance maps: robust and 1-Lipschitz
networks need larger perturbations *and* put them where humans look. For each sample,
with ``delta = x_b - x`` the minimal adversarial perturbation (``x_b`` the closest
boundary point, `find_boundary`) and ``h`` the reference map:

* the perturbation map ``p = sqrt(sum_c delta_c^2)`` per pixel (channels reduced);
* the Spearman rank correlation ``rho(p, h)`` over pixels (average ranks for ties);
* the top-k overlap: the fraction of the ``k = top_k * H * W`` largest pixels of ``p``
  where ``h`` is at least its own k-th largest value (ties of ``h`` counted in, so a
  binary mask gives the fraction of the top-k perturbation inside the mask);
* the attack distance ``||delta||_2``.

MNIST has no human maps: `stroke_proxy` gives a documented **proxy** (the digit's stroke,
dilated). Any reference maps ``(n, h, w)`` or ``(n, h, w, 1)`` are accepted, resized to
the input size (bilinear).

Reference:
    Fel, Felipe, Linsley, Serre, "Harmonizing the object recognition strategies of deep
    neural networks with humans", NeurIPS 2022; Linsley, Feng, Fel, Serre et al.,
    "Adversarial alignment: breaking the trade-off between the strength of an attack and
    its relevance to human perception", 2023.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
from scipy.stats import rankdata

from deel_lip.xai.boundary import BOUNDARIES, BoundaryResult, find_boundary

__all__ = ["AlignmentResult", "adversarial_alignment", "stroke_proxy"]


def _stderr(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


@dataclasses.dataclass(frozen=True)
class AlignmentResult:
    """Per-sample alignment of minimal adversarial perturbations with reference maps.

    Attributes:
        spearman: Spearman correlation ``(n,)`` (NaN where no adversarial was found or a
            map is constant).
        topk_overlap: top-k overlap ``(n,)`` in [0, 1] (NaN where no adversarial).
        distances: attack distances ``||delta||`` ``(n,)``.
        success: ``(n,)`` bool: a boundary point was found.
        perturbations: ``|delta|`` maps ``(n, H, W)`` (channels reduced).
        reference_maps: the reference maps resized to ``(n, H, W)``.
        top_k: fraction of pixels of the top-k overlap.
        boundary: the `BoundaryResult` of the attack.
    """

    spearman: np.ndarray
    topk_overlap: np.ndarray
    distances: np.ndarray
    success: np.ndarray
    perturbations: np.ndarray
    reference_maps: np.ndarray
    top_k: float
    boundary: BoundaryResult

    def __len__(self) -> int:
        return len(self.distances)

    def summary(self) -> dict[str, float]:
        """Means and standard errors (over the successful samples) of the three scores."""
        out = {"success_rate": float(np.mean(self.success))}
        for name in ("spearman", "topk_overlap", "distances"):
            values = getattr(self, name)[self.success]
            out[name] = float(np.nanmean(values)) if len(values) else float("nan")
            out[f"{name}_se"] = _stderr(values)
        return out

    def plot(self, images, n: int = 6, **kwargs):
        """Inputs, ``|delta|`` and the reference maps of the first ``n`` samples
        (`plot_attributions`); returns the Figure."""
        from deel_lip.xai.plots import plot_attributions

        n = min(n, len(self))
        titles = [f"rho {r:.2f}, d {d:.2f}" for r, d in zip(self.spearman[:n], self.distances[:n])]
        kwargs.setdefault("row_titles", titles)
        return plot_attributions(
            np.asarray(images)[:n],
            {"|delta|": self.perturbations[:n], "reference": self.reference_maps[:n]},
            **kwargs,
        )


def stroke_proxy(x, threshold: float = 0.5, dilation: int = 1) -> np.ndarray:
    """A **proxy** of human importance maps for digits: the dilated stroke mask.

    ``1`` on pixels within ``dilation`` pixels (a ``(2 d + 1)^2`` square) of a pixel whose
    channel mean exceeds ``threshold``, ``0`` elsewhere. It is no human measurement: it
    encodes "the evidence is the ink and its immediate surroundings".

    Args:
        x: images ``(n, H, W, C)``.
        threshold: ink threshold on the channel mean.
        dilation: dilation radius in pixels (>= 0).

    Returns:
        float32 masks ``(n, H, W)``.

    Raises:
        ValueError: for inputs that are not a batch of images or a negative ``dilation``.
    """
    x = np.asarray(x, dtype="float32")
    if x.ndim != 4:
        raise ValueError(f"x must be images (n, H, W, C), received shape {x.shape}")
    if isinstance(dilation, bool) or not isinstance(dilation, (int, np.integer)) or dilation < 0:
        raise ValueError(f"dilation must be an int >= 0, received: {dilation!r}")
    ink = (x.mean(axis=-1, keepdims=True) > threshold).astype("float32")
    size = 2 * int(dilation) + 1
    mask = tf.nn.max_pool2d(ink, size, 1, "SAME").numpy() if dilation else ink
    return mask[..., 0]


def _reference(reference_maps, n: int, size: tuple[int, int]) -> np.ndarray:
    maps = np.asarray(reference_maps, dtype="float32")
    if maps.ndim == 4 and maps.shape[-1] == 1:
        maps = maps[..., 0]
    if maps.ndim != 3 or len(maps) != n:
        raise ValueError(
            f"reference_maps must be ({n}, h, w) or ({n}, h, w, 1) maps, received shape "
            f"{np.shape(reference_maps)}"
        )
    if maps.shape[1:] != size:
        maps = tf.image.resize(maps[..., None], size, method="bilinear").numpy()[..., 0]
    return maps


def _topk_overlap(p: np.ndarray, h: np.ndarray, k: int) -> float:
    top_p = np.argsort(-p, kind="stable")[:k]
    kth = np.sort(h)[-k]
    return float(np.mean(h[top_p] >= kth))


def adversarial_alignment(
    model,
    x,
    y,
    reference_maps,
    attack: str = "minimal_l2",
    top_k: float = 0.1,
    clip_min: float | None = 0.0,
    clip_max: float | None = 1.0,
    batch_size: int = 256,
    **attack_kwargs,
) -> AlignmentResult:
    """Alignment of the minimal adversarial perturbations of ``x`` with reference maps.

    Args:
        model: Keras model returning logits.
        x: images ``(n, H, W, C)`` in ``[clip_min, clip_max]``.
        y: labels (class ids or one-hot rows).
        reference_maps: importance maps ``(n, h, w)`` or ``(n, h, w, 1)`` of any size
            (human maps, or a proxy such as `stroke_proxy`).
        attack: boundary search (`BOUNDARIES`): ``"minimal_l2"`` (DDN), ``"pgd"`` or
            ``"transport"`` (the OTNN's transport step).
        top_k: fraction of pixels of the top-k overlap, in (0, 1].
        clip_min, clip_max: input range kept by the attack.
        batch_size: samples attacked together.
        **attack_kwargs: arguments of the attack (`find_boundary`).

    Returns:
        An `AlignmentResult`.

    Raises:
        ValueError: for non-image inputs, reference maps of the wrong shape, ``top_k``
            outside (0, 1], an unknown ``attack``.
    """
    x = np.asarray(x, dtype="float32")
    if x.ndim != 4:
        raise ValueError(f"x must be images (n, H, W, C), received shape {x.shape}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, float)) or not 0 < top_k <= 1:
        raise ValueError(f"top_k must be a fraction in (0, 1], received: {top_k!r}")
    if attack not in BOUNDARIES:
        raise ValueError(f"attack must be one of {BOUNDARIES}, received: {attack!r}")
    n, size = len(x), x.shape[1:3]
    reference = _reference(reference_maps, n, size)
    result = find_boundary(
        model,
        x,
        y,
        attack,
        clip_min=clip_min,
        clip_max=clip_max,
        batch_size=batch_size,
        **attack_kwargs,
    )
    delta = result.points.astype("float64") - x
    perturbations = np.sqrt((delta**2).sum(axis=-1)).astype("float32")
    k = max(1, int(round(top_k * size[0] * size[1])))
    spearman = np.full(n, np.nan)
    overlap = np.full(n, np.nan)
    for i in np.flatnonzero(result.success):
        p, h = perturbations[i].ravel(), reference[i].ravel()
        if np.ptp(p) > 0 and np.ptp(h) > 0:
            spearman[i] = np.corrcoef(rankdata(p), rankdata(h))[0, 1]
        overlap[i] = _topk_overlap(p, h, k)
    return AlignmentResult(
        spearman=spearman,
        topk_overlap=overlap,
        distances=np.where(result.success, result.distances, np.inf),
        success=result.success,
        perturbations=perturbations,
        reference_maps=reference,
        top_k=float(top_k),
        boundary=result,
    )
