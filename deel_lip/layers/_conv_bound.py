"""How a constrained convolution turns its normalised kernel into a k-Lipschitz one.

``conv_bound="frequency"`` (default): ``K_bar = k * W / bound(W)`` with ``W`` the kernel the
normalisation returns (Bjorck-orthogonal, spectral- or Frobenius-normalised) and
``bound`` the frequency-domain bound of the convolution's operator norm, sound for every
input size (`deel_lip.normalizers_freq.conv_frequency_bound`). Reflect / symmetric padding
copies border pixels (the padding map has norm > 1): ``bound = min(||pad|| * frequency
bound, coverage factor * ||W||_2)``, both sound; the minimum with the coverage bound is
taken for every padding (it is exact for "wide" orthogonal kernels, whose spectrum is flat).

``conv_bound="coverage"``: ``K_bar = k / factor * W`` with the coverage factor of the
padding mode and strides (`deel_lip.normalizers.conv_lipschitz_factor`), looser.

Saved configs without the key (older files, deel-lip's) load with "coverage": the layer
then computes exactly the kernel it computed when it was saved.
"""

from __future__ import annotations

from keras import ops

from deel_lip.layers.pad_conv import check_unit_dilation_and_groups
from deel_lip.normalizers import conv_lipschitz_factor
from deel_lip.normalizers_conv import padding_operator_norm
from deel_lip.normalizers_freq import conv_frequency_bound

__all__ = [
    "spectral_conv_init",
    "CONV_BOUNDS",
    "ConvBound",
    "check_conv_bound",
    "conv_frequency_bound_with_padding",
]

CONV_BOUNDS = ("frequency", "coverage")


def check_conv_bound(conv_bound) -> str:
    """Validate ``conv_bound``; raise `ValueError` naming it."""
    if not isinstance(conv_bound, str) or conv_bound not in CONV_BOUNDS:
        raise ValueError(f"conv_bound must be one of {CONV_BOUNDS}, received: {conv_bound!r}")
    return conv_bound


def spectral_conv_init(layer, lipschitz_args, conv_bound) -> None:
    """Checks and Lipschitz arguments of a Bjorck-normalised convolution."""
    check_unit_dilation_and_groups(layer)
    layer._init_spectral(**lipschitz_args)
    layer._init_conv_bound(conv_bound)


class ConvBound:
    """Mixin listed before the normalisation class (`SpectralKernel`, ...) of a conv.

    The host declares `_coverage_factor()` and `_frequency_bound(kernel)`.
    """

    def _init_conv_bound(self, conv_bound: str) -> None:
        self.conv_bound = check_conv_bound(conv_bound)
        self._lipschitz_args["conv_bound"] = self.conv_bound

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.setdefault("conv_bound", "coverage")  # files saved before the key existed
        return super().from_config(config)

    def _coverage_factor(self) -> float:
        raise NotImplementedError

    def _frequency_bound(self, kernel):
        """Certified bound of the operator norm of the convolution with ``kernel``."""
        raise NotImplementedError

    def _lipschitz_factor(self) -> float:
        return 1.0 if self.conv_bound == "frequency" else self._coverage_factor()

    def _normalize(self, kernel, state):
        w_bar, new_state = super()._normalize(kernel, state)
        if self.conv_bound == "frequency":
            w_bar = w_bar * (self._get_coef() / self._frequency_bound(w_bar))
        return w_bar, new_state


def conv_frequency_bound_with_padding(kernel, kernel_size, strides, padding, k_coef):
    """``min(||pad|| * frequency bound, coverage factor * k)`` for a kernel whose matrix
    has norm <= ``k``: both are sound. The coverage factor is exact for an orthogonal
    kernel with at least as many outputs as rows (``kh kw c_in <= c_out``: flat spectrum,
    ``T(w) T(w)^H = kh kw I``), which the frequency grid only approaches; the padding
    norm is 1 except for reflect / symmetric padding."""
    bound = conv_frequency_bound(kernel, strides, padding) * padding_operator_norm(
        kernel_size, padding
    )
    coverage = conv_lipschitz_factor(kernel_size, strides, padding) * k_coef
    return ops.minimum(bound, ops.cast(coverage, bound.dtype))
