"""Loss values against hand computations, reductions, labels, errors and configs."""

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from deel_lip import losses as L

# ---------------------------------------------------------------------------------------
# small tensors used throughout (hand computations in the tests)

# binary: labels (4, 1) and predictions f
Y_BIN = np.array([[1.0], [0.0], [1.0], [0.0]], "float32")
F_BIN = np.array([[2.0], [-1.0], [0.5], [1.0]], "float32")

# multiclass: true classes 0, 1, 2, 1
Y_MC = np.eye(3, dtype="float32")[[0, 1, 2, 1]]
F_MC = np.array([[1.0, -0.5, 0.0], [0.2, 0.8, -1.0], [-0.3, 0.6, 0.4], [0.5, -0.2, 0.1]], "float32")

# multiclass rows whose two wrong logits are equal (softmax weights 1/2, LSE = max + m/2)
Y_EQ = np.eye(3, dtype="float32")[[0, 2]]
F_EQ = np.array([[1.0, -1.0, -1.0], [0.25, 0.25, 0.0]], "float32")


def _values(loss, y_true, y_pred):
    """Per-sample values of a loss (its config with reduction 'none')."""
    config = loss.get_config()
    config["reduction"] = "none"
    return np.asarray(type(loss).from_config(config)(y_true, y_pred))


# ---------------------------------------------------------------------------------------
# binary losses


def test_kr_hand_values():
    # positives f = 2, 0.5 (mean 1.25); negatives f = -1, 1 (mean 0): KR = 1.25
    assert float(L.KR()(Y_BIN, F_BIN)) == pytest.approx(1.25)
    # per sample: n * f_i * w_i, n = 4, w = +1/2 (positives), -1/2 (negatives)
    #   4 * [2 * 0.5, -1 * -0.5, 0.5 * 0.5, 1 * -0.5] = [4, 2, 1, -2]
    np.testing.assert_allclose(_values(L.KR(), Y_BIN, F_BIN), [4.0, 2.0, 1.0, -2.0], rtol=1e-6)
    # a batch without negatives: the KR term of the absent class is 0
    assert float(L.KR()(np.ones((2, 1)), np.array([[1.0], [3.0]]))) == pytest.approx(2.0)


def test_hinge_margin_hand_values():
    # s * f = [2, 1, 0.5, -1]; relu(m/2 - s f) with m = 1: [0, 0, 0, 1.5]
    np.testing.assert_allclose(_values(L.HingeMargin(1.0), Y_BIN, F_BIN), [0, 0, 0, 1.5])
    # m = 2: relu(1 - s f) = [0, 0, 0.5, 2], mean 0.625
    assert float(L.HingeMargin(2.0)(Y_BIN, F_BIN)) == pytest.approx(0.625)


def test_hkr_hand_values():
    # deel-lip: -[4, 2, 1, -2] + a * [0, 0, 0, 1.5] with a = 0.5
    expected = [-4.0, -2.0, -1.0, 2.75]
    np.testing.assert_allclose(_values(L.HKR(0.5, 1.0), Y_BIN, F_BIN), expected, rtol=1e-6)
    assert float(L.HKR(0.5, 1.0)(Y_BIN, F_BIN)) == pytest.approx(-1.0625)
    # alpha = 0: -KR; alpha = inf: the hinge alone
    assert float(L.HKR(0.0)(Y_BIN, F_BIN)) == pytest.approx(-1.25)
    assert float(L.HKR(math.inf)(Y_BIN, F_BIN)) == pytest.approx(0.375)
    # convex: (1 - a) * (-[4, 2, 1, -2]) + a * [0, 0, 0, 1.5]; a = 1: the hinge alone
    expected = [-2.0, -1.0, -0.5, 1.75]
    convex = L.HKR(0.5, 1.0, convex=True)
    np.testing.assert_allclose(_values(convex, Y_BIN, F_BIN), expected, rtol=1e-6)
    assert float(L.HKR(1.0, convex=True)(Y_BIN, F_BIN)) == pytest.approx(0.375)


