"""Boundary attributions (BIG / BSM) on a 1-Lipschitz OTNN trained on real MNIST digits.

Properties: BIG's completeness (sum of the map = g(x) - g(x_b), to 1e-3 relative), BSM is
the gradient at the boundary point, the transport boundary point lies on the decision
boundary (its margin is in [-sqrt(2) tol, 0]: the points are within ``tol`` of the
boundary, on its far side, and the margin of a 1-Lipschitz vector output is
sqrt(2)-Lipschitz), the three boundary searches agree on the order of the distances, and
every Xplique metric accepts the explainers.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("xplique")

from xplique import metrics as xmetrics  # noqa: E402

from deel_lip.layers import GroupSort2, ScaledL2NormPooling2D, SpectralConv2D, SpectralDense  # noqa: E402
from deel_lip.losses import MulticlassHKR  # noqa: E402
from deel_lip.model import Sequential  # noqa: E402
from deel_lip.xai import METRICS, explainer  # noqa: E402
from deel_lip.xai.boundary import BIG, BSM, BoundaryAttributions, find_boundary  # noqa: E402

N_EVAL = 24
TOL = 1e-3


def _margin(model, points, source):
    logits = model.predict(points, verbose=0).astype("float64")
    rows = np.arange(len(points))
    others = logits.copy()
    others[rows, source] = -np.inf
    return logits[rows, source] - others.max(axis=1)


@pytest.fixture(scope="module")
def otnn(mnist):
    """10-class OTNN (MulticlassHKR) on 1,500 shuffled digits; 24 held-out digits."""
    keras.utils.set_random_seed(0)
    images, labels = mnist
    order = np.random.default_rng(0).permutation(len(labels))
    train, held_out = order[:1500], order[1500 : 1500 + N_EVAL]
    model = Sequential(
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
            SpectralDense(10),
        ]
    )
    model.compile(keras.optimizers.Adam(3e-3), MulticlassHKR(alpha=0.98, min_margin=1.0))
    one_hot = keras.utils.to_categorical(labels[train], 10)
    model.fit(images[train], one_hot, batch_size=32, epochs=3, verbose=0)
    x, y = images[held_out], labels[held_out]
    correct = model.predict(x, verbose=0).argmax(1) == y
    assert correct.mean() >= 0.7  # a trained model (chance: 0.1)
    return model, x[correct], y[correct]


class _LastLayerRandomization:
    """Xplique randomisation strategy: new float weights for the last layer with weights
    (Xplique's own draws a uniform value for every weight, the bool cache flags too)."""

    def randomize(self, model):
        layer = [layer for layer in model.layers if layer.weights][-1]
        rng = np.random.default_rng(0)
        layer.set_weights(
            [
                rng.uniform(-0.5, 0.5, w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
                for w in layer.get_weights()
            ]
        )
        return model


def _scores(model, points, labels):
    return model.predict(points, verbose=0)[np.arange(len(points)), labels].astype("float64")


@pytest.mark.parametrize("boundary", ["transport", "minimal_l2"])
def test_big_completeness(otnn, boundary):
    model, x, y = otnn
    kwargs = {"steps": 40} if boundary == "minimal_l2" else {}
    big = BIG(
        model, boundary=boundary, steps=64, boundary_kwargs=kwargs, clip_min=0.0, clip_max=1.0
    )
    maps = np.asarray(big(x, y))
    points = big.last_boundary.points
    assert maps.shape == x.shape
    assert big.last_boundary.success.all()
    assert np.all(points >= 0.0) and np.all(points <= 1.0)
    gap = _scores(model, x, y) - _scores(model, points, y)
    assert np.all(gap > 0.0)  # the class score drops on the way to the boundary
    total = maps.reshape(len(x), -1).sum(axis=1)
    np.testing.assert_allclose(total, gap, rtol=1e-3)


def test_bsm_is_the_gradient_at_the_boundary_point(otnn):
    model, x, y = otnn
    bsm = BSM(model)
    maps = np.asarray(bsm(x, keras.utils.to_categorical(y, 10)))
    points = tf.constant(bsm.last_boundary.points)
    with tf.GradientTape() as tape:
        tape.watch(points)
        score = tf.reduce_sum(model(points)[:, :] * tf.one_hot(y, 10))
    expected = tape.gradient(score, points).numpy()
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    # BSM is not the saliency at x: the gradient changed along the way
    with tf.GradientTape() as tape:
        x_t = tf.constant(x)
        tape.watch(x_t)
        at_x = tape.gradient(tf.reduce_sum(model(x_t) * tf.one_hot(y, 10)), x_t).numpy()
    assert np.abs(at_x - maps).max() > 1e-3


def test_transport_boundary_point_is_on_the_boundary(otnn):
    model, x, y = otnn
    result = find_boundary(model, x, y, "transport", tol=TOL)
    margin = _margin(model, result.points, y)
    assert result.success.all()
    assert np.all(margin <= 0.0)
    assert np.all(margin >= -np.sqrt(2.0) * TOL * (1 + 1e-3) - 1e-6)
    np.testing.assert_allclose(
        result.distances, np.linalg.norm((result.points - x).reshape(len(x), -1), axis=1), rtol=1e-5
    )


def test_attack_boundaries_are_no_closer_than_the_certificate(otnn):
    """Every boundary point of a 1-Lipschitz model is at least margin / sqrt(2) away."""
    model, x, y = otnn
    bound = _margin(model, x, y) / np.sqrt(2.0)
    for boundary, kwargs in (("minimal_l2", {"steps": 40}), ("pgd", {"steps": 20, "eps": 4.0})):
        result = find_boundary(model, x, y, boundary, **kwargs)
        found = result.success
        assert found.mean() > 0.8, boundary
        assert np.all(result.distances[found] >= bound[found] * (1 - 1e-4)), boundary
        margin = _margin(model, result.points[found], y[found])
        # float32: the margin recomputed here on another batch rounds differently from the
        # attack's own evaluation (measured +2e-8 on a point the attack saw at <= 0)
        assert np.all(margin <= 1e-6) and np.all(margin >= -np.sqrt(2.0) * 1e-3 - 1e-5)


def test_library_entry_points_and_label_encodings(otnn):
    model, x, y = otnn
    e = explainer("big", model, boundary="transport", steps=8)
    assert isinstance(e, BIG) and e.method == "BIG" and e.steps == 8
    assert isinstance(explainer(BSM, model), BSM)
    from_ids = np.asarray(e(x, y))
    from_one_hot = np.asarray(e.explain(x, keras.utils.to_categorical(y, 10)))
    np.testing.assert_array_equal(from_ids, from_one_hot)
    generic = BoundaryAttributions(model, method="BIG", steps=8)
    np.testing.assert_allclose(np.asarray(generic(x, y)), from_ids, rtol=1e-5, atol=1e-7)
    dataset = tf.data.Dataset.from_tensor_slices((x, keras.utils.to_categorical(y, 10))).batch(8)
    np.testing.assert_allclose(np.asarray(e(dataset)), from_ids, rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # ~80 s; BIG / BSM meet MuFidelity and Deletion in the default run
def test_every_xplique_metric_accepts_the_explainers(otnn):
    model, x, y = otnn
    x, y = x[:8], y[:8]
    targets = keras.utils.to_categorical(y, 10)
    for cls in (BIG, BSM):
        e = cls(model, steps=4, batch_size=8)
        maps = np.asarray(e(x, targets))
        values = {
            "Deletion": xmetrics.Deletion(model, x, targets, steps=4).evaluate(maps),
            "Insertion": xmetrics.Insertion(model, x, targets, steps=4).evaluate(maps),
            "MuFidelity": xmetrics.MuFidelity(
                model, x, targets, nb_samples=8, grid_size=4
            ).evaluate(maps),
            "AverageDropMetric": xmetrics.AverageDropMetric(model, x, targets).evaluate(maps),
            "AverageIncreaseMetric": xmetrics.AverageIncreaseMetric(model, x, targets).evaluate(
                maps
            ),
            "AverageGainMetric": xmetrics.AverageGainMetric(model, x, targets).evaluate(maps),
            "Sparseness": xmetrics.Sparseness().evaluate(maps),
            "Complexity": xmetrics.Complexity().evaluate(maps),
            "AverageStability": xmetrics.AverageStability(model, x, targets, nb_samples=2).evaluate(
                e
            ),
            "RandomLogitMetric": xmetrics.RandomLogitMetric(model, x, targets).evaluate(e),
            "ModelRandomizationMetric": xmetrics.ModelRandomizationMetric(
                model, x, targets, randomization_strategy=_LastLayerRandomization()
            ).evaluate(e),
        }
        mege = xmetrics.MeGe(lambda *args: model, x, targets, k_splits=2).evaluate(
            cls, {"steps": 4, "batch_size": 8}
        )
        values["MeGe"], values["ReCo"] = mege
        for name, value in values.items():
            assert np.isfinite(float(value)), (cls.__name__, name, value)
        assert set(values) == set(METRICS)  # the library's whole metric list


def test_bad_arguments(otnn):
    model, x, y = otnn
    with pytest.raises(ValueError, match="method must be one of"):
        BoundaryAttributions(model, method="IG")
    with pytest.raises(ValueError, match="boundary must be one of"):
        BIG(model, boundary="fgsm")
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        BIG(model, steps=1)
    with pytest.raises(ValueError, match="boundary_kwargs must be a dict"):
        BIG(model, boundary_kwargs=[1])
    with pytest.raises(ValueError, match="targets must be given"):
        BIG(model)(x)


def test_library_tables_and_callbacks(otnn, tmp_path):
    """BIG / BSM through `evaluate_attributions` and both training callbacks."""
    from deel_lip.xai import (
        ATTRIBUTION_METHODS,
        AttributionSnapshotCallback,
        XpliqueMetricsCallback,
        evaluate_attributions,
    )

    model, x, y = otnn
    x, y = x[:8], y[:8]
    assert {"BIG", "BSM", "FEM"} <= set(ATTRIBUTION_METHODS)
    table = evaluate_attributions(
        model,
        x,
        y,
        ["BIG", "BSM", "Saliency"],
        ["MuFidelity", "Deletion"],
        method_kwargs={"BIG": {"steps": 4}},
        metric_kwargs={"MuFidelity": {"nb_samples": 8, "grid_size": 4}},
    )
    assert set(table) == {"BIG", "BSM", "Saliency"}
    assert all(np.isfinite(v) for row in table.values() for v in row.values())
    metrics = XpliqueMetricsCallback(
        x, y, ["BIG"], ["Deletion"], method_kwargs={"BIG": {"steps": 4}}
    )
    snapshots = AttributionSnapshotCallback(x[:3], y[:3], "BSM", str(tmp_path))
    metrics.set_model(model)
    snapshots.set_model(model)
    logs = {}
    metrics.on_epoch_end(0, logs)
    snapshots.on_epoch_end(0, {})
    assert np.isfinite(logs["xai/BIG/Deletion"])
    assert len(list(tmp_path.glob("*.png"))) == 1
