"""Feature visualisation (MACO, Fourier) of a 1-Lipschitz network trained on real digits.

The checks are on the model: a visualisation's reported activation is the model's value
on the returned image, and MACO's image of a class ranks that class first among the
logits; a channel visualisation activates its channel more than real digits do.
"""

import keras
import numpy as np
import pytest

from deel_lip.layers import GroupSort2, ScaledL2NormPooling2D, SpectralConv2D, SpectralDense
from deel_lip.losses import MulticlassHKR
from deel_lip.model import Sequential
from deel_lip.xai.features import (
    FeatureVisualization,
    feature_visualization,
    feature_visualizations,
    plot_feature_visualizations,
)
from deel_lip.xai.models import logits_model


@pytest.fixture(scope="module")
def otnn(mnist_small):
    """OTNN trained with MulticlassHKR on 1,000 real digits (100 per class)."""
    keras.utils.set_random_seed(0)
    x, y = mnist_small
    model = Sequential(
        [
            keras.Input((28, 28, 1)),
            SpectralConv2D(8, 3, name="conv1"),
            GroupSort2(),
            ScaledL2NormPooling2D(2),
            SpectralConv2D(16, 3, name="conv2"),
            GroupSort2(),
            ScaledL2NormPooling2D(2),
            keras.layers.Flatten(),
            SpectralDense(32),
            GroupSort2(),
            SpectralDense(10),
        ]
    )
    model.compile(keras.optimizers.Adam(3e-3), MulticlassHKR(alpha=0.98, min_margin=1.0))
    order = np.random.default_rng(0).permutation(len(x))
    model.fit(
        x[order], keras.utils.to_categorical(y[order], 10), batch_size=32, epochs=4, verbose=0
    )
    return model, x, y


@pytest.mark.parametrize("class_id", [0, 4])
def test_maco_image_ranks_its_class_first(otnn, class_id):
    model, x, _ = otnn
    result = feature_visualization(model, class_id, reference_images=x[:300], seed=class_id)
    assert isinstance(result, FeatureVisualization)
    assert result.image.shape == (28, 28, 1)
    assert result.image.min() >= 0.0 and result.image.max() <= 1.0
    logits = model.predict(result.image[None], verbose=0)[0]
    np.testing.assert_allclose(result.activation, logits[class_id], rtol=1e-4, atol=1e-5)
    assert result.rank == 1 + int(np.sum(logits > logits[class_id]))
    assert result.rank == 1 and result.success
    assert len(result.history) == 256 and result.transparency.shape == (28, 28, 1)


def test_channel_objective_beats_real_digits(otnn):
    model, x, _ = otnn
    result = feature_visualization(
        model, 3, layer="conv2", reference_images=x[:300], nb_steps=128, seed=0
    )
    assert result.objective == "channel" and result.num_units == 16
    view = logits_model(model, output_layer="conv2")
    on_image = view.predict(result.image[None], verbose=0)[0]
    np.testing.assert_allclose(result.activation, on_image[..., 3].mean(), rtol=1e-4, atol=1e-5)
    on_digits = view.predict(x[:200], verbose=0)[..., 3].mean(axis=(1, 2))
    assert result.activation > on_digits.max()


def test_neuron_objective_reports_flat_index(otnn):
    model, x, _ = otnn
    result = feature_visualization(
        model, 5, layer=model.layers[-2].name, reference_images=x[:300], nb_steps=64, seed=0
    )
    assert result.objective == "neuron" and result.num_units == 32
    value = logits_model(model, output_layer=model.layers[-2].name)(result.image[None])
    np.testing.assert_allclose(result.activation, np.asarray(value)[0, 5], rtol=1e-4, atol=1e-5)


def test_fourier_method_reports_the_model_value(otnn):
    model, _, _ = otnn
    result = feature_visualization(model, 7, method="fourier", nb_steps=64, seed=0)
    assert result.method == "fourier" and result.image.shape == (28, 28, 1)
    logits = model.predict(result.image[None], verbose=0)[0]
    np.testing.assert_allclose(result.activation, logits[7], rtol=1e-4, atol=1e-5)
    assert result.rank == 1 + int(np.sum(logits > logits[7]))


@pytest.fixture
def op_determinism():
    """TensorFlow's deterministic kernels for one test, restored afterwards."""
    from tensorflow.python.framework import config as tf_config

    was_enabled = tf_config.is_op_determinism_enabled()
    tf_config.enable_op_determinism()
    yield
    if not was_enabled:
        tf_config.disable_op_determinism()


def test_seeded_runs_repeat(otnn, op_determinism):
    # every draw (phase, crops, noise) comes from the seed; with deterministic kernels the
    # two runs are bit-identical (without them TensorFlow's multi-threaded CPU gradient
    # sums change order between runs and the ascent amplifies the rounding)
    model, x, _ = otnn
    a = feature_visualization(model, 2, reference_images=x[:100], nb_steps=16, seed=4)
    b = feature_visualization(model, 2, reference_images=x[:100], nb_steps=16, seed=4)
    np.testing.assert_array_equal(a.image, b.image)
    c = feature_visualization(model, 2, reference_images=x[:100], nb_steps=16, seed=5)
    assert not np.array_equal(a.image, c.image)


def test_many_targets_and_plot_grid(otnn, tmp_path, capsys):
    model, x, _ = otnn
    results = feature_visualizations(model, [4, 5, 6], reference_images=x[:100], nb_steps=8)
    assert [r.index for r in results] == [4, 5, 6]
    assert "[3/3] logit 6" in capsys.readouterr().out
    path = tmp_path / "grid.png"
    fig = plot_feature_visualizations(results, cols=2, save_path=path)
    assert len([ax for ax in fig.axes if ax.images]) == 3
    assert path.stat().st_size > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target": 10}, "target must be an int in \\[0, 10\\)"),
        ({"target": 1, "method": "adam"}, "method must be one of"),
        ({"target": 1, "objective": "pixel"}, "objective must be one of"),
        ({"target": 1, "box_size": 1.5}, "box_size"),
        ({"target": 1, "values_range": (1, 0)}, "values_range"),
        ({"target": 1, "nb_steps": 0}, "nb_steps"),
        ({"target": 1, "objective": "channel"}, "objective='channel' needs a layer"),
    ],
)
def test_invalid_arguments(otnn, kwargs, match):
    model, x, _ = otnn
    with pytest.raises(ValueError, match=match):
        feature_visualization(model, **{"reference_images": x[:10], "nb_steps": 2, **kwargs})


def test_grayscale_needs_reference_images(otnn):
    model, _, _ = otnn
    with pytest.raises(ValueError, match="reference_images must be given"):
        feature_visualization(model, 1, nb_steps=2)
    with pytest.raises(ValueError, match="reference_images must be a batch"):
        feature_visualization(model, 1, nb_steps=2, reference_images=np.zeros((4, 28, 28, 3)))
