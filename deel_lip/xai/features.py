"""Feature visualisation of deel_lip models: MACO and Fourier optimisation (Xplique).

`feature_visualization` finds an image ``x*`` that maximises one unit of a model,

    x* = argmax_x  mean(f_l(x) * m)     (m: one-hot mask of a logit, channel or neuron),

with Xplique's building blocks, and checks the result on the model:

* ``method="maco"`` (Fel et al. 2023, "Unlocking feature visualization for deeper networks
  with magnitude constrained optimization"): the image is ``irfft2(M e^{i phi})`` with a
  fixed magnitude spectrum ``M`` (the mean spectrum of ``reference_images``) and an
  optimised phase ``phi`` (Nadam ascent); each step scores random noisy crops of the
  canvas. The step runs here, with Xplique's parametrisation (``init_maco_buffer``,
  ``maco_image_parametrization``), traced once per layer for every target.
* ``method="fourier"``: Xplique's ``optimize`` (Olah et al. 2017, Fourier-preconditioned
  pixels with the standard jitter / scale / blur transformations).

Xplique's defaults are tuned for ImageNet models: a 512-pixel canvas, crops from 50% down
to 5% of it, and no grayscale spectrum. On a 28x28 MNIST classifier they reach the target
class for 2 digits out of 10. The defaults here follow the model instead: the canvas is
the model's input size, crops cover ``box_size=0.9`` of it, the magnitude spectrum comes
from real images (required for grayscale, optional for RGB), and values lie in ``[0, 1]``.

Every result records the *activation reached* by the visualisation (the objective on the
image, resized to the model's input if needed) and the *rank* of the target among the
units of its kind (1 = largest logit / channel / neuron): rank 1 means the image does
what it claims. `plot_feature_visualizations` draws a grid of results.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf  # Xplique's optimisation runs on TensorFlow tensors

from deel_lip.xai._xplique import require_matplotlib, require_xplique
from deel_lip.xai.evaluate import seeded
from deel_lip.xai.feature_optimizers import fourier_optimize, maco_optimize
from deel_lip.xai.models import logits_model

__all__ = [
    "FeatureVisualization",
    "feature_visualization",
    "feature_visualizations",
    "plot_feature_visualizations",
]

OBJECTIVES = ("logit", "channel", "neuron")
METHODS = ("maco", "fourier")


@dataclass
class FeatureVisualization:
    """One visualisation and its check on the model.

    Attributes:
        image: ``(H, W, C)`` optimised image, values in ``values_range``.
        layer: name of the layer whose unit is maximised (``"logits"`` for the logits).
        objective: ``"logit"``, ``"channel"`` or ``"neuron"``.
        index: index of the unit (class, channel, or flat neuron index).
        activation: objective reached on the image (the logit; the channel's spatial mean;
            the neuron's value).
        rank: rank of the target among the ``num_units`` units of its kind on the image
            (1 = largest).
        num_units: number of logits / channels / neurons of the layer.
        method: ``"maco"`` or ``"fourier"``.
        transparency: MACO's accumulated ``|d objective / d pixel|`` (same shape as
            ``image``), None for Fourier.
        history: objective on the step's noisy crops, one value per step (MACO only).
    """

    image: np.ndarray
    layer: str
    objective: str
    index: int
    activation: float
    rank: int
    num_units: int
    method: str
    transparency: np.ndarray | None = None
    history: list[float] = field(default_factory=list)

    @property
    def success(self) -> bool:
        """True when the visualisation ranks its target first."""
        return self.rank == 1


# ------------------------------------------------------------------ checks


def _check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"{name} must be one of {choices}, received: {value!r}")
    return value.lower()


def _check_positive(name: str, value, kind=int) -> None:
    valid = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if kind is int:
        valid = valid and float(value).is_integer()
    if not valid or value <= 0:
        raise ValueError(f"{name} must be a {kind.__name__} > 0, received: {value!r}")


def _check_range(values_range) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in values_range)
    except (TypeError, ValueError):
        low = high = None
    if low is None or not low < high:
        raise ValueError(
            f"values_range must be a pair (low, high) with low < high, received: {values_range!r}"
        )
    return low, high


def _check_box_size(box_size):
    if callable(box_size):
        return box_size
    if (
        isinstance(box_size, bool)
        or not isinstance(box_size, (int, float))
        or not (0 < box_size <= 1)
    ):
        raise ValueError(
            f"box_size must be a float in (0, 1] or a function of the step, received: {box_size!r}"
        )
    return float(box_size)


# ------------------------------------------------------------------ objective


def _view_and_output(model, layer):
    """(view, layer name): the model's logits (layer None) or a layer's output."""
    if layer is None:
        return logits_model(model), "logits"
    view = logits_model(model, output_layer=layer)
    name = layer if isinstance(layer, str) else getattr(layer, "name", str(layer))
    return view, name


def _mask(output_shape, objective: str, index: int, layer_name: str) -> np.ndarray:
    """One-hot mask of the target on the layer output (batch axis of 1 first)."""
    shape = tuple(int(d) for d in output_shape[1:])
    if objective == "channel":
        if len(shape) < 2:
            raise ValueError(
                f"objective='channel' needs a layer with spatial axes; "
                f"{layer_name!r} outputs shape {shape}"
            )
        units = shape[-1]
    else:
        units = math.prod(shape)
    if (
        isinstance(index, bool)
        or not isinstance(index, (int, np.integer))
        or not (0 <= index < units)
    ):
        raise ValueError(
            f"target must be an int in [0, {units}) for the {objective} objective "
            f"of {layer_name!r}, received: {index!r}"
        )
    mask = np.zeros((1, *shape), dtype="float32")
    if objective == "channel":
        mask[..., int(index)] = 1.0
    else:
        mask.reshape(1, -1)[0, int(index)] = 1.0
    return mask


def _objective(view, mask, objective: str, index: int, layer_name: str):
    """The Xplique `Objective` of the target (for Xplique's Fourier `optimize`)."""
    xplique = require_xplique()
    output = view.outputs[0]
    axes = list(range(1, len(output.shape)))

    def score(outputs, target):
        return tf.reduce_mean(outputs * target, axis=axes)

    name = f"{objective}#{layer_name}_{index}"
    features = xplique.features_visualizations
    return features.Objective(view, [output], [mask], [score], [1.0], [[name]])


def _unit_scores(outputs: np.ndarray, objective: str) -> np.ndarray:
    """Per-unit scores of one output: the values (logit / neuron) or channel means."""
    if objective == "channel":
        return outputs.reshape(-1, outputs.shape[-1]).mean(axis=0)
    return outputs.reshape(-1)


def _check_result(view, image, objective: str, index: int) -> tuple[float, int, int]:
    """(activation, rank, number of units) of the target on ``image``."""
    size = tuple(int(d) for d in view.inputs[0].shape[1:3])
    batch = tf.convert_to_tensor(image[None], dtype=tf.float32)
    if tuple(batch.shape[1:3]) != size:
        batch = tf.image.resize(batch, size)
    outputs = keras.ops.convert_to_numpy(view(batch, training=False))[0]
    scores = _unit_scores(outputs, objective)
    rank = 1 + int(np.sum(scores > scores[index]))
    return float(scores[index]), rank, int(scores.size)


def feature_visualization(
    model: keras.Model,
    target: int,
    *,
    layer=None,
    objective: str | None = None,
    method: str = "maco",
    reference_images=None,
    canvas_size: int | Sequence[int] | None = None,
    nb_steps: int = 256,
    box_size=0.9,
    noise_intensity: float = 0.08,
    nb_crops: int = 32,
    learning_rate: float | None = None,
    values_range=(0.0, 1.0),
    seed: int | None = 0,
    verbose: int = 0,
) -> FeatureVisualization:
    """An image maximising one logit, channel or neuron of ``model``, and its check.

    Args:
        model: a Keras / deel_lip model with one image input ``(H, W, C)``.
        target: class index (logits), channel index, or flat neuron index.
        layer: name, index or instance of a top-level layer; None for the logits (a final
            softmax is dropped, see `logits_model`).
        objective: ``"logit"`` (default without ``layer``), ``"channel"`` (default for a
            layer with spatial axes) or ``"neuron"``.
        method: ``"maco"`` or ``"fourier"``.
        reference_images: ``(N, H, W, C)`` real images whose mean magnitude spectrum MACO
            keeps (required for grayscale; RGB defaults to Xplique's ImageNet spectrum).
        canvas_size: side (or ``(height, width)``) of the optimised image; default the
            model's input size (Xplique: 512).
        nb_steps: optimisation steps.
        box_size: MACO's mean crop size as a fraction of the canvas (or ``f(step)``).
        noise_intensity: MACO's noise standard deviation on the crops.
        nb_crops: MACO's crops per step.
        learning_rate: Nadam's on the phase for MACO (default 1.0), Adam's on the Fourier
            buffer otherwise (default 0.05).
        values_range: range of the model's input pixels.
        seed: seed of the random phase and crops (None: the global random state). Runs
            repeat bit for bit under `tf.config.experimental.enable_op_determinism()`;
            otherwise TensorFlow's CPU gradient kernels vary at float rounding.
        verbose: 1 shows a progress bar with the objective (MACO).

    Returns:
        A `FeatureVisualization` with the image, the activation reached and the rank.

    Raises:
        ValueError: invalid ``objective``, ``method``, ``target`` (out of range for the
            layer), ``box_size``, ``values_range``, sizes, or a grayscale model without
            ``reference_images``.
    """
    require_xplique()
    method = _check_choice("method", method, METHODS)
    view, layer_name = _view_and_output(model, layer)
    input_shape = tuple(int(d) for d in view.inputs[0].shape[1:])
    if len(input_shape) != 3:
        raise ValueError(f"model must take images (H, W, C), received input shape {input_shape}")
    rank = len(view.outputs[0].shape)
    if objective is None:
        objective = "logit" if layer is None else ("channel" if rank == 4 else "neuron")
    objective = _check_choice("objective", objective, OBJECTIVES)
    if canvas_size is None:
        canvas = input_shape[:2]
    else:
        canvas = (canvas_size, canvas_size) if np.ndim(canvas_size) == 0 else tuple(canvas_size)
        for side in canvas:
            _check_positive("canvas_size", side)
        canvas = tuple(int(side) for side in canvas)
    _check_positive("nb_steps", nb_steps)
    _check_positive("nb_crops", nb_crops)
    _check_positive("noise_intensity", noise_intensity, float)
    box_size = _check_box_size(box_size)
    values_range = _check_range(values_range)
    if learning_rate is None:
        learning_rate = 1.0 if method == "maco" else 0.05
    _check_positive("learning_rate", learning_rate, float)
    mask = _mask(view.outputs[0].shape, objective, target, layer_name)
    with seeded(seed) if seed is not None else contextlib.nullcontext():
        if method == "maco":
            image, transparency, history = maco_optimize(
                view,
                mask,
                reference_images,
                canvas,
                int(nb_steps),
                box_size,
                float(noise_intensity),
                int(nb_crops),
                float(learning_rate),
                values_range,
                verbose,
            )
        else:
            image, transparency, history = fourier_optimize(
                _objective(view, mask, objective, target, layer_name),
                canvas,
                int(nb_steps),
                float(learning_rate),
                values_range,
            )
    activation, target_rank, units = _check_result(view, image, objective, int(target))
    return FeatureVisualization(
        image=image,
        layer=layer_name,
        objective=objective,
        index=int(target),
        activation=activation,
        rank=target_rank,
        num_units=units,
        method=method,
        transparency=transparency,
        history=history,
    )


def feature_visualizations(model, targets, *, verbose: int = 1, seed: int | None = 0, **kwargs):
    """`feature_visualization` for each target (seeds ``seed, seed + 1, ...``).

    Prints one line per target when ``verbose`` (target, activation, rank, time).

    Returns:
        The list of `FeatureVisualization`, in the order of ``targets``.
    """
    import time

    results = []
    for position, target in enumerate(targets):
        start = time.perf_counter()
        target_seed = None if seed is None else seed + position
        result = feature_visualization(model, target, seed=target_seed, **kwargs)
        results.append(result)
        if verbose:
            print(
                f"[{position + 1}/{len(targets)}] {result.objective} {target}: activation "
                f"{result.activation:.3f}, rank {result.rank}/{result.num_units} "
                f"({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    return results


def plot_feature_visualizations(
    results,
    *,
    cols: int = 5,
    img_size: float = 1.6,
    dpi: int = 100,
    save_path: str | Path | None = None,
):
    """Grid of visualisations titled ``target / rank / activation`` (rank 1 in green).

    Returns:
        The `matplotlib.figure.Figure` (saved as PNG when ``save_path`` is given).
    """
    if not results or not all(isinstance(r, FeatureVisualization) for r in results):
        raise ValueError(
            "results must be a non-empty list of FeatureVisualization, "
            f"received: {type(results).__name__}"
        )
    _check_positive("cols", cols)
    require_matplotlib()
    from matplotlib.figure import Figure

    cols = min(int(cols), len(results))
    rows = math.ceil(len(results) / cols)
    fig = Figure(figsize=(cols * img_size, rows * img_size * 1.15), dpi=dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, result in zip(axes.flat, results):
        image = result.image
        low, high = float(image.min()), float(image.max())
        image = (image - low) / (high - low) if high > low else np.zeros_like(image)
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray")
        else:
            ax.imshow(image)
        color = "tab:green" if result.success else "tab:red"
        ax.set_title(
            f"{result.index}: rank {result.rank}\n{result.activation:.2f}", fontsize=8, color=color
        )
    fig.tight_layout()
    if save_path is not None:
        path = Path(save_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig
