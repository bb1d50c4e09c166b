"""Clipless DP-SGD from model.fit: noise scale, sampling, budget, errors, real-digit training."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from deel_lip import dp, losses
from deel_lip import layers as dl
from deel_lip.datasets import train_test_split


def _mlp(hidden=64):
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Flatten(),
            dl.SpectralDense(hidden),
            dl.GroupSort2(),
            dl.SpectralDense(10),
        ]
    )


def _private(model=None, **kwargs):
    args = {"input_norm": 5.0, "noise_multiplier": 1.0, "batch_size": 50, "dataset_size": 1000}
    args.update(kwargs)
    return dp.make_private(model or _mlp(), **args)


@pytest.mark.parametrize("noise", ["per-layer", "global"])
@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_noise_has_the_calibrated_scale(mnist_small, noise, sampling):
    """update * B - sum of per-sample gradients is N(0, std^2) with the documented std."""
    images, labels = mnist_small
    private = _private(noise=noise, sampling=sampling, noise_multiplier=0.7)
    loss = losses.TauCategoricalCrossentropy(10.0)
    private.compile(keras.optimizers.SGD(1.0), loss)
    linear = [b for b in private.layer_bounds if b.has_parameters]
    for bound in linear:  # no projection: the update is the noisy gradient
        bound.layer.kernel.constraint = None
    x, y = images[:50], keras.utils.to_categorical(labels[:50], 10)
    variables = [v for b in private.layer_bounds for v in b.variables()]
    before = [v.numpy() for v in variables]
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(dp.per_sample_losses(loss, y, private(x)))
    clean = [g.numpy() for g in tape.gradient(total, variables)]
    bounds = [float(c) for _, c in private.per_sample_bounds()]
    private.train_on_batch(x, y)
    factor = 0.7 * (2.0 if sampling == "fixed" else 1.0)
    if noise == "global":
        expected = [factor * math.sqrt(sum(c * c for c in bounds))] * len(bounds)
    else:
        expected = [factor * math.sqrt(len(bounds)) * c for c in bounds]
    kernels = [b.layer.kernel for b in linear]
    for kernel, std in zip(kernels, expected):
        i = next(j for j, v in enumerate(variables) if v is kernel)
        noise_values = (before[i] - kernel.numpy()) * 50 - clean[i]
        assert noise_values.std() == pytest.approx(std, rel=0.05)
        assert abs(noise_values.mean()) < 0.05 * std


def test_private_batches_follow_the_sampling():
    x = np.arange(2000, dtype="float32")[:, None]
    y = np.zeros(2000, "float32")
    poisson = [
        len(b[0]) for b in dp.private_batches(x, y, batch_size=100, sampling="poisson").take(200)
    ]
    assert np.mean(poisson) == pytest.approx(100, rel=0.03)
    assert np.std(poisson) == pytest.approx(math.sqrt(100 * (1 - 0.05)), rel=0.25)
    fixed = list(dp.private_batches(x, y, batch_size=100, sampling="fixed", seed=3).take(20))
    for bx, _ in fixed:
        assert len(np.unique(bx.numpy())) == 100
    again = list(dp.private_batches(x, y, batch_size=100, sampling="fixed", seed=3).take(20))
    np.testing.assert_array_equal(fixed[5][0].numpy(), again[5][0].numpy())


def test_clip_norm_projects_on_the_ball(mnist_small):
    images, _ = mnist_small
    out = dp.ClipNorm(4.0)(images).numpy()
    norms = np.linalg.norm(out.reshape(len(out), -1), axis=1)
    assert norms.max() <= 4.0 * (1 + 1e-6)
    small = images * 0.1
    np.testing.assert_allclose(dp.ClipNorm(4.0)(small).numpy(), small, rtol=1e-6)


def test_private_training_beats_chance_and_callback_epsilon_matches(mnist):
    images, labels = mnist
    x_train, y_train, x_test, y_test = train_test_split(images, labels, n_test=1000)
    n, batch = len(x_train), 200
    sigma = dp.noise_multiplier_for(8.0, 1e-5, 2, batch_size=batch, dataset_size=n)
    private = _private(
        input_norm=8.0,
        noise_multiplier=sigma,
        batch_size=batch,
        dataset_size=n,
        model=_mlp(128),
    )
    private.compile(
        keras.optimizers.Adam(1e-2), losses.TauCategoricalCrossentropy(8.0), metrics=["accuracy"]
    )
    y1 = keras.utils.to_categorical(y_train, 10)
    budget = dp.PrivacyBudgetCallback(1e-5)
    history = private.fit(
        dp.private_batches(x_train, y1, private),
        epochs=2,
        steps_per_epoch=n // batch,
        callbacks=[budget],
        verbose=0,
        shuffle=False,
    )
    accuracy = np.mean(private.predict(x_test, verbose=0).argmax(1) == y_test)
    print("private accuracy", accuracy, "epsilon", history.history["epsilon"])
    assert accuracy > 0.6  # chance is 0.1
    expected = dp.compute_epsilon(sigma, 2 * n // batch, 1e-5, batch_size=batch, dataset_size=n)
    assert history.history["epsilon"][-1] == pytest.approx(expected, rel=1e-12)
    assert expected <= 8.0 + 1e-6
    # the plain twin predicts the same and certifies with a Lipschitz constant of 1
    plain = private.to_keras()
    np.testing.assert_allclose(
        plain.predict(x_test[:20], verbose=0), private.predict(x_test[:20], verbose=0), rtol=1e-6
    )


def test_budget_callback_stops_at_the_last_step_within_budget(mnist_small):
    images, labels = mnist_small
    private = _private(noise_multiplier=0.8, batch_size=100, dataset_size=1000)
    private.compile("sgd", losses.TauCategoricalCrossentropy(8.0))
    kwargs = {"batch_size": 100, "dataset_size": 1000}
    limit = dp.compute_epsilon(0.8, 25, 1e-5, **kwargs) * 1.0001  # 25 steps fit, 26 do not
    assert dp.compute_epsilon(0.8, 26, 1e-5, **kwargs) > limit
    budget = dp.PrivacyBudgetCallback(1e-5, epsilon_budget=limit)
    batches = dp.private_batches(images, keras.utils.to_categorical(labels, 10), private)
    history = private.fit(
        batches, epochs=10, steps_per_epoch=10, callbacks=[budget], verbose=0, shuffle=False
    )
    assert budget.steps == 25  # mid-epoch
    assert len(history.history["epsilon"]) == 3
    assert history.history["epsilon"][-1] == pytest.approx(limit / 1.0001, rel=1e-12)
    with pytest.raises(ValueError, match="no step can run within the budget"):
        private.fit(batches, epochs=1, steps_per_epoch=10, callbacks=[budget], verbose=0)


@pytest.mark.parametrize(
    "layer,pattern",
    [
        (keras.layers.BatchNormalization(name="bn"), "'bn' .*batch statistics"),
        (keras.layers.Dropout(0.1, name="drop"), "'drop' .*active in training"),
        (keras.layers.Dense(10, name="plain"), "'plain' .*unconstrained"),
        (dl.SpectralDense(10, activation="tanh", name="tanh_dense"), "'tanh_dense'.*activation"),
        (dl.PReLUlip(name="prelu"), "'prelu'"),
        (keras.layers.LayerNormalization(name="ln"), "'ln'"),
    ],
)
def test_unsupported_layers_are_named(layer, pattern):
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), layer])
    with pytest.raises(ValueError, match=pattern):
        _private(model)


def test_residual_model_refused():
    inputs = keras.Input((16,))
    hidden = dl.SpectralDense(16, name="a")(inputs)
    outputs = keras.layers.Add(name="skip")([hidden, inputs])
    with pytest.raises(ValueError, match="'skip'"):
        _private(keras.Model(inputs, outputs))


@pytest.mark.parametrize(
    "loss",
    [
        losses.KR(),
        losses.MulticlassKR(),
        losses.HKR(alpha=10.0),
        losses.MulticlassHKR(),
        losses.MulticlassSoftHKR(),
        keras.losses.CategoricalCrossentropy(),
    ],
    ids=lambda loss: loss.name,
)
def test_unsupported_losses_are_named(loss):
    with pytest.raises(ValueError, match=type(loss).__name__):
        _private().compile("sgd", loss)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"input_norm": 0.0}, "input_norm"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"batch_size": 2000}, "batch_size"),
        ({"dataset_size": 0}, "dataset_size"),
        ({"sampling": "shuffle"}, "sampling"),
        ({"noise": "layerwise"}, "noise"),
    ],
)
def test_invalid_configs_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        _private(**kwargs)


def test_sample_weight_refused(mnist_small):
    images, labels = mnist_small
    private = _private()
    private.compile("sgd", losses.TauCategoricalCrossentropy(8.0))
    y = keras.utils.to_categorical(labels[:50], 10)
    with pytest.raises(ValueError, match="sample_weight"):
        private.train_on_batch(images[:50], y, sample_weight=np.ones(50))


def test_private_model_saves_and_resumes(mnist_small, tmp_path):
    """A saved private twin loads with its privacy parameters, bounds and projections."""
    images, labels = mnist_small
    private = _private(noise="global")
    private.compile(keras.optimizers.Adam(1e-3), losses.MulticlassHinge(min_margin=1.0))
    y = keras.utils.to_categorical(labels[:100], 10)
    private.fit(images[:100], y, batch_size=50, epochs=1, verbose=0, shuffle=False)
    path = tmp_path / "private.keras"
    private.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, dp.PrivateSequential)
    assert loaded.dp_config == private.dp_config
    np.testing.assert_allclose(
        loaded.predict(images[:20], verbose=0), private.predict(images[:20], verbose=0), rtol=1e-6
    )
    saved = {b.name: float(c) for b, c in private.per_sample_bounds()}
    assert {b.name: float(c) for b, c in loaded.per_sample_bounds()} == pytest.approx(saved)
    loaded.fit(images[:100], y, batch_size=50, epochs=1, verbose=0, shuffle=False)
    for bound in loaded.layer_bounds:
        if bound.projection is not None:
            kernel = bound.layer.kernel.numpy()
            assert np.linalg.norm(kernel, 2) <= bound.projection[0] * (1 + 1e-5)