def test_tau_binary_crossentropy_hand_values():
    # tau = 2, f = 0.5: positive softplus(-1) / 2, negative softplus(1) / 2
    y, f = np.array([[1.0], [0.0]]), np.array([[0.5], [0.5]])
    expected = [math.log1p(math.exp(-1)) / 2, math.log1p(math.e) / 2]
    np.testing.assert_allclose(_values(L.TauBinaryCrossentropy(2.0), y, f), expected, rtol=1e-6)
    # equals Keras' binary cross-entropy of tau * f divided by tau
    keras_bce = keras.losses.BinaryCrossentropy(from_logits=True)(y, 2.0 * f) / 2.0
    assert float(L.TauBinaryCrossentropy(2.0)(y, f)) == pytest.approx(float(keras_bce), rel=1e-6)


@pytest.mark.parametrize(
    "loss",
    [L.KR(), L.HKR(0.3, 0.7), L.HingeMargin(0.8), L.TauBinaryCrossentropy(3.0)],
    ids=lambda loss: loss.name,
)
def test_binary_label_encodings_are_equivalent(loss):
    signed = 2.0 * Y_BIN - 1.0  # {-1, +1}
    np.testing.assert_allclose(_values(loss, Y_BIN, F_BIN), _values(loss, signed, F_BIN))
    # labels (batch,) for predictions (batch, 1), as model.fit passes them
    np.testing.assert_allclose(_values(loss, Y_BIN[:, 0], F_BIN), _values(loss, Y_BIN, F_BIN))


# ---------------------------------------------------------------------------------------
# multiclass losses


def test_multiclass_kr_hand_values():
    # class 0: P = {0}: 1.0; N = {1, 2, 3}: (0.2 - 0.3 + 0.5) / 3 = 0.4 / 3
    # class 1: P = {1, 3}: (0.8 - 0.2) / 2 = 0.3; N = {0, 2}: (-0.5 + 0.6) / 2 = 0.05
    # class 2: P = {2}: 0.4; N = {0, 1, 3}: (0.0 - 1.0 + 0.1) / 3 = -0.3
    expected = ((1.0 - 0.4 / 3) + (0.3 - 0.05) + (0.4 + 0.3)) / 3  # 0.605556
    assert float(L.MulticlassKR()(Y_MC, F_MC)) == pytest.approx(expected, rel=1e-6)


def test_multiclass_hinge_hand_values():
    # (1/3) [2 relu(0.5 - f_y) + sum_{k != y} relu(0.5 + f_k)], m = 1
    # s0: y=0, f_y=1: 2*0 + relu(0) + relu(0.5)     = 0.5 -> 0.5/3
    # s1: y=1, f_y=0.8: 2*0 + relu(0.7) + relu(-0.5) = 0.7 -> 0.7/3
    # s2: y=2, f_y=0.4: 2*0.1 + relu(0.2) + relu(1.1) = 1.5 -> 0.5
    # s3: y=1, f_y=-0.2: 2*0.7 + relu(1.0) + relu(0.6) = 3.0 -> 1.0
    expected = [0.5 / 3, 0.7 / 3, 0.5, 1.0]
    np.testing.assert_allclose(_values(L.MulticlassHinge(1.0), Y_MC, F_MC), expected, rtol=1e-6)


def test_multiclass_hkr_hand_values():
    # -0.605556 + 0.5 * mean([0.5/3, 0.7/3, 0.5, 1.0]) = -0.605556 + 0.5 * 0.475
    kr = ((1.0 - 0.4 / 3) + 0.25 + 0.7) / 3
    assert float(L.MulticlassHKR(0.5, 1.0)(Y_MC, F_MC)) == pytest.approx(
        -kr + 0.5 * 0.475, rel=1e-5
    )
    # convex: 0.5 * (-0.605556) + 0.5 * 0.475
    assert float(L.MulticlassHKR(0.5, 1.0, convex=True)(Y_MC, F_MC)) == pytest.approx(
        0.5 * (-kr) + 0.5 * 0.475, rel=1e-5
    )


