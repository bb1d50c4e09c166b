"""Certified radii, certified accuracy, attacks and certificate checks on real digits.

The central claims: on a trained 1-Lipschitz deel_lip CNN no attack gets closer than the
certified radius (zero violations), while the same certificate formula applied to an
unconstrained CNN of the same architecture is broken by the attacks (the check can fail).
On a linear model with orthonormal rows the exact minimal adversarial distance is the
certified radius, so the attacks are checked against a known answer as well.
"""

import gc
import math
import warnings
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from deel_lip.datasets import train_test_split
from deel_lip.layers import GroupSort2, SpectralConv2D, SpectralDense
from deel_lip.model import Sequential
from deel_lip.robustness import (
    CertificateReport,
    certified_accuracy,
    certified_radius,
    check_certificates,
    minimal_adversarial_l2,
    pgd_l2,
)

CLIP = {"clip_min": 0.0, "clip_max": 1.0}
N_CHECK = 150


def _lipschitz_cnn():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Sequential(
            [
                keras.Input((8, 8, 1)),
                SpectralConv2D(16, 3),
                GroupSort2(),
                keras.layers.Flatten(),
                SpectralDense(64),
                GroupSort2(),
                SpectralDense(10),
            ]
        )


def _plain_cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


@pytest.fixture(scope="module")
def data(digits):
    x_train, y_train, x_test, y_test = train_test_split(*digits, n_test=300, seed=0)
    return x_train, y_train, x_test[:N_CHECK], y_test[:N_CHECK]


def _train(factory, data, epochs):
    x_train, y_train, _, _ = data
    keras.utils.set_random_seed(0)
    model = factory()
    model.compile(keras.optimizers.Adam(5e-3), keras.losses.CategoricalHinge())
    model.fit(
        x_train, keras.utils.to_categorical(y_train, 10), epochs=epochs, batch_size=64, verbose=0
    )
    return model


@pytest.fixture(scope="module")
def lip_model(data):
    """SpectralConv2D / SpectralDense / GroupSort2 CNN, 1-Lipschitz, trained 5 epochs."""
    return _train(_lipschitz_cnn, data, epochs=5)


@pytest.fixture(scope="module")
def plain_model(data):
    """The same architecture with unconstrained Conv2D / Dense and ReLU."""
    return _train(_plain_cnn, data, epochs=5)


@pytest.fixture(scope="module")
def linear_model():
    """``f(x) = W x + b`` on 8x8 inputs with orthonormal rows of ``W`` (1-Lipschitz).

    For such a model the minimal L2 distance that changes class ``y`` into ``j`` is
    ``(f_y - f_j) / ||w_y - w_j|| = (f_y - f_j) / sqrt(2)``: the certified radius
    ``margin / sqrt(2)`` is exact (no input clipping).
    """
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(64, 10)))
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    model.layers[-1].set_weights([q.astype("float32"), rng.normal(0, 0.1, 10).astype("float32")])
    return model


def _predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _l2(a, b):
    return np.linalg.norm((np.asarray(a, "float64") - b).reshape(len(a), -1), axis=1)


# ------------------------------------------------------------------ certified radius


def test_certified_radius_label_formats_and_lip_const(data, lip_model):
    _, _, x, y = data
    logits = _predict(lip_model, x)
    ids = certified_radius(logits, y, disjoint_neurons=False)
    one_hot = certified_radius(logits, keras.utils.to_categorical(y, 10), disjoint_neurons=False)
    column = certified_radius(logits, y.reshape(-1, 1), disjoint_neurons=False)
    np.testing.assert_array_equal(ids, one_hot)
    np.testing.assert_array_equal(ids, column)
    np.testing.assert_allclose(
        certified_radius(logits, y, lip_const=4.0, disjoint_neurons=False), ids / 4, rtol=1e-6
    )
    np.testing.assert_allclose(
        certified_radius(logits, y, disjoint_neurons=True), ids / math.sqrt(2), rtol=1e-6
    )
    # without labels: the predicted-class radius, equal to the labelled one where correct
    correct = logits.argmax(1) == y
    unlabelled = certified_radius(logits, disjoint_neurons=False)
    np.testing.assert_allclose(unlabelled[correct], ids[correct], rtol=1e-6)
    assert np.all(ids[~correct] == 0)
    sorted_logits = np.sort(logits, axis=1)
    np.testing.assert_allclose(
        unlabelled, (sorted_logits[:, -1] - sorted_logits[:, -2]) / math.sqrt(2), rtol=1e-5
    )


