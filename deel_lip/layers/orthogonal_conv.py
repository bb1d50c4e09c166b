"""Exactly orthogonal convolutions: the block convolution orthogonal parametrisation (BCOP).

A convolution is orthogonal on every input size (circular padding) when its transfer
matrix ``T(w) = sum_p K_p e^{i<w, p>}`` is unitary at every frequency ``w`` (the kernel is
*paraunitary*). BCOP builds such kernels as products of paraunitary factors:

* an orthogonal ``c x c`` matrix ``Q`` (one tap);
* per spatial axis, ``k - 1`` two-tap factors ``P + (I - P) z`` with ``P = U U^T`` the
  orthogonal projector on the columns of an ``c x r`` matrix ``U`` with orthonormal
  columns: at ``z = e^{iw}`` its eigenvalues are ``1`` (range of ``P``) and ``e^{iw}``
  (its complement), so it is unitary.

``K(x, y) = Q A_1(x) ... A_{kh-1}(x) B_1(y) ... B_{kw-1}(y)`` is a ``kh x kw`` kernel of
``c x c`` taps whose transfer matrix is a product of unitary matrices. For ``c_in !=
filters`` the layer uses ``c = max(c_in, filters)`` and keeps the ``c_in x filters``
block: a submatrix of a unitary matrix has norm ``<= 1`` (an isometry when ``filters >=
c_in``).

Soundness does not depend on the convergence of the orthogonalisation: ``Q`` and ``U``
come from a Bjorck run whose last step leaves every singular value in ``[0, 1]``
(`deel_lip.normalizers.bjorck_normalization`), so ``||Q|| <= 1`` and ``P = U U^T`` has its
eigenvalues ``p`` in ``[0, 1]``, where ``|p + (1 - p) e^{iw}| <= 1``: every factor, hence
the product, is a contraction at every frequency. So the convolution is ``k_coef_lip``-
Lipschitz for every input size with circular padding, and with zero padding ("same",
"valid", at any stride: a compression of the circular convolution on a larger grid) or
dilation. It is exactly orthogonal (norm preserving) for circular padding, stride 1 and
``filters >= c_in``; with "same" padding only the border pixels lose energy.

Reference:
    Li, Haghifam, Roberts, Schwing, Grosse, "Preventing gradient attenuation in Lipschitz
    constrained convolutional networks", NeurIPS 2019.
"""

from __future__ import annotations

import keras
from keras import ops

from deel_lip._backend import eager_scope, no_autocast
from deel_lip.layers.contract import (
    Condensable,
    LipschitzLayer,
    refuse_unsupported_keras_arguments,
)
from deel_lip.layers.pad_conv import (
    KERAS_PADDINGS,
    PadConv2D,
    check_padding_fits,
)
from deel_lip.normalizers import (
    DEFAULT_BETA_BJORCK,
    DEFAULT_EPS_BJORCK,
    DEFAULT_MAXITER_BJORCK,
    check_normalization_args,
    reshaped_kernel_orthogonalization,
)

__all__ = ["OrthogonalConv2D", "paraunitary_kernel"]

#: Paddings with which the layer is exactly orthogonal or a compression of such a map.
ORTHOGONAL_PADDINGS = ("same", "valid", "circular")


def _two_tap_product(taps, projector):
    """Taps of ``taps(z) (P + (I - P) z)``: ``L`` taps ``(L, c, c)`` -> ``L + 1`` taps."""
    eye = ops.eye(projector.shape[0], dtype=projector.dtype)
    kept = ops.matmul(taps, projector)
    shifted = ops.matmul(taps, eye - projector)
    zero = ops.zeros_like(taps[:1])
    return ops.concatenate([kept, zero], axis=0) + ops.concatenate([zero, shifted], axis=0)


def paraunitary_kernel(orthogonal, row_frames, column_frames):
    """The BCOP kernel ``(kh, kw, c, c)`` of an orthogonal ``c x c`` matrix and frames.

    Args:
        orthogonal: ``Q`` (``c x c``, spectral norm <= 1).
        row_frames: ``kh - 1`` matrices ``U`` (``c x r``, spectral norm <= 1); each gives
            the factor ``U U^T + (I - U U^T) x`` along the first spatial axis.
        column_frames: ``kw - 1`` such matrices for the second spatial axis.

    Returns:
        ``K`` with ``K[a, b] = R_a C_b``, ``R(x) = Q prod_i A_i(x)``, ``C(y) = prod_j
        B_j(y)``: every transfer matrix ``R(e^{iu}) C(e^{iv})`` has norm <= 1, and is
        unitary when the inputs are exactly orthogonal.
    """
    c = orthogonal.shape[0]
    rows = ops.expand_dims(orthogonal, 0)
    for frame in row_frames:
        rows = _two_tap_product(rows, ops.matmul(frame, ops.transpose(frame)))
    columns = ops.expand_dims(ops.eye(c, dtype=orthogonal.dtype), 0)
    for frame in column_frames:
        columns = _two_tap_product(columns, ops.matmul(frame, ops.transpose(frame)))
    return ops.einsum("aij,bjk->abik", rows, columns)


