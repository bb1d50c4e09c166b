"""1-Lipschitz residual connection and centering layers.

Batch and layer *normalisation* divide by a standard deviation and have no Lipschitz
bound; the centering layers here only subtract a mean, which keeps the bound.
"""

from __future__ import annotations

import math

import keras
from keras import ops

__all__ = ["LipResidual", "BatchCentering", "LayerCentering"]


def _check_axis(axis) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ValueError(f"axis must be an integer (the channel axis), received: {axis!r}")
    return axis


def _channel_axis(layer, input_shape) -> int:
    """The non-negative channel axis of ``input_shape``; its size must be known."""
    rank = len(input_shape)
    axis = layer.axis + rank if layer.axis < 0 else layer.axis
    if not 1 <= axis < rank:
        raise ValueError(
            f"{type(layer).__name__}: axis={layer.axis} is not a non-batch axis of "
            f"inputs of shape {tuple(input_shape)}"
        )
    if input_shape[axis] is None:
        raise ValueError(
            f"{type(layer).__name__} needs a known size on axis {layer.axis}, "
            f"received input shape {tuple(input_shape)}"
        )
    return axis


def _broadcast_shape(rank: int, axis: int, channels: int) -> list[int]:
    shape = [1] * rank
    shape[axis] = channels
    return shape


def _float_inputs(layer, inputs):
    """Integer or boolean inputs cast to the layer's compute dtype (as Keras layers do)."""
    inputs = ops.convert_to_tensor(inputs)
    if not keras.backend.is_float_dtype(inputs.dtype):
        inputs = ops.cast(inputs, layer.compute_dtype)
    return inputs


@keras.saving.register_keras_serializable("deel_lip")
class LipResidual(keras.layers.Layer):
    """Learned convex combination of a residual branch and the identity.

    ``y = alpha * branch + (1 - alpha) * identity`` with ``alpha = sigmoid(a)`` for a
    learned scalar ``a``, so ``alpha`` stays in ``(0, 1)``. If the two inputs are
    ``L``-Lipschitz functions of the network input, so is ``y``:
    ``||y(x) - y(x')|| <= alpha L ||x - x'|| + (1 - alpha) L ||x - x'||``. As a map of the
    pair ``(identity, branch)`` its operator norm is ``sqrt(alpha^2 + (1 - alpha)^2) <= 1``.

    Args:
        initial_alpha: value of ``alpha`` at initialisation, in ``(0, 1)``.
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape:
        A list ``[identity, branch]`` of two tensors of the same shape.

    Output shape:
        The common input shape.

    Raises:
        ValueError: ``initial_alpha`` not in ``(0, 1)``; at build: not two inputs, or
            inputs of different shapes.
    """

    def __init__(self, initial_alpha=0.5, **kwargs):
        super().__init__(**kwargs)
        if (
            isinstance(initial_alpha, bool)
            or not isinstance(initial_alpha, (int, float))
            or not 0 < initial_alpha < 1
        ):
            raise ValueError(f"initial_alpha must be in (0, 1), received: {initial_alpha!r}")
        self.initial_alpha = float(initial_alpha)

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError(
                f"LipResidual expects a list [identity, branch] of two inputs, "
                f"received input shape {input_shape}"
            )
        identity, branch = (tuple(s) for s in input_shape)
        compatible = len(identity) == len(branch) and all(
            a is None or b is None or a == b for a, b in zip(identity, branch)
        )
        if not compatible:
            raise ValueError(
                f"LipResidual expects inputs of the same shape, received {identity} and {branch}"
            )
        logit = math.log(self.initial_alpha / (1 - self.initial_alpha))
        self.alpha_logit = self.add_weight(
            name="alpha_logit", shape=(), initializer=keras.initializers.Constant(logit)
        )
        self.built = True

    @property
    def alpha(self):
        """Current weight of the branch, ``sigmoid(alpha_logit)`` in ``(0, 1)``."""
        return ops.sigmoid(self.alpha_logit)

    def call(self, inputs):
        identity, branch = inputs
        alpha = ops.cast(self.alpha, branch.dtype)
        return alpha * branch + (1 - alpha) * identity

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def lipschitz_bound(self) -> float:
        """1: a convex combination of two ``L``-Lipschitz inputs is ``L``-Lipschitz (as a
        map of the pair, its norm is ``sqrt(alpha^2 + (1 - alpha)^2) <= 1``)."""
        return 1.0

    def get_config(self):
        config = super().get_config()
        config["initial_alpha"] = self.initial_alpha
        return config


