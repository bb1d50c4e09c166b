"""deel_lip: 1-Lipschitz neural networks for Keras 3, certifiable and explainable.

Submodules: `normalizers` (math), `layers`, `model` (`Sequential`, `Model`,
`vanilla_export`), `constraints`, `initializers`, `regularizers`, `callbacks`, `utils`,
`datasets` (offline example data).
"""

__version__ = "0.1.0"
