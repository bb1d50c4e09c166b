"""Differentially private training without gradient clipping (clipless DP-SGD).

For a network of Lipschitz layers the per-sample gradient of every layer's parameters
has an analytic bound, so DP-SGD needs no per-sample gradients and no clipping: one
batch gradient plus Gaussian noise scaled to the bound (Bethune et al., "DP-SGD without
clipping: the Lipschitz neural network way", ICLR 2024).

* `make_private`: the trainable private twin of a deel_lip model (`PrivateSequential`).
* `private_batches`: Poisson or fixed-size batches as the accountant assumes them.
* `compute_epsilon`, `noise_multiplier_for`, `max_epochs`, `PrivacyBudgetCallback`:
  accounting with ``dp-accounting`` (the ``dp`` extra, imported on first use).
* `describe_layer`, `gradient_bounds`, `loss_lipschitz`: the bounds.

See ``docs/guide/privacy.md`` for the derivations.
"""

from deel_lip.dp.accounting import (
    DP_EXTRA_HINT,
    PrivacyBudgetCallback,
    compute_epsilon,
    dp_sgd_event,
    make_accountant,
    max_epochs,
    max_steps,
    noise_multiplier_for,
    steps_for_epochs,
)
from deel_lip.dp.bounds import LayerBound, UnsupportedLayerError, describe_layer, gradient_bounds
from deel_lip.dp.data import load_full_mnist, private_batches
from deel_lip.dp.layers import ClipNorm, KernelProjection
from deel_lip.dp.losses import SUPPORTED_LOSSES, loss_lipschitz, per_sample_losses
from deel_lip.dp.model import NOISE_MODES, SAMPLINGS, PrivateSequential, make_private

__all__ = [
    "DP_EXTRA_HINT",
    "NOISE_MODES",
    "SAMPLINGS",
    "SUPPORTED_LOSSES",
    "ClipNorm",
    "KernelProjection",
    "LayerBound",
    "PrivacyBudgetCallback",
    "PrivateSequential",
    "UnsupportedLayerError",
    "compute_epsilon",
    "describe_layer",
    "dp_sgd_event",
    "gradient_bounds",
    "load_full_mnist",
    "loss_lipschitz",
    "make_accountant",
    "make_private",
    "max_epochs",
    "max_steps",
    "noise_multiplier_for",
    "per_sample_losses",
    "private_batches",
    "steps_for_epochs",
]
