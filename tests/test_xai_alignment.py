"""Adversarial alignment on a 1-Lipschitz OTNN trained on real MNIST digits.

Checked: the scores are the definitions (Spearman of the perturbation magnitude against the
reference, recomputed with scipy; top-k overlap 1 against the perturbation's own top-k
mask), reference maps of another size are resized, the attack distances respect the
certificate of the 1-Lipschitz model, the stroke proxy is the dilated ink mask, and bad
arguments raise errors naming them.
"""

import keras
import numpy as np
import pytest

pytest.importorskip("xplique")

from scipy import ndimage, stats  # noqa: E402

from deel_lip.layers import GroupSort2, ScaledL2NormPooling2D, SpectralConv2D, SpectralDense  # noqa: E402
from deel_lip.losses import MulticlassHKR  # noqa: E402
from deel_lip.model import Sequential  # noqa: E402
from deel_lip.xai.alignment import AlignmentResult, adversarial_alignment, stroke_proxy  # noqa: E402

N_EVAL = 16


@pytest.fixture(scope="module")
def otnn(mnist):
    keras.utils.set_random_seed(0)
    images, labels = mnist
    order = np.random.default_rng(1).permutation(len(labels))
    train, held_out = order[:1000], order[1000 : 1000 + N_EVAL]
    model = Sequential(
        [
            keras.Input((28, 28, 1)),
            SpectralConv2D(8, 3),
            GroupSort2(),
            ScaledL2NormPooling2D(2),
            keras.layers.Flatten(),
            SpectralDense(32),
            GroupSort2(),
            SpectralDense(10),
        ]
    )
    model.compile(keras.optimizers.Adam(3e-3), MulticlassHKR(alpha=0.98, min_margin=1.0))
    model.fit(images[train], keras.utils.to_categorical(labels[train], 10), epochs=2, verbose=0)
    x, y = images[held_out], labels[held_out]
    correct = model.predict(x, verbose=0).argmax(1) == y
    assert correct.mean() >= 0.6  # a trained model (chance: 0.1)
    return model, x[correct], y[correct]


@pytest.fixture(scope="module")
def result(otnn):
    model, x, y = otnn
    return adversarial_alignment(model, x, y, stroke_proxy(x), attack="transport")


def test_scores_are_the_definitions(otnn, result):
    model, x, y = otnn
    assert isinstance(result, AlignmentResult) and len(result) == len(x)
    assert result.success.all()
    delta = result.boundary.points.astype("float64") - x
    np.testing.assert_allclose(result.perturbations, np.abs(delta[..., 0]), rtol=1e-5, atol=1e-7)
    for i in range(len(x)):
        expected = stats.spearmanr(
            result.perturbations[i].ravel(), result.reference_maps[i].ravel()
        )
        assert result.spearman[i] == pytest.approx(expected.statistic, abs=1e-9)
    np.testing.assert_allclose(result.distances, np.linalg.norm(delta.reshape(len(x), -1), axis=1))
    assert np.all((result.topk_overlap >= 0) & (result.topk_overlap <= 1))
    summary = result.summary()
    assert summary["spearman"] == pytest.approx(np.mean(result.spearman))
    assert summary["success_rate"] == 1.0


def test_perfect_reference_and_any_map_size(otnn, result):
    model, x, y = otnn
    own = adversarial_alignment(model, x, y, result.perturbations, attack="transport")
    np.testing.assert_allclose(own.spearman, 1.0, atol=1e-9)
    np.testing.assert_allclose(own.topk_overlap, 1.0)
    # 14x14 maps are resized to 28x28: a constant map upsampled stays constant (NaN rho)
    small = np.ones((len(x), 14, 14, 1), "float32")
    small[:, :7] = 2.0
    resized = adversarial_alignment(model, x, y, small, attack="transport")
    assert resized.reference_maps.shape == (len(x), 28, 28)
    assert np.all(resized.reference_maps[:, :12] == 2.0) and np.all(
        resized.reference_maps[:, 16:] == 1.0
    )


def test_distances_respect_the_certificate(otnn):
    model, x, y = otnn
    logits = model.predict(x, verbose=0).astype("float64")
    rows = np.arange(len(x))
    others = logits.copy()
    others[rows, y] = -np.inf
    radius = (logits[rows, y] - others.max(1)) / np.sqrt(2.0)
    attacked = adversarial_alignment(model, x, y, stroke_proxy(x), attack="minimal_l2", steps=30)
    ok = attacked.success
    assert ok.mean() > 0.8
    assert np.all(attacked.distances[ok] >= radius[ok] * (1 - 1e-4))


def test_stroke_proxy_is_the_dilated_ink(mnist):
    images, _ = mnist
    x = images[:8]
    ink = x[..., 0] > 0.5
    np.testing.assert_array_equal(stroke_proxy(x, dilation=0), ink.astype("float32"))
    dilated = np.stack([ndimage.binary_dilation(m, np.ones((3, 3), bool)) for m in ink])
    np.testing.assert_array_equal(stroke_proxy(x, dilation=1), dilated.astype("float32"))


def test_plot(otnn, result):
    model, x, y = otnn
    fig = result.plot(x, n=3)
    assert len(fig.axes) == 3 * 3


def test_bad_arguments(otnn):
    model, x, y = otnn
    with pytest.raises(ValueError, match="reference_maps must be"):
        adversarial_alignment(model, x, y, np.ones((len(x) + 1, 28, 28)))
    with pytest.raises(ValueError, match="top_k must be a fraction"):
        adversarial_alignment(model, x, y, np.ones((len(x), 28, 28)), top_k=0.0)
    with pytest.raises(ValueError, match="attack must be one of"):
        adversarial_alignment(model, x, y, np.ones((len(x), 28, 28)), attack="fgsm")
    with pytest.raises(ValueError, match="x must be images"):
        adversarial_alignment(model, x[..., 0], y, np.ones((len(x), 28, 28)))
    with pytest.raises(ValueError, match="dilation must be an int"):
        stroke_proxy(x, dilation=-1)
