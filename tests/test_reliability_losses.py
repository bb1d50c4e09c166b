"""Reliability of the losses, metrics and certificates (issue 14) and deel-lip's loss
semantics (issue 15): invalid labels, NaN, persistence of running statistics, per-row
certificates, and the values of deel-lip's formulas written in numpy."""

import math
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from deel_lip import losses as L
from deel_lip import metrics as M
from deel_lip.robustness import certified_accuracy, certified_radius

RNG = np.random.default_rng(0)
F_MC = RNG.normal(size=(6, 4)).astype("float32")
IDS = np.array([0, 1, 2, 3, 1, 2])
Y_MC = np.eye(4, dtype="float32")[IDS]
F_BIN = RNG.normal(size=(6, 1)).astype("float32")
Y_BIN = np.array([[1.0], [0.0], [1.0], [0.0], [0.0], [1.0]], "float32")
MULTI_HOT = Y_MC.copy()
MULTI_HOT[1, 0] = 1.0

# ---------------------------------------------------------------------------------------
# deel-lip's formulas, in numpy


def _np_kr(y, f):
    s = (y > 0).astype("float64")
    n, n_pos = len(y), s.sum(0)
    pos, neg = s / (n_pos + 1e-7), (1 - s) / (n - n_pos + 1e-7)
    return np.mean(n * f * (pos - neg), axis=-1)


def _np_hinge(y, f, m):
    return np.mean(np.maximum(m / 2 - np.where(y > 0, 1.0, -1.0) * f, 0.0), axis=-1)


def _np_multiclass_hinge(y, f, m):
    sign = np.where(y > 0, 1.0, -1.0)
    hinge = np.maximum(m / 2 - sign * f, 0.0)
    return np.mean(np.where(sign > 0, hinge * (f.shape[-1] - 1), hinge), axis=-1)


def _np_hkr(y, f, alpha, m, hinge):
    return hinge(y, f, m) if math.isinf(alpha) else -_np_kr(y, f) + alpha * hinge(y, f, m)


def _np_soft_hkr(y, f, alpha, m, alpha_mean, temperature, mu=None):
    mu = m if mu is None else mu
    mu = np.clip(alpha_mean * mu + (1 - alpha_mean) * np.abs(f).mean(), 0.005, 1000)
    t = np.clip(temperature * m / np.clip(mu, m, 20000), 0.005, 250)
    z = np.where(y > 0, -np.inf, t * f)
    soft = np.exp(z - z.max(-1, keepdims=True))
    soft = np.where(y > 0, 1.0, soft / soft.sum(-1, keepdims=True))
    signed = np.where(y > 0, 1.0, -1.0) * f
    kr = np.sum(-signed * soft, axis=-1)
    hinge = np.sum(np.maximum(m / 2 - signed, 0.0) * soft, axis=-1)
    return (hinge if math.isinf(alpha) else kr / alpha + hinge), mu


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_bce_logits(y, x):
    z = (y > 0).astype("float64")
    return np.mean(np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x))), axis=-1)


