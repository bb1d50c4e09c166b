"""The one place where `deel_lip.xai` imports Xplique (the ``xai`` extra).

Every module of `deel_lip.xai` reaches Xplique through `require_xplique`, at call time,
so the rest of deel_lip never imports it and a missing extra gives one clear message.
`attribution_class` and `metric_class` turn a name (or an Xplique class) into the Xplique
class, with an error listing the valid names.
"""

from __future__ import annotations

import importlib

__all__ = [
    "INSTALL_HINT",
    "ATTRIBUTION_METHODS",
    "BOUNDARY_METHODS",
    "XPLIQUE_METHODS",
    "METRICS",
    "require_xplique",
    "require_matplotlib",
    "attribution_class",
    "metric_class",
]

INSTALL_HINT = 'pip install "keras-lipschitz[xai]"'

#: Xplique attribution methods supported by `deel_lip.xai.explainer`.
XPLIQUE_METHODS = (
    "Saliency",
    "GradientInput",
    "IntegratedGradients",
    "SmoothGrad",
    "VarGrad",
    "SquareGrad",
    "GuidedBackprop",
    "DeconvNet",
    "GradCAM",
    "GradCAMPP",
    "FEM",
    "Occlusion",
    "Rise",
    "Lime",
    "KernelShap",
    "SobolAttributionMethod",
    "HsicAttributionMethod",
)
#: deel_lip's own attribution methods (`deel_lip.xai.boundary`), Xplique explainers too.
BOUNDARY_METHODS = ("BIG", "BSM")
#: Every attribution method `deel_lip.xai.explainer` and `evaluate_attributions` accept.
ATTRIBUTION_METHODS = XPLIQUE_METHODS + BOUNDARY_METHODS

#: Metrics grouped by how they are called: on (inputs, targets) and explanations; on the
#: explanations alone; on an attribution method (randomisation checks).
EXPLANATION_METRICS = (
    "Deletion",
    "Insertion",
    "MuFidelity",
    "AverageDropMetric",
    "AverageIncreaseMetric",
    "AverageGainMetric",
)
COMPLEXITY_METRICS = ("Sparseness", "Complexity")
RANDOMIZATION_METRICS = ("RandomLogitMetric", "ModelRandomizationMetric")

#: Xplique metrics supported by `deel_lip.xai.evaluate_attributions` (``ReCo`` is the
#: second value of Xplique's ``MeGe`` metric).
METRICS = (
    EXPLANATION_METRICS
    + ("AverageStability", "MeGe", "ReCo")
    + COMPLEXITY_METRICS
    + RANDOMIZATION_METRICS
)


def require_xplique():
    """Import and return the ``xplique`` package (``xplique.metrics`` imported too).

    Raises:
        ImportError: if Xplique is not installed, with the command that installs it.
    """
    try:
        xplique = importlib.import_module("xplique")
        importlib.import_module("xplique.metrics")  # not imported by xplique/__init__
    except ImportError as error:
        raise ImportError(
            f"deel_lip.xai needs Xplique (the 'xai' extra): {INSTALL_HINT}"
        ) from error
    return xplique


def require_matplotlib():
    """Import and return ``matplotlib`` (part of the ``xai`` extra).

    Raises:
        ImportError: if matplotlib is not installed, with the install command.
    """
    try:
        return importlib.import_module("matplotlib")
    except ImportError as error:
        raise ImportError(
            f"Attribution snapshots need matplotlib (the 'xai' extra): {INSTALL_HINT}"
        ) from error


def _named_class(name_or_class, names: tuple[str, ...], module: str, argument: str) -> type:
    xplique_module = importlib.import_module(f"xplique.{module}")
    if isinstance(name_or_class, type):
        for name in names:
            if issubclass(name_or_class, getattr(xplique_module, name)):
                return name_or_class
        raise TypeError(
            f"{argument} must be an Xplique class among {', '.join(names)} (or a subclass), "
            f"received: {name_or_class.__name__}"
        )
    if not isinstance(name_or_class, str):
        raise TypeError(
            f"{argument} must be a class name (str) or an Xplique class, "
            f"received: {name_or_class!r}"
        )
    lowered = {name.lower(): name for name in names}
    name = lowered.get(name_or_class.lower())
    if name is None:
        raise ValueError(
            f"{argument} must be one of {', '.join(names)}, received: {name_or_class!r}"
        )
    return getattr(xplique_module, name)


def attribution_class(method) -> type:
    """The attribution class for a name of `ATTRIBUTION_METHODS` (any case): Xplique's, or
    deel_lip's boundary attributions ``"BIG"`` / ``"BSM"``.

    Args:
        method: a name such as ``"Saliency"`` or ``"smoothgrad"``, or an Xplique attribution
            class (or a subclass of one), returned unchanged.

    Raises:
        ValueError: if the name is unknown (the message lists the valid names).
        TypeError: if ``method`` is neither a str nor a supported Xplique class.
    """
    require_xplique()
    from deel_lip.xai import boundary  # deel_lip's own methods, built on Xplique's base

    if isinstance(method, str) and method.upper() in BOUNDARY_METHODS:
        return getattr(boundary, method.upper())
    if isinstance(method, type):
        if issubclass(method, boundary.BoundaryAttributions):
            return method
        return _named_class(method, XPLIQUE_METHODS, "attributions", "method")
    return _named_class(method, ATTRIBUTION_METHODS, "attributions", "method")


def metric_class(metric) -> type:
    """The Xplique metric class for a name of `METRICS` (``"ReCo"`` gives ``MeGe``).

    Raises:
        ValueError: if the name is unknown (the message lists the valid names).
        TypeError: if ``metric`` is neither a str nor a supported Xplique class.
    """
    require_xplique()
    if isinstance(metric, str) and metric.lower() == "reco":
        metric = "MeGe"
    names = tuple(name for name in METRICS if name != "ReCo")
    return _named_class(metric, names, "metrics", "metric")
