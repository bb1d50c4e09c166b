"""SLL: SDP-based Lipschitz residual blocks (Araujo et al., ICLR 2023).

``f(x) = k * (x - 2 W T^-1 relu(W^T x + b))`` with ``W`` a linear map from ``m`` hidden
units to the input's ``n`` features (a matrix, or a transposed convolution), ``W^T`` its
adjoint, and ``T = diag(t)``, ``t_i = sum_j |W^T W|_ij q_j / q_i`` with trainable
``q = exp(log_q) > 0``. Then ``f`` is ``k``-Lipschitz:

    the Jacobian is ``k (I - 2 V D V^T)`` with ``V = W T^-1/2`` and ``D = diag(relu')``
    in ``[0, 1]``; ``W^T W <= T`` (Schur test, `deel_lip.layers.aol`) gives
    ``||V||_2 <= 1``, so ``0 <= V D V^T <= V V^T <= I`` and the symmetric
    ``I - 2 V D V^T`` has its eigenvalues in ``[-1, 1]`` (at ReLU kinks the same holds for
    every generalised Jacobian, so the bound holds between any two points).

For the convolutional block, ``W^T`` is the "same" zero-padded convolution with a kernel
``K`` (``kh x kw x c x m``) and ``W`` its adjoint, the transposed convolution with the
same kernel; ``W^T W`` is computed on the hidden channels from ``|K^T * K|`` as for AOL,
a bound for every input size (the finite convolution is a submatrix of the infinite
one). With ``k_coef_lip = k`` the block is scaled by ``k`` at its output, so it is exactly
``k``-Lipschitz where the unscaled block is 1-Lipschitz.

Export: a functional `keras.Model` (named like the layer) of plain layers,
``Add()([x or Rescaling(k)(x), Dense/Conv2DTranspose(Dense/Conv2D(x), relu)])`` with the
kernel ``-2 k W T^-1`` folded into the second layer.

Reference:
    Araujo, Havens, Delattre, Allauzen, Hu, "A unified algebraic perspective on Lipschitz
    neural networks", ICLR 2023.
"""

from __future__ import annotations

import keras
from keras import ops

from deel_lip._backend import eager_scope, no_autocast
from deel_lip.layers.aol import CenteredOrthogonal, gram_abs_sums, schur_scales
from deel_lip.layers.contract import (
    Condensable,
    LipschitzLayer,
    refuse_unsupported_keras_arguments,
)

__all__ = ["SLLDense", "SLLConv2D"]


def _refuse_lora(layer_name: str, kwargs: dict) -> None:
    """`keras.layers.Layer` does not take ``lora_rank``: refuse it by name first."""
    for argument in ("lora_rank", "lora_alpha"):
        value = kwargs.pop(argument, None)
        if value is not None:
            raise ValueError(
                f"{layer_name} does not support LoRA: {argument} must be None, received: {value!r}"
            )


def _check_positive_int_or_none(value, argument: str, layer: str) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{layer} {argument} must be None or an int >= 1, received: {value!r}")


