"""deel-lip's ``deel.lip.compute_layer_sv`` module name: exact singular values.

`compute_layer_sv` is `deel_lip.utils.compute_layer_sv` (same ``(layer,
supplementary_type2sv)`` call, plus an optional ``input_shape``). `compute_model_sv`
returns deel-lip's format, a list of ``(layer name, (min_sv, max_sv))``; the dict of
`deel_lip.utils.compute_model_sv` is the preferred form.
"""

from __future__ import annotations

from deel_lip.utils import compute_layer_sv
from deel_lip.utils import compute_model_sv as _compute_model_sv_dict

__all__ = ["compute_layer_sv", "compute_model_sv"]


def compute_model_sv(model, supplementary_type2sv=None) -> list:
    """``[(layer name, (min_sv, max_sv)), ...]`` of every layer, in layer order.

    The same values as `deel_lip.utils.compute_model_sv` (nested layers named
    ``"nested/layer"``), as the list of pairs deel-lip returned.
    """
    return list(_compute_model_sv_dict(model, supplementary_type2sv).items())
