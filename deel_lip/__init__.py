"""deel_lip: 1-Lipschitz neural networks for Keras 3, certifiable and explainable.

Submodules: `normalizers` (math), `layers`, `model` (`Sequential`, `Model`,
`vanilla_export`), `losses`, `metrics`, `constraints`, `initializers`, `regularizers`,
`callbacks`, `utils` (exact singular values), `robustness` (certificates and attacks),
`datasets` (offline example data).
"""

__version__ = "0.1.0"
