"""Training callbacks that watch explanations: Xplique metrics and attribution images.

* `XpliqueMetricsCallback` adds Xplique metrics of attribution methods, computed on a
  fixed batch, to the epoch ``logs`` (so `History`, ``CSVLogger`` and ``TensorBoard``
  record them);
* `AttributionSnapshotCallback` saves a PNG grid of the attributions of a fixed batch.

Both compute on the current weights (the metrics are rebuilt at every evaluation, see
`evaluate_attributions`) inside `seeded(seed)`: the same masks and noise at every
epoch, so the values of two epochs differ only because the model changed, and the
training's own random streams are left alone.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from deel_lip.xai._xplique import attribution_class, require_matplotlib
from deel_lip.xai.evaluate import (
    check_kwargs,
    check_seed,
    evaluate_attributions,
    metric_name,
    seeded,
)
from deel_lip.xai.explain import explainer

__all__ = ["XpliqueMetricsCallback", "AttributionSnapshotCallback"]


def _check_every(every) -> int:
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"every must be an int >= 1, received: {every!r}")
    return int(every)


def _check_batch(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype="float32")
    y = np.asarray(y)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty batch (N, ...), received shape {x.shape}")
    if len(y) != len(x):
        raise ValueError(f"x and y must have the same length, received {len(x)} and {len(y)}")
    return x, y


def _names(values, to_name, argument: str) -> list[str]:
    values = [values] if isinstance(values, (str, type)) else list(values)
    if not values:
        raise ValueError(f"{argument} must name at least one entry, received: {values!r}")
    names = [to_name(value) for value in values]
    if len(set(names)) != len(names):
        raise ValueError(f"{argument} must not repeat a name, received: {names}")
    return names


def _due(epoch: int, every: int) -> bool:
    """Same rule as Keras' ``validation_freq``: epochs every, 2 every, ... (1-based)."""
    return (epoch + 1) % every == 0


@keras.saving.register_keras_serializable("deel_lip")
class XpliqueMetricsCallback(keras.callbacks.Callback):
    """Xplique metrics of attribution methods on a fixed batch, every ``every`` epochs.

    At the end of epochs ``every, 2 every, ...`` (1-based, like Keras'
    ``validation_freq``), computes `evaluate_attributions(model, x, y, methods,
    metrics)` and writes each value into the epoch logs under
    ``"<prefix>/<method>/<metric>"`` (e.g. ``"xai/Saliency/MuFidelity"``); the values
    are also kept in `results` (``{epoch: {key: value}}``). Put this callback *before*
    ``CSVLogger`` / ``TensorBoard`` in the callbacks list so that they see the values;
    with ``every > 1``, ``CSVLogger`` keeps only the columns of the first epoch, so
    prefer ``every=1`` there.

    Metrics are rebuilt from the current model at each evaluation (``MuFidelity``
    freezes the model's predictions at construction) and every evaluation runs under
    `seeded(seed)`. ``MeGe`` / ``ReCo`` are not accepted: they score a learning
    algorithm by retraining it, not the model being trained.

    Args:
        x: the fixed batch of inputs ``(N, ...)`` (keep it small: N in the tens).
        y: its labels, class indices ``(N,)`` or one-hot rows.
        methods: attribution method names (or Xplique classes), see `explainer`.
        metrics: metric names, see `evaluate_attributions`.
        every: evaluate every ``every`` epochs (>= 1).
        seed: seed of every random draw (>= 0).
        method_kwargs: ``{method: {argument: value}}`` for the methods.
        metric_kwargs: ``{metric: {argument: value}}`` for the metrics.
        prefix: first part of the log keys.

    Raises:
        ValueError: for unknown or repeated names, ``MeGe`` / ``ReCo``, ``x`` and ``y``
            of different lengths, keyword dicts for names not requested, ``every`` < 1,
            a negative ``seed`` or an empty ``prefix``.
    """

    def __init__(
        self,
        x,
        y,
        methods,
        metrics,
        every: int = 1,
        seed: int = 0,
        method_kwargs: dict | None = None,
        metric_kwargs: dict | None = None,
        prefix: str = "xai",
    ):
        super().__init__()
        self.x, self.y = _check_batch(x, y)
        self.methods = _names(methods, lambda m: attribution_class(m).__name__, "methods")
        self.metrics = _names(metrics, metric_name, "metrics")
        refused = [name for name in self.metrics if name in ("MeGe", "ReCo")]
        if refused:
            raise ValueError(
                f"metrics {refused} score a learning algorithm by retraining it on splits, "
                "not the model being trained: use evaluate_attributions(...) with "
                "learning_algorithm= instead"
            )
        self.every = _check_every(every)
        self.seed = check_seed(seed)
        self.method_kwargs = check_kwargs("method_kwargs", method_kwargs, self.methods)
        self.metric_kwargs = check_kwargs("metric_kwargs", metric_kwargs, self.metrics)
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty str, received: {prefix!r}")
        self.prefix = prefix
        self.results: dict[int, dict[str, float]] = {}

    def compute(self) -> dict[str, float]:
        """The metrics of the current model: ``{"<prefix>/<method>/<metric>": value}``."""
        table = evaluate_attributions(
            self.model,
            self.x,
            self.y,
            self.methods,
            self.metrics,
            method_kwargs=self.method_kwargs,
            metric_kwargs=self.metric_kwargs,
            seed=self.seed,
        )
        return {
            f"{self.prefix}/{method}/{metric}": value
            for method, row in table.items()
            for metric, value in row.items()
        }

    def on_epoch_end(self, epoch, logs=None):
        if not _due(epoch, self.every):
            return
        values = self.compute()
        self.results[epoch] = values
        if logs is not None:
            logs.update(values)

    def get_config(self) -> dict:
        return {
            "x": self.x.tolist(),
            "y": self.y.tolist(),
            "methods": list(self.methods),
            "metrics": list(self.metrics),
            "every": self.every,
            "seed": self.seed,
            "method_kwargs": self.method_kwargs,
            "metric_kwargs": self.metric_kwargs,
            "prefix": self.prefix,
        }

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


