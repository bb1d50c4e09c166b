"""Statistics of the XAI comparisons (`scripts/xai_claim.py`): mean +- standard error over
training seeds and over samples, and a "win" only beyond two standard errors.

Every score is measured per (seed, block of evaluated digits): ``values[s, b]``. For a
cell (model, method, metric):

* ``mean``: the mean over seeds and blocks;
* ``se_seeds``: the standard error of the ``S`` seed means (training variability);
* ``se_samples``: the standard error over blocks, pooled within seeds
  (``sqrt(mean_s var_b(values[s, :]) / (S B))``: sampling variability of the digits);
* ``se``: the larger of the two (conservative).

A comparison of two models on the same digits is paired: ``d[s, b] = a[s, b] - b[s, b]``;
model ``a`` wins when ``mean(d)`` favours it by more than ``2 se(d)`` (same ``se`` rule).
"""

from __future__ import annotations

import numpy as np


def mean_se(values) -> dict[str, float]:
    """``{"mean", "se_seeds", "se_samples", "se"}`` of ``values`` ``(seeds, blocks)``."""
    values = np.asarray(values, dtype="float64")
    if values.ndim == 1:
        values = values[:, None]
    seeds, blocks = values.shape
    seed_means = values.mean(axis=1)
    se_seeds = seed_means.std(ddof=1) / np.sqrt(seeds) if seeds > 1 else np.nan
    if blocks > 1:
        se_samples = np.sqrt(values.var(axis=1, ddof=1).mean() / (seeds * blocks))
    else:
        se_samples = np.nan
    se = np.nanmax([se_seeds, se_samples]) if np.isfinite([se_seeds, se_samples]).any() else np.nan
    return {
        "mean": float(values.mean()),
        "se_seeds": float(se_seeds),
        "se_samples": float(se_samples),
        "se": float(se),
    }


def paired_win(a, b, higher_is_better: bool) -> dict[str, float | str]:
    """Paired comparison of ``a`` and ``b`` ``(seeds, blocks)``: ``{"diff", "se",
    "verdict"}`` with verdict "a", "b" (beyond two standard errors) or "tie"."""
    d = np.asarray(a, dtype="float64") - np.asarray(b, dtype="float64")
    stats = mean_se(d)
    diff, se = stats["mean"], stats["se"]
    signed = diff if higher_is_better else -diff
    if np.isfinite(se) and abs(diff) > 2 * se:
        verdict = "a" if signed > 0 else "b"
    else:
        verdict = "tie"
    return {"diff": diff, "se": se, "verdict": verdict}


def fmt(stats: dict, digits: int = 3) -> str:
    """``mean ± se`` as text."""
    return f"{stats['mean']:.{digits}f} ± {stats['se']:.{digits}f}"
