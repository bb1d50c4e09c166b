"""deel-lip's ``deel.lip.activations`` module name: the Lipschitz activation layers.

The classes live in `deel_lip.layers.activations` (also exported by `deel_lip.layers`);
this module re-exports them so ``from deel_lip.activations import GroupSort`` works as
``from deel.lip.activations import GroupSort`` did.
"""

from deel_lip.layers.activations import (
    FullSort,
    GroupSort,
    GroupSort2,
    Householder,
    MaxMin,
    PReLUlip,
)

__all__ = ["FullSort", "GroupSort", "GroupSort2", "Householder", "MaxMin", "PReLUlip"]