def _display(sample: np.ndarray) -> np.ndarray:
    """A 2-D (or RGB) array to show: images as they are, vectors as one row."""
    if sample.ndim == 3:
        if sample.shape[-1] == 3:
            low, high = sample.min(), sample.max()
            return (sample - low) / (high - low) if high > low else np.zeros_like(sample)
        return sample.mean(axis=-1)
    if sample.ndim == 1:
        return sample[None, :]
    return sample


def _save_grid(path: str, inputs, attributions, title: str = "") -> None:
    """Save a PNG: inputs on the first row, their attributions below (red +, blue -).

    Each attribution uses a symmetric colour scale ``[-max |a|, max |a|]`` of its own.
    Uses matplotlib's Agg canvas directly (no pyplot, the global backend is untouched).
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = len(inputs)
    figure = Figure(figsize=(1.3 * count + 0.4, 3.0))
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, count, squeeze=False)
    for column in range(count):
        image = _display(np.asarray(inputs[column]))
        attribution = _display(np.asarray(attributions[column], dtype="float32"))
        scale = float(np.max(np.abs(attribution))) or 1.0
        axes[0, column].imshow(image, cmap=None if image.ndim == 3 else "gray")
        axes[1, column].imshow(attribution, cmap="coolwarm", vmin=-scale, vmax=scale)
        for row in (0, 1):
            axes[row, column].set_axis_off()
    if title:
        figure.suptitle(title)
    figure.savefig(path, format="png", dpi=80)


@keras.saving.register_keras_serializable("deel_lip")
class AttributionSnapshotCallback(keras.callbacks.Callback):
    """Save a PNG grid of the attributions of a fixed batch every ``every`` epochs.

    At the end of epochs ``every, 2 every, ...`` (1-based), explains ``(x, y)`` with
    `explainer(method, model)` under `seeded(seed)` and writes
    ``<directory>/<method>_epoch<NNNN>.png`` (epoch numbered from 1): the inputs on the
    first row, the attributions below, each on its own symmetric colour scale
    (red positive, blue negative). The written paths
    are kept in `paths`.

    Args:
        x: the fixed batch of inputs ``(N, ...)`` (a handful of images).
        y: its labels, class indices ``(N,)`` or one-hot rows.
        method: attribution method name (or Xplique class), see `explainer`.
        directory: output directory (created if needed).
        every: snapshot every ``every`` epochs (>= 1).
        seed: seed of every random draw (>= 0).
        method_kwargs: arguments of the method.

    Raises:
        ValueError: for an unknown method, ``x`` and ``y`` of different lengths, an
            empty ``directory``, ``every`` < 1 or a negative ``seed``.
        ImportError: if matplotlib is missing.
    """

    def __init__(
        self,
        x,
        y,
        method,
        directory: str,
        every: int = 1,
        seed: int = 0,
        method_kwargs: dict | None = None,
    ):
        super().__init__()
        require_matplotlib()
        self.x, self.y = _check_batch(x, y)
        self.method = attribution_class(method).__name__
        if not isinstance(directory, (str, os.PathLike)) or not str(directory):
            raise ValueError(f"directory must be a non-empty path, received: {directory!r}")
        self.directory = str(directory)
        self.every = _check_every(every)
        self.seed = check_seed(seed)
        if method_kwargs is not None and not isinstance(method_kwargs, dict):
            raise ValueError(f"method_kwargs must be a dict, received: {method_kwargs!r}")
        self.method_kwargs = dict(method_kwargs or {})
        self.paths: list[str] = []

    def on_epoch_end(self, epoch, logs=None):
        if not _due(epoch, self.every):
            return
        with seeded(self.seed):
            attributions = explainer(self.method, self.model, **self.method_kwargs)(self.x, self.y)
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"{self.method}_epoch{epoch + 1:04d}.png")
        title = f"{self.method}, epoch {epoch + 1}"
        _save_grid(path, self.x, np.asarray(attributions), title=title)
        self.paths.append(path)

    def get_config(self) -> dict:
        return {
            "x": self.x.tolist(),
            "y": self.y.tolist(),
            "method": self.method,
            "directory": self.directory,
            "every": self.every,
            "seed": self.seed,
            "method_kwargs": self.method_kwargs,
        }

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)
