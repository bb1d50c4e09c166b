"""Configurations of the constrained layers for the guarantee tests.

Every axis of every layer lists the values the layer accepts; `pairwise` picks a small
set of configurations that contains every pair of values of every two axes (and so every
value of every axis), `each_value` a subset of it in which every value of every axis
appears, and `sweep` the full product of the geometric axes for the slow run.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np

from deel_lip.layers import (
    FrobeniusConv2D,
    FrobeniusDense,
    SpectralConv1D,
    SpectralConv2D,
    SpectralConv2DTranspose,
    SpectralDense,
)
from deel_lip.layers.aol import AOL_PADDINGS, AOL_SIDES, AOLConv2D, AOLDense
from deel_lip.layers.orthogonal_conv import ORTHOGONAL_PADDINGS, OrthogonalConv2D
from deel_lip.layers.sll import SLLConv2D, SLLDense

KERNELS_2D = [1, 2, 3, 5, (3, 1)]
STRIDES_2D = [1, 2, 3, (2, 1)]
PADDINGS_2D = ["same", "valid", "constant", "reflect", "symmetric", "circular"]
CHANNELS = [(1, 3), (3, 2), (2, 2)]  # (in, out): in < out, in > out, equal
SIZES_2D = [(4, 4), (5, 5), (6, 7), (8, 8)]
K_COEFS = [1.0, 0.5, 3.0]
# "bjorck": default Bjorck run; "spectral": eps_bjorck=None; "bjorck2": maxiter_bjorck=2
NORMALIZATIONS = ["bjorck", "spectral", "bjorck2"]

AXES = {
    "SpectralConv2D": {
        "kernel_size": KERNELS_2D,
        "strides": STRIDES_2D,
        "padding": PADDINGS_2D,
        "channels": CHANNELS,
        "size": SIZES_2D,
        "k_coef_lip": K_COEFS,
        "normalization": NORMALIZATIONS,
    },
    "FrobeniusConv2D": {
        "kernel_size": KERNELS_2D,
        "strides": STRIDES_2D,
        "padding": PADDINGS_2D,
        "channels": CHANNELS,
        "size": SIZES_2D,
        "k_coef_lip": K_COEFS,
    },
    "SpectralConv1D": {
        "kernel_size": [1, 2, 3, 5],
        "strides": [1, 2, 3],
        "padding": ["same", "valid", "causal"],
        "channels": CHANNELS,
        "size": [(4,), (5,), (7,), (10,)],
        "k_coef_lip": K_COEFS,
        "normalization": NORMALIZATIONS,
    },
    "SpectralConv2DTranspose": {
        "kernel_size": KERNELS_2D,
        "strides": STRIDES_2D,
        "padding": ["same", "valid"],
        "output_padding": ["none", "max"],  # None, or stride - 1 on each axis
        "channels": CHANNELS,
        "size": SIZES_2D,
        "k_coef_lip": K_COEFS,
        "normalization": NORMALIZATIONS,
    },
    "SpectralDense": {
        "channels": [(8, 20), (20, 8), (12, 12)],
        "rank": [2, 3],  # (batch, in) or (batch, 4, in) inputs
        "k_coef_lip": K_COEFS,
        "normalization": NORMALIZATIONS,
    },
    "FrobeniusDense": {
        "channels": [(8, 20), (20, 8), (12, 12)],
        "rank": [2, 3],
        "k_coef_lip": K_COEFS,
        "disjoint_neurons": [True, False],
    },
    "AOLConv2D": {
        "kernel_size": KERNELS_2D,
        "strides": STRIDES_2D,
        "padding": list(AOL_PADDINGS),
        "channels": CHANNELS,
        "size": SIZES_2D,
        "k_coef_lip": K_COEFS,
        "rescaling_side": list(AOL_SIDES),
    },
    "OrthogonalConv2D": {
        "kernel_size": KERNELS_2D,
        "strides": STRIDES_2D,
        "padding": list(ORTHOGONAL_PADDINGS),
        "channels": CHANNELS,
        "size": SIZES_2D,
        "k_coef_lip": K_COEFS,
        "projector_rank": [None, 1],
    },
    "AOLDense": {
        "channels": [(8, 20), (20, 8), (12, 12)],
        "rank": [2, 3],
        "k_coef_lip": K_COEFS,
        "rescaling_side": list(AOL_SIDES),
    },
}

#: Nonlinear residual blocks (SLL): checked through the exact norm of their linear part
#: ``T^-1/2 W^T`` (the certificate) and Jacobians, not through one operator matrix.
#: "hidden": hidden width (None: the input's), "channels": the input's features/channels.
BLOCK_AXES = {
    "SLLConv2D": {
        "kernel_size": [1, 2, 3, 5, (3, 1)],
        "hidden": [None, 2, 6],
        "channels": [1, 3, 4],
        "size": SIZES_2D,
        "k_coef_lip": K_COEFS,
    },
    "SLLDense": {
        "hidden": [None, 5, 30],
        "channels": [8, 20],
        "rank": [2, 3],
        "k_coef_lip": K_COEFS,
    },
}

#: Axes fully crossed by the slow sweep; the others cycle through their values.
GEOMETRY = ("kernel_size", "strides", "padding", "output_padding", "size", "rank")


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, tuple) else (value, value)


def is_valid(kind: str, cfg: dict) -> bool:
    """Whether the layer accepts the configuration (non-empty output).

    Excluded: a transposed convolution with "same" padding and an explicit output padding
    of 0 on an axis with an even kernel (with "max" output padding: a stride-1 axis), which
    TensorFlow's CPU kernel rejects at call time
    (plain `keras.layers.Conv2DTranspose` too: AbortedError from oneDNN), so the layer
    refuses it at construction.

    AOLConv2D and OrthogonalConv2D refuse a kernel smaller than the stride (it would skip
    pixels).
    """
    if kind in ("AOLConv2D", "OrthogonalConv2D") and any(
        k < s for k, s in zip(_pair(cfg["kernel_size"]), _pair(cfg["strides"]))
    ):
        return False
    if kind == "SpectralConv2DTranspose" and cfg["padding"] == "same":
        if cfg["output_padding"] == "max" and any(
            s == 1 and k % 2 == 0 for k, s in zip(_pair(cfg["kernel_size"]), _pair(cfg["strides"]))
        ):
            return False
    if "kernel_size" not in cfg or cfg.get("padding") != "valid":
        return True
    size = cfg["size"]
    kernel = _pair(cfg["kernel_size"]) if len(size) == 2 else (cfg["kernel_size"],)
    return kind == "SpectralConv2DTranspose" or all(n >= k for n, k in zip(size, kernel))


def _axes(kind: str) -> dict:
    return AXES[kind] if kind in AXES else BLOCK_AXES[kind]


def pairwise(kind: str) -> list[dict]:
    """Greedy all-pairs selection of valid configurations (deterministic)."""
    axes = _axes(kind)
    names = list(axes)
    combos = [
        dict(zip(names, values))
        for values in itertools.product(*axes.values())
        if is_valid(kind, dict(zip(names, values)))
    ]
    index = {name: {repr(v): i for i, v in enumerate(axes[name])} for name in names}

    def pairs_of(cfg):
        ids = [index[name][repr(cfg[name])] for name in names]
        return frozenset(
            (a, ids[a], b, ids[b]) for a, b in itertools.combinations(range(len(names)), 2)
        )

    combo_pairs = [pairs_of(cfg) for cfg in combos]
    uncovered = set().union(*combo_pairs)
    chosen = []
    while uncovered:
        best = max(range(len(combos)), key=lambda i: len(combo_pairs[i] & uncovered))
        chosen.append(combos[best])
        uncovered -= combo_pairs[best]
    return chosen


def is_trainable(kind: str, cfg: dict) -> bool:
    """Whether the configuration can be trained on this platform.

    TensorFlow 2.20's oneDNN CPU kernels corrupt memory (segfault or abort) when a
    transposed convolution whose kernel is smaller than its stride is trained in a graph
    (plain `keras.layers.Conv2DTranspose` too; fine with ``TF_ENABLE_ONEDNN_OPTS=0``):
    those configurations are checked without training only.
    """
    if kind != "SpectralConv2DTranspose":
        return True
    return all(k >= s for k, s in zip(_pair(cfg["kernel_size"]), _pair(cfg["strides"])))


def trainable_pairwise(kind: str) -> list[dict]:
    """The `pairwise` configurations that `is_trainable`."""
    return [cfg for cfg in pairwise(kind) if is_trainable(kind, cfg)]


def each_value(kind: str) -> list[dict]:
    """Greedy subset of `trainable_pairwise` in which every value of every axis appears."""
    axes = _axes(kind)
    candidates = trainable_pairwise(kind)
    uncovered = {(name, repr(cfg[name])) for cfg in candidates for name in axes}
    chosen = []
    while uncovered:
        best = max(
            candidates,
            key=lambda cfg: len({(n, repr(cfg[n])) for n in axes} & uncovered),
        )
        chosen.append(best)
        uncovered -= {(n, repr(best[n])) for n in axes}
    return chosen


def sweep(kind: str) -> list[dict]:
    """Full product of the geometric axes (of all axes when small); the others cycle."""
    axes = _axes(kind)
    if np.prod([len(values) for values in axes.values()]) <= 200:
        geometric = list(axes)  # small enough: the full product
    else:
        geometric = [name for name in axes if name in GEOMETRY]
    others = [name for name in axes if name not in GEOMETRY]
    cases = []
    for values in itertools.product(*(axes[name] for name in geometric)):
        cfg = dict(zip(geometric, values))
        for j, name in enumerate(others):
            cfg[name] = axes[name][(len(cases) + j) % len(axes[name])]
        if is_valid(kind, cfg):
            cases.append(cfg)
    return cases


def case_id(kind: str, cfg: dict) -> str:
    parts = [kind] + [f"{name}={cfg[name]}".replace(" ", "") for name in _axes(kind)]
    return "-".join(parts)


def _normalization_args(cfg: dict) -> dict:
    return {
        "bjorck": {},
        "spectral": {"eps_bjorck": None},
        "bjorck2": {"maxiter_bjorck": 2},
    }[cfg["normalization"]]


def input_shape(kind: str, cfg: dict) -> tuple:
    """Shape of one input sample for the configuration."""
    if kind in BLOCK_AXES:
        c = cfg["channels"]
        if kind == "SLLDense":
            return (c,) if cfg["rank"] == 2 else (4, c)
        return tuple(cfg["size"]) + (c,)
    c_in = cfg["channels"][0]
    if kind.endswith("Dense"):
        return (c_in,) if cfg["rank"] == 2 else (4, c_in)
    return tuple(cfg["size"]) + (c_in,)


def make_layer(kind: str, cfg: dict, name: str | None = None):
    """Unbuilt layer of the configuration."""
    common = {"k_coef_lip": cfg["k_coef_lip"], "name": name}
    if kind == "SLLDense":
        return SLLDense(hidden_units=cfg["hidden"], **common)
    if kind == "SLLConv2D":
        return SLLConv2D(cfg["kernel_size"], hidden_filters=cfg["hidden"], **common)
    c_out = cfg["channels"][1]
    if kind == "AOLDense":
        return AOLDense(c_out, rescaling_side=cfg["rescaling_side"], **common)
    if kind == "SpectralDense":
        return SpectralDense(c_out, **common, **_normalization_args(cfg))
    if kind == "FrobeniusDense":
        return FrobeniusDense(c_out, disjoint_neurons=cfg["disjoint_neurons"], **common)
    conv = {"kernel_size": cfg["kernel_size"], "strides": cfg["strides"]}
    conv["padding"] = cfg["padding"]
    if kind == "FrobeniusConv2D":
        return FrobeniusConv2D(c_out, **conv, **common)
    if kind == "OrthogonalConv2D":
        return OrthogonalConv2D(c_out, **conv, projector_rank=cfg["projector_rank"], **common)
    if kind == "AOLConv2D":
        return AOLConv2D(c_out, **conv, rescaling_side=cfg["rescaling_side"], **common)
    if kind == "SpectralConv2D":
        return SpectralConv2D(c_out, **conv, **common, **_normalization_args(cfg))
    if kind == "SpectralConv1D":
        return SpectralConv1D(c_out, **conv, **common, **_normalization_args(cfg))
    if kind == "SpectralConv2DTranspose":
        strides = _pair(cfg["strides"])
        output_padding = None if cfg["output_padding"] == "none" else [s - 1 for s in strides]
        with warnings.catch_warnings():
            # kernels smaller than the stride warn (oneDNN training crash); they are
            # checked here without training, see `is_trainable`
            warnings.filterwarnings("ignore", message=".*smaller than strides")
            return SpectralConv2DTranspose(
                c_out, **conv, output_padding=output_padding, **common, **_normalization_args(cfg)
            )
    raise ValueError(f"unknown layer kind {kind!r}")


def raw_parameters(layer) -> list:
    """The trainable matrices a guarantee test randomises: the raw kernel of a
    `ConstrainedKernel` layer, the orthogonal matrix and frames of an `OrthogonalConv2D`."""
    if isinstance(layer, OrthogonalConv2D):
        return [layer.orthogonal, *layer.frames]
    return [layer._raw_kernel()]


def is_orthogonal(kind: str, cfg: dict) -> bool:
    """Configurations that preserve norms exactly: an `OrthogonalConv2D` with circular
    padding, stride 1 and at least as many filters as input channels."""
    return (
        kind == "OrthogonalConv2D"
        and cfg["padding"] == "circular"
        and _pair(cfg["strides"]) == (1, 1)
        and cfg["channels"][1] >= cfg["channels"][0]
    )


def worst_norm(kind: str, cfg: dict, matrix: np.ndarray) -> float:
    """The quantity bounded by ``k_coef_lip``: the operator norm, or for disjoint
    Frobenius neurons the largest norm of one output's row."""
    if kind == "FrobeniusDense" and cfg["disjoint_neurons"]:
        return float(np.linalg.norm(matrix, axis=1).max())
    return float(np.linalg.norm(matrix, 2))


def is_bjorck(kind: str, cfg: dict) -> bool:
    """Configurations whose kernel matrix is orthogonal (default Bjorck run)."""
    return cfg.get("normalization") == "bjorck"


def is_tightness_reported(kind: str, cfg: dict) -> bool:
    return (
        "kernel_size" in cfg
        and cfg["padding"] in ("valid", "same", "circular")
        and _pair(cfg["strides"]) == (1, 1)
    )


KINDS: list[str] = list(AXES)
BLOCK_KINDS: list[str] = list(BLOCK_AXES)