DEEL_LIP = [
    ("KR", lambda: L.KR(), lambda: _np_kr(Y_BIN, F_BIN), "bin"),
    ("MulticlassKR", lambda: L.MulticlassKR(), lambda: _np_kr(Y_MC, F_MC), "mc"),
    ("HingeMargin", lambda: L.HingeMargin(0.7), lambda: _np_hinge(Y_BIN, F_BIN, 0.7), "bin"),
    (
        "MulticlassHinge",
        lambda: L.MulticlassHinge(0.7),
        lambda: _np_multiclass_hinge(Y_MC, F_MC, 0.7),
        "mc",
    ),
    ("HKR-0.5", lambda: L.HKR(0.5), lambda: _np_hkr(Y_BIN, F_BIN, 0.5, 1.0, _np_hinge), "bin"),
    ("HKR-30", lambda: L.HKR(30.0, 0.4), lambda: _np_hkr(Y_BIN, F_BIN, 30, 0.4, _np_hinge), "bin"),
    ("HKR-inf", lambda: L.HKR(math.inf), lambda: _np_hinge(Y_BIN, F_BIN, 1.0), "bin"),
    (
        "MulticlassHKR-default",
        lambda: L.MulticlassHKR(),
        lambda: _np_hkr(Y_MC, F_MC, 10.0, 1.0, _np_multiclass_hinge),
        "mc",
    ),
    (
        "MulticlassHKR-5",
        lambda: L.MulticlassHKR(5.0, 0.6),
        lambda: _np_hkr(Y_MC, F_MC, 5.0, 0.6, _np_multiclass_hinge),
        "mc",
    ),
    (
        "MulticlassSoftHKR",
        lambda: L.MulticlassSoftHKR(),
        lambda: _np_soft_hkr(Y_MC, F_MC, 10.0, 1.0, 0.99, 1.0)[0],
        "mc",
    ),
    (
        "MulticlassSoftHKR-mu",
        lambda: L.MulticlassSoftHKR(4.0, 0.5, alpha_mean=0.5, temperature=3.0),
        lambda: _np_soft_hkr(Y_MC, F_MC, 4.0, 0.5, 0.5, 3.0)[0],
        "mc",
    ),
    (
        "TauCategoricalCrossentropy",
        lambda: L.TauCategoricalCrossentropy(3.0),
        lambda: -np.sum(Y_MC * _np_log_softmax(3.0 * F_MC), -1) / 3.0,
        "mc",
    ),
    (
        "TauSparseCategoricalCrossentropy",
        lambda: L.TauSparseCategoricalCrossentropy(3.0),
        lambda: -np.sum(Y_MC * _np_log_softmax(3.0 * F_MC), -1) / 3.0,
        "ids",
    ),
    (
        "TauBinaryCrossentropy",
        lambda: L.TauBinaryCrossentropy(2.0),
        lambda: _np_bce_logits(Y_BIN, 2.0 * F_BIN) / 2.0,
        "bin",
    ),
]
REDUCTIONS = ["auto", "sum_over_batch_size", "sum", "mean", "none", None]


def _data(kind):
    return {"bin": (Y_BIN, F_BIN), "mc": (Y_MC, F_MC), "ids": (IDS, F_MC)}[kind]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,make,expected,kind", DEEL_LIP, ids=[c[0] for c in DEEL_LIP])
def test_values_equal_deel_lip_formulas_with_every_reduction(name, make, expected, kind, reduction):
    config = make().get_config()
    loss = type(make()).from_config({**config, "reduction": reduction})
    values = expected().astype("float64")
    want = {"sum": values.sum(), "none": values, None: values}.get(reduction, values.mean())
    np.testing.assert_allclose(np.asarray(loss(*_data(kind))), want, rtol=2e-5, atol=1e-6)


def test_soft_hkr_running_mean_follows_deel_lip_over_calls():
    loss = L.MulticlassSoftHKR(2.0, 1.0, alpha_mean=0.6)
    mu = None
    for scale in (1.0, 5.0, 0.3):
        want, mu = _np_soft_hkr(Y_MC, scale * F_MC, 2.0, 1.0, 0.6, 1.0, mu)
        np.testing.assert_allclose(float(loss(Y_MC, scale * F_MC)), want.mean(), rtol=2e-5)
        assert float(loss.current_mean) == pytest.approx(mu, rel=1e-6)


def test_multi_gpu_is_accepted_and_preprocessed_labels_give_the_same_loss():
    processed = np.asarray(L.process_labels_for_multi_gpu(Y_MC))
    n_pos = Y_MC.sum(0)
    np.testing.assert_allclose(processed, np.where(Y_MC > 0, 6 / n_pos, -6 / (6 - n_pos)))
    for make in (L.MulticlassKR, L.MulticlassHKR):
        with pytest.warns(UserWarning, match=r"multi_gpu=True\): not needed"):
            loss = make(multi_gpu=True)
        assert loss.get_config()["multi_gpu"] is True
        assert float(loss(processed, F_MC)) == pytest.approx(float(make()(Y_MC, F_MC)), rel=1e-6)
    with pytest.warns(UserWarning):
        with pytest.raises(ValueError, match="y_true must be finite non-zero"):
            L.KR(multi_gpu=True)(np.zeros((2, 1)), np.ones((2, 1)))