def test_multi_margin_and_categorical_hinge_hand_values():
    # MultiMargin, m = 1: (1/3) sum_{k != y} relu(1 - f_y + f_k)
    #   s0: relu(1-1-0.5) + relu(1-1+0)       = 0      -> 0
    #   s1: relu(1-0.8+0.2) + relu(1-0.8-1)   = 0.4    -> 0.4/3
    #   s2: relu(1-0.4-0.3) + relu(1-0.4+0.6) = 1.5    -> 0.5
    #   s3: relu(1+0.2+0.5) + relu(1+0.2+0.1) = 3.0    -> 1.0
    expected = [0.0, 0.4 / 3, 0.5, 1.0]
    np.testing.assert_allclose(_values(L.MultiMargin(1.0), Y_MC, F_MC), expected, atol=1e-6)
    # CategoricalHinge, m = 1: relu(1 - (f_y - max_{k != y} f_k))
    #   s0: 1 - (1 - 0) = 0; s1: 1 - (0.8 - 0.2) = 0.4; s2: 1 - (0.4 - 0.6) = 1.2;
    #   s3: 1 - (-0.2 - 0.5) = 1.7
    expected = [0.0, 0.4, 1.2, 1.7]
    np.testing.assert_allclose(_values(L.CategoricalHinge(1.0), Y_MC, F_MC), expected, atol=1e-6)
    # with m = 0.5 the first two samples satisfy the margin
    expected = [0.0, 0.0, 0.7, 1.2]
    np.testing.assert_allclose(_values(L.CategoricalHinge(0.5), Y_MC, F_MC), expected, atol=1e-6)


def test_soft_hkr_hand_values_equal_weights():
    # alpha_mean = 1 keeps the running mean at m, so T = temperature; equal wrong logits
    # get softmax weights 1/2 whatever T.
    # row 0: y=0, f=[1,-1,-1]: KR = -(1 - (-1)) = -2; hinge = relu(-0.5) + relu(-0.5) = 0
    # row 1: y=2, f=[.25,.25,0]: KR = -(0 - 0.25) = 0.25; hinge = relu(0.5) + relu(0.75) = 1.25
    loss = L.MulticlassSoftHKR(
        alpha=0.5, min_margin=1.0, alpha_mean=1.0, temperature=3.0, convex=True
    )
    np.testing.assert_allclose(_values(loss, Y_EQ, F_EQ), [-1.0, 0.75], rtol=1e-6)


def test_soft_hkr_adaptive_temperature():
    # one sample, y=0, f=[2, 4, -6]: mean|f| = 4; mu = 0.5 * 1 + 0.5 * 4 = 2.5
    # T = temperature * m / max(mu, m) = 1 / 2.5 = 0.4; weights softmax(0.4 * [4, -6])
    # w1 = 1 / (1 + exp(-4)), w2 = 1 - w1
    # KR = -(2 - (4 w1 - 6 w2)) = 10 w1 - 8; hinge = 0 + 4.5 w1 + 0 (m = 1)
    y, f = np.array([[1.0, 0.0, 0.0]]), np.array([[2.0, 4.0, -6.0]])
    loss = L.MulticlassSoftHKR(
        alpha=0.5, min_margin=1.0, alpha_mean=0.5, temperature=1.0, convex=True
    )
    w1 = 1.0 / (1.0 + math.exp(-4.0))
    assert float(loss(y, f)) == pytest.approx(0.5 * (10 * w1 - 8) + 0.5 * 4.5 * w1, rel=1e-5)
    assert float(loss.current_mean) == pytest.approx(2.5)
    # a second call: mu = 0.5 * 2.5 + 0.5 * 4 = 3.25, T = 1 / 3.25
    w1 = 1.0 / (1.0 + math.exp(-10.0 / 3.25))
    assert float(loss(y, f)) == pytest.approx(0.5 * (10 * w1 - 8) + 0.5 * 4.5 * w1, rel=1e-5)
    # without the running mean (alpha_mean = 1): T = 1, w1 = 1 / (1 + exp(-10))
    fixed = L.MulticlassSoftHKR(
        alpha=0.5, min_margin=1.0, alpha_mean=1.0, temperature=1.0, convex=True
    )
    w1 = 1.0 / (1.0 + math.exp(-10.0))
    assert float(fixed(y, f)) == pytest.approx(0.5 * (10 * w1 - 8) + 0.5 * 4.5 * w1, rel=1e-5)


