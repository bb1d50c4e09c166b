"""Inventory of deel-lip's public API (Keras 3 branch), as data for the compat test.

Compiled from deel-lip's sources and documentation (modules ``deel.lip.*``): for every
public name, the deel_lip module that must provide it under the same name, and the
arguments deel-lip documents for it. ``pending`` names the work another part of the
project is doing for an entry (the compat test marks it xfail until then).

Each entry is ``Api(module, name, kind, kwargs, args, input_shape, pending)``:

* ``kind`` is "layer" (constructed with ``args``/``kwargs``, then called on a random
  input of ``input_shape``), "class" (constructed), "function" (called with ``args``
  built by the test from the ``call`` key) or "constant" / "module" (looked up);
* ``module`` is the deel_lip module path (``deel.lip.X`` -> ``deel_lip.X``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: deel-lip's documented defaults that the inventory refers to.
DEEL_LIP_DEFAULTS = {
    "eps_spectral": 1e-3,
    "eps_bjorck": 1e-3,
    "beta_bjorck": 0.5,
    "maxiter_spectral": 10,
    "maxiter_bjorck": 15,
}

_SPECTRAL = dict(DEEL_LIP_DEFAULTS)


@dataclass(frozen=True)
class Api:
    module: str
    name: str
    kind: str
    kwargs: dict = field(default_factory=dict)
    args: tuple = ()
    input_shape: tuple | None = None
    pending: str | None = None

    @property
    def id(self) -> str:
        return f"{self.module.removeprefix('deel_lip.')}.{self.name}"


L = "deel_lip.layers"
API: list[Api] = [
    # ------------------------------------------------------------------ layers
    Api(
        L,
        "SpectralDense",
        "layer",
        dict(
            units=4,
            activation=None,
            use_bias=True,
            kernel_initializer="orthogonal",
            bias_initializer="zeros",
            kernel_regularizer=None,
            bias_regularizer=None,
            activity_regularizer=None,
            kernel_constraint=None,
            bias_constraint=None,
            k_coef_lip=1.0,
            **_SPECTRAL,
        ),
        input_shape=(6,),
    ),
    Api(
        L,
        "FrobeniusDense",
        "layer",
        dict(units=1, disjoint_neurons=True, k_coef_lip=1.0),
        input_shape=(6,),
    ),
    Api(
        L,
        "SpectralConv2D",
        "layer",
        dict(
            filters=3,
            kernel_size=(3, 3),
            strides=(1, 1),
            padding="same",
            data_format="channels_last",
            dilation_rate=(1, 1),
            activation=None,
            use_bias=True,
            kernel_initializer="orthogonal",
            bias_initializer="zeros",
            k_coef_lip=1.0,
            **_SPECTRAL,
        ),
        input_shape=(6, 6, 2),
    ),
    Api(
        L,
        "FrobeniusConv2D",
        "layer",
        dict(filters=3, kernel_size=(3, 3), strides=(1, 1), padding="same", k_coef_lip=1.0),
        input_shape=(6, 6, 2),
    ),
    Api(
        L,
        "SpectralConv2DTranspose",
        "layer",
        dict(
            filters=3,
            kernel_size=(3, 3),
            strides=(1, 1),
            padding="same",
            output_padding=None,
            data_format="channels_last",
            dilation_rate=(1, 1),
            k_coef_lip=1.0,
            **_SPECTRAL,
        ),
        input_shape=(6, 6, 2),
    ),
    Api(
        L,
        "SpectralDepthwiseConv2D",
        "layer",
        dict(
            kernel_size=(3, 3),
            strides=(1, 1),
            padding="same",
            depth_multiplier=1,
            k_coef_lip=1.0,
            filterwise_normalisation=True,
            eps_spectral=1e-3,
            maxiter_spectral=10,
        ),
        input_shape=(6, 6, 2),
    ),
    Api(
        L,
        "GroupSort",
        "layer",
        dict(n=2, data_format="channels_last", k_coef_lip=1.0),
        input_shape=(4,),
    ),
    Api(L, "GroupSort2", "layer", dict(k_coef_lip=1.0), input_shape=(4,)),
    Api(L, "FullSort", "layer", dict(k_coef_lip=1.0), input_shape=(4,)),
    Api(L, "MaxMin", "layer", dict(data_format="channels_last", k_coef_lip=1.0), input_shape=(4,)),
    Api(
        L,
        "Householder",
        "layer",
        dict(data_format="channels_last", k_coef_lip=1.0, theta_initializer=None),
        input_shape=(4,),
    ),
    Api(L, "PReLUlip", "layer", dict(k_coef_lip=1.0), input_shape=(4,)),
    Api(
        L,
        "ScaledAveragePooling2D",
        "layer",
        dict(
            pool_size=(2, 2),
            strides=None,
            padding="valid",
            data_format="channels_last",
            k_coef_lip=1.0,
        ),
        input_shape=(4, 4, 2),
    ),
    Api(
        L,
        "ScaledL2NormPooling2D",
        "layer",
        dict(
            pool_size=(2, 2),
            strides=None,
            padding="valid",
            data_format="channels_last",
            k_coef_lip=1.0,
            eps_grad_sqrt=1e-6,
        ),
        input_shape=(4, 4, 2),
    ),
    Api(
        L,
        "ScaledGlobalAveragePooling2D",
        "layer",
        dict(data_format="channels_last", k_coef_lip=1.0),
        input_shape=(4, 4, 2),
    ),
    Api(
        L,
        "ScaledGlobalL2NormPooling2D",
        "layer",
        dict(data_format="channels_last", k_coef_lip=1.0, eps_grad_sqrt=1e-6),
        input_shape=(4, 4, 2),
    ),
    Api(
        L,
        "InvertibleDownSampling",
        "layer",
        dict(pool_size=(2, 2), data_format="channels_last"),
        input_shape=(4, 4, 2),
    ),
    Api(
        L,
        "InvertibleUpSampling",
        "layer",
        dict(pool_size=(2, 2), data_format="channels_last"),
        input_shape=(4, 4, 8),
    ),
    Api(L, "LipschitzLayer", "constant"),
    Api(L, "Condensable", "constant"),
    Api(
        f"{L}.unconstrained",
        "PadConv2D",
        "layer",
        dict(filters=3, kernel_size=(3, 3), padding="circular"),
        input_shape=(6, 6, 2),
    ),
    # ------------------------------------------------------------------ activations
    *[
        Api("deel_lip.activations", name, "constant")
        for name in ("GroupSort", "GroupSort2", "FullSort", "MaxMin", "Householder", "PReLUlip")
    ],
    # ------------------------------------------------------------------ model
    Api("deel_lip.model", "Sequential", "class", dict(layers=None, name="seq", k_coef_lip=1.0)),
    Api("deel_lip.model", "Model", "constant"),
    Api("deel_lip.model", "vanillaModel", "function"),
    # ------------------------------------------------------------------ losses
    Api("deel_lip.losses", "KR", "class", dict(multi_gpu=False, name="KR")),
    Api("deel_lip.losses", "HingeMargin", "class", dict(min_margin=1.0, name="HingeMargin")),
    Api(
        "deel_lip.losses",
        "HKR",
        "class",
        dict(alpha=10.0, min_margin=1.0, multi_gpu=False, name="HKR"),
    ),
    Api(
        "deel_lip.losses",
        "MulticlassKR",
        "class",
        dict(multi_gpu=False, name="MulticlassKR"),
    ),
    Api(
        "deel_lip.losses", "MulticlassHinge", "class", dict(min_margin=1.0, name="MulticlassHinge")
    ),
    Api(
        "deel_lip.losses",
        "MulticlassHKR",
        "class",
        dict(alpha=10.0, min_margin=1.0, multi_gpu=False, name="MulticlassHKR"),
    ),
    Api("deel_lip.losses", "MultiMargin", "class", dict(min_margin=1.0, name="MultiMargin")),
    Api(
        "deel_lip.losses",
        "CategoricalHinge",
        "class",
        dict(min_margin=1.0, name="CategoricalHinge"),
    ),
    Api("deel_lip.losses", "TauCategoricalCrossentropy", "class", dict(tau=1.0)),
    Api("deel_lip.losses", "TauSparseCategoricalCrossentropy", "class", dict(tau=1.0)),
    Api("deel_lip.losses", "TauBinaryCrossentropy", "class", dict(tau=1.0)),
    Api(
        "deel_lip.losses",
        "MulticlassSoftHKR",
        "class",
        dict(alpha=10.0, min_margin=1.0, alpha_mean=0.99, temperature=1.0),
    ),
    # ------------------------------------------------------------------ metrics
    Api(
        "deel_lip.metrics",
        "CategoricalProvableRobustAccuracy",
        "class",
        dict(
            epsilon=0.1,
            lip_const=1.0,
            disjoint_neurons=True,
            reduction="sum_over_batch_size",
            name="cpra",
        ),
    ),
    Api(
        "deel_lip.metrics",
        "BinaryProvableRobustAccuracy",
        "class",
        dict(epsilon=0.1, lip_const=1.0, reduction="sum_over_batch_size", name="bpra"),
    ),
    Api(
        "deel_lip.metrics",
        "CategoricalProvableAvgRobustness",
        "class",
        dict(
            lip_const=1.0,
            disjoint_neurons=True,
            negative_robustness=False,
            reduction="sum_over_batch_size",
            name="cpar",
        ),
    ),
    Api(
        "deel_lip.metrics",
        "BinaryProvableAvgRobustness",
        "class",
        dict(
            lip_const=1.0, negative_robustness=False, reduction="sum_over_batch_size", name="bpar"
        ),
    ),
    # ------------------------------------------------------------------ constraints
    Api("deel_lip.constraints", "WeightClipConstraint", "class", dict(c=2.0)),
    Api("deel_lip.constraints", "AutoWeightClipConstraint", "class", dict(scale=1.0)),
    Api("deel_lip.constraints", "FrobeniusConstraint", "class", dict(eps=1e-7)),
    Api(
        "deel_lip.constraints",
        "SpectralConstraint",
        "class",
        dict(k_coef_lip=1.0, eps_spectral=1e-3, eps_bjorck=1e-3, beta_bjorck=0.5, u=None),
    ),
    # ------------------------------------------------------------------ initializers
    Api(
        "deel_lip.initializers",
        "SpectralInitializer",
        "class",
        dict(
            eps_spectral=1e-3,
            eps_bjorck=1e-3,
            beta_bjorck=0.5,
            k_coef_lip=1.0,
            base_initializer="orthogonal",
        ),
    ),
    # ------------------------------------------------------------------ regularizers
    Api(
        "deel_lip.regularizers",
        "Lorth",
        "class",
        dict(kernel_shape=(3, 3, 2, 2), stride=1, flag_deconv=False),
    ),
    Api(
        "deel_lip.regularizers",
        "Lorth2D",
        "class",
        dict(kernel_shape=(3, 3, 2, 2), stride=1, flag_deconv=False),
    ),
    Api(
        "deel_lip.regularizers",
        "LorthRegularizer",
        "class",
        dict(kernel_shape=(3, 3, 2, 2), stride=1, lambda_lorth=1.0, dim=2, flag_deconv=False),
    ),
    Api("deel_lip.regularizers", "OrthDenseRegularizer", "class", dict(lambda_orth=1.0)),
    # ------------------------------------------------------------------ callbacks
    Api("deel_lip.callbacks", "CondenseCallback", "class", dict(on_epoch=True, on_batch=False)),
    Api(
        "deel_lip.callbacks",
        "MonitorCallback",
        "class",
        dict(
            monitored_layers=["d"],
            logdir="LOGDIR",
            target="kernel",
            what="max",
            on_epoch=True,
            on_batch=False,
        ),
    ),
    Api(
        "deel_lip.callbacks",
        "LossParamScheduler",
        "class",
        dict(param_name="alpha", fp=[0.1, 0.9], xp=[0, 10], step=0),
    ),
    Api("deel_lip.callbacks", "LossParamLog", "class", dict(param_name="alpha", rate=1)),
    # ------------------------------------------------------------------ normalizers
    *[
        Api("deel_lip.normalizers", name, "constant")
        for name in (
            "DEFAULT_EPS_SPECTRAL",
            "DEFAULT_EPS_BJORCK",
            "DEFAULT_BETA_BJORCK",
            "DEFAULT_MAXITER_SPECTRAL",
            "DEFAULT_MAXITER_BJORCK",
        )
    ],
    Api("deel_lip.normalizers", "reshaped_kernel_orthogonalization", "function"),
    Api("deel_lip.normalizers", "bjorck_normalization", "function"),
    Api("deel_lip.normalizers", "spectral_normalization", "function"),
    Api("deel_lip.normalizers", "spectral_normalization_conv", "function"),
    # ------------------------------------------------------------------ utils
    Api("deel_lip.utils", "evaluate_lip_const", "function"),
    Api("deel_lip.utils", "evaluate_lip_const_gen", "function"),
    Api("deel_lip.utils", "process_labels_for_multi_gpu", "function"),
    Api("deel_lip.utils", "l2_normalize", "function"),
    # ------------------------------------------------------------------ compute_layer_sv
    Api("deel_lip.compute_layer_sv", "compute_layer_sv", "function"),
    Api("deel_lip.compute_layer_sv", "compute_model_sv", "function"),
]

#: deel-lip names deel_lip does not provide, with the reason (also in docs/migration.md).
MISSING: dict[str, str] = {}

#: Module paths of deel-lip (``deel.lip.X``) and their deel_lip counterparts.
MODULES = {
    "deel.lip.layers": "deel_lip.layers",
    "deel.lip.layers.unconstrained": "deel_lip.layers.unconstrained",
    "deel.lip.activations": "deel_lip.activations",
    "deel.lip.model": "deel_lip.model",
    "deel.lip.losses": "deel_lip.losses",
    "deel.lip.metrics": "deel_lip.metrics",
    "deel.lip.constraints": "deel_lip.constraints",
    "deel.lip.initializers": "deel_lip.initializers",
    "deel.lip.regularizers": "deel_lip.regularizers",
    "deel.lip.callbacks": "deel_lip.callbacks",
    "deel.lip.normalizers": "deel_lip.normalizers",
    "deel.lip.utils": "deel_lip.utils",
    "deel.lip.compute_layer_sv": "deel_lip.compute_layer_sv",
}
