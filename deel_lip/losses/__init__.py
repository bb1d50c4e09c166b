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
changes them inside a compiled ``fit``. HKR-type losses weight their terms as
``(1 - alpha) * KR + alpha * hinge`` with ``alpha`` in ``[0, 1]`` (deel-lip >= 1.5);
``alpha > 1`` (older convention ``KR + alpha * hinge``) is converted with a warning.
"""

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
]