def test_lse_hkr_hand_values():
    # C = 3, m = 1, penalty = 1: t = log(2) / 0.5; with equal wrong logits b,
    # L = b + log(2) / t = b + 0.5.
    # row 0: y=0, f=[1,-1,-1]: L = -0.5, KR = -(1 + 0.5) = -1.5, hinge = 0 + relu(0) = 0
    # row 1: y=2, f=[.25,.25,0]: L = 0.75, KR = 0.75, hinge = relu(0.5) + relu(1.25) = 1.75
    loss = L.LseHKR(alpha=0.5, min_margin=1.0, temperature=1.0, penalty=1.0)
    np.testing.assert_allclose(_values(loss, Y_EQ, F_EQ), [-0.75, 1.25], rtol=1e-6)
    # temperature 2 scales the logits: row 0 z = [2,-2,-2], L = -1.5, KR = -3.5, hinge = 0
    loss = L.LseHKR(alpha=0.5, min_margin=1.0, temperature=2.0)
    assert _values(loss, Y_EQ, F_EQ)[0] == pytest.approx(-1.75)
    # C = 2: L is the wrong logit; y=0, f=[1, -2]: KR = -3, hinge = relu(-0.5) + relu(-1.5)
    assert float(L.LseHKR(alpha=0.0)(np.array([[1.0, 0.0]]), np.array([[1.0, -2.0]]))) == -3.0


def test_lse_is_a_bounded_smooth_maximum():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(64, 10)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, 64)]
    loss = L.LseHKR(alpha=0.0, min_margin=0.6, penalty=2.0)  # pure KR: -(f_y - L)
    smooth_max = _values(loss, y, f) + np.sum(y * f, axis=-1)
    true_max = np.max(np.where(y > 0, -np.inf, f), axis=-1)
    assert np.all(smooth_max >= true_max - 1e-5)
    assert np.all(smooth_max <= true_max + 2.0 * 0.6 / 2 + 1e-5)


def test_tau_crossentropies_hand_values():
    # tau = 2: row 0 y=0, f=[1, 0]: log(1 + exp(-2)) / 2; row 1 y=1, f=[0, 0]: log(2) / 2
    f = np.array([[1.0, 0.0], [0.0, 0.0]], "float32")
    expected = [math.log1p(math.exp(-2.0)) / 2, math.log(2.0) / 2]
    one_hot = np.eye(2, dtype="float32")[[0, 1]]
    np.testing.assert_allclose(
        _values(L.TauCategoricalCrossentropy(2.0), one_hot, f), expected, rtol=1e-6
    )
    sparse = np.array([0, 1])
    np.testing.assert_allclose(
        _values(L.TauSparseCategoricalCrossentropy(2.0), sparse, f), expected, rtol=1e-6
    )
    np.testing.assert_allclose(
        _values(L.TauSparseCategoricalCrossentropy(2.0), sparse[:, None], f), expected, rtol=1e-6
    )


MULTICLASS = [
    L.MulticlassKR(),
    L.MulticlassHinge(0.7),
    L.MulticlassHKR(0.4, 0.7),
    L.MulticlassSoftHKR(0.4, 0.7, alpha_mean=1.0, temperature=2.0),
    L.LseHKR(0.4, 0.7, temperature=1.5, penalty=0.5),
    L.MultiMargin(0.7),
    L.CategoricalHinge(0.7),
]


@pytest.mark.parametrize("loss", MULTICLASS, ids=lambda loss: loss.name)
def test_multiclass_sign_encoding_is_equivalent(loss):
    np.testing.assert_allclose(
        _values(loss, Y_MC, F_MC), _values(loss, 2.0 * Y_MC - 1.0, F_MC), rtol=1e-6
    )


# ---------------------------------------------------------------------------------------
# reductions, sample weights, mini-batches

ALL = [L.KR(), L.HKR(0.5, 1.0), L.HingeMargin(1.0), L.TauBinaryCrossentropy(2.0)]
ALL_MC = [*MULTICLASS, L.TauCategoricalCrossentropy(2.0)]


