"""Model-randomisation sanity checks that keep a deel_lip model Lipschitz.

The cascading randomisation test (Adebayo et al., NeurIPS 2018, "Sanity checks for
saliency maps") compares the explanations of a model with those of the same model whose
top layers have random parameters: a faithful explanation must change. Xplique's
``ProgressiveLayerRandomization`` writes uniform values into *every* weight of a layer,
``model.get_weights()`` order. On a deel_lip layer these include the cache of the
constrained kernel ``W_bar`` (and the power-iteration vector), so the "randomised" model
runs a random, unnormalised ``W_bar``: it is not 1-Lipschitz any more (its logits move by
thousands), and the check compares a Lipschitz network with a network of another class.

`LipschitzLayerRandomization` randomises the *parameters* and recomputes what depends on
them: for a constrained layer it draws the raw kernel ``W`` (and the bias), then
``condense()`` recomputes ``W_bar = Pi(W)`` (``||W_bar||_2 <= k``) and the cache; for any
other layer it draws the trainable variables and applies their Keras constraint, if any.
The randomised model is then a random member of the same Lipschitz class, which
`lipschitz_bounds` verifies with exact singular values (`deel_lip.utils.compute_layer_sv`).
"""

from __future__ import annotations

import keras
import numpy as np

from deel_lip.layers.base import ConstrainedKernel
from deel_lip.utils import compute_layer_sv
from deel_lip.xai._xplique import require_xplique

__all__ = ["LipschitzLayerRandomization", "lipschitz_bounds", "randomization_strategy"]

_BaseStrategy = require_xplique().metrics.ModelRandomizationStrategy


def _weighted_layers(model) -> list:
    """Layers with trainable variables, nested models flattened, in forward order."""
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            layers.extend(_weighted_layers(layer))
        elif layer.trainable_weights:
            layers.append(layer)
    return layers


class LipschitzLayerRandomization(_BaseStrategy):
    """Cascading randomisation of the parameters, constraints recomputed.

    Same selection as Xplique's ``ProgressiveLayerRandomization``: the layers with
    trainable weights, from the output (``reverse=True``) or the input, up to
    ``stop_layer`` (excluded): a layer name, a number of layers, or a fraction of them.

    Args:
        stop_layer: name (str), count (int) or fraction in ``[0, 1]`` (float).
        reverse: True randomises from the output towards the input.
        seed: seed of the draws (None: a fresh draw every call).
        initializer: a Keras initializer (or name) drawing every variable; default
            uniform on ``[0, 1)``, Xplique's draw, so only the constraint differs.
    """

    def __init__(
        self, stop_layer=0.25, reverse: bool = True, seed: int | None = None, initializer=None
    ):
        if isinstance(stop_layer, bool) or not isinstance(stop_layer, (str, int, float)):
            raise TypeError(f"stop_layer must be a str, int or float, received: {stop_layer!r}")
        if isinstance(stop_layer, float) and not 0.0 <= stop_layer <= 1.0:
            raise ValueError(f"stop_layer as a fraction must be in [0, 1], received: {stop_layer}")
        if isinstance(stop_layer, int) and stop_layer < 0:
            raise ValueError(f"stop_layer as a count must be >= 0, received: {stop_layer}")
        self.stop_layer = stop_layer
        self.reverse = bool(reverse)
        self.seed = seed
        self.initializer = initializer

    def selected_layers(self, model) -> list:
        """The layers `randomize` draws, in traversal order."""
        layers = _weighted_layers(model)
        if self.reverse:
            layers = layers[::-1]
        if isinstance(self.stop_layer, str):
            names = [layer.name for layer in layers]
            if self.stop_layer not in names:
                raise ValueError(
                    f"stop_layer {self.stop_layer!r} is not a layer with weights "
                    f"of model {model.name!r} (layers: {names})"
                )
            stop = names.index(self.stop_layer)
        elif isinstance(self.stop_layer, float):
            stop = int(len(layers) * self.stop_layer)
        else:
            stop = self.stop_layer
        return layers[: min(stop, len(layers))]

    def _draw(self, shape, dtype, rng):
        if self.initializer is None:
            return rng.uniform(0.0, 1.0, size=shape).astype(dtype)
        initializer = keras.initializers.get(self.initializer)
        seed = int(rng.integers(2**31 - 1))
        if hasattr(initializer, "seed"):
            initializer = initializer.__class__.from_config(
                {**initializer.get_config(), "seed": seed}
            )
        return keras.ops.convert_to_numpy(initializer(shape, dtype=dtype))

    def randomize(self, model):
        """Randomise the selected layers of ``model`` in place and return it."""
        rng = np.random.default_rng(self.seed)
        for layer in self.selected_layers(model):
            for variable in layer.trainable_weights:
                value = self._draw(tuple(variable.shape), variable.dtype, rng)
                constraint = getattr(variable, "constraint", None)
                if constraint is not None:
                    value = keras.ops.convert_to_numpy(
                        constraint(keras.ops.convert_to_tensor(value))
                    )
                variable.assign(value)
            # W_bar = Pi(W) and the cache from the new raw kernel, also for a constrained
            # layer wrapped by another one (e.g. the head of a logits view)
            for inner in layer._flatten_layers(include_self=True, recursive=True):
                if isinstance(inner, ConstrainedKernel):
                    inner.condense()
        return model


def randomization_strategy(model, stop_layer=0.25, reverse: bool = True, seed=None):
    """`LipschitzLayerRandomization` for a model with constrained layers, else Xplique's.

    Randomises at least one layer when ``stop_layer`` is a fraction (``int(0.25 n)`` is 0
    for models with fewer than four weighted layers).
    """
    if isinstance(stop_layer, float):
        stop_layer = max(1, int(stop_layer * len(_weighted_layers(model))))
    if any(isinstance(layer, ConstrainedKernel) for layer in _weighted_layers(model)):
        return LipschitzLayerRandomization(stop_layer, reverse=reverse, seed=seed)
    metrics = require_xplique().metrics
    return metrics.ProgressiveLayerRandomization(stop_layer, reverse=reverse)


def lipschitz_bounds(model) -> dict[str, tuple[float, float]]:
    """``{layer name: (measured norm, bound)}`` of every constrained layer of ``model``.

    The measured norm is exact: the largest singular value of the layer's operator
    (`compute_layer_sv`, dense SVD on the layer's input shape when small, as at
    inference); for a layer with ``disjoint_neurons=True`` (each output unit bounded on
    its own), the largest column norm ``max_j ||W_bar[:, j]||_2`` of its kernel matrix.
    The bound is the layer's constant ``k_coef_lip`` times the factor a
    `deel_lip.model.Sequential` spread on it. A layer is within its bound when
    ``norm <= bound * (1 + 1e-4)`` (float32 rounding).
    """
    bounds = {}
    for layer in _all_layers(model):
        if not (isinstance(layer, ConstrainedKernel) and layer.built):
            continue
        if getattr(layer, "disjoint_neurons", False):
            kernel = keras.ops.convert_to_numpy(layer.current_constrained_kernel())
            matrix = kernel.astype("float64").reshape(-1, kernel.shape[-1])
            norm = float(np.linalg.norm(matrix, axis=0).max())
        else:
            norm = float(compute_layer_sv(layer)[1])
        bounds[layer.name] = (norm, float(layer.lipschitz_bound()))
    return bounds


def _all_layers(model) -> list:
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            layers.extend(_all_layers(layer))
        else:
            layers.append(layer)
    return layers
