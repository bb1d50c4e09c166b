"""Optimal-transport counterfactuals on 1-Lipschitz networks trained on real MNIST digits.

Two OTNNs (small `SpectralConv2D`/`GroupSort2` CNNs ending in `SpectralDense`, so the whole
output vector is 1-Lipschitz): a 10-class one trained with `MulticlassHKR` on 1,000 digits
and a binary 3-vs-5 one trained with `HKR`. Properties checked on held-out digits: the
decision flips for >= 95 % of them, no counterfactual is closer than the certified radius
(a consequence of the Lipschitz guarantee), the first step is the Newton step along the
margin gradient and the final displacement stays aligned with it, clip ranges hold.
"""

import keras
import numpy as np
import pytest

from deel_lip import _backend
from deel_lip.layers import GroupSort2, ScaledL2NormPooling2D, SpectralConv2D, SpectralDense
from deel_lip.losses import HKR, MulticlassHKR
from deel_lip.model import Sequential
from deel_lip.robustness import certified_radius
from deel_lip.xai.counterfactuals import (
    CounterfactualResult,
    boundary_point,
    transport_counterfactual,
)

N_EVAL = 200


def _otnn(n_outputs: int) -> Sequential:
    return Sequential(
        [
            keras.Input((28, 28, 1)),
            SpectralConv2D(8, 3),
            GroupSort2(),
            ScaledL2NormPooling2D(2),
            SpectralConv2D(16, 3),
            GroupSort2(),
            ScaledL2NormPooling2D(2),
            keras.layers.Flatten(),
            SpectralDense(32),
            GroupSort2(),
            SpectralDense(n_outputs),
        ]
    )


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def multiclass(mnist, mnist_small):
    """10-class OTNN trained with MulticlassHKR on 1,000 digits; 200 held-out digits."""
    keras.utils.set_random_seed(0)
    x_train, y_train = mnist_small
    images, labels = mnist
    held_out = np.setdiff1d(
        np.arange(len(labels)), np.concatenate([np.where(labels == c)[0][:100] for c in range(10)])
    )[:N_EVAL]
    model = _otnn(10)
    model.compile(keras.optimizers.Adam(3e-3), MulticlassHKR(alpha=49.0, min_margin=1.0))
    model.fit(x_train, keras.utils.to_categorical(y_train, 10), batch_size=32, epochs=5, verbose=0)
    return model, images[held_out], labels[held_out]


@pytest.fixture(scope="module")
def binary(mnist):
    """3-vs-5 OTNN trained with HKR on 800 digits; 200 held-out digits (label 1 = five)."""
    keras.utils.set_random_seed(0)
    images, labels = mnist
    sel = np.where((labels == 3) | (labels == 5))[0]
    x, y = images[sel], (labels[sel] == 5).astype("float32")
    model = _otnn(1)
    model.compile(keras.optimizers.Adam(3e-3), HKR(alpha=9.0, min_margin=1.0))
    model.fit(x[:800], y[:800, None], batch_size=32, epochs=5, verbose=0)
    return model, x[800 : 800 + N_EVAL], y[800 : 800 + N_EVAL]


@pytest.fixture(scope="module")
def multiclass_result(multiclass):
    model, x, _ = multiclass
    return transport_counterfactual(model, x, disjoint_neurons=False)


def test_multiclass_flips_and_never_beats_the_certificate(multiclass, multiclass_result):
    model, x, y = multiclass
    res = multiclass_result
    logits = model.predict(x, verbose=0)
    assert np.mean(logits.argmax(1) == y) >= 0.9  # the model is a real classifier
    print(f"\nmulticlass flip rate {res.flip_rate:.3f}, steps {np.bincount(res.steps)}")
    assert res.flip_rate >= 0.95
    # default target: the class with the second largest logit
    np.testing.assert_array_equal(res.source, logits.argmax(1))
    np.testing.assert_array_equal(res.target, np.argsort(logits, axis=1)[:, -2])
    cf_logits = model.predict(res.counterfactuals, verbose=0)
    np.testing.assert_array_equal(cf_logits.argmax(1)[res.success], res.target[res.success])
    # the certificate: no point closer than margin / sqrt(2) changes the class
    radius = certified_radius(logits, None, disjoint_neurons=False)
    np.testing.assert_allclose(res.radius, radius, rtol=1e-5, atol=1e-6)
    gap = res.distances[res.success] - radius[res.success]
    print(
        f"distance / radius: min {np.min(res.distances / radius):.3f}, "
        f"median {np.median(res.distances / radius):.3f}"
    )
    assert np.all(gap >= -1e-5)
    assert np.all(res.steps[res.success] >= 1)