def _cases():
    for loss in ALL:
        yield pytest.param(loss, Y_BIN, F_BIN, id=loss.name)
    for loss in ALL_MC:
        yield pytest.param(loss, Y_MC, F_MC, id=loss.name)
    sparse = L.TauSparseCategoricalCrossentropy(2.0)
    yield pytest.param(sparse, np.array([0, 1, 2, 1]), F_MC, id=sparse.name)


@pytest.mark.parametrize("loss,y,f", list(_cases()))
def test_every_reduction_and_sample_weight(loss, y, f):
    values = _values(loss, y, f)
    assert values.shape == (4,)
    weights = np.array([0.5, 2.0, 0.0, 1.0], "float32")
    config = loss.get_config()
    expected = {
        "sum": values.sum(),
        "sum_over_batch_size": values.mean(),
        "mean": values.mean(),
        "mean_with_sample_weight": values.mean(),
    }
    for reduction, value in expected.items():
        reduced = type(loss).from_config({**config, "reduction": reduction})
        assert float(reduced(y, f)) == pytest.approx(float(value), rel=1e-5, abs=1e-6)
    none = type(loss).from_config({**config, "reduction": None})
    np.testing.assert_allclose(none(y, f), values, rtol=1e-6)
    weighted = {
        "sum": (values * weights).sum(),
        "sum_over_batch_size": (values * weights).mean(),
        "mean_with_sample_weight": (values * weights).sum() / weights.sum(),
    }
    for reduction, value in weighted.items():
        reduced = type(loss).from_config({**config, "reduction": reduction})
        result = reduced(y, f, sample_weight=weights)
        assert float(result) == pytest.approx(float(value), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    "loss",
    [
        L.HingeMargin(0.5),
        L.TauBinaryCrossentropy(4.0),
    ],
    ids=lambda loss: loss.name,
)
def test_additive_binary_losses_minibatch_equals_full_batch(loss):
    rng = np.random.default_rng(1)
    f = rng.normal(size=(60, 1)).astype("float32")
    y = rng.integers(0, 2, size=(60, 1)).astype("float32")
    full = float(loss(y, f))
    parts = [float(loss(y[i : i + 20], f[i : i + 20])) for i in (0, 20, 40)]
    assert full == pytest.approx(np.mean(parts), rel=1e-6)


@pytest.mark.parametrize(
    "loss",
    [
        L.MulticlassHinge(0.5),
        L.MultiMargin(0.5),
        L.CategoricalHinge(0.5),
        L.TauCategoricalCrossentropy(5.0),
        L.LseHKR(0.8, 0.5),
        L.MulticlassSoftHKR(0.8, 0.5, alpha_mean=1.0),
    ],
    ids=lambda loss: loss.name,
)
def test_additive_multiclass_losses_minibatch_equals_full_batch(loss):
    rng = np.random.default_rng(2)
    f = rng.normal(size=(60, 5)).astype("float32")
    y = np.eye(5, dtype="float32")[rng.integers(0, 5, 60)]
    full = float(loss(y, f))
    parts = [float(loss(y[i : i + 20], f[i : i + 20])) for i in (0, 20, 40)]
    assert full == pytest.approx(np.mean(parts), rel=1e-5)


def test_kr_is_a_batch_level_term():
    # the mean of mini-batch KR values is not the full-batch KR: class means are per batch
    y = np.array([[1.0], [1.0], [0.0], [1.0], [0.0], [0.0]])
    f = np.array([[1.0], [2.0], [0.0], [4.0], [-2.0], [1.0]])
    # full: positives 1, 2, 4 (mean 7/3); negatives 0, -2, 1 (mean -1/3): KR = 8/3
    assert float(L.KR()(y, f)) == pytest.approx(8.0 / 3.0)
    # halves: (1.5 - 0) and (4 - (-0.5)): mean 3.0
    halves = [float(L.KR()(y[:3], f[:3])), float(L.KR()(y[3:], f[3:]))]
    assert halves == pytest.approx([1.5, 4.5])


