"""deel_lip: 1-Lipschitz neural networks for Keras 3, certifiable and explainable.

Submodules, all imported by ``import deel_lip``: `normalizers` (math), `layers`, `model`
(`Sequential`, `Model`, `vanilla_export`), `losses`, `metrics`, `constraints`,
`initializers`, `regularizers`, `callbacks`, `utils` (exact singular values),
`robustness` (certificates and attacks), `datasets` (offline example data), `dp`
(clipless DP-SGD; ``dp-accounting`` is imported on first use), `migration`
(loading deel-lip files, ``deel-lip>X`` registered names), and deel-lip's module names
`activations` and `compute_layer_sv`.

Importing them registers every serialisable class with Keras, so a ``.keras`` file saved
with deel_lip layers, losses, metrics, constraints or callbacks loads in a fresh process
after ``import deel_lip`` alone. `xai` (Xplique, the ``xai`` extra) is imported on first
access (``deel_lip.xai`` or ``import deel_lip.xai``), never by ``import deel_lip``.

The distribution is ``keras-lipschitz`` (``pip install keras-lipschitz``); the import name
is ``deel_lip``.
"""

import importlib

from deel_lip import (
    activations,
    callbacks,
    compute_layer_sv,
    constraints,
    datasets,
    dp,
    initializers,
    layers,
    losses,
    metrics,
    migration,
    model,
    normalizers,
    regularizers,
    robustness,
    utils,
)

__version__ = "0.1.0"

#: Name of the distribution on PyPI (``deel_lip`` / ``deel-lip`` is another project).
DISTRIBUTION = "keras-lipschitz"

_LAZY_SUBMODULES = ("xai",)

__all__ = [
    "DISTRIBUTION",
    "__version__",
    "activations",
    "callbacks",
    "compute_layer_sv",
    "constraints",
    "datasets",
    "dp",
    "initializers",
    "layers",
    "losses",
    "metrics",
    "migration",
    "model",
    "normalizers",
    "regularizers",
    "robustness",
    "utils",
]


def __getattr__(name: str):
    """Import `deel_lip.xai` on first access (it needs Xplique, an optional extra)."""
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"deel_lip.{name}")
    raise AttributeError(f"module 'deel_lip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