def test_certified_accuracy_arrays_and_dataset(data, lip_model):
    _, _, x, y = data
    epsilons = [0.0, 0.1, 0.3, 0.6]
    result = certified_accuracy(lip_model, x, y, epsilons, disjoint_neurons=False, batch_size=32)
    signed = certified_radius(_predict(lip_model, x), y, disjoint_neurons=False, negative=True)
    assert list(result) == epsilons
    for eps in epsilons:
        assert result[eps] == pytest.approx(np.mean(signed > eps))
    assert result[0.0] == pytest.approx(np.mean(_predict(lip_model, x).argmax(1) == y))
    values = list(result.values())
    assert values == sorted(values, reverse=True) and values[0] > 0.85 and values[-1] < 0.5
    dataset = tf.data.Dataset.from_tensor_slices((x, keras.utils.to_categorical(y, 10))).batch(40)
    assert certified_accuracy(lip_model, dataset, None, epsilons, disjoint_neurons=False) == result
    assert certified_accuracy(lip_model, x, y, 0.3, disjoint_neurons=False) == {0.3: result[0.3]}
    with pytest.raises(ValueError, match="epsilons"):
        certified_accuracy(lip_model, x, y, [-0.1])
    with pytest.raises(ValueError, match="y must be None"):
        certified_accuracy(lip_model, dataset, y)
    with pytest.raises(ValueError, match="same length"):
        certified_accuracy(lip_model, x, y[:-1])


# ------------------------------------------------------------------ certificate checks


def test_no_violation_on_trained_lipschitz_model(data, lip_model):
    _, _, x, y = data
    report = check_certificates(lip_model, x, y, disjoint_neurons=False, attack_kwargs=CLIP)
    assert isinstance(report, CertificateReport)
    print("lipschitz CNN, minimal attack:", report.summary())
    assert report.points_checked >= 0.9 * N_CHECK
    assert report.passed and report.violations == 0
    # the attack did its job: it changed almost every class, never closer than the radius
    assert report.attacks_succeeded >= 0.95 * report.points_checked
    assert report.ratio_min >= 1.0 - 1e-3
    assert report.ratio_median < 2.0  # the certificates are not vacuous
    assert report.indices.shape == report.radii.shape == report.distances.shape
    # the budgeted PGD inside each certified ball never succeeds either
    pgd_report = check_certificates(
        lip_model, x, y, disjoint_neurons=False, attack="pgd", attack_kwargs=CLIP
    )
    print("lipschitz CNN, PGD at the radius:", pgd_report.summary())
    assert pgd_report.violations == 0 and pgd_report.attacks_succeeded == 0


def test_violations_found_on_unconstrained_model(data, plain_model):
    _, _, x, y = data
    report = check_certificates(plain_model, x, y, disjoint_neurons=False, attack_kwargs=CLIP)
    print("unconstrained CNN, minimal attack:", report.summary())
    assert not report.passed
    assert report.violations >= 0.9 * report.points_checked
    assert report.ratio_median < 0.5
    np.testing.assert_array_equal(
        report.violated, report.distances < report.radii * (1 - 1e-4) - 1e-4
    )

    # a user-supplied attack: PGD with a fixed budget of 1.0
    def attack(model, x_, y_):
        return pgd_l2(model, x_, y_, 1.0, steps=20, **CLIP)

    custom = check_certificates(plain_model, x, y, disjoint_neurons=False, attack=attack)
    print("unconstrained CNN, PGD eps=1.0:", custom.summary())
    assert custom.violations > 0.5 * custom.points_checked
    assert np.all(custom.distances[np.isfinite(custom.distances)] <= 1.0 + 1e-5)


# ------------------------------------------------------------------ attacks


