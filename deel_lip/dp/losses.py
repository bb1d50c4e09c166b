"""Lipschitz constants of the losses with respect to the logits, for clipless DP-SGD.

For a per-sample loss ``l(f, y)`` of the logits ``f`` (one row of ``y_pred``), the
constant ``L`` below satisfies ``||d l / d f||_2 <= L`` for every logit vector and every
label the training step feeds it (`per_sample_losses` projects the labels on the set the
bound assumes: one-hot rows for the multiclass margins). Derivations, with ``C`` the
number of outputs:

* `TauCategoricalCrossentropy`, `TauSparseCategoricalCrossentropy`: the gradient is
  ``softmax(tau f) - y``, a difference of two points of the probability simplex, whose
  diameter is ``sqrt(2)``: ``L = sqrt(2)`` for every ``tau``.
* `TauBinaryCrossentropy`: ``(1/tau) mean_k softplus(-tau s_k f_k)`` has partial
  derivatives ``-s_k sigmoid(-tau s_k f_k) / C``, each of modulus ``<= 1/C``:
  ``L = 1/sqrt(C)``.
* `HingeMargin` (and `HKR` reduced to its hinge, ``alpha = inf``): partials in
  ``{0, -s_k/C}``: ``L = 1/sqrt(C)``.
* `MulticlassHinge` (and `MulticlassHKR` with ``alpha = inf``), one-hot labels: the true
  class has weight ``(C-1)/C``, the others ``1/C``:
  ``L = sqrt((C-1)^2 + (C-1)) / C = sqrt((C-1)/C)``.
* `MultiMargin`, one-hot: ``a <= C-1`` active wrong classes give partials ``1/C`` each
  and ``-a/C`` on the true class: ``L = sqrt(a + a^2) / C <= sqrt((C-1)/C)``.
* `CategoricalHinge`: gradient ``e_k - e_y`` (or 0): ``L = sqrt(2)``.

Refused: the KR family (`KR`, `MulticlassKR`, `HKR`/`MulticlassHKR` with a KR term,
`MulticlassSoftHKR`, `LseHKR`): their per-sample values are weighted by class counts of
the whole batch (and `MulticlassSoftHKR` keeps a running temperature), so one sample
changes the loss of every other sample and no per-sample bound exists.

Reference: Bethune et al., "DP-SGD without clipping: the Lipschitz neural network way",
ICLR 2024 (section 3 and appendix on the losses' Lipschitz constants).
"""

from __future__ import annotations

import math

from keras import ops

from deel_lip import losses as dl_losses

__all__ = ["loss_lipschitz", "per_sample_losses", "SUPPORTED_LOSSES"]


def _hinge_only(loss) -> bool:
    """True if an HKR loss has no KR term (``alpha = inf``, or 1 with ``convex=True``)."""
    alpha = float(ops.convert_to_numpy(loss.alpha))
    return alpha == 1.0 if loss.convex else math.isinf(alpha)


def _binary(classes: int) -> float:
    return 1.0 / math.sqrt(classes)


def _multiclass_margin(classes: int) -> float:
    return math.sqrt((classes - 1) / classes)


def _sqrt2(classes: int) -> float:
    return math.sqrt(2.0)


#: loss class -> (Lipschitz constant as a function of C, labels projected to one-hot?)
_REGISTRY: dict[type, tuple] = {
    dl_losses.TauCategoricalCrossentropy: (_sqrt2, False),
    dl_losses.TauSparseCategoricalCrossentropy: (_sqrt2, False),
    dl_losses.TauBinaryCrossentropy: (_binary, False),
    dl_losses.HingeMargin: (_binary, False),
    dl_losses.HKR: (_binary, False),
    dl_losses.MulticlassHinge: (_multiclass_margin, True),
    dl_losses.MulticlassHKR: (_multiclass_margin, True),
    dl_losses.MultiMargin: (_multiclass_margin, True),
    dl_losses.CategoricalHinge: (_sqrt2, True),
}

#: Names of the losses clipless DP-SGD accepts.
SUPPORTED_LOSSES = tuple(sorted(cls.__name__ for cls in _REGISTRY))

_COUPLED = (dl_losses.KR, dl_losses.MulticlassSoftHKR, dl_losses.LseHKR)


def _entry(loss):
    if not hasattr(loss, "call") or isinstance(loss, (str, type)):
        raise TypeError(
            f"loss must be a loss instance (one of {', '.join(SUPPORTED_LOSSES)}), "
            f"received: {loss!r}"
        )
    entry = _REGISTRY.get(type(loss))
    if type(loss) in (dl_losses.HKR, dl_losses.MulticlassHKR) and not _hinge_only(loss):
        entry = None
    if entry is None:
        if isinstance(loss, _COUPLED):
            why = (
                "its KR term weights each sample by class counts of the whole batch, so one "
                "sample changes every other sample's loss and no per-sample bound exists "
                "(use the hinge alone: alpha=inf, or a tau-cross-entropy)"
            )
        else:
            why = "its Lipschitz constant with respect to the logits is not registered"
        raise ValueError(
            f"loss {type(loss).__name__} ({getattr(loss, 'name', '')!r}) is not supported "
            f"by clipless DP-SGD: {why}. Supported: {', '.join(SUPPORTED_LOSSES)}."
        )
    return entry


def loss_lipschitz(loss, classes: int) -> float:
    """Bound of ``||d loss_i / d logits_i||_2`` for one sample (see the module docstring).

    Args:
        loss: a `deel_lip.losses` instance listed in `SUPPORTED_LOSSES`.
        classes: number of outputs ``C`` (last axis of ``y_pred``), >= 1.

    Raises:
        TypeError: ``loss`` is not a loss instance.
        ValueError: unsupported loss (named), or ``classes`` not an integer >= 1.
    """
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"classes must be an integer >= 1, received: {classes!r}")
    constant, one_hot = _entry(loss)
    if one_hot and classes < 2:
        raise ValueError(
            f"loss {type(loss).__name__} needs at least 2 outputs, received classes={classes}"
        )
    return constant(classes)


def per_sample_losses(loss, y_true, y_pred):
    """The per-sample values ``l(f_i, y_i)``, ``(batch,)``, on which the bound holds.

    Multiclass margin losses get one-hot labels ``one_hot(argmax(y))``: a data-independent
    projection that makes the constant hold for every input row (a multi-hot row would
    raise the bound). The loss's own reduction and ``sample_weight`` are not used.
    """
    _, one_hot = _entry(loss)
    if one_hot:
        classes = y_pred.shape[-1]
        y_true = ops.one_hot(ops.argmax(y_true, axis=-1), classes, dtype=y_pred.dtype)
    values = loss.call(y_true, y_pred)
    return ops.reshape(values, (-1,))