class _SLLBlock(keras.layers.Layer, LipschitzLayer, Condensable):
    """The residual block shared by `SLLDense` and `SLLConv2D`.

    Subclasses declare `_kernel_shape(n, m)`, `_inner(x, kernel)` (``W^T x``),
    `_outer(h, kernel)` (``W h``), `_hidden_kernel(kernel)` (the kernel whose input-side
    Gram matrix is ``W^T W``), `_export_layers(m)` and `_outer_kernel(kernel)`.
    """

    def __init__(
        self,
        k_coef_lip=1.0,
        use_bias=True,
        kernel_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        _refuse_lora(type(self).__name__, kwargs)
        super().__init__(**kwargs)
        refuse_unsupported_keras_arguments(self)  # 16-bit variables, quantized policies
        if not isinstance(use_bias, bool):
            raise ValueError(
                f"{type(self).__name__} use_bias must be a bool, received: {use_bias!r}"
            )
        self._init_lipschitz(k_coef_lip)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)

    # ------------------------------------------------------------ declarations

    def _check_input_shape(self, input_shape) -> None:
        """Raise `ValueError` for inputs the block cannot take."""

    def _kernel_shape(self, n: int, m: int) -> tuple:
        raise NotImplementedError

    def _inner(self, x, kernel):
        raise NotImplementedError

    def _outer(self, h, kernel):
        raise NotImplementedError

    def _hidden_kernel(self, kernel):
        raise NotImplementedError

    def _export_layers(self, m: int) -> tuple[keras.layers.Layer, keras.layers.Layer]:
        """The plain layers computing ``relu(W^T x + b)`` and ``W h``."""
        raise NotImplementedError

    def _outer_kernel(self, kernel):
        """The second exported layer's kernel from a kernel shaped like ``self.kernel``."""
        return kernel

    # ------------------------------------------------------------ build / call

    def build(self, input_shape):
        self._check_input_shape(input_shape)
        n = input_shape[-1]
        if n is None:
            raise ValueError(
                f"{type(self).__name__} needs a known last (feature) axis, received "
                f"input_shape={tuple(input_shape)}"
            )
        m = self.hidden_units or n
        self.kernel = self.add_weight(
            name="kernel",
            shape=self._kernel_shape(n, m),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(m,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )
        self.log_q = self.add_weight(name="log_q", shape=(m,), initializer="zeros")
        self._lip_input_shape = tuple(input_shape)
        self.built = True

    def scales(self):
        """``t`` (``(m,)``): ``W^T W <= diag(t)`` from the current weights, computed in the
        variables' dtype (float32 under a mixed-precision policy)."""
        with no_autocast():
            kernel = ops.convert_to_tensor(self.kernel.value)
            q = ops.exp(ops.convert_to_tensor(self.log_q.value))
        return schur_scales(gram_abs_sums(self._hidden_kernel(kernel)), q)

    def linear_bound_map(self, x):
        """``T^-1/2 W^T x``: its operator norm is <= 1 (the certificate of the block)."""
        kernel = ops.cast(self.kernel, x.dtype)
        return self._inner(x, kernel) * ops.cast(ops.rsqrt(self.scales()), x.dtype)

    def call(self, inputs):
        kernel = ops.cast(self.kernel, self.compute_dtype)
        hidden = self._inner(inputs, kernel)
        if self.use_bias:
            hidden = hidden + ops.cast(self.bias, hidden.dtype)
        hidden = ops.relu(hidden) / ops.cast(self.scales(), hidden.dtype)
        residual = inputs - 2.0 * self._outer(hidden, kernel)
        coef = self._get_coef()
        return residual if coef == 1.0 else residual * ops.cast(coef, residual.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    # ------------------------------------------------------------ contract

    def condense(self) -> None:
        """Rescale the hidden units so that ``T = I``; the function is unchanged.

        ``(W, b, q) -> (W S, S b, q / S)`` with ``S = T^-1/2`` maps ``t`` to
        ``s_i^2 t_i = 1`` and leaves ``W T^-1 relu(W^T x + b)`` as it is (ReLU is positively
        homogeneous): the raw weights then sit at the scale of the constrained ones.
        """
        if not self.built:
            return
        with eager_scope():
            s = ops.rsqrt(self.scales())
            shape = [1] * (len(self.kernel.shape) - 1) + [-1]
            self.kernel.assign(self.kernel.value * ops.reshape(s, shape))
            if self.use_bias:
                self.bias.assign(self.bias.value * s)
            self.log_q.assign(self.log_q.value - ops.log(s))

    def vanilla_export(self) -> keras.Model:
        """Functional `keras.Model` of plain layers computing the same block.

        ``Add()([k x, W_out(relu(W^T x + b))])`` with ``W_out = -2 k W T^-1``; for
        ``k = 1`` the skip is the input itself, else a `keras.layers.Rescaling`.
        """
        if not self.built:
            raise ValueError(f"Layer {self.name!r} must be built before vanilla_export().")
        with eager_scope():
            kernel = ops.convert_to_numpy(self.kernel)
            t = ops.convert_to_numpy(self.scales())
            bias = ops.convert_to_numpy(self.bias) if self.use_bias else None
        coef = self._get_coef()
        m = kernel.shape[-1]
        inner, outer = self._export_layers(m)
        inputs = keras.Input(self._lip_input_shape[1:], name=f"{self.name}_input")
        hidden = inner(inputs)
        branch = outer(hidden)
        inner.set_weights([kernel] if bias is None else [kernel, bias])
        outer.set_weights([self._outer_kernel(kernel * (-2.0 * coef / t))])
        skip = inputs
        if coef != 1.0:
            skip = keras.layers.Rescaling(coef, name=f"{self.name}_scale")(inputs)
        outputs = keras.layers.Add(name=f"{self.name}_add")([skip, branch])
        return keras.Model(inputs, outputs, name=self.name)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "k_coef_lip": self.k_coef_lip,
                "hidden_units": self.hidden_units,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            }
        )
        return config


