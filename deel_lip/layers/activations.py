"""Lipschitz activations: sorting, MaxMin, Householder reflections and a bounded PReLU.

Every layer here is ``k_coef_lip``-Lipschitz in L2: the unscaled map is 1-Lipschitz
(piecewise linear with orthogonal or contracting pieces) and its output is multiplied by
``k_coef_lip``. `GroupSort`, `GroupSort2`, `FullSort` and `Householder` are moreover
gradient-norm preserving: wherever they are differentiable their Jacobian is
``k_coef_lip`` times an orthogonal matrix.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from deel_lip.layers._sort_kernels import sort_groups, sort_pairs, static_shape
from deel_lip.layers.base import LipschitzLayer

__all__ = ["GroupSort", "GroupSort2", "FullSort", "MaxMin", "Householder", "PReLUlip"]

DATA_FORMATS = ("channels_last", "channels_first")
# Largest group sorted by a sorting network (191 comparators); larger groups use the
# backend's sort (a network's graph grows as n log(n)^2).
MAX_NETWORK_GROUP = 32


def _check_data_format(data_format) -> str:
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, received: {data_format!r}")
    return data_format


def _channels(layer, input_shape) -> int:
    """Channel count of ``input_shape`` for ``layer.data_format``; must be known."""
    if len(input_shape) < 2:
        raise ValueError(
            f"{type(layer).__name__} expects inputs of rank >= 2 (batch, ..., channels), "
            f"received input shape {tuple(input_shape)}"
        )
    axis = -1 if layer.data_format == "channels_last" else 1
    channels = input_shape[axis]
    if channels is None:
        raise ValueError(
            f"{type(layer).__name__} needs a known channel dimension, "
            f"received input shape {tuple(input_shape)}"
        )
    return int(channels)


class _ChannelActivation(LipschitzLayer, keras.layers.Layer):
    """An activation acting on the channel axis, scaled by ``k_coef_lip``."""

    def __init__(self, data_format="channels_last", k_coef_lip=1.0, **kwargs):
        super().__init__(**kwargs)
        self.data_format = _check_data_format(data_format)
        self._init_lipschitz(k_coef_lip)

    def _to_channels_last(self, x):
        return x if self.data_format == "channels_last" else ops.moveaxis(x, 1, -1)

    def _from_channels_last(self, x):
        return x if self.data_format == "channels_last" else ops.moveaxis(x, -1, 1)

    def _scale(self, x):
        coef = self._get_coef()
        return x if coef == 1.0 else x * coef

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"data_format": self.data_format, "k_coef_lip": self.k_coef_lip})
        return config


def _as_float(x, dtype):
    """Integer or boolean inputs cast to the layer's compute dtype (as Keras layers do)."""
    if keras.backend.is_float_dtype(keras.backend.standardize_dtype(x.dtype)):
        return x
    return ops.cast(x, dtype)


