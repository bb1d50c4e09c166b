"""Dense matrices of layers' linear parts (`layer_operator_matrix`).

``A[:, i] = flatten(f(e_i) - f(0))`` for the identity basis ``e_i`` of one flattened
sample: for a layer with a linear part (the deel_lip contract's ``linear_map``, plain Keras
Dense and convolutions) ``f`` is that map with the kernel used at inference; any other
layer or callable is evaluated as is. `deel_lip.utils` measures exact singular values and
the guarantee tests exact operator norms from these matrices.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import keras
import numpy as np
from keras import ops

__all__ = [
    "layer_operator_matrix",
    "has_linear_part",
    "inference_kernel",
    "linear_function",
    "sample_shape",
]

_BASIS_CHUNK = 256
_CONV_TRANSPOSE = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def has_linear_part(layer) -> bool:
    """True for the layers whose kernel-based linear map this module knows: any layer with
    a ``linear_map`` method (the deel_lip layer contract), plain Keras Dense and
    convolutions."""
    if callable(getattr(layer, "linear_map", None)):
        return True
    return isinstance(layer, (keras.layers.Dense,) + _CONV + _CONV_TRANSPOSE)


def inference_kernel(layer):
    """The kernel the layer uses at ``training=False``, read without modifying the layer."""
    current = getattr(layer, "current_constrained_kernel", None)
    if callable(current):
        # The cache when current, else what the next inference call would compute.
        return current()
    return layer.kernel


def _causal_padding(layer) -> list[tuple[int, int]]:
    """Left padding ``dilation * (kernel - 1)`` of a causal 1D convolution."""
    left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
    if layer.data_format == "channels_first":
        return [(0, 0), (0, 0), (left, 0)]
    return [(0, 0), (left, 0), (0, 0)]


def _plain_linear(layer) -> Callable:
    """``(x, kernel) -> linear map`` of a plain Keras Dense / convolution."""
    if isinstance(layer, keras.layers.Dense):
        return ops.matmul
    if isinstance(layer, _CONV_TRANSPOSE):

        def conv_transpose(x, kernel):
            return ops.conv_transpose(
                x,
                kernel,
                strides=list(layer.strides),
                padding=layer.padding,
                output_padding=layer.output_padding,
                dilation_rate=layer.dilation_rate,
                data_format=layer.data_format,
            )

        return conv_transpose
    if isinstance(layer, keras.layers.Conv1D) and layer.padding == "causal":

        def causal_conv(x, kernel):
            return ops.conv(
                ops.pad(x, _causal_padding(layer)),
                kernel,
                strides=list(layer.strides),
                padding="valid",
                dilation_rate=layer.dilation_rate,
                data_format=layer.data_format,
            )

        return causal_conv
    return layer.convolution_op


def linear_function(layer_or_fn, dtype: str) -> Callable:
    """``x -> A x (+ offset)`` computed in ``dtype``."""
    if isinstance(layer_or_fn, keras.layers.Layer) and has_linear_part(layer_or_fn):
        layer = layer_or_fn
        if not layer.built:
            raise ValueError(f"Layer {layer.name!r} must be built to read its linear operator.")
        if callable(getattr(layer, "linear_map", None)):
            if callable(getattr(layer, "current_constrained_kernel", None)):
                kernel = ops.cast(layer.current_constrained_kernel(), dtype)
                return lambda x: layer.linear_map(x, kernel)
            return layer.linear_map
        kernel = ops.cast(layer.kernel, dtype)
        linear = _plain_linear(layer)
        return lambda x: linear(x, kernel)
    if isinstance(layer_or_fn, keras.layers.Layer):
        return lambda x: layer_or_fn(x, training=False)
    if callable(layer_or_fn):
        return layer_or_fn
    raise TypeError(
        f"layer_or_fn must be a Keras layer or a callable, received: {type(layer_or_fn)!r}"
    )


def sample_shape(input_shape, argument: str = "input_shape") -> tuple:
    """Shape of one sample: a leading ``None`` (batch axis) is dropped."""
    if input_shape is None or isinstance(input_shape, (str, bytes)):
        raise ValueError(f"{argument} must be a sequence of ints, received: {input_shape!r}")
    shape = tuple(input_shape)
    if shape and shape[0] is None:
        shape = shape[1:]
    if not shape or any(not isinstance(d, (int, np.integer)) or d < 1 for d in shape):
        raise ValueError(
            f"{argument} must give the size (>= 1) of every axis of one sample, "
            f"received: {input_shape!r}"
        )
    return tuple(int(d) for d in shape)


def layer_operator_matrix(
    layer_or_fn: keras.layers.Layer | Callable,
    input_shape: Sequence[int],
    dtype: str = "float64",
) -> np.ndarray:
    """Dense matrix of the linear part of a layer on inputs of a given shape.

    ``A[:, i] = flatten(f(e_i) - f(0))`` for the identity basis ``e_i`` of the flattened
    input, so that ``flatten(f(x)) = A flatten(x) + flatten(f(0))`` for an affine ``f``.

    * Layers with a ``linear_map`` method (`deel_lip.layers` constrained layers, any layer
      following the contract): ``f`` is that linear map, with the kernel used at
      inference (``current_constrained_kernel()``, the cache) when the layer has one; bias
      and activation are excluded. The layer is not modified.
    * Plain `keras.layers.Dense`, ``Conv1D/2D/3D`` and ``Conv1D/2D/3DTranspose`` (and
      subclasses such as `deel_lip.layers.PadConv2D`): the same with their kernel.
    * Any other layer or callable is evaluated as is (layers with ``training=False``);
      the result is its matrix only if it is affine.

    Args:
        layer_or_fn: a built layer, or a callable on batches.
        input_shape: shape of one input, without the batch axis (a leading ``None`` is
            dropped), e.g. ``(5, 5, 2)``.
        dtype: dtype of the basis and of the kernel during the computation.

    Returns:
        ``numpy`` array ``(output_dim, input_dim)`` (row-major flattening of one sample).

    Raises:
        ValueError: if the layer is not built or ``input_shape`` is not fully known.
        TypeError: if ``layer_or_fn`` is neither a layer nor a callable.
    """
    fn = linear_function(layer_or_fn, dtype)
    shape = sample_shape(input_shape)
    n = math.prod(shape)
    offset = ops.convert_to_numpy(fn(ops.zeros((1,) + shape, dtype=dtype)))
    offset = offset.reshape(-1).astype(np.float64)
    matrix = np.empty((offset.size, n), dtype=np.float64)
    for start in range(0, n, _BASIS_CHUNK):
        stop = min(n, start + _BASIS_CHUNK)
        basis = np.zeros((stop - start, n), dtype=dtype)
        basis[np.arange(stop - start), np.arange(start, stop)] = 1.0
        out = ops.convert_to_numpy(fn(ops.convert_to_tensor(basis.reshape((-1,) + shape))))
        matrix[:, start:stop] = (out.reshape(stop - start, -1).astype(np.float64) - offset).T
    return matrix