def test_configs_saved_before_convex_keep_their_objective():
    old = {"name": "MulticlassHKR", "reduction": "sum_over_batch_size", "dtype": None}
    with pytest.warns(UserWarning, match="deel_lip < 2"):
        loss = L.MulticlassHKR.from_config({**old, "alpha": 0.9, "min_margin": 1.0})
    assert loss.convex and float(loss.alpha) == pytest.approx(0.9)
    soft = {**old, "name": "s", "alpha": 0.9, "min_margin": 1.0, "alpha_mean": 1.0}
    with pytest.warns(UserWarning, match="deel_lip < 2"):
        assert L.MulticlassSoftHKR.from_config({**soft, "temperature": 1.0}).convex
    # deel-lip's own configs (no dtype key) keep deel-lip's semantics
    deel = {"name": "HKR", "reduction": "auto", "alpha": 10.0, "min_margin": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert not L.HKR.from_config({**deel, "multi_gpu": False}).convex
    new = L.HKR(5.0).get_config()
    assert new["convex"] is False and not L.HKR.from_config(new).convex


# ---------------------------------------------------------------------------------------
# invalid labels: eager ValueError, traced NaN / not certified

BAD_LABELS = [
    ("KR-two", L.KR, np.array([[0.0], [2.0]]), np.ones((2, 1)), "{0, 1} or in {-1, +1}"),
    ("HKR-nan", lambda: L.HKR(2.0), np.array([[1.0], [np.nan]]), np.ones((2, 1)), "{0, 1}"),
    ("HingeMargin-mix", L.HingeMargin, np.array([[1.0], [0.0], [-1.0]]), np.ones((3, 1)), "one"),
    ("MulticlassHKR-nan", L.MulticlassHKR, Y_MC * np.nan, F_MC, "{0, 1}"),
    ("MulticlassSoftHKR-2", L.MulticlassSoftHKR, 2 * Y_MC, F_MC, "{0, 1}"),
    ("MultiMargin-multihot", L.MultiMargin, MULTI_HOT, F_MC, "exactly one positive"),
    ("CategoricalHinge-zeros", L.CategoricalHinge, 0 * Y_MC, F_MC, "exactly one positive"),
    ("LseHKR-multihot", L.LseHKR, MULTI_HOT, F_MC, "exactly one positive"),
    ("TauCCE-pm1", L.TauCategoricalCrossentropy, 2 * Y_MC - 1, F_MC, "probability rows"),
    ("TauCCE-multihot", L.TauCategoricalCrossentropy, MULTI_HOT, F_MC, "probability rows"),
    ("TauCCE-nan", L.TauCategoricalCrossentropy, Y_MC * np.nan, F_MC, "probability rows"),
    ("TauSCCE-neg", L.TauSparseCategoricalCrossentropy, IDS - 1, F_MC, "[0, 4)"),
    ("TauSCCE-nan", L.TauSparseCategoricalCrossentropy, IDS * np.nan, F_MC, "[0, 4)"),
    ("TauBCE-two", L.TauBinaryCrossentropy, 2 * Y_BIN, F_BIN, "{0, 1}"),
]


@pytest.mark.parametrize("name,make,y,f,match", BAD_LABELS, ids=[c[0] for c in BAD_LABELS])
def test_invalid_labels_raise_eagerly_and_give_nan_under_xla(name, make, y, f, match):
    loss = make()
    with pytest.raises(ValueError, match=r"y_true must be .*" + re.escape(match)):
        loss(y, f)
    compiled = tf.function(loss.__call__, jit_compile=True)
    assert math.isnan(float(compiled(y.astype("float32"), f)))
    if f.shape[-1] == 1:
        valid_y = Y_BIN[: len(y)]
    else:
        valid_y = IDS if "SCCE" in name else Y_MC
    assert math.isfinite(float(compiled(valid_y.astype("float32"), f)))


def test_invalid_rows_keep_finite_gradients_in_fit():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    model.compile(keras.optimizers.SGD(0.1), L.TauCategoricalCrossentropy(2.0))
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(F_MC, MULTI_HOT, batch_size=6, epochs=1, verbose=0)
    assert math.isnan(history.history["loss"][0])
    after = model.get_weights()
    assert all(np.all(np.isfinite(w)) for w in after)
    assert any(not np.allclose(a, b) for a, b in zip(after, before))


def test_nan_predictions_give_nan_values_without_raising():
    for _, make, _, kind in DEEL_LIP:
        y, f = _data(kind)
        assert math.isnan(float(make()(y, f * np.nan)))


def test_metrics_refuse_invalid_labels_eagerly():
    logits = np.array([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]], "float32")
    for metric in (M.CategoricalProvableAvgRobustness(), M.CategoricalProvableRobustAccuracy()):
        with pytest.raises(ValueError, match=r"y_true must be class ids: integers in \[0, 3\)"):
            metric.update_state(np.array([-1, 0]), logits)
        with pytest.raises(ValueError, match="one-hot rows"):
            metric.update_state(np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), logits)
        with pytest.raises(ValueError, match="same number of samples"):
            metric.update_state(np.array([0, 1, 2]), logits)
    for metric in (M.BinaryProvableRobustAccuracy(), M.BinaryProvableAvgRobustness()):
        with pytest.raises(ValueError, match=r"y_true must be labels in \{0, 1\}"):
            metric.update_state(np.array([0.0, 2.0]), np.array([1.0, -1.0]))