def test_first_step_is_the_newton_step_and_stays_aligned(multiclass, multiclass_result):
    model, x, _ = multiclass
    res = multiclass_result
    first = transport_counterfactual(model, x, max_steps=1, disjoint_neurons=False)
    source, target = res.source, res.target
    one_hot = keras.utils.to_categorical(source, 10) - keras.utils.to_categorical(target, 10)
    margin, grad = _backend.value_and_input_gradient(
        lambda z: model(z, training=False), x, lambda out: keras.ops.sum(out * one_hot, axis=1)
    )
    margin = np.sum(np.asarray(margin) * one_hot, axis=1)
    grad = np.asarray(grad)
    # x' - x = -(m + 1e-3 m) grad m / ||grad m||^2, m = f_source - f_target at x
    sq_norm = np.sum(grad.reshape(len(x), -1) ** 2, axis=1)
    expected = -((1.0 + 1e-3) * margin / sq_norm)[:, None, None, None] * grad
    np.testing.assert_allclose(first.counterfactuals - x, expected, atol=1e-4)
    cos = _cosines(res.counterfactuals - x, -grad)
    print(
        f"\ncosine(final displacement, -grad margin at x): median {np.median(cos):.5f}, "
        f"min {cos.min():.5f}; one-step flip rate {first.flip_rate:.3f}"
    )
    assert np.median(cos) >= 0.99


def test_explicit_targets_and_labels(multiclass):
    model, x, y = multiclass
    x, y = x[:64], y[:64]
    target = (y + 1) % 10
    res = transport_counterfactual(model, x, y, target=target, disjoint_neurons=False)
    assert res.flip_rate >= 0.95
    assert np.all(
        model.predict(res.counterfactuals, verbose=0).argmax(1)[res.success] == target[res.success]
    )
    # a single target for all samples whose class differs from it
    keep = y != 7
    res7 = transport_counterfactual(model, x[keep], y[keep], target=7)
    assert np.all(res7.target == 7) and res7.flip_rate >= 0.9
    # with labels, a misclassified sample already sits in its closest class: no step
    logits = model.predict(x, verbose=0)
    res_y = transport_counterfactual(model, x, y)
    wrong = logits.argmax(1) != y
    assert np.all(res_y.steps[wrong] == 0) and np.all(res_y.distances[wrong] == 0)
    assert np.all(res_y.radius[wrong] == 0) and np.all(res_y.success[wrong])


def test_binary_transport_step_and_certificate(binary):
    model, x, y = binary
    f = model.predict(x, verbose=0)[:, 0]
    assert np.mean((f > 0) == (y > 0)) >= 0.95
    res = transport_counterfactual(model, x)
    print(f"\nbinary flip rate {res.flip_rate:.3f}, steps {np.bincount(res.steps)}")
    assert res.flip_rate >= 0.95
    np.testing.assert_array_equal(res.source, (f > 0).astype(int))
    np.testing.assert_array_equal(res.target, 1 - res.source)
    f_cf = model.predict(res.counterfactuals, verbose=0)[:, 0]
    assert np.all(np.sign(f_cf[res.success]) == -np.sign(f[res.success]))
    np.testing.assert_allclose(res.radius, np.abs(f), rtol=1e-5)
    assert np.all(res.distances[res.success] >= np.abs(f[res.success]) - 1e-5)
    # one step: x - t (f + 1e-3 |f| sign f) grad f / ||grad f||^2 (x - t f grad f if |grad f| = 1)
    _, grad = _backend.value_and_input_gradient(lambda z: model(z, training=False), x)
    grad = np.asarray(grad)
    sq_norm = np.sum(grad.reshape(len(x), -1) ** 2, axis=1)
    for t in (1.0, 0.5):
        first = transport_counterfactual(model, x, max_steps=1, step_size=t)
        expected = -(t * 1.001 * f / sq_norm)[:, None, None, None] * grad
        np.testing.assert_allclose(first.counterfactuals - x, expected, atol=1e-4)
    print(f"gradient norm: median {np.median(np.sqrt(sq_norm)):.3f}")


def test_clip_range_and_overshoot(multiclass):
    model, x, _ = multiclass
    x = x[:64]
    clipped = transport_counterfactual(model, x, clip_min=0.0, clip_max=1.0)
    assert clipped.counterfactuals.min() >= 0.0 and clipped.counterfactuals.max() <= 1.0
    assert clipped.flip_rate >= 0.9
    base = transport_counterfactual(model, x)
    over = transport_counterfactual(model, x, overshoot=0.5)
    np.testing.assert_allclose(over.distances, 1.5 * base.distances, rtol=1e-4)
    assert over.flip_rate >= base.flip_rate - 0.05
    over_clipped = transport_counterfactual(model, x, overshoot=0.5, clip_min=0.0, clip_max=1.0)
    assert over_clipped.counterfactuals.min() >= 0 and over_clipped.counterfactuals.max() <= 1


