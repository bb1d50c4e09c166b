"""AOL: almost-orthogonal Lipschitz layers (Prach & Lampert, ECCV 2022).

A linear map ``A`` (the layer's operator, ``y = A x``) is rescaled on its input side,
``A_hat = A diag(d)`` with ``d_i = (sum_j |A^T A|_ij)^(-1/2)``, which gives
``||A_hat||_2 <= 1`` for *any* ``A``:

    ``diag(d)^-2 - A^T A`` is symmetric and diagonally dominant with a non-negative
    diagonal (``d_i^-2 = sum_j |A^T A|_ij``), hence positive semi-definite (Gershgorin);
    so ``A^T A <= diag(d)^-2``, i.e. ``A_hat^T A_hat = D A^T A D <= I``.

The same bound applied to ``A^T`` rescales the output side instead, ``diag(d) A`` with
``d`` from ``A A^T``; the layers use the side with fewer channels by default
(``rescaling_side="auto"``): the row-sum bound of a low-rank Gram matrix is loose (a
Dense ``1568 -> 64`` of the reference CNN used 0.74 of its budget after two epochs with
input-side scaling, 0.90 with output-side scaling).

More generally (the Schur test, used by SLL), for any ``q > 0`` the diagonal ``T`` with
``t_i = sum_j |M_ij| q_j / q_i`` satisfies ``M <= T`` for a symmetric ``M``, because
``|x_i x_j| <= (x_i^2 q_j / q_i + x_j^2 q_i / q_j) / 2``.

For a convolution with kernel ``K`` (``kh x kw x c_in x c_out``), ``A^T A`` is, on the
infinite grid, the convolution with the kernel's cross-correlation with itself
``G[delta, i, j] = sum_{u, c} K[u, i, c] K[u + delta, j, c]``; its rows sum (in absolute
value) to ``s_i = sum_{delta, j} |G[delta, i, j]|``. A zero-padded ("same"/"valid"/
"constant") convolution on a finite input, at any stride, is a submatrix of that
infinite operator (rows: the kept outputs, columns: the input's support), so its norm
is at most the infinite one: ``K_hat[..., i, :] = K[..., i, :] / sqrt(s_i)`` is
1-Lipschitz for every input size. On the output side, ``A A^T`` is the convolution with
``G'[delta, a, b] = sum_{u, i} K[u, i, a] K[u + delta, i, b]`` and a stride keeps a subset
of the rows (the per-channel scaling commutes with it): sound at every stride too. A
circular convolution's Gram matrix sums ``G`` over wrapped offsets, whose absolute row
sums are ``<= s_i``: sound too. Reflect/symmetric
padding copies pixels (norm > 1) and is refused.

The layers are `ConstrainedKernel` layers: the rescaled kernel (times ``k_coef_lip``) is
cached for inference and exported to a plain `keras.layers.Dense` / ``Conv2D``.

Reference:
    Prach, Lampert, "Almost-orthogonal layers for efficient general-purpose Lipschitz
    networks", ECCV 2022.
"""

from __future__ import annotations

import keras
from keras import ops

from deel_lip.initializers import CenteredOrthogonal
from deel_lip.layers.base import ConstrainedKernel
from deel_lip.layers.dense import DenseKernel
from deel_lip.layers.pad_conv import PadConv2D, check_unit_dilation_and_groups

__all__ = [
    "AOLDense",
    "AOLConv2D",
    "gram_abs_sums",
    "schur_scales",
    "swap_channels",
    "aol_rescale",
    "CenteredOrthogonal",
]

#: Paddings under which the AOL rescaling bounds the convolution (zero or circular).
AOL_PADDINGS = ("same", "valid", "constant", "circular")
#: Floor of the row sums: a zero input row of the kernel gets a finite scale (any scale
#: is sound for it, and a larger sum only lowers the norm).
_MIN_ROW_SUM = 1e-30
#: Which channels the rescaling scales (`aol_rescale`).
AOL_SIDES = ("auto", "input", "output")


def gram_abs_sums(kernel):
    """``S_ij = sum_delta |G[delta, i, j]|``: the Gram matrix of the operator, on its input
    channels, in absolute value and summed over spatial offsets.

    Args:
        kernel: a Dense kernel ``(n_in, n_out)`` (then ``S = |K K^T|``) or a 2D
            convolution kernel ``(kh, kw, c_in, c_out)``.

    Returns:
        ``(c_in, c_in)`` symmetric tensor with non-negative entries.
    """
    if len(kernel.shape) == 2:
        return ops.abs(ops.matmul(kernel, ops.transpose(kernel)))
    if len(kernel.shape) != 4:
        raise ValueError(
            f"kernel must be a Dense (2D) or Conv2D (4D) kernel, received shape {kernel.shape}"
        )
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    # images: one per input channel i, K[:, :, i, :] with the c_out channels, zero-padded
    # so that every offset delta in [-(k - 1), k - 1] is computed ("full" correlation)
    images = ops.transpose(kernel, (2, 0, 1, 3))
    images = ops.pad(images, [(0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)])
    filters = ops.transpose(kernel, (0, 1, 3, 2))  # (kh, kw, c_out, c_in)
    gram = ops.conv(images, filters, strides=1, padding="valid")  # (c_in, 2kh-1, 2kw-1, c_in)
    return ops.sum(ops.abs(gram), axis=(1, 2))