@keras.saving.register_keras_serializable("deel_lip")
class BatchCentering(keras.layers.Layer):
    """Subtract the per-channel mean of the batch (1-Lipschitz batch normalisation).

    Training: ``y = x - mean_B(x) + beta``, the mean taken per channel over the batch
    and every other non-channel axis; the moving mean is updated as
    ``m <- momentum * m + (1 - momentum) * mean_B(x)``. Inference: ``y = x - m + beta``,
    a translation, hence 1-Lipschitz (its Jacobian is the identity). In training the map
    on the whole batch is an orthogonal projection (minus the batch mean), also
    1-Lipschitz. No division by a standard deviation: that is what makes batch
    normalisation non-Lipschitz.

    Under a ``tf.distribute`` strategy each replica centres with the mean of its own share
    of the batch (as Keras's ``BatchNormalization(synchronized=False)``); the moving mean
    is averaged over the replicas, equal to one-device training for equal shares.

    Args:
        momentum: momentum of the moving mean, in ``[0, 1)``.
        use_bias: add a learned per-channel bias ``beta`` (initialised at 0).
        axis: the channel axis (default -1, channels last).
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape:
        ``(batch, ..., channels)`` with a known channel count (rank >= 2).

    Output shape:
        Same as the input.

    Raises:
        ValueError: ``momentum`` not in ``[0, 1)``, non-integer ``axis``; at build:
            ``axis`` out of range or of unknown size.
    """

    def __init__(self, momentum=0.9, use_bias=True, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if (
            isinstance(momentum, bool)
            or not isinstance(momentum, (int, float))
            or not 0 <= momentum < 1
        ):
            raise ValueError(f"momentum must be in [0, 1), received: {momentum!r}")
        self.momentum = float(momentum)
        self.use_bias = bool(use_bias)
        self.axis = _check_axis(axis)

    def build(self, input_shape):
        rank = len(input_shape)
        axis = _channel_axis(self, input_shape)
        channels = int(input_shape[axis])
        self._reduction_axes = [i for i in range(rank) if i != axis]
        self._param_shape = _broadcast_shape(rank, axis, channels)
        self.moving_mean = self.add_weight(
            name="moving_mean",
            shape=(channels,),
            initializer="zeros",
            trainable=False,
            autocast=False,
            aggregation="mean",  # replicas average their updates: one moving mean
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros")
        self.built = True

    def call(self, inputs, training=None):
        inputs = _float_inputs(self, inputs)
        if training and self.trainable:
            mean = ops.mean(ops.cast(inputs, self.moving_mean.dtype), axis=self._reduction_axes)
            self.moving_mean.assign(self.momentum * self.moving_mean + (1.0 - self.momentum) * mean)
        else:
            mean = self.moving_mean
        shift = ops.cast(mean, inputs.dtype)
        if self.bias is not None:
            shift = shift - ops.cast(self.bias, inputs.dtype)
        return inputs - ops.reshape(shift, self._param_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def lipschitz_bound(self) -> float:
        """1: a translation at inference, an orthogonal projection of the batch in training."""
        return 1.0

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "use_bias": self.use_bias, "axis": self.axis})
        return config


@keras.saving.register_keras_serializable("deel_lip")
class LayerCentering(keras.layers.Layer):
    """Subtract, per sample and per channel, the mean over the spatial axes.

    ``y[..., c] = x[..., c] - mean_{spatial}(x[..., c]) + beta_c``. For each sample and
    channel this is the orthogonal projection onto zero-mean maps (plus a constant), so
    the layer is 1-Lipschitz, with operator norm exactly 1 when the spatial size is > 1.
    It behaves the same in training and inference.

    Args:
        use_bias: add a learned per-channel bias ``beta`` (initialised at 0).
        axis: the channel axis (default -1); every other non-batch axis is spatial.
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape:
        ``(batch, spatial..., channels)`` with at least one spatial axis (rank >= 3).

    Output shape:
        Same as the input.

    Raises:
        ValueError: non-integer ``axis``; at build: rank < 3, ``axis`` out of range or of
            unknown size.
    """

    def __init__(self, use_bias=True, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.use_bias = bool(use_bias)
        self.axis = _check_axis(axis)

    def build(self, input_shape):
        rank = len(input_shape)
        if rank < 3:
            raise ValueError(
                f"LayerCentering needs at least one spatial axis (rank >= 3), "
                f"received input shape {tuple(input_shape)}"
            )
        axis = _channel_axis(self, input_shape)
        channels = int(input_shape[axis])
        self._spatial_axes = [i for i in range(1, rank) if i != axis]
        self._param_shape = _broadcast_shape(rank, axis, channels)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros")
        self.built = True

    def call(self, inputs):
        inputs = _float_inputs(self, inputs)
        outputs = inputs - ops.mean(inputs, axis=self._spatial_axes, keepdims=True)
        if self.bias is not None:
            outputs = outputs + ops.reshape(ops.cast(self.bias, inputs.dtype), self._param_shape)
        return outputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def lipschitz_bound(self) -> float:
        """1: an orthogonal projection (plus a constant) per sample and channel."""
        return 1.0

    def get_config(self):
        config = super().get_config()
        config.update({"use_bias": self.use_bias, "axis": self.axis})
        return config
