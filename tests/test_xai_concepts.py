"""CRAFT concepts on 1-Lipschitz networks trained on real digits (`deel_lip.xai.concepts`).

Properties: the positive/negative lift leaves the logits unchanged (to 1e-6, exactly in
fact); the default cut is a non-negative layer; the NMF reconstructs the (lifted)
activations of crops to the stated tolerance; concept maps, importances and the
deletion / insertion fidelity are consistent with the factorisation.
"""

import keras
import numpy as np
import pytest
from xplique.concepts import CraftTf

from deel_lip.layers import GroupSort2, ScaledL2NormPooling2D, SpectralConv2D, SpectralDense
from deel_lip.losses import MulticlassHKR
from deel_lip.model import Sequential
from deel_lip.xai.concepts import LipschitzCraft, concept_fidelity, split_model

#: relative Frobenius error ||A - U W||_F / ||A||_F of CRAFT's NMF (penalised, alpha_W=1e-2)
#: on the crops' lifted activations: 8 concepts, and as many concepts as channels (32)
RECONSTRUCTION_TOL = 0.25
RECONSTRUCTION_TOL_FULL = 0.15


def _otnn() -> Sequential:
    return Sequential(
        [
            keras.Input((28, 28, 1)),
            SpectralConv2D(8, 3, name="conv1"),
            GroupSort2(name="gs1"),
            ScaledL2NormPooling2D(2, name="pool1"),
            SpectralConv2D(16, 3, name="conv2"),
            GroupSort2(name="gs2"),
            ScaledL2NormPooling2D(2, name="pool2"),
            keras.layers.Flatten(),
            SpectralDense(32),
            GroupSort2(),
            SpectralDense(10),
        ]
    )


@pytest.fixture(scope="module")
def otnn(mnist_small):
    keras.utils.set_random_seed(0)
    x, y = mnist_small
    model = _otnn()
    model.compile(keras.optimizers.Adam(3e-3), MulticlassHKR(alpha=0.98, min_margin=1.0))
    order = np.random.default_rng(0).permutation(len(x))
    model.fit(
        x[order], keras.utils.to_categorical(y[order], 10), batch_size=32, epochs=3, verbose=0
    )
    return model, x, y


@pytest.fixture(scope="module")
def craft_lifted(otnn):
    """CRAFT cut after a GroupSort (signed): lifted, fitted on 100 real threes."""
    model, x, y = otnn
    craft = LipschitzCraft(model, "gs2", number_of_concepts=8, patch_size=14)
    craft.fit(x[y == 3], 3)
    craft.estimate_importance(nb_design=8)
    return craft


@pytest.mark.parametrize("layer", ["conv1", "gs1", "conv2", "gs2"])
def test_lift_leaves_logits_unchanged(otnn, layer):
    model, x, _ = otnn
    split = split_model(model, layer)
    assert split.lifted and split.layer == layer
    latent = np.asarray(split.g(x[:200]))
    assert latent.min() >= 0.0
    assert latent.shape[-1] == 2 * model.get_layer(layer).output.shape[-1]
    # same execution mode on both sides (the compiled model's predict runs XLA, whose
    # fusions round differently in float32)
    logits = np.asarray(model(x[:200], training=False))
    np.testing.assert_allclose(np.asarray(split.h(latent)), logits, rtol=0, atol=1e-6)


def test_default_cut_is_the_last_nonnegative_spatial_layer(otnn):
    model, _, _ = otnn
    split = split_model(model)
    assert split.layer == "pool2" and not split.lifted
    cnn = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
            keras.layers.MaxPooling2D(2, name="p1"),
            keras.layers.Conv2D(4, 3, name="c2"),  # signed
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    split = split_model(cnn)
    assert split.layer == "p1" and not split.lifted


def test_signed_layer_without_lift_is_refused(otnn):
    model, _, _ = otnn
    with pytest.raises(ValueError, match="'gs2' has signed outputs"):
        split_model(model, "gs2", lift=False)
    with pytest.raises(ValueError, match="lift must be"):
        split_model(model, "gs2", lift="yes")
    with pytest.raises(ValueError, match="layer must name a layer"):
        split_model(model, "nope")


def test_xplique_craft_refuses_signed_activations(otnn):
    """Why the lift exists: Xplique's CRAFT asserts non-negative activations."""
    model, x, y = otnn
    g = keras.Model(model.inputs, model.get_layer("gs2").output)
    h_in = keras.Input(g.outputs[0].shape[1:])
    out = h_in
    for layer in model.layers[model.layers.index(model.get_layer("gs2")) + 1 :]:
        out = layer(out)
    craft = CraftTf(g, keras.Model(h_in, out), number_of_concepts=4, patch_size=14)
    with pytest.raises(AssertionError, match="positive"):
        craft.fit(x[y == 3][:20], 3)


