"""`PadConv2D`: `keras.layers.Conv2D` with the explicit padding modes "constant",
"reflect", "symmetric" and "circular", and the padding helpers the constrained
convolutions share (re-exported by `deel_lip.layers.convolutional`)."""

from __future__ import annotations

import keras
from keras import ops

__all__ = [
    "PadConv2D",
    "apply_padding",
    "check_padding_fits",
    "check_unit_dilation_and_groups",
]

KERAS_PADDINGS = ("same", "valid")
EXTRA_PADDINGS = ("constant", "reflect", "symmetric", "circular")
PAD_CONV_PADDINGS = KERAS_PADDINGS + EXTRA_PADDINGS


def check_unit_dilation_and_groups(layer) -> None:
    """Raise `ValueError` naming ``dilation_rate`` / ``groups`` unless both are 1."""
    if any(d != 1 for d in layer.dilation_rate):
        raise ValueError(
            f"{type(layer).__name__} supports dilation_rate=1 only, "
            f"received: dilation_rate={layer.dilation_rate}"
        )
    if getattr(layer, "groups", 1) != 1:
        raise ValueError(
            f"{type(layer).__name__} supports groups=1 only, received: groups={layer.groups}"
        )


def _pad_amounts(kernel_size) -> list[tuple[int, int]]:
    """Explicit padding that keeps the spatial size at stride 1 (like "same")."""
    return [((k - 1) // 2, k // 2) for k in kernel_size]


def _circular_pad(x, pads, spatial_axes):
    for axis, (before, after) in zip(spatial_axes, pads):
        size = x.shape[axis]
        if size is not None and (before > size or after > size):
            raise ValueError(
                f"circular padding needs inputs at least as large as the padding "
                f"({before}, {after}) on axis {axis}, received size {size}"
            )
        parts = []
        if before:
            parts.append(ops.take(x, ops.arange(-before, 0) % ops.shape(x)[axis], axis=axis))
        parts.append(x)
        if after:
            parts.append(ops.take(x, ops.arange(0, after), axis=axis))
        x = ops.concatenate(parts, axis=axis)
    return x


def check_padding_fits(padding: str, kernel_size, spatial_shape) -> None:
    """Raise `ValueError` if a reflect/symmetric padding is larger than the input.

    "reflect" pads ``p`` pixels by mirroring without the border pixel, so it needs
    ``size > p``; "symmetric" mirrors with it and needs ``size >= p``.
    """
    if padding not in ("reflect", "symmetric"):
        return
    for size, (before, after) in zip(spatial_shape, _pad_amounts(kernel_size)):
        if size is None:
            continue
        needed = max(before, after) + (1 if padding == "reflect" else 0)
        if size < needed:
            raise ValueError(
                f"padding={padding!r} with kernel_size={tuple(kernel_size)} pads "
                f"{max(before, after)} pixels, which needs inputs of spatial size >= {needed}; "
                f"received an input of spatial shape {tuple(spatial_shape)}"
            )


def apply_padding(x, padding: str, kernel_size, data_format: str):
    """Pad ``x`` for a "valid" convolution in one of the `EXTRA_PADDINGS` modes."""
    pads = _pad_amounts(kernel_size)
    rank = len(kernel_size)
    spatial_axes = (
        list(range(1, rank + 1)) if data_format == "channels_last" else list(range(2, rank + 2))
    )
    check_padding_fits(padding, kernel_size, [x.shape[axis] for axis in spatial_axes])
    if padding == "circular":
        return _circular_pad(x, pads, spatial_axes)
    full = [(0, 0)] * (rank + 2)
    for axis, pad in zip(spatial_axes, pads):
        full[axis] = pad
    mode = {"constant": "constant", "reflect": "reflect", "symmetric": "symmetric"}[padding]
    return ops.pad(x, full, mode=mode)


@keras.saving.register_keras_serializable("deel_lip")
class PadConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` with the padding modes "constant", "reflect", "symmetric"
    and "circular" on top of Keras' "same" and "valid".

    Extra modes pad by ``((k - 1) // 2, k // 2)`` on each spatial axis and then apply a
    "valid" convolution, so at stride 1 the output has the input's spatial size.

    Args:
        padding: "same", "valid", "constant", "reflect", "symmetric" or "circular".
        other arguments: as in `keras.layers.Conv2D` (``dilation_rate`` and ``groups``
            must be 1 with the extra modes).
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="same", **kwargs):
        if not isinstance(padding, str) or padding.lower() not in PAD_CONV_PADDINGS:
            raise ValueError(f"padding must be one of {PAD_CONV_PADDINGS}, received: {padding!r}")
        padding = padding.lower()
        keras_padding = padding if padding in KERAS_PADDINGS else "valid"
        super().__init__(filters, kernel_size, strides=strides, padding=keras_padding, **kwargs)
        self.pad_mode = padding
        if padding in EXTRA_PADDINGS:
            check_unit_dilation_and_groups(self)

    def _pad(self, inputs):
        if self.pad_mode in KERAS_PADDINGS:
            return inputs
        return apply_padding(inputs, self.pad_mode, self.kernel_size, self.data_format)

    def _padded_shape(self, input_shape):
        if self.pad_mode in KERAS_PADDINGS:
            return input_shape
        shape = list(input_shape)
        axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        for axis, (before, after) in zip(axes, _pad_amounts(self.kernel_size)):
            if shape[axis] is not None:
                shape[axis] += before + after
        return tuple(shape)

    def build(self, input_shape):
        axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        check_padding_fits(self.pad_mode, self.kernel_size, [input_shape[a] for a in axes])
        super().build(self._padded_shape(input_shape))

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(self._pad(inputs), kernel)

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(self._padded_shape(input_shape))

    def get_config(self):
        config = super().get_config()
        config["padding"] = self.pad_mode
        return config

    def _export_class(self):
        return keras.layers.Conv2D if self.pad_mode in KERAS_PADDINGS else PadConv2D

    def vanilla_export(self):
        """A PadConv2D has no constraint: its export is a copy of itself (plain Conv2D
        for "same"/"valid")."""
        cls = self._export_class()
        config = cls.get_config(self) if cls is keras.layers.Conv2D else self.get_config()
        if cls is keras.layers.Conv2D:
            config["padding"] = self.pad_mode
        layer = cls.from_config(config)
        layer.build(self._build_input_shape)
        layer.set_weights(self.get_weights())
        return layer

    @property
    def _build_input_shape(self):
        return self._build_shapes_dict["input_shape"]