def test_metrics_count_invalid_labels_as_not_certified_under_xla():
    logits = np.array([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]], "float32")
    labels = np.array([-1.0, 0.0, 1.0])  # issue 14: a class id of -1 counted as certified
    for metric, clean in (
        (M.CategoricalProvableAvgRobustness(), 2.5),
        (M.CategoricalProvableRobustAccuracy(0.5), 1.0),
    ):
        tf.function(metric.update_state, jit_compile=True)(labels, logits)
        assert float(metric.result()) == pytest.approx(2 * clean / 3)
    binary = M.BinaryProvableRobustAccuracy(0.1)
    tf.function(binary.update_state, jit_compile=True)(np.array([0.0, 2.0]), np.array([-1.0, 1.0]))
    assert float(binary.result()) == 0.0


def test_non_finite_logits_never_certify():
    logits = np.array([[np.inf, 1.0, 0.0], [3.0, 2.0, 0.0], [np.nan, 0.0, 1.0]], "float32")
    labels = np.array([0, 0, 2])
    radius = certified_radius(logits, labels, disjoint_neurons=True)
    assert np.isnan(radius[0]) and np.isnan(radius[2]) and radius[1] == pytest.approx(0.5)
    # issue 14: one NaN row wiped every certificate of its batch
    np.testing.assert_allclose(certified_radius([[np.nan, 1, 0], [3, 2, 0]], [1, 0])[1], 0.5)
    assert np.isnan(certified_radius(logits)[0]) and certified_radius(logits)[1] == 0.5
    model = keras.Sequential([keras.Input((3,)), keras.layers.Identity()])
    assert certified_accuracy(model, logits, labels, epsilons=0.1) == {0.1: pytest.approx(1 / 3)}
    for metric, value in ((M.CategoricalProvableAvgRobustness(), 0.5 / 3),):
        metric.update_state(labels, logits)
        assert float(metric.result()) == pytest.approx(value)
    inf_binary = M.BinaryProvableRobustAccuracy(1.0)
    inf_binary.update_state(np.array([1.0, 1.0]), np.array([np.inf, 2.0]))
    assert float(inf_binary.result()) == 0.5


def test_low_precision_logits_margin_in_float32_with_a_warning():
    # 256 - 0.5078125 = 255.4921875 is exact in float32, not in bfloat16 (8-bit mantissa)
    logits = tf.constant([[256.0, 0.5078125]], "bfloat16")
    with pytest.warns(UserWarning, match="1.003-Lipschitz"):
        radius = certified_radius(logits, [0], disjoint_neurons=True)
    assert radius.dtype == np.float32 and radius[0] == (256.0 - 0.5078125) / 2
    metric = M.CategoricalProvableAvgRobustness(disjoint_neurons=True)
    metric.update_state(np.array([0]), logits)
    assert float(metric.result()) == (256.0 - 0.5078125) / 2