@keras.saving.register_keras_serializable("deel_lip")
class SLLDense(_SLLBlock):
    """Dense SLL residual block, ``k_coef_lip``-Lipschitz.

    ``f(x) = k (x - 2 W T^-1 relu(W^T x + b))`` with ``W`` of shape ``n x m`` (stored as
    the Keras kernel ``(n, m)``: ``W^T x = x @ kernel``), ``T`` as in the module docstring.

    Args:
        hidden_units: ``m``, the number of hidden units (default: the input dimension).
        k_coef_lip: Lipschitz constant of the block (> 0).
        use_bias: whether the hidden units have a bias ``b``.
        kernel_initializer: initializer of ``W`` (default "orthogonal": ``T = I`` and an
            orthogonal Jacobian when ``m <= n``); likewise ``bias_initializer``,
            ``kernel_regularizer``, ``bias_regularizer``.

    Input shape:
        ``(batch, ..., n)``.

    Output shape:
        same as the input.

    Reference:
        Araujo et al., "A unified algebraic perspective on Lipschitz neural networks",
        ICLR 2023.
    """

    def __init__(self, hidden_units=None, k_coef_lip=1.0, **kwargs):
        _check_positive_int_or_none(hidden_units, "hidden_units", type(self).__name__)
        self.hidden_units = hidden_units
        super().__init__(k_coef_lip=k_coef_lip, **kwargs)

    def _kernel_shape(self, n, m):
        return (n, m)

    def _inner(self, x, kernel):
        return ops.matmul(x, kernel)

    def _outer(self, h, kernel):
        return ops.matmul(h, ops.transpose(kernel))

    def _hidden_kernel(self, kernel):
        return ops.transpose(kernel)  # input-side Gram of W^T's matrix (m x n) is W^T W

    def _export_layers(self, m):
        n = self._lip_input_shape[-1]
        inner = keras.layers.Dense(
            m, activation="relu", use_bias=self.use_bias, name=f"{self.name}_inner"
        )
        outer = keras.layers.Dense(n, use_bias=False, name=f"{self.name}_outer")
        return inner, outer

    def _outer_kernel(self, kernel):
        return kernel.T  # Dense(n) on the hidden units: kernel (m, n)


@keras.saving.register_keras_serializable("deel_lip")
class SLLConv2D(_SLLBlock):
    """Convolutional SLL residual block, ``k_coef_lip``-Lipschitz for every input size.

    ``f(x) = k (x - 2 conv^T(T^-1 relu(conv(x, K) + b), K))`` with ``conv`` the stride-1
    "same" (zero-padded) convolution with the kernel ``K`` (``kh x kw x c x m``),
    ``conv^T`` its adjoint (the transposed convolution with the same kernel) and ``T``
    from ``|K^T * K|`` on the hidden channels (module docstring).

    Args:
        kernel_size: int or pair of ints (default 3).
        hidden_filters: ``m``, the number of hidden channels (default: the input's ``c``).
        k_coef_lip: Lipschitz constant of the block (> 0).
        kernel_initializer: default "centered_orthogonal"
            (`deel_lip.initializers.CenteredOrthogonal`: ``T = I`` and, when ``m <= c``, an
            orthogonal Jacobian at initialisation), or any Keras initializer.
        use_bias, bias_initializer, kernel_regularizer, bias_regularizer: as in
            `SLLDense`.

    Input shape:
        4D tensor ``(batch, rows, cols, channels)`` (channels_last).

    Output shape:
        same as the input.

    Reference:
        Araujo et al., "A unified algebraic perspective on Lipschitz neural networks",
        ICLR 2023.
    """

    def __init__(
        self,
        kernel_size=3,
        hidden_filters=None,
        k_coef_lip=1.0,
        kernel_initializer="centered_orthogonal",
        **kwargs,
    ):
        name = type(self).__name__
        _check_positive_int_or_none(hidden_filters, "hidden_filters", name)
        sizes = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if (
            not isinstance(sizes, (tuple, list))
            or len(sizes) != 2
            or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in sizes)
        ):
            raise ValueError(
                f"{name} kernel_size must be an int >= 1 or a pair of them, "
                f"received: {kernel_size!r}"
            )
        self.kernel_size = tuple(sizes)
        self.hidden_units = hidden_filters
        if kernel_initializer == "centered_orthogonal":
            kernel_initializer = CenteredOrthogonal()
        super().__init__(k_coef_lip=k_coef_lip, kernel_initializer=kernel_initializer, **kwargs)

    @property
    def hidden_filters(self):
        return self.hidden_units

    def _check_input_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expects inputs of ndim=4 (batch, rows, "
                f"cols, channels), received input_shape={tuple(input_shape)}"
            )

    def _kernel_shape(self, n, m):
        return self.kernel_size + (n, m)

    def _inner(self, x, kernel):
        return ops.conv(x, kernel, strides=1, padding="same")

    def _outer(self, h, kernel):
        return ops.conv_transpose(h, kernel, strides=1, padding="same")

    def _hidden_kernel(self, kernel):
        return ops.transpose(kernel, (0, 1, 3, 2))

    def _export_layers(self, m):
        c = self._lip_input_shape[-1]
        inner = keras.layers.Conv2D(
            m,
            self.kernel_size,
            padding="same",
            activation="relu",
            use_bias=self.use_bias,
            name=f"{self.name}_inner",
        )
        outer = keras.layers.Conv2DTranspose(
            c, self.kernel_size, padding="same", use_bias=False, name=f"{self.name}_outer"
        )
        return inner, outer

    def get_config(self):
        config = super().get_config()
        config["hidden_filters"] = config.pop("hidden_units")
        config["kernel_size"] = self.kernel_size
        return config
