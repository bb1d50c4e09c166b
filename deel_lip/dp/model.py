"""The private twin of a deel_lip model and its clipless DP-SGD train step.

Design (issue 13): the constrained layers reparametrise a raw kernel through power
iteration and Bjorck, whose Jacobian has no useful bound, so the per-sample gradient
of the *raw* kernel is not bounded. `make_private` therefore builds a twin in which the
constrained kernel itself is the parameter: the model's `deel_lip.model.vanilla_export`
(plain Keras layers, forward pass ``x -> W x + b``), preceded by `ClipNorm` and with a
`KernelProjection` on every kernel that Keras applies after each optimizer update. The
twin trains with ``model.fit``; it is a plain Keras model afterwards (certificates,
export, saving).

One step (`PrivateSequential.train_step`): the gradient of the *sum* of the per-sample
losses, plus Gaussian noise, divided by a fixed denominator ``B`` (the expected batch
size ``q N`` under Poisson sampling, the batch size otherwise)::

    noisy = (sum_i g_i + N(0, (s * sigma * C_l)^2 I)) / B

with ``C_l`` the per-sample bound of layer ``l`` (`deel_lip.dp.bounds.gradient_bounds`),
``s = 1`` for Poisson sampling (add/remove-one neighbours: the sum moves by one
``g_i``) and ``s = 2`` for fixed-size batches (replace-one neighbours: it moves by
``g_i - g_i'``). ``noise="global"`` uses one scale ``C = sqrt(sum_l C_l^2)``;
``"per-layer"`` uses ``C_l sqrt(L)`` for each of the ``L`` layers with parameters, which
keeps the sensitivity of the rescaled gradient at 1: both release a Gaussian mechanism of
noise multiplier ``sigma``, the one the accountant composes.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from deel_lip.dp.bounds import LayerBound, describe_layer, gradient_bounds
from deel_lip.dp.layers import ClipNorm, KernelProjection
from deel_lip.dp.losses import loss_lipschitz, per_sample_losses
from deel_lip.model import vanilla_export

__all__ = ["PrivateSequential", "make_private", "NOISE_MODES", "SAMPLINGS"]

NOISE_MODES = ("per-layer", "global")
SAMPLINGS = ("poisson", "fixed")


def _check_positive(name, value, integer=False):
    kinds = (int, np.integer) if integer else (int, float, np.number)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        what = "an integer >= 1" if integer else "a finite number > 0"
        raise ValueError(f"{name} must be {what}, received: {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number > 0, received: {value!r}")


@keras.saving.register_keras_serializable("deel_lip")
class PrivateSequential(keras.Sequential):
    """A `keras.Sequential` trained by clipless DP-SGD (build it with `make_private`).

    ``fit`` expects batches drawn as declared (`deel_lip.dp.private_batches` with the
    same ``sampling``, ``batch_size`` and ``dataset_size``): the accountant assumes them.
    ``compile`` refuses losses without a registered Lipschitz constant
    (`deel_lip.dp.losses`). ``evaluate`` and ``predict`` are Keras'. ``jit_compile``
    keeps Keras' default (no XLA on CPU): Poisson batches change size at every step, and
    XLA would compile each new size anew.

    Attributes:
        dp_config: dict of the privacy parameters (``noise_multiplier``,
            ``sampling``, ``batch_size``, ``dataset_size``, ``sampling_rate``, ``noise``,
            ``input_norm``).
        layer_bounds: the `LayerBound` of every layer after `ClipNorm`.
    """

    def _setup_dp(self, bounds, config: dict, seed) -> None:
        self.layer_bounds = bounds
        self.dp_config = dict(config)
        self._dp_seed = seed
        self._noise_seed = keras.random.SeedGenerator(seed)
        self._dp_loss = None
        self._dp_loss_lipschitz = None

    def get_config(self) -> dict:
        config = super().get_config()
        config["dp_config"] = dict(self.dp_config)
        config["dp_seed"] = self._dp_seed
        config["layer_bounds"] = [
            {
                "name": b.name,
                "lipschitz": b.lipschitz,
                "kernel_factor": b.kernel_factor,
                "bias_positions": b.bias_positions,
                "projection": None if b.projection is None else list(b.projection),
            }
            for b in self.layer_bounds
        ]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        dp_config = config.pop("dp_config")
        seed = config.pop("dp_seed", None)
        saved = config.pop("layer_bounds")
        model = super().from_config(config, custom_objects=custom_objects)
        bounds = []
        for entry in saved:
            entry = dict(entry)
            if entry["projection"] is not None:
                entry["projection"] = tuple(entry["projection"])
            bounds.append(LayerBound(**entry, layer=model.get_layer(entry["name"])))
        model._setup_dp(bounds, dp_config, seed)
        return model

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        classes = int(self.outputs[0].shape[-1]) if self.outputs else int(self.output_shape[-1])
        self._dp_loss_lipschitz = loss_lipschitz(loss, classes)
        self._dp_loss = loss
        if kwargs.get("loss_weights") is not None:
            raise ValueError("loss_weights is not supported by clipless DP-SGD, received one")
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def compile_from_config(self, config):
        """Compile a loaded model as saved (Keras skips models that override `compile`)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if hasattr(self, "optimizer") and self.built:
            self.optimizer.build(self.trainable_variables)  # optimizer variables to load

    def per_sample_bounds(self):
        """Per-layer per-sample gradient bounds ``[(LayerBound, C_l), ...]`` (current biases)."""
        if self._dp_loss_lipschitz is None:
            raise ValueError("compile() the model with a supported loss first")
        return gradient_bounds(
            self.layer_bounds, self.dp_config["input_norm"], self._dp_loss_lipschitz
        )

    def _noise_stddevs(self, bounds) -> list:
        """Standard deviation of the noise added to each layer's summed gradient."""
        sigma = self.dp_config["noise_multiplier"] * (
            2.0 if self.dp_config["sampling"] == "fixed" else 1.0
        )
        values = [ops.cast(c, "float32") for _, c in bounds]
        if self.dp_config["noise"] == "global":
            total = ops.sqrt(sum(ops.square(v) for v in values))
            return [sigma * total for _ in values]
        return [sigma * math.sqrt(len(values)) * v for v in values]

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError(
                "sample_weight is not supported by clipless DP-SGD (it rescales the "
                "per-sample gradients the bounds assume), received one"
            )
        bounds = self.per_sample_bounds()
        variables = [v for bound, _ in bounds for v in bound.variables()]
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            values = per_sample_losses(self._dp_loss, y, y_pred)
            total = ops.sum(values)
        gradients = tape.gradient(total, variables)
        stddevs = self._noise_stddevs(bounds)
        denominator = float(self.dp_config["denominator"])
        noisy, index = [], 0
        for (bound, _), std in zip(bounds, stddevs):
            for _variable in bound.variables():
                grad = gradients[index]
                noise = keras.random.normal(
                    ops.shape(grad), stddev=1.0, dtype=grad.dtype, seed=self._noise_seed
                )
                noisy.append((grad + ops.cast(std, grad.dtype) * noise) / denominator)
                index += 1
        self.optimizer.apply(noisy, variables)
        batch = ops.shape(values)[0]
        mean = ops.sum(values) / ops.maximum(ops.cast(batch, values.dtype), 1.0)
        self._loss_tracker.update_state(mean, sample_weight=batch)
        return self.compute_metrics(x, y, y_pred, sample_weight=None)

    def to_keras(self) -> keras.Sequential:
        """A plain `keras.Sequential` sharing the layers (for saving or certificates)."""
        return keras.Sequential(
            [keras.Input(self.inputs[0].shape[1:]), *self.layers], name=self.name + "_plain"
        )