@keras.saving.register_keras_serializable("deel_lip")
class GroupSort(_ChannelActivation):
    """Sort each group of ``n`` consecutive channels in increasing order.

    ``y[g*n:(g+1)*n] = k_coef_lip * sort(x[g*n:(g+1)*n])`` for every group ``g`` of the
    channel axis. On each linear piece the map is a permutation, so the layer is
    ``k_coef_lip``-Lipschitz and gradient-norm preserving. ``n=2`` uses a single
    comparison per pair (the fast path of `GroupSort2`); ``n=None`` sorts all channels.
    Groups of 3 to 32 go through a sorting network (`sorting_network`) whose gradient
    is the sorting permutation; larger ones through the backend's sort.

    Args:
        n: group size, an integer >= 1 dividing the number of channels, or None to sort
            all channels together (`FullSort`).
        data_format: "channels_last" or "channels_first" (position of the channel axis).
        k_coef_lip: Lipschitz constant (> 0); the sorted output is multiplied by it.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Input shape:
        ``(batch, ..., channels)`` (channels_last) or ``(batch, channels, ...)``.

    Output shape:
        Same as the input.

    Raises:
        ValueError: ``n`` not None and not an integer >= 1, unknown ``data_format``,
            ``k_coef_lip <= 0``; at build: unknown channel count or ``n`` not dividing it.

    Reference:
        Anil, Lucas, Grosse, "Sorting out Lipschitz function approximation", ICML 2019.
    """

    def __init__(self, n=None, data_format="channels_last", k_coef_lip=1.0, **kwargs):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"n must be None or an integer >= 1, received: n={n!r}")
        super().__init__(data_format=data_format, k_coef_lip=k_coef_lip, **kwargs)
        self.n = n

    def build(self, input_shape):
        channels = _channels(self, input_shape)
        group = channels if self.n is None else self.n
        if channels % group != 0:
            raise ValueError(
                f"{type(self).__name__}: n must divide the number of channels, "
                f"received n={self.n} for {channels} channels"
            )
        self._group = group
        self.built = True

    def call(self, inputs):
        if self._group == 1:
            return self._scale(inputs)
        x = self._to_channels_last(inputs)
        if self._group == 2:
            return self._scale(self._from_channels_last(sort_pairs(x)))
        if self._group <= MAX_NETWORK_GROUP:
            return self._scale(self._from_channels_last(sort_groups(x, self._group)))
        shape = static_shape(x)
        # Keep the leading axes, static where known: flattening to (-1, n) or a dynamic
        # target shape makes XLA's fused CPU kernel several times slower.
        groups = ops.reshape(x, tuple(shape[:-1]) + (shape[-1] // self._group, self._group))
        groups = ops.sort(groups, axis=-1)
        return self._scale(self._from_channels_last(ops.reshape(groups, shape)))

    def get_config(self):
        config = super().get_config()
        config["n"] = self.n
        return config


@keras.saving.register_keras_serializable("deel_lip")
class GroupSort2(GroupSort):
    """`GroupSort` with groups of 2: each pair of channels becomes ``(min, max)``.

    Implemented with one comparison per pair instead of a sort.

    Args:
        data_format, k_coef_lip, **kwargs: as in `GroupSort`.

    Input shape:
        ``(batch, ..., channels)`` with an even channel count.

    Output shape:
        Same as the input.
    """

    def __init__(self, data_format="channels_last", k_coef_lip=1.0, n=None, **kwargs):
        # ``n`` is accepted for configs saved by deel-lip, which stored it.
        if n not in (None, 2):
            raise ValueError(f"GroupSort2 sorts pairs: n must be 2 (or None), received: {n!r}")
        super().__init__(n=2, data_format=data_format, k_coef_lip=k_coef_lip, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["n"]
        return config


@keras.saving.register_keras_serializable("deel_lip")
class FullSort(GroupSort):
    """`GroupSort` with a single group: all channels are sorted together.

    Args:
        data_format, k_coef_lip, **kwargs: as in `GroupSort`.

    Input shape:
        ``(batch, ..., channels)``.

    Output shape:
        Same as the input.
    """

    def __init__(self, data_format="channels_last", k_coef_lip=1.0, n=None, **kwargs):
        # ``n`` is accepted for configs saved by deel-lip, which stored it as None.
        if n is not None:
            raise ValueError(f"FullSort sorts all channels: n must be None, received: {n!r}")
        super().__init__(n=None, data_format=data_format, k_coef_lip=k_coef_lip, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["n"]
        return config


@keras.saving.register_keras_serializable("deel_lip")
class MaxMin(_ChannelActivation):
    """Double the channels: ``y = k_coef_lip * concat([relu(x), relu(-x)])``.

    For each input coordinate ``t`` the pair ``(relu(t), relu(-t))`` has derivative
    ``(1, 0)`` or ``(0, 1)``: the Jacobian has orthonormal columns (one per nonzero
    input), so the layer is ``k_coef_lip``-Lipschitz and norm preserving,
    ``||y|| = k_coef_lip * ||x||``. The sign convention is deel-lip's, so weights of
    models trained with it give the same outputs.

    Args:
        data_format: "channels_last" or "channels_first" (axis along which to concatenate).
        k_coef_lip: Lipschitz constant (> 0).
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape:
        ``(batch, ..., channels)`` (channels_last) or ``(batch, channels, ...)``.

    Output shape:
        The input shape with twice as many channels.

    Reference:
        Blot, Cord, Thome, "Max-min convolutional neural networks for image
        classification", ICIP 2016.
    """

    def build(self, input_shape):
        _channels(self, input_shape)
        self.built = True

    def call(self, inputs):
        axis = -1 if self.data_format == "channels_last" else 1
        outputs = ops.concatenate([ops.relu(inputs), ops.relu(-inputs)], axis=axis)
        return self._scale(outputs)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        axis = -1 if self.data_format == "channels_last" else 1
        if shape[axis] is not None:
            shape[axis] = 2 * shape[axis]
        return tuple(shape)


@keras.saving.register_keras_serializable("deel_lip")
class Householder(_ChannelActivation):
    """Learned 2D reflections of channel pairs, gradient-norm preserving.

    The channels are split in two halves ``z1, z2``; channel ``i`` of ``z1`` is paired
    with channel ``i`` of ``z2`` and has its own angle ``theta_i``. A pair on one side of
    the line of angle ``theta_i / 2`` (``z1 sin(theta/2) - z2 cos(theta/2) > 0``) is
    reflected across that line,
    ``(z1, z2) -> (z1 cos(theta) + z2 sin(theta), z1 sin(theta) - z2 cos(theta))``; the
    other side is left unchanged. Both pieces are orthogonal and agree on the line, so
    the map is continuous, 1-Lipschitz and gradient-norm preserving; the output is then
    multiplied by ``k_coef_lip``. ``theta = pi / 2`` (the default) gives
    ``(min(z1, z2), max(z1, z2))``, a `GroupSort2` on the pairs ``(z1_i, z2_i)``.

    Args:
        data_format: "channels_last" or "channels_first".
        k_coef_lip: Lipschitz constant (> 0), applied to the output.
        theta_initializer: initializer of the angles ``theta`` (shape ``(channels // 2,)``);
            None means the constant ``pi / 2``.
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape:
        ``(batch, ..., channels)`` (channels_last) or ``(batch, channels, ...)``, with an
        even channel count.

    Output shape:
        Same as the input.

    Raises:
        ValueError: unknown ``data_format``, ``k_coef_lip <= 0``; at build: odd or unknown
            channel count.

    Reference:
        Singla, Singla, Feizi, "Improved deterministic l2 robustness on CIFAR-10 and
        CIFAR-100", ICLR 2022 (Householder activations).
    """

    def __init__(
        self, data_format="channels_last", k_coef_lip=1.0, theta_initializer=None, **kwargs
    ):
        super().__init__(data_format=data_format, k_coef_lip=k_coef_lip, **kwargs)
        self.theta_initializer = (
            None if theta_initializer is None else keras.initializers.get(theta_initializer)
        )

    def build(self, input_shape):
        channels = _channels(self, input_shape)
        if channels % 2 != 0:
            raise ValueError(
                f"Householder needs an even number of channels, received {channels} "
                f"(input shape {tuple(input_shape)})"
            )
        initializer = self.theta_initializer
        if initializer is None:
            initializer = keras.initializers.Constant(math.pi / 2)
        self.theta = self.add_weight(name="theta", shape=(channels // 2,), initializer=initializer)
        self.built = True

    def call(self, inputs):
        x = self._to_channels_last(_as_float(inputs, self.compute_dtype))
        z1, z2 = ops.split(x, 2, axis=-1)
        theta = ops.cast(self.theta, x.dtype)
        cos, sin = ops.cos(theta), ops.sin(theta)
        unchanged = z1 * ops.sin(theta / 2) - z2 * ops.cos(theta / 2) <= 0
        y1 = ops.where(unchanged, z1, z1 * cos + z2 * sin)
        y2 = ops.where(unchanged, z2, z1 * sin - z2 * cos)
        return self._scale(self._from_channels_last(ops.concatenate([y1, y2], axis=-1)))

    def get_config(self):
        config = super().get_config()
        config["theta_initializer"] = (
            None
            if self.theta_initializer is None
            else keras.initializers.serialize(self.theta_initializer)
        )
        return config


@keras.saving.register_keras_serializable("deel_lip")
class PReLUlip(LipschitzLayer, keras.layers.PReLU):
    """PReLU with slopes kept in ``[-1, 1]``, scaled to be ``k_coef_lip``-Lipschitz.

    ``y = k_coef_lip * (relu(x) - clip(alpha, -1, 1) * relu(-x))``. Each coordinate has
    slope 1 or ``alpha`` with ``|alpha| <= 1``, so the Jacobian is diagonal with entries
    of modulus at most 1, and the layer is exactly ``k_coef_lip``-Lipschitz. The slopes
    are clipped in the forward pass (a guarantee whatever the stored value) and projected
    back onto ``[-1, 1]`` after every optimizer step (after ``alpha_constraint`` if one is
    given), so their gradient never vanishes at the clip. Unlike deel-lip, which clipped
    ``alpha`` to ``[-k, k]`` (not ``k``-Lipschitz for ``k < 1``, since the positive slope is
    1), the constant multiplies the whole output.

    Args:
        alpha_initializer, alpha_regularizer, alpha_constraint, shared_axes: as in
            `keras.layers.PReLU`.
        k_coef_lip: Lipschitz constant (> 0).
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape:
        Arbitrary.

    Output shape:
        Same as the input.
    """

    def __init__(
        self,
        alpha_initializer="Zeros",
        alpha_regularizer=None,
        alpha_constraint=None,
        shared_axes=None,
        k_coef_lip=1.0,
        **kwargs,
    ):
        super().__init__(
            alpha_initializer=alpha_initializer,
            alpha_regularizer=alpha_regularizer,
            alpha_constraint=alpha_constraint,
            shared_axes=shared_axes,
            **kwargs,
        )
        self._init_lipschitz(k_coef_lip)

    def build(self, input_shape):
        super().build(input_shape)
        user_constraint = self.alpha_constraint

        def project(alpha):
            if user_constraint is not None:
                alpha = user_constraint(alpha)
            return ops.clip(alpha, -1.0, 1.0)

        self.alpha.constraint = project

    def call(self, inputs):
        alpha = ops.clip(ops.cast(self.alpha, inputs.dtype), -1.0, 1.0)
        outputs = ops.relu(inputs) - alpha * ops.relu(-inputs)
        coef = self._get_coef()
        return outputs if coef == 1.0 else outputs * coef

    def get_config(self):
        config = super().get_config()
        config["k_coef_lip"] = self.k_coef_lip
        return config
