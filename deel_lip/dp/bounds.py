"""Per-layer bounds of clipless DP-SGD (Bethune et al., ICLR 2024, section 3).

For a chain ``x_0 -> f_1 -> ... -> f_n -> loss`` each supported layer ``f_l`` declares

* ``lipschitz``: ``||f_l(x) - f_l(y)|| <= lipschitz ||x - y||``, hence a gradient arriving
  at its output with norm ``g`` leaves its input with norm ``<= lipschitz * g``;
* ``output_norm(X)``: ``||f_l(x)|| <= lipschitz * X + sqrt(P) ||b||`` for ``||x|| <= X``
  (``f_l(0) = b`` broadcast on ``P`` positions; every parameter-free layer here has
  ``f(0) = 0``);
* ``parameter_gradient_norm(X, g)``: the per-sample norm of the gradient of its
  parameters, for an input of norm ``<= X`` and an output gradient of norm ``<= g``.

Linear layers ``y = x W + b`` (Dense on the last axis, or a convolution ``y = P(x) W + b``
with ``P`` the patch matrix, one row per output position):

* ``d/dW = P(x)^T G`` so ``||d/dW||_F <= ||P(x)||_F ||G||_F``; ``||P(x)||_F^2`` counts each
  pixel once per (window, tap) reading it: ``<= c ||x||^2`` with ``c`` the largest count,
  ``sqrt(c)`` = `deel_lip.normalizers.conv_lipschitz_factor` (1 for Dense: ``x g^T`` has
  norm ``||x|| ||g||``; Dense on ``(batch, T, d)`` gives ``sum_t x_t g_t^T``, bounded by
  ``||x|| ||g||`` by Cauchy-Schwarz).
* ``d/db = sum_p G_p`` so ``||d/db|| <= sqrt(P) ||G||_F`` (``P`` output positions).
* Together: ``g * sqrt(c X^2 + P)`` (``P = 0`` without bias).

The bias norm is read from the current weights, which are outputs of earlier private
steps (adaptive composition allows it); the kernel norms are those the projections of
`deel_lip.dp.layers.KernelProjection` guarantee.
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import ops

from deel_lip import layers as dl
from deel_lip.normalizers import conv_lipschitz_factor

__all__ = ["LayerBound", "UnsupportedLayerError", "describe_layer", "gradient_bounds"]


class UnsupportedLayerError(ValueError):
    """A layer clipless DP-SGD cannot bound (the message names it and why)."""


@dataclasses.dataclass
class LayerBound:
    """Bounds of one layer (see the module docstring).

    Attributes:
        name: layer name.
        lipschitz: Lipschitz constant with respect to the input.
        kernel_factor: ``sqrt(c)`` of the kernel gradient bound (0: no kernel).
        bias_positions: ``P``, output positions sharing the bias (0: no bias).
        projection: `KernelProjection` arguments ``(bound, kind)`` or None.
        layer: the layer holding the variables (set on the private twin).
    """

    name: str
    lipschitz: float
    kernel_factor: float = 0.0
    bias_positions: int = 0
    projection: tuple | None = None
    layer: keras.layers.Layer | None = None

    @property
    def has_parameters(self) -> bool:
        return self.kernel_factor > 0 or self.bias_positions > 0

    def variables(self) -> list:
        """The trainable variables the bound covers (kernel, bias)."""
        if self.layer is None or not self.has_parameters:
            return []
        found = [self.layer.kernel]
        if self.bias_positions:
            found.append(self.layer.bias)
        return found

    def bias_norm(self):
        if not self.bias_positions or self.layer is None:
            return 0.0
        return ops.sqrt(ops.sum(ops.square(ops.cast(self.layer.bias, "float32"))))

    def output_norm(self, input_norm):
        """``lipschitz * X + sqrt(P) * ||b||``."""
        return self.lipschitz * input_norm + math.sqrt(self.bias_positions) * self.bias_norm()

    def parameter_gradient_norm(self, input_norm, grad_norm):
        """``g * sqrt((kernel_factor * X)^2 + P)``: bound of the per-sample gradient."""
        squared = (self.kernel_factor * input_norm) ** 2 + self.bias_positions
        return grad_norm * squared**0.5


_NORM_PRESERVING = (dl.GroupSort, dl.MaxMin)  # GroupSort2, FullSort are GroupSort
_PARAMETER_FREE_LIPSCHITZ = (
    dl.ScaledL2NormPooling2D,
    dl.ScaledAveragePooling2D,
    dl.ScaledGlobalAveragePooling2D,
    dl.ScaledGlobalL2NormPooling2D,
)
_ISOMETRIES = (
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Permute,
    dl.InvertibleDownSampling,  # permutations of the coordinates
    dl.InvertibleUpSampling,
)
_TRAINING_NOISE = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
)
_SAFE_ACTIVATIONS = ("linear", "relu")
#: Relative margin on the projected kernels' norms: Bjorck and the Frobenius division hold
#: their bound up to float32 rounding (measured excess: 2e-7).
ROUNDING_MARGIN = 1e-5  # 1-Lipschitz, |a(t)| <= |t|, a'(t) in [0, 1]


def _refuse(layer, why: str):
    raise UnsupportedLayerError(
        f"layer {layer.name!r} ({type(layer).__name__}) is not supported by clipless DP-SGD: {why}"
    )


def _activation_name(layer) -> str:
    activation = getattr(layer, "activation", None)
    if activation is None:
        return "linear"
    return getattr(activation, "__name__", str(activation))


def _linear_bound(layer, output_shape) -> LayerBound:
    export = type(layer)
    supported = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D)
    transposed = (keras.layers.Conv2DTranspose, keras.layers.DepthwiseConv2D)
    if not issubclass(export, supported) or issubclass(export, transposed):
        _refuse(layer, "only Dense and Conv1D/Conv2D-like constrained kernels are bounded")
    if _activation_name(layer) not in _SAFE_ACTIVATIONS:
        _refuse(
            layer,
            f"its activation {_activation_name(layer)!r} is not one of {_SAFE_ACTIVATIONS} "
            "(put a deel_lip activation layer after it)",
        )
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        _refuse(layer, "only data_format='channels_last' is supported")
    coef = float(layer.lipschitz_bound())
    if issubclass(export, keras.layers.Dense):
        factor = 1.0
    else:  # the coverage factor: sound for every input size, whatever the layer's own bound
        padding = getattr(layer, "pad_mode", layer.padding)
        factor = float(conv_lipschitz_factor(layer.kernel_size, layer.strides, padding))
    per_unit = bool(getattr(layer, "disjoint_neurons", False))
    if isinstance(layer, dl.FrobeniusDense) or isinstance(layer, dl.FrobeniusConv2D):
        kind = "frobenius_per_unit" if per_unit else "frobenius"
    else:
        kind = "spectral"
    units = int(layer.kernel.shape[-1]) if layer.built else 1
    lipschitz = coef * (math.sqrt(units) if per_unit else 1.0) * (1.0 + ROUNDING_MARGIN)
    positions = math.prod(int(d) for d in output_shape[1:-1]) if layer.use_bias else 0
    if layer.use_bias and positions == 0:
        positions = 1
    return LayerBound(
        name=layer.name,
        lipschitz=lipschitz,
        kernel_factor=factor,
        bias_positions=positions,
        projection=(coef / factor, kind),
    )


def describe_layer(layer, output_shape) -> LayerBound | None:
    """The `LayerBound` of a deel_lip model's layer (None for an `InputLayer`).

    Args:
        layer: a built layer of the model to privatise.
        output_shape: its output shape (static spatial sizes).

    Raises:
        UnsupportedLayerError: (a ValueError) naming the layer and the reason.
    """
    if isinstance(layer, keras.layers.InputLayer):
        return None
    if isinstance(layer, keras.Model):
        _refuse(layer, "nested models are not supported: flatten the model into one chain")
    if isinstance(layer, _TRAINING_NOISE):
        _refuse(layer, "it is active in training and rescales the activations; remove it")
    if isinstance(layer, dl.ConstrainedKernel):
        return _linear_bound(layer, output_shape)
    if isinstance(layer, _NORM_PRESERVING + _PARAMETER_FREE_LIPSCHITZ):
        if layer.trainable_weights:
            _refuse(layer, "it has trainable weights without a gradient bound")
        return LayerBound(name=layer.name, lipschitz=float(layer.lipschitz_bound()))
    if isinstance(layer, _ISOMETRIES):
        return LayerBound(name=layer.name, lipschitz=1.0)
    if isinstance(layer, keras.layers.ReLU) and layer.max_value is None:
        if not layer.negative_slope and not layer.threshold:
            return LayerBound(name=layer.name, lipschitz=1.0)
    if isinstance(layer, keras.layers.Activation) and _activation_name(layer) in _SAFE_ACTIVATIONS:
        return LayerBound(name=layer.name, lipschitz=1.0)
    if isinstance(layer, (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D)):
        _refuse(layer, "its kernel is unconstrained: use SpectralDense / SpectralConv2D")
    reasons = {
        dl.LipResidual: "residual blocks are not derived here",
        dl.BatchCentering: "it couples the samples of a batch (batch statistics)",
        dl.LayerCentering: "centering layers are not derived here",
        dl.Householder: "its angle parameter has no gradient bound here",
        dl.PReLUlip: "its slopes have no gradient bound here",
        keras.layers.BatchNormalization: "it couples the samples of a batch (batch statistics)",
        keras.layers.LayerNormalization: "normalisation is not Lipschitz with a usable bound",
        keras.layers.MultiHeadAttention: "attention is not Lipschitz",
    }
    for cls, why in reasons.items():
        if isinstance(layer, cls):
            _refuse(layer, why)
    _refuse(layer, "no bound is known for this layer type")
    return None  # unreachable


def gradient_bounds(bounds, input_norm, loss_lipschitz) -> list:
    """Per-sample parameter-gradient bounds of every layer with parameters.

    Forward: ``X_0 = input_norm``, ``X_l = output_norm_l(X_{l-1})``. Backward:
    ``g_n = loss_lipschitz``, ``g_{l-1} = lipschitz_l * g_l``. Returns
    ``[(bound, parameter_gradient_norm_l(X_{l-1}, g_l)), ...]`` in layer order (floats or
    tensors, as the bias norms are).
    """
    norms = [input_norm]
    for bound in bounds:
        norms.append(bound.output_norm(norms[-1]))
    grad, found = loss_lipschitz, []
    for index in range(len(bounds) - 1, -1, -1):
        bound = bounds[index]
        if bound.has_parameters:
            found.append((bound, bound.parameter_gradient_norm(norms[index], grad)))
        grad = grad * bound.lipschitz
    return found[::-1]