@keras.saving.register_keras_serializable("deel_lip")
class OrthogonalConv2D(LipschitzLayer, Condensable, PadConv2D):
    """2D convolution with a paraunitary (BCOP) kernel: orthogonal, ``k_coef_lip``-Lipschitz.

    The kernel is ``k_coef_lip * K[:, :, :c_in, :filters]`` with ``K`` the product of an
    orthogonal matrix and ``kh + kw - 2`` two-tap projector factors
    (`paraunitary_kernel`, module docstring). Trainable parameters: ``orthogonal``
    (``c x c``) and ``frames`` (``kh + kw - 2`` matrices ``c x r``, ``c = max(c_in,
    filters)``, ``r = projector_rank`` or ``c // 2``), each orthogonalised by Bjorck at
    every call. Why BCOP: exactly orthogonal for every input size (unlike SOC, whose
    truncated exponential is approximately orthogonal), a plain ``kh x kw`` kernel (unlike
    Cayley convolutions, whose kernel spans the whole image and needs circular padding),
    so it exports to a plain `keras.layers.Conv2D` with zero padding too.

    Args:
        filters, kernel_size, strides, data_format, use_bias, bias_initializer,
            bias_regularizer, bias_constraint, activity_regularizer: as in
            `keras.layers.Conv2D`.
        padding: "same", "valid" or "circular" (exactly orthogonal at stride 1).
        dilation_rate: as in Keras with "same"/"valid" (a dilated paraunitary kernel is
            paraunitary); 1 with "circular".
        activation: None or "linear" (any other activation is a separate layer).
        kernel_initializer: initializer of the raw ``orthogonal`` and ``frames`` matrices
            (default "orthogonal": the raw parameters start at the constrained ones).
        projector_rank: rank ``r`` of every projector (``1 <= r <= c``), default ``c // 2``.
        k_coef_lip: Lipschitz constant (> 0).
        eps_bjorck, beta_bjorck, maxiter_bjorck: as in `deel_lip.layers.SpectralDense`
            (``eps_bjorck`` must not be None: the parametrisation needs orthogonal
            matrices).

    Input shape:
        4D tensor ``(batch, rows, cols, channels)`` (channels_last) or channels_first.

    Output shape:
        4D tensor ``(batch, new_rows, new_cols, filters)``.

    Raises:
        ValueError: a padding outside `ORTHOGONAL_PADDINGS` (reflect/symmetric copy pixels;
            use "same"), ``groups != 1``, a kernel smaller than the stride, an activation,
            a kernel regulariser or constraint (they act on a kernel that is not a
            parameter here), LoRA, ``projector_rank`` out of range.

    Reference:
        Li, Haghifam, Roberts, Schwing, Grosse, "Preventing gradient attenuation in
        Lipschitz constrained convolutional networks", NeurIPS 2019.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
        data_format=None,
        dilation_rate=(1, 1),
        activation=None,
        use_bias=True,
        kernel_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        projector_rank=None,
        k_coef_lip=1.0,
        eps_bjorck=DEFAULT_EPS_BJORCK,
        beta_bjorck=DEFAULT_BETA_BJORCK,
        maxiter_bjorck=DEFAULT_MAXITER_BJORCK,
        **kwargs,
    ):
        name = type(self).__name__
        if not isinstance(padding, str) or padding.lower() not in ORTHOGONAL_PADDINGS:
            raise ValueError(
                f"{name} padding must be one of {ORTHOGONAL_PADDINGS} (reflect/symmetric "
                f"copy pixels, which breaks orthogonality), received: padding={padding!r}"
            )
        for argument, value in (
            ("kernel_regularizer", kernel_regularizer),
            ("kernel_constraint", kernel_constraint),
        ):
            if value is not None:
                raise ValueError(
                    f"{name} {argument} must be None (the kernel is computed from the "
                    f"orthogonal parameters, not trained directly), received: {value!r}"
                )
        if keras.activations.get(activation) not in (keras.activations.linear, None):
            raise ValueError(
                f"{name} activation must be None or 'linear' (add a Lipschitz activation "
                f"layer instead), received: activation={activation!r}"
            )
        if projector_rank is not None and (
            isinstance(projector_rank, bool)
            or not isinstance(projector_rank, int)
            or projector_rank < 1
        ):
            raise ValueError(
                f"{name} projector_rank must be None or an int >= 1, received: {projector_rank!r}"
            )
        if eps_bjorck is None:
            raise ValueError(
                f"{name} eps_bjorck must be a positive number (the parametrisation needs "
                f"orthogonal matrices), received: eps_bjorck=None"
            )
        check_normalization_args(
            eps_bjorck=eps_bjorck, beta_bjorck=beta_bjorck, maxiter_bjorck=maxiter_bjorck
        )
        PadConv2D.__init__(
            self,
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
            activation=None,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            bias_constraint=bias_constraint,
            **kwargs,
        )
        if self.groups != 1:
            raise ValueError(f"{name} groups must be 1, received: groups={self.groups}")
        if any(k < s for k, s in zip(self.kernel_size, self.strides)):
            raise ValueError(
                f"{name} kernel_size must be >= strides on every axis (a smaller kernel skips "
                f"pixels), received: kernel_size={self.kernel_size}, strides={self.strides}"
            )
        refuse_unsupported_keras_arguments(self)
        self._init_lipschitz(k_coef_lip)
        self.projector_rank = projector_rank
        self.eps_bjorck = eps_bjorck
        self.beta_bjorck = beta_bjorck
        self.maxiter_bjorck = maxiter_bjorck

    # ------------------------------------------------------------ build

    def build(self, input_shape):
        axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        channel_axis = -1 if self.data_format == "channels_last" else 1
        check_padding_fits(self.pad_mode, self.kernel_size, [input_shape[a] for a in axes])
        c_in = input_shape[channel_axis]
        if c_in is None:
            raise ValueError(
                f"{type(self).__name__} needs a known channel axis, received "
                f"input_shape={tuple(input_shape)}"
            )
        c = max(c_in, self.filters)
        rank = self.projector_rank or max(c // 2, 1)
        if rank > c:
            raise ValueError(
                f"{type(self).__name__} projector_rank must be <= max(input channels, "
                f"filters) = {c}, received: projector_rank={rank}"
            )
        self.compute_output_shape(self._padded_shape(input_shape))
        self.input_spec = keras.layers.InputSpec(min_ndim=4, axes={channel_axis: c_in})
        self.orthogonal = self.add_weight(
            name="orthogonal", shape=(c, c), initializer=self.kernel_initializer
        )
        kh, kw = self.kernel_size
        self.frames = [
            self.add_weight(name=f"frame_{i}", shape=(c, rank), initializer=self.kernel_initializer)
            for i in range(kh + kw - 2)
        ]
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        self._c_in = c_in
        self.built = True

    # ------------------------------------------------------------ kernel

    def _orthogonalize(self, matrix):
        """Bjorck orthogonalisation (every singular value of the result in [0, 1])."""
        w_bar, _, _ = reshaped_kernel_orthogonalization(
            matrix,
            eps_bjorck=self.eps_bjorck,
            beta_bjorck=self.beta_bjorck,
            maxiter_bjorck=self.maxiter_bjorck,
        )
        return w_bar

    def _orthogonal_parameters(self):
        """``(Q, [U_1, ...])`` from the raw parameters, in the variables' dtype."""
        with no_autocast():
            q = self._orthogonalize(ops.convert_to_tensor(self.orthogonal.value))
            frames = [self._orthogonalize(ops.convert_to_tensor(f.value)) for f in self.frames]
        return q, frames

    def current_constrained_kernel(self):
        """The kernel ``(kh, kw, c_in, filters)`` used by the convolution."""
        q, frames = self._orthogonal_parameters()
        kh = self.kernel_size[0]
        full = paraunitary_kernel(q, frames[: kh - 1], frames[kh - 1 :])
        kernel = full[:, :, : self._c_in, : self.filters] * ops.cast(self._get_coef(), q.dtype)
        return ops.cast(kernel, self.compute_dtype)

    @property
    def kernel(self):
        if not self.built:
            raise AttributeError("You must build the layer before accessing `kernel`.")
        return self.current_constrained_kernel()

    def linear_map(self, inputs, kernel=None):
        """The convolution without bias: ``kernel`` defaults to the constrained one."""
        kernel = self.current_constrained_kernel() if kernel is None else kernel
        return self.convolution_op(inputs, ops.cast(kernel, inputs.dtype))

    # ------------------------------------------------------------ contract

    def condense(self) -> None:
        """Replace the raw parameters by their orthogonalised values (function unchanged
        up to the Bjorck tolerance): the raw parameters stay at the constrained scale."""
        if not self.built:
            return
        with eager_scope():
            q, frames = self._orthogonal_parameters()
            self.orthogonal.assign(q)
            for variable, value in zip(self.frames, frames):
                variable.assign(value)

    def vanilla_export(self):
        """A plain `keras.layers.Conv2D` (or `PadConv2D` for "circular") with the kernel."""
        if not self.built:
            raise ValueError(f"Layer {self.name!r} must be built before vanilla_export().")
        config = PadConv2D.get_config(self)
        for key in ("projector_rank", "k_coef_lip", "eps_bjorck", "beta_bjorck", "maxiter_bjorck"):
            config.pop(key, None)
        cls = keras.layers.Conv2D if self.pad_mode in KERAS_PADDINGS else PadConv2D
        layer = cls.from_config(config)
        layer.build(self._build_input_shape)
        with eager_scope():
            weights = [ops.convert_to_numpy(self.current_constrained_kernel())]
            if self.use_bias:
                weights.append(ops.convert_to_numpy(self.bias))
        layer.set_weights(weights)
        return layer

    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def get_config(self):
        config = super().get_config()
        for key in ("kernel_regularizer", "kernel_constraint", "activation"):
            config.pop(key, None)
        config.update(
            {
                "projector_rank": self.projector_rank,
                "k_coef_lip": self.k_coef_lip,
                "eps_bjorck": self.eps_bjorck,
                "beta_bjorck": self.beta_bjorck,
                "maxiter_bjorck": self.maxiter_bjorck,
            }
        )
        return config
