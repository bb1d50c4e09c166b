"""Explainability for deel_lip models with Xplique (needs the ``xai`` extra).

Importing this package without Xplique raises an `ImportError` with the install command
(``pip install "keras-lipschitz[xai]"``); the rest of deel_lip never imports Xplique.

* `logits_model`, `last_conv_layer`, `targets_from_labels`: Xplique-ready views of any
  Keras / deel_lip model (`deel_lip.xai.models`) and one-hot targets from labels
  (`deel_lip.xai.targets`);
* `explainer`: an Xplique attribution method built on that view, Xplique's quirks
  handled (`deel_lip.xai.explain`);
* `evaluate_attributions`, `seeded`: the method x metric table of Xplique metrics
  (`deel_lip.xai.evaluate`);
* `XpliqueMetricsCallback`, `AttributionSnapshotCallback`: Xplique metrics and
  attribution images during training (`deel_lip.xai.callbacks`);
* `transport_counterfactual`, `boundary_point`, `CounterfactualResult`: optimal-transport
  counterfactuals along the input gradient (`deel_lip.xai.counterfactuals`);
* `BIG`, `BSM`, `BoundaryAttributions`, `find_boundary`: boundary attributions from the
  closest decision-boundary point (`deel_lip.xai.boundary`);
* `adversarial_alignment`, `stroke_proxy`: alignment of minimal adversarial perturbations
  with reference maps (`deel_lip.xai.alignment`);
* `plot_explanations`, `plot_attributions`, `plot_counterfactuals`, `plot_metric_table`:
  figures of inputs, attributions, counterfactuals and scores (`deel_lip.xai.plots`);
* `feature_visualization`, `feature_visualizations`, `plot_feature_visualizations`:
  MACO / Fourier feature visualisation with a check of the result (`deel_lip.xai.features`);
* `split_model`, `LipschitzCraft`, `concept_fidelity`: CRAFT concepts, with an exact
  positive/negative lift for signed activations (`deel_lip.xai.concepts`);
* `LipschitzLayerRandomization`, `lipschitz_bounds`, `randomization_strategy`: model
  randomisation sanity checks that keep the layers' bounds (`deel_lip.xai.randomization`).
"""

from deel_lip.xai._xplique import ATTRIBUTION_METHODS, METRICS, require_xplique

require_xplique()

from deel_lip.xai.alignment import (  # noqa: E402
    AlignmentResult,
    adversarial_alignment,
    stroke_proxy,
)
from deel_lip.xai.boundary import (  # noqa: E402
    BIG,
    BSM,
    BoundaryAttributions,
    BoundaryResult,
    find_boundary,
)
from deel_lip.xai.callbacks import AttributionSnapshotCallback, XpliqueMetricsCallback  # noqa: E402
from deel_lip.xai.concepts import (  # noqa: E402
    LipschitzCraft,
    ModelSplit,
    concept_fidelity,
    split_model,
)
from deel_lip.xai.counterfactuals import (  # noqa: E402
    CounterfactualResult,
    boundary_point,
    transport_counterfactual,
)
from deel_lip.xai.evaluate import evaluate_attributions, seeded  # noqa: E402
from deel_lip.xai.explain import IMAGE_METHODS, explainer  # noqa: E402
from deel_lip.xai.features import (  # noqa: E402
    FeatureVisualization,
    feature_visualization,
    feature_visualizations,
    plot_feature_visualizations,
)
from deel_lip.xai.models import last_conv_layer, logits_model  # noqa: E402
from deel_lip.xai.plots import (  # noqa: E402
    plot_attributions,
    plot_counterfactuals,
    plot_explanations,
    plot_metric_table,
)
from deel_lip.xai.randomization import (  # noqa: E402
    LipschitzLayerRandomization,
    lipschitz_bounds,
    randomization_strategy,
)
from deel_lip.xai.targets import targets_from_labels  # noqa: E402

__all__ = [
    "ATTRIBUTION_METHODS",
    "METRICS",
    "IMAGE_METHODS",
    "logits_model",
    "targets_from_labels",
    "last_conv_layer",
    "explainer",
    "evaluate_attributions",
    "seeded",
    "XpliqueMetricsCallback",
    "AttributionSnapshotCallback",
    "CounterfactualResult",
    "transport_counterfactual",
    "boundary_point",
    "BIG",
    "BSM",
    "BoundaryAttributions",
    "BoundaryResult",
    "find_boundary",
    "AlignmentResult",
    "adversarial_alignment",
    "stroke_proxy",
    "plot_explanations",
    "plot_attributions",
    "plot_counterfactuals",
    "plot_metric_table",
    "FeatureVisualization",
    "feature_visualization",
    "feature_visualizations",
    "plot_feature_visualizations",
    "ModelSplit",
    "split_model",
    "LipschitzCraft",
    "concept_fidelity",
    "LipschitzLayerRandomization",
    "lipschitz_bounds",
    "randomization_strategy",
]