def schur_scales(sums, q=None):
    """``t_i = sum_j S_ij q_j / q_i`` (``q = 1`` when None): ``S <= diag(t)``.

    Args:
        sums: ``(n, n)`` output of `gram_abs_sums`.
        q: optional positive weights ``(n,)``.

    Returns:
        ``(n,)`` tensor, floored at a tiny positive value.
    """
    if q is None:
        t = ops.sum(sums, axis=1)
    else:
        t = ops.matmul(sums, q) / q
    return ops.maximum(t, ops.cast(_MIN_ROW_SUM, t.dtype))


def swap_channels(kernel):
    """The kernel with its input and output channel axes swapped (the last two axes)."""
    axes = list(range(len(kernel.shape)))
    axes[-2], axes[-1] = axes[-1], axes[-2]
    return ops.transpose(kernel, axes)


def resolve_side(side: str, kernel_shape) -> str:
    """``"auto"``: the side with fewer channels (its Gram matrix is the smaller, and the
    row-sum bound of a low-rank Gram matrix is loose), the input side on a tie."""
    if side != "auto":
        return side
    return "input" if kernel_shape[-2] <= kernel_shape[-1] else "output"


def aol_rescale(kernel, side: str = "input"):
    """AOL-rescaled kernel, operator norm <= 1 (module docstring).

    ``side="input"``: ``A diag(d)``, ``d = schur_scales(gram_abs_sums(K)) ** -1/2`` scales
    the input channels; ``side="output"``: ``diag(d) A`` with ``d`` from ``A A^T`` (the same
    bound applied to ``A^T``: `gram_abs_sums` of `swap_channels` ``(K)``) scales the output
    channels; ``"auto"``: `resolve_side`.
    """
    side = resolve_side(side, kernel.shape)
    source = kernel if side == "input" else swap_channels(kernel)
    d = ops.rsqrt(schur_scales(gram_abs_sums(source)))
    shape = [1] * len(kernel.shape)
    shape[-2 if side == "input" else -1] = -1
    return kernel * ops.reshape(d, shape)


def check_side(side) -> str:
    """Validate ``rescaling_side``; raise `ValueError` naming it."""
    if not isinstance(side, str) or side not in AOL_SIDES:
        raise ValueError(f"rescaling_side must be one of {AOL_SIDES}, received: {side!r}")
    return side


class _AOLKernel(ConstrainedKernel):
    """AOL rescaling as the normalisation of a `ConstrainedKernel`."""

    def _normalize(self, kernel, state):
        w_hat = aol_rescale(kernel, self.rescaling_side)
        return w_hat * ops.cast(self._coef(), kernel.dtype), {}

    def _condensed_raw_kernel(self, raw, w_bar):
        """The raw kernel `condense()` writes: ``raw`` rescaled to the norm of ``w_bar / k``
        (graph-safe), so the raw kernel sits at the constrained scale (under Adam the raw
        scale sets the effective step size).

        AOL is invariant to the raw kernel's scale (``d(c K) = d(K) / c``) but not
        idempotent: replacing the raw kernel by the rescaled one would change the
        function, multiplying it by ``||K_hat||_F / (k ||K||_F)`` does not.
        """
        raw_norm = ops.sqrt(ops.sum(ops.square(raw)))
        bar_norm = ops.sqrt(ops.sum(ops.square(w_bar))) / ops.cast(self._get_coef(), w_bar.dtype)
        positive = ops.logical_and(raw_norm > 0, bar_norm > 0)
        scale = ops.where(positive, bar_norm / ops.maximum(raw_norm, _MIN_ROW_SUM), 1.0)
        return raw * ops.cast(scale, raw.dtype)


