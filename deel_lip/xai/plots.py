"""Figures of explanations: inputs, attributions, counterfactuals and their differences.

Every function builds a `matplotlib.figure.Figure` directly (no ``pyplot`` state, so it
works with the Agg backend, in scripts, tests and notebooks), optionally saves it as a
PNG, and returns it. The grid has one row per image and ``img_size`` inches per cell,
so a saved PNG is ``(rows * img_size * dpi, cols * img_size * dpi)`` pixels.

* `plot_explanations`: input | one column per attribution method | counterfactual |
  difference ``x' - x``.
* `plot_attributions`, `plot_counterfactuals`: the two halves of it.
* `plot_metric_table`: a table of scores (e.g. Xplique metrics per method and model).

Attribution maps are prepared with `xplique.plots.generate_heatmap` (percentile clip,
absolute value, scaling to ``[0, 1]``, resizing to the image), as in Xplique's own plots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from deel_lip.xai._xplique import require_matplotlib, require_xplique
from deel_lip.xai.counterfactuals import CounterfactualResult

__all__ = [
    "plot_explanations",
    "plot_attributions",
    "plot_counterfactuals",
    "plot_metric_table",
]


# ------------------------------------------------------------------ array preparation


def _as_images(name: str, images) -> np.ndarray:
    """``(n, H, W, C)`` float array from ``(n, H, W)`` or ``(n, H, W, C)`` (C = 1 or 3)."""
    array = np.asarray(images, dtype="float32")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or len(array) == 0:
        raise ValueError(
            f"{name} must be a non-empty batch of images (n, H, W) or (n, H, W, C) with C in "
            f"(1, 3), received shape {array.shape}"
        )
    return array


def _display(image: np.ndarray, reference: np.ndarray | None = None):
    """An image scaled to ``[0, 1]`` for ``imshow`` (by the value range of ``image`` and
    ``reference`` together), and its colour map."""
    both = image if reference is None else np.concatenate([image.ravel(), reference.ravel()])
    low, high = float(both.min()), float(both.max())
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    if scaled.shape[-1] == 1:
        return scaled[..., 0], "gray"
    return scaled, None


def _heatmap(explanation: np.ndarray, size, clip_percentile, absolute_value) -> np.ndarray:
    """Attribution map prepared by `xplique.plots.generate_heatmap` (channels averaged)."""
    xplique = require_xplique()
    explanation = np.asarray(explanation, dtype="float32")
    if explanation.ndim == 3:
        explanation = explanation.mean(axis=-1)
    values = np.abs(explanation) if absolute_value else explanation
    if float(values.max()) == float(values.min()):  # Xplique's scaling would divide by 0
        return np.zeros(size, dtype="float32")
    return xplique.plots.generate_heatmap(
        explanation, size, clip_percentile=clip_percentile, absolute_value=absolute_value
    )


def _check_row_titles(row_titles, n: int) -> list[str] | None:
    if row_titles is None:
        return None
    if isinstance(row_titles, str) or len(row_titles) != n:
        raise ValueError(
            f"row_titles must be a sequence of {n} strings (one per image), received: "
            f"{row_titles!r}"
        )
    return [str(title) for title in row_titles]


def _check_size(img_size, dpi) -> None:
    for name, value in (("img_size", img_size), ("dpi", dpi)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name} must be a number > 0, received: {value!r}")


def _new_figure(rows: int, cols: int, img_size: float, dpi: int):
    """A Figure of ``rows x cols`` square cells of ``img_size`` inches, and its axes."""
    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(cols * img_size, rows * img_size), dpi=dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.01, top=1 - 0.3 / rows, wspace=0.05)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _save(fig, save_path, dpi: int):
    if save_path is not None:
        path = Path(save_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig


# ------------------------------------------------------------------ public figures


def plot_explanations(
    images,
    attributions: Mapping[str, np.ndarray] | None = None,
    counterfactuals=None,
    row_titles: Sequence[str] | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    clip_percentile: float | None = 0.5,
    absolute_value: bool = True,
    img_size: float = 1.5,
    dpi: int = 100,
    save_path: str | Path | None = None,
):
    """Inputs, attributions and counterfactuals side by side, one row per image.

    Columns: the input; for each entry of ``attributions`` its map (from
    `xplique.plots.generate_heatmap`) drawn over the input; then, with
    ``counterfactuals``, the counterfactual ``x'`` and the difference ``x' - x`` (a
    diverging colour map, red where ``x'`` is brighter, symmetric around 0 per row). The
    input and its counterfactual share one grey scale (the value range of the pair).

    Args:
        images: ``(n, H, W)`` or ``(n, H, W, C)`` with ``C`` in (1, 3).
        attributions: ``{title: maps}``, each ``(n, h, w)`` or ``(n, h, w, c)`` (resized
            to ``H x W``), e.g. the outputs of Xplique explainers.
        counterfactuals: array of the shape of ``images``, or a `CounterfactualResult`
            (then the default row titles are ``"source -> target"``).
        row_titles: one label per row, written left of the row.
        cmap: colour map of the attribution maps.
        alpha: opacity of the attribution maps over the input.
        clip_percentile: percentile clipping of the maps (None: no clipping).
        absolute_value: show ``|attribution|``.
        img_size: size of a cell in inches.
        dpi: resolution of the figure and of the saved PNG.
        save_path: where to save the PNG (parent folders are created), or None.

    Returns:
        The `matplotlib.figure.Figure` (``n`` rows, ``1 + len(attributions) (+ 2)``
        columns).

    Raises:
        ValueError: for images, maps or counterfactuals of the wrong shape, no attribution
            and no counterfactual, a wrong number of row titles, or a non-positive size.
        ImportError: without matplotlib or Xplique (the ``xai`` extra).
    """
    images = _as_images("images", images)
    n, height, width = images.shape[:3]
    attributions = dict(attributions or {})
    if not isinstance(counterfactuals, (CounterfactualResult, type(None))):
        counterfactuals = _as_images("counterfactuals", counterfactuals)
    if isinstance(counterfactuals, CounterfactualResult):
        if row_titles is None:
            row_titles = [
                f"{s} -> {t}" for s, t in zip(counterfactuals.source, counterfactuals.target)
            ]
        counterfactuals = _as_images("counterfactuals", counterfactuals.counterfactuals)
    if not attributions and counterfactuals is None:
        raise ValueError("plot_explanations needs attributions, counterfactuals or both")
    if counterfactuals is not None and counterfactuals.shape != images.shape:
        raise ValueError(
            f"counterfactuals must have the shape of images {images.shape}, received "
            f"{counterfactuals.shape}"
        )
    for title, maps in attributions.items():
        shape = np.shape(maps)
        if len(shape) not in (3, 4) or shape[0] != n:
            raise ValueError(
                f"attributions[{title!r}] must have shape (n, h, w) or (n, h, w, c) with "
                f"n = {n}, received shape {shape}"
            )
    row_titles = _check_row_titles(row_titles, n)
    _check_size(img_size, dpi)

    columns = ["input", *attributions]
    if counterfactuals is not None:
        columns += ["counterfactual", "x' - x"]
    fig, axes = _new_figure(n, len(columns), img_size, dpi)
    for col, title in enumerate(columns):
        axes[0, col].set_title(title, fontsize=8)
    maps = {title: np.asarray(values, dtype="float32") for title, values in attributions.items()}
    for row in range(n):
        reference = None if counterfactuals is None else counterfactuals[row]
        shown, image_cmap = _display(images[row], reference)
        axes[row, 0].imshow(shown, cmap=image_cmap)
        for col, values in enumerate(maps.values(), start=1):
            heat = _heatmap(values[row], (height, width), clip_percentile, absolute_value)
            axes[row, col].imshow(shown, cmap=image_cmap)
            axes[row, col].imshow(heat, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
        if counterfactuals is not None:
            cf_shown, cf_cmap = _display(counterfactuals[row], images[row])
            axes[row, -2].imshow(cf_shown, cmap=cf_cmap)
            diff = (counterfactuals[row] - images[row]).mean(axis=-1)
            bound = max(float(np.abs(diff).max()), 1e-12)
            axes[row, -1].imshow(diff, cmap="RdBu_r", vmin=-bound, vmax=bound)
        if row_titles is not None:
            axes[row, 0].set_ylabel(row_titles[row], fontsize=8)
    return _save(fig, save_path, dpi)


def plot_attributions(images, attributions: Mapping[str, np.ndarray], **kwargs):
    """Inputs and attribution maps side by side: `plot_explanations` without counterfactuals.

    Args:
        images: ``(n, H, W)`` or ``(n, H, W, C)``.
        attributions: ``{title: maps}``, at least one entry.
        **kwargs: the keyword arguments of `plot_explanations` (``save_path``, ...).

    Returns:
        The Figure: ``n`` rows, ``1 + len(attributions)`` columns.
    """
    if not attributions:
        raise ValueError("attributions must hold at least one {title: maps} entry")
    return plot_explanations(images, attributions=attributions, **kwargs)


def plot_counterfactuals(images, counterfactuals, **kwargs):
    """Inputs, counterfactuals and ``x' - x``: `plot_explanations` without attributions.

    Args:
        images: ``(n, H, W)`` or ``(n, H, W, C)``.
        counterfactuals: array of the shape of ``images`` or a `CounterfactualResult`.
        **kwargs: the keyword arguments of `plot_explanations` (``row_titles``, ...).

    Returns:
        The Figure: ``n`` rows, 3 columns.
    """
    return plot_explanations(images, counterfactuals=counterfactuals, **kwargs)


def plot_metric_table(
    scores: Mapping[str, Mapping[str, float]],
    title: str | None = None,
    fmt: str = "{:.3f}",
    col_width: float = 1.4,
    row_height: float = 0.35,
    dpi: int = 100,
    save_path: str | Path | None = None,
):
    """A table of scores as a figure: one row per key of ``scores``, one column per metric.

    Args:
        scores: ``{row label: {metric: value}}``; the columns are the union of the metrics
            in first-seen order, missing values are shown as ``-``.
        title: title above the table, or None.
        fmt: format of a value (``str.format``); NaN is shown as ``nan``.
        col_width: width of a metric column in inches (the label column is twice as wide).
        row_height: height of a row in inches.
        dpi: resolution of the figure and of the saved PNG.
        save_path: where to save the PNG, or None.

    Returns:
        The `matplotlib.figure.Figure`: a table whose first row holds the metric names and
        first column the row labels.

    Raises:
        ValueError: for empty ``scores`` or a non-positive size.
    """
    if not scores or not all(isinstance(row, Mapping) for row in scores.values()):
        raise ValueError(
            f"scores must be a non-empty mapping {{row: {{metric: value}}}}, received: {scores!r}"
        )
    _check_size(col_width, dpi)
    _check_size(row_height, dpi)
    metrics = list(dict.fromkeys(metric for row in scores.values() for metric in row))

    def cell(value) -> str:
        if value is None:
            return "-"
        value = float(value)
        return "nan" if math.isnan(value) else fmt.format(value)

    cells = [[str(label)] + [cell(row.get(m)) for m in metrics] for label, row in scores.items()]
    require_matplotlib()
    from matplotlib.figure import Figure

    rows = len(cells) + 1 + (1 if title else 0)
    units = len(metrics) + 2  # the label column is two units wide
    fig = Figure(figsize=(col_width * units, row_height * rows), dpi=dpi)
    ax = fig.add_axes((0.01, 0.02, 0.98, 0.96 - (1 / rows if title else 0)))
    ax.axis("off")
    table = ax.table(
        cellText=cells,
        colLabels=[""] + metrics,
        colWidths=[2 / units] + [1 / units] * len(metrics),
        cellLoc="center",
        bbox=(0, 0, 1, 1),
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.5 / rows)
    return _save(fig, save_path, dpi)