def test_factorisation_reconstructs_lifted_activations(craft_lifted):
    craft = craft_lifted
    assert craft.split.lifted
    activations = craft.activations
    assert activations.shape == (100 * 4, 32) and activations.min() >= 0.0
    w = craft.concept_bank
    assert w.shape == (8, 32) and w.min() >= 0.0
    assert craft.reconstruction_error() <= RECONSTRUCTION_TOL
    # more concepts do not reconstruct worse (the NMF penalty keeps a full rank from being
    # exact; two factorisations from different starts can tie to 1e-5, as measured here)
    error_full = (
        LipschitzCraft(craft.model, "gs2", number_of_concepts=32, patch_size=14)
        .fit(craft.craft.factorization.inputs, 3)
        .reconstruction_error()
    )
    assert error_full <= craft.reconstruction_error() * (1 + 1e-3)
    assert error_full <= RECONSTRUCTION_TOL_FULL


def test_concept_maps_and_importances(craft_lifted, otnn):
    _, x, y = otnn
    craft = craft_lifted
    assert craft.importances.shape == (8,) and np.all(np.isfinite(craft.importances))
    maps = craft.concept_maps(x[y == 3][:5])
    assert maps.shape == (5, 28, 28, 8) and maps.min() >= -1e-6
    # the maps are the coefficients U at each position of the cut layer (14x14), resized
    u = craft.craft.transform(x[y == 3][:5])
    assert u.shape == (5, 14, 14, 8) and u.min() >= 0.0
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), u.mean(axis=(1, 2)), rtol=0.05, atol=1e-3)


def test_fidelity_scores_are_h_of_the_masked_factorisation(craft_lifted, otnn):
    model, x, y = otnn
    craft = craft_lifted
    images = x[y == 3][:10]
    u = craft.craft.transform(images)
    mask = (np.arange(8) % 2).astype("float32")  # keep concepts 1, 3, 5, 7
    expected = craft.split.h.predict((u * mask) @ craft.concept_bank, verbose=0)[:, 3]
    scores = craft.class_scores(images, np.stack([mask, np.zeros(8), np.ones(8)]))
    np.testing.assert_allclose(scores[:, 0], expected, rtol=1e-5, atol=1e-5)
    # no concept: h(0), the logit of a zero activation
    h_zero = craft.split.h.predict(np.zeros((1, *u.shape[1:3], 32), "float32"), verbose=0)
    np.testing.assert_allclose(scores[:, 1], h_zero[0, 3], rtol=1e-5, atol=1e-5)
    fidelity = concept_fidelity(craft, images, random_orders=3)
    np.testing.assert_allclose(fidelity["full"], scores[:, 2].mean(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fidelity["empty"], h_zero[0, 3], rtol=1e-5, atol=1e-5)
    for key in ("deletion", "insertion", "deletion_random", "insertion_random"):
        assert np.isfinite(fidelity[key])
    # the areas in logits are the normalised areas mapped back: a = n (full - empty) + empty
    span = fidelity["full"] - fidelity["empty"]
    for key in ("deletion", "insertion"):
        np.testing.assert_allclose(
            fidelity[f"{key}_logit"], fidelity[key] * span + fidelity["empty"], rtol=1e-6
        )


def test_plots(craft_lifted, otnn, tmp_path):
    _, x, y = otnn
    fig = craft_lifted.plot_concepts(nb_concepts=3, nb_crops=4, save_path=tmp_path / "c.png")
    assert len(fig.axes) == 3 * 5 and (tmp_path / "c.png").stat().st_size > 0
    fig = craft_lifted.plot_concept_maps(x[y == 3][:2], nb_concepts=2)
    assert len(fig.axes) == 2 * 3


def test_invalid_arguments(otnn):
    model, x, _ = otnn
    with pytest.raises(ValueError, match="number_of_concepts must be an int >= 1"):
        LipschitzCraft(model, number_of_concepts=0)
    with pytest.raises(ValueError, match="patch_size must be <= the input side 28"):
        LipschitzCraft(model, patch_size=40)
    with pytest.raises(ValueError, match="inputs must be images"):
        LipschitzCraft(model).fit(x[:4].reshape(4, -1), 3)