@keras.saving.register_keras_serializable("deel_lip")
class AOLDense(DenseKernel, _AOLKernel, keras.layers.Dense):
    """Dense layer with an AOL-rescaled kernel, ``k_coef_lip``-Lipschitz.

    Input side: ``W_hat = k_coef_lip * diag(d) W`` for the Keras kernel ``W``
    (``n_in x n_out``, the operator is ``W^T``), ``d_i = (sum_j |W W^T|_ij)^(-1/2)``; output
    side: ``W_hat = k_coef_lip * W diag(d)``, ``d_j = (sum_i |W^T W|_ji)^(-1/2)``. Either way
    ``||W_hat||_2 <= k_coef_lip`` for any ``W`` (module docstring), with equality when
    ``W`` is orthogonal (``W W^T = I`` or ``W^T W = I``, e.g. the default orthogonal
    initialiser with ``rescaling_side="auto"``).
    Cheaper than Bjorck (one Gram matrix of the smaller side, no iteration); not orthogonal
    after training in general (docs/guide/layer_families.md measures how much of its
    budget it uses).

    Args:
        units: number of output units.
        kernel_initializer: default "orthogonal" (exact for ``rescaling_side="auto"``).
        k_coef_lip: Lipschitz constant of the layer (> 0).
        rescaling_side: "input", "output", or "auto" (default: the side with fewer units).
        **kwargs: every other argument (``activation``, ``use_bias``, initializers,
            regularizers, constraints, ...) as in `keras.layers.Dense` (``lora_rank`` and
            quantization are refused).

    Input shape:
        ``(batch, ..., input_dim)``.

    Output shape:
        ``(batch, ..., units)``.

    Reference:
        Prach, Lampert, "Almost-orthogonal layers for efficient general-purpose Lipschitz
        networks", ECCV 2022.
    """

    def __init__(
        self,
        units,
        kernel_initializer="orthogonal",
        k_coef_lip=1.0,
        rescaling_side="auto",
        **kwargs,
    ):
        keras.layers.Dense.__init__(self, units, kernel_initializer=kernel_initializer, **kwargs)
        self._init_constraint(k_coef_lip=k_coef_lip, rescaling_side=check_side(rescaling_side))


@keras.saving.register_keras_serializable("deel_lip")
class AOLConv2D(_AOLKernel, PadConv2D):
    """2D convolution with an AOL-rescaled kernel, ``k_coef_lip``-Lipschitz for every
    input size.

    ``K_hat[..., i, :] = k_coef_lip * K[..., i, :] / sqrt(s_i)`` with
    ``s_i = sum_{delta, j} |sum_{u, c} K[u, i, c] K[u + delta, j, c]|`` (the kernel's
    cross-correlation with itself, over every spatial offset and input channel), or the
    same on the output channels with ``c_in`` and ``c_out`` swapped (``rescaling_side``):
    the zero-padded or circular convolution has operator norm <= ``k_coef_lip`` at every
    input size and stride (module docstring).

    Args:
        filters: as in `keras.layers.Conv2D` (likewise ``kernel_size``, ``strides`` and,
            through ``**kwargs``, ``data_format``, ``activation``, ``use_bias``,
            initializers, regularizers and constraints).
        padding: "same", "valid", "constant" (zero padding by ``((k - 1) // 2, k // 2)``)
            or "circular"; reflect/symmetric copy pixels and are refused.
        dilation_rate: must be 1.
        k_coef_lip: Lipschitz constant of the layer (> 0).
        rescaling_side: "input", "output", or "auto" (default: the side with fewer
            channels).
        kernel_initializer: default "centered_orthogonal" (`CenteredOrthogonal`: the
            layer starts as an isometry at its full constant), or any Keras initializer.

    Input shape:
        4D tensor ``(batch, rows, cols, channels)`` (channels_last).

    Output shape:
        4D tensor ``(batch, new_rows, new_cols, filters)``.

    Raises:
        ValueError: for another padding, a dilation or groups other than 1, or a kernel
            smaller than the stride on an axis (it would skip pixels; TensorFlow's oneDNN
            CPU kernels also crash when training it).
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
        kernel_initializer="centered_orthogonal",
        k_coef_lip=1.0,
        rescaling_side="auto",
        **kwargs,
    ):
        name = type(self).__name__
        if not isinstance(padding, str) or padding.lower() not in AOL_PADDINGS:
            raise ValueError(f"{name} padding must be one of {AOL_PADDINGS}, received: {padding!r}")
        if kernel_initializer == "centered_orthogonal":
            kernel_initializer = CenteredOrthogonal()
        PadConv2D.__init__(
            self,
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            kernel_initializer=kernel_initializer,
            **kwargs,
        )
        check_unit_dilation_and_groups(self)
        if any(k < s for k, s in zip(self.kernel_size, self.strides)):
            raise ValueError(
                f"{name} needs kernel_size >= strides on every axis, received "
                f"kernel_size={self.kernel_size} and strides={self.strides}"
            )
        self._init_constraint(k_coef_lip=k_coef_lip, rescaling_side=check_side(rescaling_side))

    def _linear(self, inputs, kernel):
        return self.convolution_op(inputs, kernel)

    def _export_class(self):
        return PadConv2D._export_class(self)