def test_boundary_point_is_on_the_boundary(multiclass, multiclass_result):
    model, x, _ = multiclass
    tol = 1e-3
    res = multiclass_result
    bnd = boundary_point(model, x, result=res, tol=tol)
    assert isinstance(bnd, CounterfactualResult)
    np.testing.assert_array_equal(bnd.success, res.success)
    ok = bnd.success
    assert np.all(bnd.distances[ok] <= res.distances[ok] + 1e-6)
    assert np.all(bnd.distances[ok] >= res.radius[ok] - 1e-5)
    # On the boundary, tested on the source margin m = f_s - max_{j != s} f_j rather than
    # on an argmax (arbitrary where logits tie). The bisection stops on a point with m <= 0
    # whose source-side partner (m > 0) is at most `tol` before it on the segment; m is
    # sqrt(2)-Lipschitz for a 1-Lipschitz network, so -sqrt(2) tol <= m <= 0 there
    # (float32 slack: `predict` and the compiled margin round differently).
    slack = 1e-5
    unit = (res.counterfactuals - x) / res.distances[:, None, None, None]

    def margin(points):
        logits = model.predict(points, verbose=0).astype("float64")[ok]
        source = res.source[ok]
        rows = np.arange(len(source))
        others = logits.copy()
        others[rows, source] = -np.inf
        return logits[rows, source] - others.max(axis=1)

    at = margin(bnd.counterfactuals)
    assert np.all(at <= slack)
    assert np.all(at >= -np.sqrt(2) * tol - slack)
    # 1.01 tol back is within 1.01 tol of the source-side partner (m > 0): exact bound
    before = margin(bnd.counterfactuals - 1.01 * tol * unit)
    assert np.all(before >= -np.sqrt(2) * 1.01 * tol - slack)
    # and a small step each way lands on each side (the margin is locally linear; a
    # segment re-crossing within a step is allowed for a few points)
    after = margin(bnd.counterfactuals + 1.01 * tol * unit)
    assert np.mean(before > -slack) >= 0.95 and np.mean(after < slack) >= 0.95
    # computed from scratch when no result is given
    again = boundary_point(model, x[:16], tol=tol, disjoint_neurons=False)
    np.testing.assert_allclose(again.distances, bnd.distances[:16], atol=2 * tol)


def test_bad_inputs(multiclass, binary):
    model, x, y = multiclass
    x, y = x[:4], y[:4]
    with pytest.raises(ValueError, match="target must be None for a binary model"):
        transport_counterfactual(binary[0], binary[1][:4], target=1)
    with pytest.raises(ValueError, match="target must differ"):
        transport_counterfactual(model, x, y, target=y)
    with pytest.raises(ValueError, match=r"target class ids must be in \[0, 10\)"):
        transport_counterfactual(model, x, target=np.array([10, 0, 0, 0]))
    with pytest.raises(ValueError, match="target must be a class id"):
        transport_counterfactual(model, x, target=np.array([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match="labels must be class ids"):
        transport_counterfactual(model, x, y=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="x must lie in"):
        transport_counterfactual(model, x + 2.0, clip_min=0.0, clip_max=1.0)
    with pytest.raises(ValueError, match="clip_min must be < clip_max"):
        transport_counterfactual(model, x, clip_min=1.0, clip_max=0.0)
    with pytest.raises(TypeError, match="clip_max must be a number"):
        transport_counterfactual(model, x, clip_max="1")
    with pytest.raises(ValueError, match="x must be a non-empty batch"):
        transport_counterfactual(model, x[0, 0, 0])
    for name, value in (("step_size", 0.0), ("max_steps", 0), ("lip_const", -1.0)):
        with pytest.raises(ValueError, match=name):
            transport_counterfactual(model, x, **{name: value})
    with pytest.raises(ValueError, match="overshoot"):
        transport_counterfactual(model, x, overshoot=-0.1)
    with pytest.raises(TypeError, match="batch_size"):
        transport_counterfactual(model, x, batch_size=2.0)
    with pytest.raises(TypeError, match="disjoint_neurons"):
        transport_counterfactual(model, x, disjoint_neurons=1)
    res = transport_counterfactual(model, x, max_steps=1)
    with pytest.raises(ValueError, match="result must hold one counterfactual per input"):
        boundary_point(model, x[:3], result=res)
    with pytest.raises(TypeError, match="result must be a CounterfactualResult"):
        boundary_point(model, x, result=res.counterfactuals)
    with pytest.raises(ValueError, match="tol"):
        boundary_point(model, x, result=res, tol=0.0)