# ---------------------------------------------------------------------------------------
# MulticlassSoftHKR running mean: NaN-robust and saved


def test_soft_hkr_running_mean_ignores_a_nan_batch():
    loss = L.MulticlassSoftHKR(alpha_mean=0.5)
    loss(Y_MC, F_MC)
    mean = float(loss.current_mean)
    assert math.isnan(float(loss(Y_MC, F_MC * np.nan)))
    assert float(loss.current_mean) == mean
    assert math.isfinite(float(loss(Y_MC, F_MC)))  # issue 14: every later batch was NaN


def _soft_model(seed=1):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile(keras.optimizers.Adam(1e-2), L.MulticlassSoftHKR(5.0, alpha_mean=0.5))
    return model


def test_soft_hkr_resumed_training_equals_uninterrupted(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = np.eye(4, dtype="float32")[rng.integers(0, 4, 64)]
    whole = _soft_model()
    whole.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    first = _soft_model()
    first.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    saved = float(first.loss.current_mean)
    assert saved != pytest.approx(1.0)  # the running mean moved during the first epoch
    first.save(tmp_path / "soft.keras")
    resumed = keras.models.load_model(tmp_path / "soft.keras")
    assert float(resumed.loss.current_mean) == pytest.approx(saved)
    resumed.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert float(resumed.loss.current_mean) == pytest.approx(float(whole.loss.current_mean))
    for a, b in zip(resumed.get_weights(), whole.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------
# metric API: snake_case names, reduction, multilabel binary


def test_metric_default_names_are_snake_case_in_history():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    model.compile("sgd", "mse", metrics=[M.CategoricalProvableRobustAccuracy(0.1)])
    history = model.fit(F_MC, Y_MC, epochs=1, verbose=0)
    assert "categorical_provable_robust_accuracy" in history.history
    names = {
        M.BinaryProvableRobustAccuracy().name,
        M.CategoricalProvableAvgRobustness().name,
        M.BinaryProvableAvgRobustness().name,
    }
    assert names == {
        "binary_provable_robust_accuracy",
        "categorical_provable_avg_robustness",
        "binary_provable_avg_robustness",
    }


def test_metric_reduction_argument():
    logits = np.array([[0.0, 4.0], [2.0, 0.0], [0.0, 1.0]], "float32")
    summed = M.CategoricalProvableAvgRobustness(disjoint_neurons=True, reduction="sum")
    summed.update_state(np.array([1, 0, 0]), logits)
    assert float(summed.result()) == pytest.approx(2.0 + 1.0)
    mean = M.CategoricalProvableAvgRobustness(disjoint_neurons=True, reduction="auto")
    mean.update_state(np.array([1, 0, 0]), logits)
    assert float(mean.result()) == pytest.approx(1.0)
    clone = type(summed).from_config(summed.get_config())
    assert clone.reduction == "sum"
    with pytest.raises(ValueError, match="reduction must be one of"):
        M.BinaryProvableRobustAccuracy(reduction="none")


def test_binary_metrics_on_multilabel_outputs():
    labels = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    logits = np.array([[2.0, -0.5, -1.0], [1.0, -3.0, 0.2]], "float32")
    signed = np.where(labels > 0, 1.0, -1.0) * logits / 2.0  # lip_const 2
    acc = M.BinaryProvableRobustAccuracy(0.2, lip_const=2.0)
    acc.update_state(labels, logits)
    assert float(acc.result()) == pytest.approx(np.mean(signed > 0.2))
    avg = M.BinaryProvableAvgRobustness(lip_const=2.0)
    avg.update_state(labels, logits, sample_weight=np.array([1.0, 3.0]))
    weights = np.array([[1.0], [3.0]]) * np.ones((2, 3))
    expected = np.sum(np.maximum(signed, 0) * weights) / weights.sum()
    assert float(avg.result()) == pytest.approx(expected)


def test_warnings_free_default_construction():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for make in (L.KR, L.MulticlassKR, L.MulticlassHKR, L.MulticlassSoftHKR):
            make()
        L.HKR(10.0)