def test_pgd_success_rate_and_constraints(data, plain_model, lip_model):
    # digits images have an L2 norm of ~3.9 (a quarter of it is 1.0); measured success
    # rates of this PGD on this model: 16% at 0.3, 41% at 0.5, 82% at 0.75, 98% at 1.0
    _, _, x, y = data
    eps = 1.0
    correct = _predict(plain_model, x).argmax(1) == y
    for random_start in (False, True):
        adv = pgd_l2(plain_model, x, y, eps, steps=30, random_start=random_start, seed=1, **CLIP)
        assert adv.shape == x.shape and adv.dtype == np.float32
        assert np.all(_l2(adv, x) <= eps * (1 + 1e-5))
        assert adv.min() >= 0.0 and adv.max() <= 1.0
        fooled = _predict(plain_model, adv).argmax(1) != y
        assert fooled[correct].mean() >= 0.9
    # on the Lipschitz model PGD cannot beat the certified accuracy at that radius
    adv = pgd_l2(lip_model, x, y, eps, steps=30, **CLIP)
    robust_acc = np.mean(_predict(lip_model, adv).argmax(1) == y)
    certified = certified_accuracy(lip_model, x, y, eps, disjoint_neurons=False)[eps]
    assert robust_acc >= certified
    # per-sample budgets and the cross-entropy loss
    budgets = np.linspace(0.0, 1.0, len(x)).astype("float32")
    adv = pgd_l2(lip_model, x, y, budgets, steps=5, loss="crossentropy", **CLIP)
    assert np.all(_l2(adv, x) <= budgets * (1 + 1e-5) + 1e-7)


def test_attacks_are_exact_on_an_orthogonal_linear_model(data, linear_model):
    _, _, x, _ = data
    logits = _predict(linear_model, x)
    y = logits.argmax(1)  # labels = predictions: every point is correctly classified
    radius = certified_radius(logits, y, disjoint_neurons=False)
    adv, dist, success = minimal_adversarial_l2(linear_model, x, y, steps=60)
    assert success.all()
    assert np.all(_predict(linear_model, adv).argmax(1) != y)
    # the exact minimal distance is the radius: the attack finds it within 1%
    np.testing.assert_array_less(radius * (1 - 1e-4), dist)
    assert np.max(dist / radius) < 1.01
    # PGD: a budget just above the radius always succeeds, just below never does
    above = pgd_l2(linear_model, x, y, radius * 1.02, steps=30)
    below = pgd_l2(linear_model, x, y, radius * 0.98, steps=30)
    assert np.all(_predict(linear_model, above).argmax(1) != y)
    assert np.all(_predict(linear_model, below).argmax(1) == y)


def test_binary_attacks_on_a_linear_model(data):
    _, _, x, _ = data
    rng = np.random.default_rng(3)
    w = rng.normal(size=(64, 1))
    w /= np.linalg.norm(w)
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    flat = x.reshape(len(x), -1)
    bias = -float(np.median(flat @ w))
    model.layers[-1].set_weights([w.astype("float32"), np.array([bias], "float32")])
    scores = _predict(model, x)[:, 0]
    labels = (scores > 0).astype("int64")  # {0, 1}
    radius = certified_radius(scores, labels)
    np.testing.assert_allclose(radius, np.abs(scores), rtol=1e-6)
    for y in (labels, 2 * labels - 1):
        _, dist, success = minimal_adversarial_l2(model, x, y, steps=40)
        assert success.all()
        assert np.all(dist >= radius * (1 - 1e-4)) and np.max(dist / radius) < 1.01
        adv = pgd_l2(model, x, y, radius * 1.02, steps=10)
        assert np.all((_predict(model, adv)[:, 0] > 0) != labels.astype(bool))


def test_minimal_adversarial_respects_budget_clip_and_certificate(data, lip_model):
    _, _, x, y = data
    radius = certified_radius(_predict(lip_model, x), y, disjoint_neurons=False, negative=True)
    adv, dist, success = minimal_adversarial_l2(lip_model, x, y, max_eps=0.6, steps=60, **CLIP)
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert np.all(dist[success] <= 0.6 * (1 + 1e-6))
    np.testing.assert_array_equal(adv[~success], x[~success])
    assert np.all(np.isinf(dist[~success]))
    assert 0 < success.sum() < len(x)  # some points are out of reach within 0.6
    np.testing.assert_allclose(dist[success], _l2(adv[success], x[success]), rtol=1e-6)
    flipped = _predict(lip_model, adv).argmax(1) != y
    assert np.all(flipped[success & (radius > 0)])
    # misclassified points: distance 0; correct ones: never closer than the certificate
    assert np.all(dist[radius <= 0] == 0)
    correct = success & (radius > 0)
    assert np.all(dist[correct] >= radius[correct] * (1 - 1e-4) - 1e-4)


