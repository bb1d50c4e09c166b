"""deel-lip's ``deel.lip.layers.unconstrained`` module name.

`PadConv2D` (a `keras.layers.Conv2D` with "constant", "reflect", "symmetric" and
"circular" paddings, not Lipschitz-constrained) lives in `deel_lip.layers.convolutional`
and is exported by `deel_lip.layers`; this module re-exports it.
"""

from deel_lip.layers.convolutional import PadConv2D

__all__ = ["PadConv2D"]