# ---------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("loss,y,f", list(_cases()))
def test_gradients_are_finite_and_match_finite_differences(loss, y, f):
    # a small random shift keeps every hinge away from its kink
    f = f + np.random.default_rng(3).uniform(-0.01, 0.01, size=f.shape)
    f64 = tf.constant(f, "float64")
    config = {**loss.get_config(), "dtype": "float64"}
    if "alpha_mean" in config:
        config["alpha_mean"] = 1.0  # no state change between the evaluations
    loss64 = type(loss).from_config(config)
    with tf.GradientTape() as tape:
        tape.watch(f64)
        value = loss64(y, f64)
    grad = tape.gradient(value, f64).numpy()
    assert np.all(np.isfinite(grad))
    eps = 1e-6
    numeric = np.zeros_like(grad)
    for index in np.ndindex(*f.shape):
        step = np.zeros(f.shape)
        step[index] = eps
        numeric[index] = (float(loss64(y, f64 + step)) - float(loss64(y, f64 - step))) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, atol=1e-6)


# ---------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "loss,y,f",
    [
        (L.KR(), np.zeros((4, 2)), F_BIN),
        (L.HKR(0.5), np.zeros((3, 1)), F_BIN),
        (L.HingeMargin(), np.zeros((4, 2)), F_MC),
        (L.MulticlassHKR(), np.zeros((4, 2)), F_MC),
        (L.MulticlassSoftHKR(), np.zeros((4,)), F_MC),
        (L.CategoricalHinge(), np.zeros((4, 4)), F_MC),
        (L.TauCategoricalCrossentropy(), np.zeros((2, 3)), F_MC),
        (L.TauBinaryCrossentropy(), np.zeros((4, 2)), F_BIN),
        (L.TauSparseCategoricalCrossentropy(), np.zeros((4, 3)), F_MC),
    ],
    ids=lambda c: getattr(c, "name", None),
)
def test_shape_mismatch_raises_naming_both_shapes(loss, y, f):
    with pytest.raises(ValueError, match=r"y_true.*shape.*y_pred\.shape"):
        loss(y, f)


def test_bad_label_values_raise():
    with pytest.raises(ValueError, match=r"y_true must be labels in \{0, 1\}.*0\.5"):
        L.HKR(0.5)(np.array([[1.0], [0.5], [0.0], [1.0]]), F_BIN)
    with pytest.raises(ValueError, match="y_true"):  # a mix of both encodings
        L.KR()(np.array([[1.0], [0.0], [-1.0], [1.0]]), F_BIN)
    with pytest.raises(ValueError, match="y_true"):
        L.MulticlassHKR()(Y_MC * 2.0, F_MC)
    with pytest.raises(ValueError, match="exactly one positive"):
        L.CategoricalHinge()(np.ones((4, 3)), F_MC)
    with pytest.raises(ValueError, match="exactly one positive"):
        L.MultiMargin()(np.zeros((4, 3)), F_MC)
    with pytest.raises(ValueError, match=r"integer labels in \[0, 3\)"):
        L.TauSparseCategoricalCrossentropy()(np.array([0, 1, 3, 1]), F_MC)
    with pytest.raises(ValueError, match=r"integer labels in \[0, 3\)"):
        L.TauSparseCategoricalCrossentropy()(np.array([0, 1, 1.5, 1]), F_MC)
    with pytest.raises(ValueError, match="at least 2 classes"):
        L.MulticlassHKR()(Y_BIN, F_BIN)
    with pytest.raises(ValueError, match=r"\(batch, outputs\)"):
        L.KR()(np.zeros((2, 2, 1)), np.zeros((2, 2, 1)))


