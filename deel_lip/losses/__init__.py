"""Losses for 1-Lipschitz networks (deel-lip names and arguments).

* Optimal-transport losses (`kr`): `KR`, `HKR`, `HingeMargin`, `MulticlassKR`,
  `MulticlassHinge`, `MulticlassHKR`; their KR term uses batch-level class means, exact
  under ``tf.distribute`` strategies.
* Multiclass hKR weighting the competing classes (`soft`): `MulticlassSoftHKR`, `LseHKR`.
* Margin losses (`margin`): `MultiMargin`, `CategoricalHinge`.
* Cross-entropies with a temperature (`crossentropy`): `TauCategoricalCrossentropy`,
  `TauSparseCategoricalCrossentropy`, `TauBinaryCrossentropy`.

All are `keras.losses.Loss` subclasses returning one value per sample, so every Keras
reduction and ``sample_weight`` apply. Hyper-parameters (``alpha``, ``min_margin``,
``tau``, ``temperature``, ``alpha_mean``, ``penalty``) are non-trainable
``keras.Variable`` s: ``loss.alpha = 0.5`` or `deel_lip.callbacks.LossParamScheduler`
changes them inside a compiled ``fit``.

Semantics are deel-lip's by default: ``HKR`` / ``MulticlassHKR`` are
``-KR + alpha * hinge`` (``alpha >= 0``, ``inf`` = hinge only, default 10 for the
multiclass ones), ``MulticlassSoftHKR`` is ``KR / alpha + hinge``; ``convex=True``
selects ``(1 - alpha) * KR + alpha * hinge`` with ``alpha`` in ``[0, 1]`` (the convention
of deel_lip < 2 and deel-torchlip; ``LseHKR`` always uses it). Hinges use ``min_margin / 2``
on each side of the boundary, as deel-lip. ``multi_gpu=`` is accepted (not needed: the
KR term is exact under ``tf.distribute``), and `process_labels_for_multi_gpu` gives
deel-lip's pre-processed labels, which the losses read by their sign.

Labels are validated: eagerly a ValueError, inside a traced ``fit`` (no value known,
no host round trip) NaN values on the invalid rows. NaN predictions give NaN values
(nothing is raised): keep ``keras.callbacks.TerminateOnNaN`` in long trainings.
"""

from deel_lip.losses._base import process_labels_for_multi_gpu
from deel_lip.losses.crossentropy import (
    TauBinaryCrossentropy,
    TauCategoricalCrossentropy,
    TauSparseCategoricalCrossentropy,
)
from deel_lip.losses.kr import HKR, KR, HingeMargin, MulticlassHinge, MulticlassHKR, MulticlassKR
from deel_lip.losses.margin import CategoricalHinge, MultiMargin
from deel_lip.losses.soft import LseHKR, MulticlassSoftHKR

__all__ = [
    "KR",
    "HKR",
    "HingeMargin",
    "MulticlassKR",
    "MulticlassHinge",
    "MulticlassHKR",
    "MulticlassSoftHKR",
    "LseHKR",
    "MultiMargin",
    "CategoricalHinge",
    "TauCategoricalCrossentropy",
    "TauSparseCategoricalCrossentropy",
    "TauBinaryCrossentropy",
    "process_labels_for_multi_gpu",
]
