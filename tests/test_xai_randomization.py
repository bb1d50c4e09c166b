"""Model-randomisation sanity checks that keep deel_lip models within their bounds.

Xplique's `ProgressiveLayerRandomization` writes random values into the cached
constrained kernels: the "randomised" model is no longer Lipschitz. `LipschitzLayerRandomization`
draws the raw parameters and recomputes the constrained kernels: every layer stays within
its bound, measured with exact singular values (`compute_layer_sv`).
"""

import keras
import numpy as np
import pytest
import xplique
from xplique.attributions import Saliency
from xplique.metrics import ModelRandomizationMetric, ProgressiveLayerRandomization

from deel_lip.layers import (
    FrobeniusDense,
    GroupSort2,
    ScaledL2NormPooling2D,
    SpectralConv2D,
    SpectralDense,
)
from deel_lip.layers.base import ConstrainedKernel
from deel_lip.model import Sequential
from deel_lip.xai.randomization import (
    LipschitzLayerRandomization,
    lipschitz_bounds,
    randomization_strategy,
)

TOL = 1e-4


def _otnn(k_coef_lip: float = 1.0) -> Sequential:
    return Sequential(
        [
            keras.Input((12, 12, 1)),
            SpectralConv2D(4, 3),
            GroupSort2(),
            ScaledL2NormPooling2D(2),
            SpectralConv2D(8, 3),
            GroupSort2(),
            keras.layers.Flatten(),
            SpectralDense(16),
            GroupSort2(),
            FrobeniusDense(3),
        ],
        k_coef_lip=k_coef_lip,
    )


def _clone(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


@pytest.fixture(scope="module")
def digits12(digits):
    images, labels = digits
    padded = np.pad(images[:64], ((0, 0), (2, 2), (2, 2), (0, 0)))
    return padded, labels[:64] % 3


@pytest.mark.parametrize("k_coef_lip", [1.0, 2.0])
def test_randomised_layers_stay_within_their_bound(k_coef_lip):
    model = _otnn(k_coef_lip)
    randomised = LipschitzLayerRandomization(1.0, seed=0).randomize(_clone(model))
    bounds = lipschitz_bounds(randomised)
    assert len(bounds) == 4
    for name, (sv, bound) in bounds.items():
        assert sv <= bound * (1 + TOL), (name, sv, bound)
    # the draws did change every constrained kernel
    for before, after in zip(model.layers, randomised.layers):
        if isinstance(before, ConstrainedKernel):
            assert not np.allclose(
                before.constrained_kernel.numpy(), after.constrained_kernel.numpy()
            )


def test_xplique_default_randomisation_fails_on_constrained_layers():
    """Xplique 2.0.2 draws every weight with ``tf.random.uniform``, bool flags included."""
    with pytest.raises(ValueError, match="dtype"):
        ProgressiveLayerRandomization(1.0).randomize(_clone(_otnn()))


def test_uniform_draw_into_the_caches_breaks_the_bound():
    """What that draw does to the float weights: the cached kernels leave their bound."""
    randomised = _clone(_otnn())
    rng = np.random.default_rng(0)
    for layer in randomised.layers:
        weights = layer.get_weights()
        layer.set_weights(
            [
                rng.uniform(size=w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
                for w in weights
            ]
        )
    ratios = [sv / bound for sv, bound in lipschitz_bounds(randomised).values()]
    assert max(ratios) > 1.5


def test_randomised_model_is_one_lipschitz_end_to_end(digits12):
    """Whole-model check: ||f(x) - f(y)|| <= ||x - y|| on real digit pairs."""
    x, _ = digits12
    randomised = LipschitzLayerRandomization(1.0, seed=3).randomize(_clone(_otnn()))
    out = randomised.predict(x, verbose=0)
    d_out = np.linalg.norm(out[::2] - out[1::2], axis=1)
    d_in = np.linalg.norm((x[::2] - x[1::2]).reshape(32, -1), axis=1)
    assert np.all(d_out <= d_in * (1 + TOL))


def test_stop_layer_randomises_only_the_top_layers():
    model = _otnn()
    randomised = LipschitzLayerRandomization(1, seed=0).randomize(_clone(model))
    changed = [
        layer.name
        for layer, new in zip(model.layers, randomised.layers)
        if layer.get_weights()
        and any(not np.array_equal(a, b) for a, b in zip(layer.get_weights(), new.get_weights()))
    ]
    assert changed == [model.layers[-1].name]
    strategy = LipschitzLayerRandomization(model.layers[-3].name)
    assert [layer.name for layer in strategy.selected_layers(model)] == [model.layers[-1].name]


def test_seeded_draws_are_reproducible():
    model = _otnn()
    a = LipschitzLayerRandomization(1.0, seed=5).randomize(_clone(model))
    b = LipschitzLayerRandomization(1.0, seed=5).randomize(_clone(model))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_model_randomization_metric_with_the_lipschitz_strategy(digits12):
    x, y = digits12
    model = _otnn()
    before = [w.copy() for w in model.get_weights()]
    targets = keras.utils.to_categorical(y, 3)
    metric = ModelRandomizationMetric(
        model,
        x[:16],
        targets[:16],
        randomization_strategy=LipschitzLayerRandomization(1.0, seed=0),
    )
    score = metric.evaluate(Saliency(model))
    assert np.isfinite(score) and -1.0 <= score <= 1.0
    for w0, w1 in zip(before, model.get_weights()):  # the explained model is untouched
        np.testing.assert_array_equal(w0, w1)


def test_randomization_strategy_picks_by_model():
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    assert isinstance(randomization_strategy(_otnn()), LipschitzLayerRandomization)
    assert isinstance(randomization_strategy(plain), xplique.metrics.ProgressiveLayerRandomization)
    # at least one layer for a fraction that rounds down to 0
    assert randomization_strategy(_otnn(), 0.1).stop_layer == 1


@pytest.mark.parametrize(
    "stop_layer, error, match",
    [
        (1.5, ValueError, "stop_layer"),
        (-1, ValueError, "stop_layer"),
        ([1], TypeError, "stop_layer"),
    ],
)
def test_invalid_stop_layer(stop_layer, error, match):
    with pytest.raises(error, match=match):
        LipschitzLayerRandomization(stop_layer)


def test_unknown_stop_layer_name():
    with pytest.raises(ValueError, match="stop_layer 'nope'"):
        LipschitzLayerRandomization("nope").selected_layers(_otnn())