@pytest.mark.parametrize(
    "factory,argument",
    [
        (lambda: L.HKR(alpha=-0.1), "alpha"),
        (lambda: L.HKR(alpha=float("nan")), "alpha"),
        (lambda: L.HKR(alpha="1"), "alpha"),
        (lambda: L.HKR(0.5, min_margin=0.0), "min_margin"),
        (lambda: L.HingeMargin(min_margin=-1.0), "min_margin"),
        (lambda: L.MulticlassSoftHKR(alpha_mean=1.5), "alpha_mean"),
        (lambda: L.MulticlassSoftHKR(temperature=0.0), "temperature"),
        (lambda: L.LseHKR(penalty=float("inf")), "penalty"),
        (lambda: L.TauCategoricalCrossentropy(tau=0.0), "tau"),
        (lambda: L.TauBinaryCrossentropy(tau=True), "tau"),
    ],
)
def test_invalid_hyper_parameters_raise_naming_the_argument(factory, argument):
    with pytest.raises(ValueError, match=rf"^{argument} must .* received"):
        factory()


def test_invalid_reduction_raises():
    with pytest.raises(ValueError, match="reduction"):
        L.HKR(0.5, reduction="max")


def test_alpha_follows_deel_lip_and_convex_is_explicit():
    # deel-lip: -KR + alpha * hinge for every alpha, no warning, no conversion
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = L.MulticlassHKR(alpha=10.0)
    assert float(loss.alpha) == 10.0
    expected = -L.MulticlassKR()(Y_MC, F_MC) + 10.0 * L.MulticlassHinge()(Y_MC, F_MC)
    assert float(loss(Y_MC, F_MC)) == pytest.approx(float(expected), rel=1e-5)
    # the convex form refuses alpha > 1 instead of converting it
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\] with convex=True"):
        L.HKR(alpha=1.5, convex=True)
    # same objective up to a positive factor: convex a <-> a / (1 - a), times (1 - a)
    a = 0.8
    convex = float(L.MulticlassHKR(a, convex=True)(Y_MC, F_MC))
    default = float(L.MulticlassHKR(a / (1 - a))(Y_MC, F_MC))
    assert convex == pytest.approx((1 - a) * default, rel=1e-5)


def test_setting_a_hyper_parameter_assigns_and_checks():
    loss = L.HKR(0.5, 1.0)
    variable = loss.alpha
    assert isinstance(variable, keras.Variable) and not variable.trainable
    loss.alpha = 0.0
    assert loss.alpha is variable and float(variable) == 0.0
    assert float(loss(Y_BIN, F_BIN)) == pytest.approx(-1.25)
    with pytest.raises(ValueError, match="min_margin"):
        loss.min_margin = -2.0
    assert loss.get_config()["alpha"] == 0.0


# ---------------------------------------------------------------------------------------
# configs

CONFIGURED = [
    L.KR(reduction="sum", name="kr"),
    L.HKR(0.25, 0.3, reduction="none"),
    L.HingeMargin(0.4),
    L.MulticlassKR(),
    L.MulticlassHinge(0.6),
    L.MulticlassHKR(0.7, 0.8, reduction="mean"),
    L.MulticlassSoftHKR(0.3, 0.2, alpha_mean=0.9, temperature=4.0),
    L.LseHKR(0.2, 0.3, temperature=2.0, penalty=0.5),
    L.MultiMargin(0.9),
    L.CategoricalHinge(1.1, dtype="float64"),
    L.TauCategoricalCrossentropy(12.0),
    L.TauSparseCategoricalCrossentropy(3.0),
    L.TauBinaryCrossentropy(0.5),
]


@pytest.mark.parametrize("loss", CONFIGURED, ids=lambda loss: loss.name)
def test_config_round_trip(loss):
    config = loss.get_config()
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    assert set(config) >= {"name", "reduction", "dtype", *type(loss)._hyper_parameters}
    for key in type(loss)._hyper_parameters:
        assert getattr(clone, key) is not getattr(loss, key)  # own variables
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    if isinstance(loss, L.TauSparseCategoricalCrossentropy):
        y = np.array([0, 1, 2, 1])
    else:
        y = Y_MC
    np.testing.assert_allclose(restored(y, F_MC), loss(y, F_MC), rtol=1e-6)


def test_dtype_argument_sets_the_computation_dtype():
    value = L.HKR(0.5, dtype="float64")(Y_BIN, F_BIN)
    assert keras.backend.standardize_dtype(value.dtype) == "float64"
    assert L.HKR(0.5, dtype="float64").get_config()["dtype"] == "float64"