def test_progress_bar(data, lip_model, capsys):
    _, _, x, y = data
    minimal_adversarial_l2(lip_model, x[:8], y[:8], steps=3, refine_steps=2, verbose=True)
    pgd_l2(lip_model, x[:8], y[:8], 0.1, steps=3, verbose=True)
    out = capsys.readouterr().out
    assert out.count("step") >= 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eps": -0.1}, "eps"),
        ({"eps": np.ones(3)}, "eps"),
        ({"eps": 0.1, "steps": 0}, "steps"),
        ({"eps": 0.1, "loss": "hinge"}, "loss"),
        ({"eps": 0.1, "clip_min": 0.5, "clip_max": 1.0}, r"x must lie in \[clip_min"),
        ({"eps": 0.1, "clip_min": 1.0, "clip_max": 0.0}, "clip_min must be < clip_max"),
        ({"eps": 0.1, "step_size": 0.0}, "step_size"),
    ],
)
def test_pgd_argument_errors(data, linear_model, kwargs, message):
    _, _, x, y = data
    with pytest.raises(ValueError, match=message):
        pgd_l2(linear_model, x[:4], y[:4], **kwargs)


def test_other_argument_errors(data, linear_model):
    _, _, x, y = data
    with pytest.raises(ValueError, match="gamma"):
        minimal_adversarial_l2(linear_model, x[:4], y[:4], gamma=1.5)
    with pytest.raises(ValueError, match="max_eps"):
        minimal_adversarial_l2(linear_model, x[:4], y[:4], max_eps=0.0)
    with pytest.raises(ValueError, match="one label per input"):
        minimal_adversarial_l2(linear_model, x[:4], y[:3])
    with pytest.raises(ValueError, match="class ids"):
        pgd_l2(linear_model, x[:4], np.array([0, 1, 2, 12]), 0.1)
    with pytest.raises(ValueError, match="attack"):
        check_certificates(linear_model, x[:4], y[:4], attack="fgsm")
    with pytest.raises(ValueError, match="tolerance"):
        check_certificates(linear_model, x[:4], y[:4], tolerance=-1.0)
    with pytest.raises(TypeError, match="batch_size"):
        pgd_l2(linear_model, x[:4], y[:4], 0.1, batch_size=2.5)


def test_compiled_attack_functions_do_not_keep_models_alive(data):
    from deel_lip.robustness import _attack_utils

    _, _, x, y = data
    model = _plain_cnn()
    pgd_l2(model, x[:4], y[:4], 0.1, steps=2)
    minimal_adversarial_l2(model, x[:4], y[:4], steps=2, loss="crossentropy")
    assert set(_attack_utils._COMPILED[model]) == {"margin", "crossentropy"}
    model_ref = weakref.ref(model)
    del model
    gc.collect()
    assert model_ref() is None  # freed, so its cache entry is gone with it


def test_custom_attack_must_return_the_shape_of_x(data, linear_model):
    _, _, x, y = data
    with pytest.raises(ValueError, match="shape of x"):
        check_certificates(linear_model, x[:4], y[:4], attack=lambda m, x_, y_: x_[:, :4])


@pytest.mark.slow
def test_certificates_on_mnist(mnist):
    """The same claims on real 28x28 MNIST: 4,800 training images, 200 checked."""
    x_train, y_train, x_test, y_test = train_test_split(*mnist, n_test=200, seed=0)

    def lipschitz():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Sequential(
                [
                    keras.Input((28, 28, 1)),
                    SpectralConv2D(16, 3, strides=2),
                    GroupSort2(),
                    SpectralConv2D(32, 3, strides=2),
                    GroupSort2(),
                    keras.layers.Flatten(),
                    SpectralDense(64),
                    GroupSort2(),
                    SpectralDense(10),
                ]
            )

    def plain():
        return keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
                keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(10),
            ]
        )

    data = (x_train, y_train, x_test, y_test)
    lip_report = check_certificates(
        _train(lipschitz, data, epochs=8),
        x_test,
        y_test,
        disjoint_neurons=False,
        attack_kwargs=CLIP,
    )
    print("MNIST lipschitz CNN:", lip_report.summary())
    assert lip_report.violations == 0 and lip_report.points_checked >= 160
    assert lip_report.attacks_succeeded >= 0.95 * lip_report.points_checked
    plain_report = check_certificates(
        _train(plain, data, epochs=8),
        x_test,
        y_test,
        disjoint_neurons=False,
        attack_kwargs=CLIP,
    )
    print("MNIST unconstrained CNN:", plain_report.summary())
    assert plain_report.violations >= 0.9 * plain_report.points_checked
