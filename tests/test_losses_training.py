"""Losses inside model.fit: scheduled hyper-parameters, save/load, training on digits."""

import keras
import numpy as np
import pytest

from deel_lip import losses as L
from deel_lip.callbacks import LossParamScheduler
from deel_lip.datasets import train_test_split
from deel_lip.layers import GroupSort2, SpectralDense


def _frozen_model(outputs, seed=0):
    """A model whose predictions do not change during fit (learning rate 0)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(outputs)])
    return model


def _data(outputs, n=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype("float32")
    if outputs == 1:
        y = rng.integers(0, 2, size=(n, 1)).astype("float32")
    else:
        y = np.eye(outputs, dtype="float32")[np.arange(n) % outputs]
    return x, y


SCHEDULED = [
    pytest.param(lambda: L.HKR(0.5, 1.0), "alpha", [0.0, 0.5, 1.0], 1, id="HKR-alpha"),
    pytest.param(
        lambda: L.MulticlassHKR(0.5, 1.0), "alpha", [0.1, 0.6, 0.9], 3, id="MulticlassHKR-alpha"
    ),
    pytest.param(
        lambda: L.MulticlassHinge(1.0),
        "min_margin",
        [0.5, 1.0, 3.0],
        3,
        id="MulticlassHinge-min_margin",
    ),
    pytest.param(
        lambda: L.MulticlassSoftHKR(0.5, 1.0, 1.0, 1.0),
        "temperature",
        [0.5, 2.0, 8.0],
        3,
        id="MulticlassSoftHKR-temperature",
    ),
    pytest.param(lambda: L.LseHKR(0.5, 1.0), "penalty", [0.5, 1.0, 4.0], 3, id="LseHKR-penalty"),
    pytest.param(
        lambda: L.TauCategoricalCrossentropy(1.0),
        "tau",
        [0.5, 4.0, 20.0],
        3,
        id="TauCategoricalCrossentropy-tau",
    ),
]


@pytest.mark.parametrize("factory,param,values,outputs", SCHEDULED)
def test_scheduled_hyper_parameter_reaches_the_compiled_train_step(factory, param, values, outputs):
    x, y = _data(outputs)
    model = _frozen_model(outputs)
    model.compile(keras.optimizers.SGD(0.0), factory())
    predictions = model.predict(x, verbose=0)
    # one batch per epoch: epoch e trains with values[e]
    scheduler = LossParamScheduler(param, fp=values, xp=[0, 1, 2])
    history = model.fit(x, y, epochs=3, batch_size=len(x), verbose=0, callbacks=[scheduler])
    expected = []
    for value in values:
        reference = factory()
        setattr(reference, param, value)
        expected.append(float(reference(y, predictions)))
    assert len(set(np.round(expected, 4))) == 3  # the values do change the loss
    np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-5, atol=1e-6)
    assert model.loss.get_config()[param] == pytest.approx(values[-1])
    # a plain assignment between two fits reaches the already compiled step as well
    setattr(model.loss, param, values[0])
    history = model.fit(x, y, epochs=1, batch_size=len(x), verbose=0)
    assert history.history["loss"][0] == pytest.approx(expected[0], rel=1e-5, abs=1e-6)


def test_saved_model_restores_the_loss_and_its_current_hyper_parameters(tmp_path):
    x, y = _data(3, 32)
    model = _frozen_model(3)
    model.compile(keras.optimizers.SGD(0.01), L.MulticlassHKR(0.5, 0.8, reduction="sum"))
    model.fit(x, y, epochs=1, verbose=0)
    model.loss.alpha = 0.25  # e.g. set by a scheduler
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert type(reloaded.loss) is L.MulticlassHKR
    assert reloaded.loss.get_config() == model.loss.get_config()
    assert reloaded.loss.get_config()["alpha"] == 0.25
    assert reloaded.loss.get_config()["reduction"] == "sum"
    np.testing.assert_allclose(
        reloaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6
    )


def test_labels_are_checked_when_running_eagerly():
    x, y = _data(1)
    model = _frozen_model(1)
    model.compile("sgd", L.HKR(0.5), run_eagerly=True)
    model.fit(x, y, epochs=1, verbose=0)
    model.fit(x, 2.0 * y - 1.0, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="y_true"):
        model.fit(x, 0.5 * y, epochs=1, verbose=0)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_compiled_and_eager_training_agree(jit_compile):
    x, y = _data(3, 32)
    weights = []
    for run_eagerly in (True, False):
        model = _frozen_model(3, seed=4)
        model.compile(
            keras.optimizers.SGD(0.1),
            L.MulticlassSoftHKR(0.7, 0.5, alpha_mean=0.9, temperature=2.0),
            run_eagerly=run_eagerly,
            jit_compile=jit_compile and not run_eagerly,
        )
        model.fit(x, y, epochs=3, batch_size=8, verbose=0, shuffle=False)
        weights.append([np.asarray(w) for w in model.weights])
        # the running mean of |f| was updated inside the compiled step too
        assert float(model.loss.current_mean) != pytest.approx(0.5)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_multiclass_hkr_trains_a_lipschitz_model_on_digits(digits):
    images, labels = digits
    x_train, y_train, x_test, y_test = train_test_split(
        images.reshape(len(images), -1), labels, n_test=500
    )
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            SpectralDense(64),
            GroupSort2(),
            SpectralDense(32),
            GroupSort2(),
            SpectralDense(10),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-2), L.MulticlassHKR(alpha=0.9, min_margin=0.5))
    model.fit(x_train, keras.utils.to_categorical(y_train, 10), epochs=4, batch_size=64, verbose=0)
    accuracy = np.mean(np.argmax(model.predict(x_test, verbose=0), axis=-1) == y_test)
    assert accuracy > 0.8