def _chain_layers(model) -> list:
    """The layers of a Sequential or a single-chain functional model, in order."""
    if isinstance(model, keras.Sequential):
        return list(model.layers)
    if not hasattr(model, "_run_through_graph"):
        raise ValueError(
            f"model must be a Sequential or functional keras.Model, received a subclassed "
            f"{type(model).__name__}"
        )
    layers = [la for la in model.layers if not isinstance(la, keras.layers.InputLayer)]
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("model must have one input and one output for clipless DP-SGD")
    previous = model.inputs[0]
    for layer in layers:
        inbound = layer._inbound_nodes
        if len(inbound) != 1 or len(inbound[0].input_tensors) != 1:
            raise ValueError(
                f"layer {layer.name!r} is not in a single chain (several inputs or uses): "
                "clipless DP-SGD supports chains of layers only"
            )
        if inbound[0].input_tensors[0] is not previous:
            raise ValueError(f"layer {layer.name!r} does not follow the previous layer's output")
        previous = layer.output
    return layers


def make_private(
    model: keras.Model,
    *,
    input_norm: float,
    noise_multiplier: float,
    batch_size: int,
    dataset_size: int,
    sampling: str = "poisson",
    noise: str = "per-layer",
    seed: int | None = 0,
) -> PrivateSequential:
    """Build the private twin of a deel_lip model (see the module docstring).

    Args:
        model: built Sequential or single-chain functional model of supported layers
            (`deel_lip.dp.bounds.describe_layer`); it is not changed.
        input_norm: radius of the `ClipNorm` put in front (> 0).
        noise_multiplier: ``sigma``, noise std over the sensitivity (> 0).
        batch_size: expected batch size under Poisson sampling (sampling rate
            ``batch_size / dataset_size``), the batch size for ``"fixed"``.
        dataset_size: number of training samples ``N``.
        sampling: "poisson" (add/remove-one) or "fixed" (uniform fixed-size subsets,
            replace-one).
        noise: "per-layer" or "global".
        seed: seed of the noise generator (None: random).

    Raises:
        ValueError: naming the invalid argument or unsupported layer.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, received: {type(model).__name__}")
    _check_positive("input_norm", input_norm)
    _check_positive("noise_multiplier", noise_multiplier)
    _check_positive("batch_size", batch_size, integer=True)
    _check_positive("dataset_size", dataset_size, integer=True)
    if batch_size > dataset_size:
        raise ValueError(
            f"batch_size must be <= dataset_size={dataset_size}, received: {batch_size!r}"
        )
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, received: {sampling!r}")
    if noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {NOISE_MODES}, received: {noise!r}")
    layers = _chain_layers(model)
    bounds = [describe_layer(layer, layer.output.shape) for layer in layers]
    exported = vanilla_export(model)
    twins = [exported.get_layer(layer.name) for layer in layers]
    pairs = [(b, t) for b, t in zip(bounds, twins) if b is not None]
    input_shape = model.inputs[0].shape[1:]
    private = PrivateSequential(
        [keras.Input(input_shape), ClipNorm(input_norm, name="clip_norm")]
        + [twin for _, twin in pairs],
        name=f"{model.name}_private",
    )
    for bound, twin in pairs:
        bound.layer = twin
        if bound.projection is not None:
            projection = KernelProjection(*bound.projection)
            twin.kernel_constraint = projection
            twin.kernel.constraint = projection
            twin.kernel.assign(projection(twin.kernel))
    covered = {id(v) for b, _ in pairs for v in b.variables()}
    for _, twin in pairs:
        for variable in twin.trainable_weights:
            if id(variable) not in covered:
                raise ValueError(
                    f"layer {twin.name!r} has a trainable weight {variable.path!r} that no "
                    "bound covers"
                )
    config = {
        "input_norm": float(input_norm),
        "noise_multiplier": float(noise_multiplier),
        "batch_size": int(batch_size),
        "dataset_size": int(dataset_size),
        "sampling_rate": batch_size / dataset_size,
        "sampling": sampling,
        "noise": noise,
        "denominator": float(batch_size),
    }
    private._setup_dp([b for b, _ in pairs], config, seed)
    return private
