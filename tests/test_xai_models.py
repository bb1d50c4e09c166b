"""Xplique-ready models: logits views, targets from labels, explainer quirks, bad input."""

import importlib
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

pytest.importorskip("xplique")

import xplique.metrics  # noqa: E402

from deel_lip.layers import GroupSort2, ScaledL2NormPooling2D, SpectralConv2D, SpectralDense  # noqa: E402
from deel_lip.model import Sequential, vanilla_export  # noqa: E402
from deel_lip.xai import (  # noqa: E402
    evaluate_attributions,
    explainer,
    last_conv_layer,
    logits_model,
    randomization_strategy,
    seeded,
    targets_from_labels,
)


def _layers(head_activation=None):
    return [
        SpectralConv2D(8, 3, name="conv"),
        GroupSort2(),
        ScaledL2NormPooling2D(name="pool"),
        keras.layers.Flatten(),
        SpectralDense(16, name="hidden"),
        GroupSort2(),
        SpectralDense(10, activation=head_activation, name="head"),
    ]


def _sequential(head_activation=None, extra=()):
    keras.utils.set_random_seed(1)
    return Sequential([keras.Input((8, 8, 1)), *_layers(head_activation), *extra])


@pytest.fixture(scope="module")
def batch(digits):
    images, labels = digits
    return images[:10], labels[:10]


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _penultimate(model, x):
    return _np(keras.Model(model.inputs[0], model.get_layer("head").input)(x))


def _head_logits(model, x):
    head = model.get_layer("head")
    return _np(ops.matmul(_penultimate(model, x), head.constrained_kernel) + head.bias)


# --------------------------------------------------------------------------- targets


def test_targets_from_labels_encodings():
    labels = np.array([3, 0, 9, 3])
    one_hot = targets_from_labels(labels, 10)
    assert one_hot.dtype == np.float32 and one_hot.shape == (4, 10)
    np.testing.assert_array_equal(np.argmax(one_hot, axis=1), labels)
    np.testing.assert_array_equal(one_hot.sum(axis=1), 1.0)
    np.testing.assert_array_equal(targets_from_labels(one_hot, 10), one_hot)
    np.testing.assert_array_equal(targets_from_labels(labels[:, None], 10), one_hot)
    np.testing.assert_array_equal(targets_from_labels(labels.astype("float32"), 10), one_hot)
    np.testing.assert_array_equal(targets_from_labels(tf.constant(labels), 10), one_hot)
    binary = targets_from_labels(np.array([0, 1, 1]), 1)
    np.testing.assert_array_equal(binary, [[-1.0], [1.0], [1.0]])
    np.testing.assert_array_equal(targets_from_labels(np.array([[-1], [1], [1]]), 1), binary)


@pytest.mark.parametrize(
    "labels, num_classes, error, match",
    [
        (np.array([0, 10]), 10, ValueError, r"class indices in \[0, 10\)"),
        (np.array([-1, 2]), 10, ValueError, r"class indices in \[0, 10\)"),
        (np.array([0.5, 2.0]), 10, ValueError, "non-integer"),
        (np.zeros((3, 5)), 10, ValueError, r"\(N, 10\), received shape \(3, 5\)"),
        (np.full((2, 10), 0.1), 10, ValueError, "must be one-hot rows.*row 0"),
        (np.eye(10)[:3] * 2, 10, ValueError, "must be one-hot rows"),
        (np.zeros((2, 3, 10)), 10, ValueError, "received shape"),
        (np.array(["a", "b"]), 10, TypeError, "labels must be numeric"),
        (np.array([0, 2]), 1, ValueError, r"\{0, 1\} or \{-1, \+1\}"),
        (np.array([0, 1]), 0, ValueError, "num_classes must be an int >= 1"),
        (np.array([0, 1]), 2.0, ValueError, "num_classes must be an int >= 1"),
        (np.array([0, 1]), True, ValueError, "num_classes must be an int >= 1"),
    ],
)
def test_targets_from_labels_bad_encodings(labels, num_classes, error, match):
    with pytest.raises(error, match=match):
        targets_from_labels(labels, num_classes)


# --------------------------------------------------------------------------- logits views


def _softmax_model(kind):
    if kind == "activation":
        return _sequential("softmax")
    if kind == "softmax_layer":
        return _sequential(extra=[keras.layers.Softmax()])
    if kind == "activation_layer":
        return _sequential(extra=[keras.layers.Activation("softmax")])
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 1))
    if kind == "ops":
        x = inputs
        for layer in _layers():
            x = layer(x)
        return keras.Model(inputs, ops.softmax(x))
    # nested: the last layer is a model that ends with the softmax
    layers = _layers()
    x = inputs
    for layer in layers[:-1]:
        x = layer(x)
    head = keras.Sequential(
        [keras.Input((16,)), layers[-1], keras.layers.Activation("softmax")], name="block"
    )
    return keras.Model(inputs, head(x))


@pytest.mark.filterwarnings("ignore:.*not known to be Lipschitz")
@pytest.mark.parametrize(
    "kind", ["activation", "softmax_layer", "activation_layer", "ops", "nested"]
)
def test_logits_model_drops_final_softmax(kind, batch):
    x, _ = batch
    model = _softmax_model(kind)
    view = logits_model(model)
    logits = _np(view(x))
    probabilities = _np(model(x))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(_np(ops.softmax(logits)), probabilities, atol=1e-6)
    if kind != "nested":
        np.testing.assert_allclose(logits, _head_logits(model, x), atol=1e-5)
    assert logits_model(model) is view  # cached: Xplique traces it once
    assert {id(w) for w in view.weights} <= {id(w) for w in model.weights}


def test_views_without_the_softmax_activation_can_be_cloned(batch):
    # GuidedBackprop and ModelRandomizationMetric clone the explained model
    x, y = batch
    model = _sequential("softmax")
    view = logits_model(model)
    copy = keras.models.clone_model(view)
    copy.set_weights(view.get_weights())
    np.testing.assert_allclose(_np(copy(x)), _np(view(x)), atol=1e-6)
    table = evaluate_attributions(
        model, x, y, ["Saliency", "GuidedBackprop"], "ModelRandomizationMetric"
    )
    for row in table.values():
        assert -1.0 <= row["ModelRandomizationMetric"] < 0.9


def test_logits_view_follows_the_weights(batch):
    x, _ = batch
    model = _sequential("softmax")
    view = logits_model(model)
    before = _np(view(x))
    head = model.get_layer("head")
    head.bias.assign(head.bias + 1.0)
    np.testing.assert_allclose(_np(view(x)), before + 1.0, atol=1e-5)


def test_functional_logits_model_is_returned_unchanged():
    model = _softmax_model("ops")
    logits = keras.Model(model.inputs[0], model.get_layer("head").output)
    assert logits_model(logits) is logits


def test_unbuilt_sequential_needs_an_input_shape(batch):
    x, y = batch
    keras.utils.set_random_seed(1)
    model = keras.Sequential(_layers("softmax"))
    with pytest.raises(ValueError, match=r"no defined input.*input_shape="):
        logits_model(model)
    with pytest.raises(ValueError, match=r"no defined input.*input_shape="):
        explainer("Saliency", model)
    view = logits_model(model, input_shape=(8, 8, 1))
    assert not model.built  # the view does not build the user's model
    attributions = explainer("Saliency", model, input_shape=(8, 8, 1))(x, y)
    assert attributions.shape == (10, 8, 8, 1)
    np.testing.assert_allclose(_np(ops.softmax(view(x))), _np(model(x)), atol=1e-6)
    with pytest.raises(ValueError, match="does not match the input shape"):
        logits_model(model, input_shape=(28, 28, 1))
    with pytest.raises(ValueError, match="input_shape must be a tuple of positive ints"):
        logits_model(keras.Sequential(_layers()), input_shape=(8, -8, 1))


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.flatten = keras.layers.Flatten()
        self.dense = SpectralDense(10)

    def call(self, inputs):
        return self.dense(self.flatten(inputs))


def test_subclassed_model_needs_an_input_shape(batch):
    x, y = batch
    model = _Subclassed()
    with pytest.raises(ValueError, match="input_shape="):
        logits_model(model)
    view = logits_model(model, input_shape=(8, 8, 1))
    np.testing.assert_allclose(_np(view(x)), _np(model(x)), atol=1e-6)
    with pytest.raises(ValueError, match="output_layer needs a Sequential or functional"):
        logits_model(model, input_shape=(8, 8, 1), output_layer=0)


def test_vanilla_export_explains_like_the_original(batch):
    x, y = batch
    model = _sequential("softmax")
    exported = vanilla_export(model)
    np.testing.assert_allclose(
        _np(logits_model(exported)(x)), _np(logits_model(model)(x)), atol=1e-6
    )
    for method in ("Saliency", "GradCAMPP"):
        ours, theirs = explainer(method, model)(x, y), explainer(method, exported)(x, y)
        np.testing.assert_allclose(_np(ours), _np(theirs), atol=1e-5)


@pytest.mark.parametrize("policy, rtol", [("float64", 1e-5), ("mixed_float16", 5e-2)])
def test_non_float32_dtype_policies(policy, rtol, batch):
    x, y = batch
    reference = _sequential()
    expected = _np(explainer("Saliency", reference)(x, y))
    keras.config.set_dtype_policy(policy)
    try:
        model = _sequential()
        model.set_weights(reference.get_weights())
        view = logits_model(model)
        assert keras.backend.standardize_dtype(model.outputs[0].dtype) != "float32"
        assert keras.backend.standardize_dtype(view.outputs[0].dtype) == "float32"
        attributions = _np(explainer("Saliency", model)(x, y))
        ig = _np(explainer("IntegratedGradients", model, steps=4)(x, y))
    finally:
        keras.config.set_dtype_policy("float32")
    assert np.all(np.isfinite(ig))
    np.testing.assert_allclose(attributions, expected, rtol=rtol, atol=rtol * expected.max())


# --------------------------------------------------------------------------- explainer quirks


def test_integer_and_one_hot_labels_give_the_same_attributions(batch):
    # 10 samples and 10 classes: Xplique's own operator would broadcast integer labels.
    x, y = batch
    model = _sequential()
    for method in ("Saliency", "Occlusion"):
        e = explainer(method, model)
        np.testing.assert_array_equal(_np(e(x, y)), _np(e(x, keras.utils.to_categorical(y, 10))))
    with pytest.raises(ValueError, match="targets must be given"):
        explainer("Saliency", model)(x)


def test_output_layer_is_honoured(batch):
    x, _ = batch
    model = _sequential()
    units = np.arange(10) % 16
    attributions = _np(explainer("Saliency", model, output_layer="hidden")(x, units))
    hidden = keras.Model(model.inputs[0], model.get_layer("hidden").output)
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        score = tf.reduce_sum(hidden(inputs) * tf.one_hot(units, 16), axis=-1)
    expected = np.abs(_np(tape.gradient(score, inputs)))
    np.testing.assert_allclose(attributions, expected, atol=1e-6)
    full = _np(explainer("Saliency", model)(x, units))
    assert np.max(np.abs(full - attributions)) > 1e-3
    with pytest.raises(ValueError, match="output_layer must be the name, index or instance"):
        explainer("Saliency", model, output_layer="missing")


def test_gradcam_layer_choice_and_image_checks(batch):
    x, y = batch
    model = _sequential()
    assert last_conv_layer(model) is model.get_layer("conv")
    layers = _layers()
    block = keras.Sequential(layers[:3])
    nested = keras.Sequential([keras.Input((8, 8, 1)), block, *layers[3:]])
    assert last_conv_layer(nested) is nested.layers[0].layers[0]
    e = explainer("GradCAM", nested)
    assert e.conv_layer is nested.layers[0].layers[0]
    assert e(x, y).shape == (10, 8, 8, 1)
    e = explainer("GradCAMPP", model, conv_layer="pool")
    assert e.conv_layer is model.get_layer("pool")
    with pytest.raises(ValueError, match="conv_layer must be a layer of model"):
        explainer("GradCAM", model, conv_layer="hidden")
    dense_only = Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), SpectralDense(10)])
    with pytest.raises(ValueError, match="needs a 2-D convolution layer"):
        explainer("GradCAM", dense_only)
    tabular = Sequential([keras.Input((64,)), SpectralDense(10)])
    for method in ("GradCAM", "GradCAMPP", "SobolAttributionMethod", "HsicAttributionMethod"):
        with pytest.raises(ValueError, match=f"{method} explains images of shape"):
            explainer(method, tabular)
    assert explainer("Occlusion", tabular, patch_size=4, patch_stride=4)(
        x.reshape(10, 64), y
    ).shape == (10, 64)


def test_gradcam_explains_the_randomised_model(batch):
    # Xplique's traced Grad-CAM gradient keeps the first model: similarity would be 1.
    x, y = batch
    model = _sequential()
    e = explainer("GradCAMPP", model)
    before = _np(e(x, y))
    metric = xplique.metrics.ModelRandomizationMetric(
        e.model,
        x,
        targets_from_labels(y, 10),
        # every layer; the bound-keeping strategy (Xplique's cannot draw the cache flag)
        randomization_strategy=randomization_strategy(e.model, 1.0, seed=0),
    )
    with seeded(0):
        similarity = metric.evaluate(e)
    assert similarity < 0.9
    assert e.model is logits_model(model)  # restored by the metric
    np.testing.assert_allclose(_np(e(x, y)), before, atol=1e-6)


def test_guided_backprop_on_groupsort_and_relu_networks(batch):
    x, y = batch
    model = _sequential()
    gradient = _np(explainer("GradientInput", model)(x, y)) / np.where(x == 0, 1.0, x)
    guided = _np(explainer("GuidedBackprop", model)(x, y))
    # no ReLU to override: GuidedBackprop is the plain gradient (where the input is not 0)
    np.testing.assert_allclose(guided[x != 0], gradient[x != 0], atol=1e-5)
    keras.utils.set_random_seed(2)
    relu = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
    )
    flat = x.reshape(10, 64)
    e = explainer("GuidedBackprop", relu)
    copy = keras.models.clone_model(relu)
    copy.set_weights([w * 0.5 for w in relu.get_weights()])
    e.model = copy  # as ModelRandomizationMetric does: the override must follow
    expected = _np(explainer("GuidedBackprop", copy)(flat, y))
    np.testing.assert_allclose(_np(e(flat, y)), expected, atol=1e-6)
    plain = _np(explainer("GradientInput", copy)(flat, y)) / np.where(flat == 0, 1.0, flat)
    assert np.max(np.abs(expected - plain)[flat != 0]) > 1e-4


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "method, kwargs, error, match",
    [
        ("NoSuchMethod", {}, ValueError, "method must be one of Saliency"),
        (3, {}, TypeError, "method must be a class name"),
        (dict, {}, TypeError, "must be an Xplique class among"),
        ("SobolAttributionMethod", {"nb_design": 6}, ValueError, "power of two"),
    ],
)
def test_explainer_bad_arguments(method, kwargs, error, match):
    with pytest.raises(error, match=match):
        explainer(method, _sequential(), **kwargs)


def test_lime_on_images_with_other_channel_counts():
    model = Sequential([keras.Input((8, 8, 4)), keras.layers.Flatten(), SpectralDense(10)])
    with pytest.raises(ValueError, match="pass map_to_interpret_space and ref_value"):
        explainer("Lime", model)


def test_evaluate_attributions_bad_arguments(batch):
    x, y = batch
    model = _sequential()
    cases = [
        (dict(metrics="MeGe"), "pass learning_algorithm="),
        (dict(metrics="ReCo", learning_algorithm=lambda *a: model), r"k_splits \(4\) must divide"),
        (dict(metrics="NoSuchMetric"), "metric must be one of Deletion"),
        (dict(metrics=["Deletion", "deletion"]), "must not repeat a name"),
        (dict(metrics="Deletion", metric_kwargs={"MuFidelity": {}}), "metric_kwargs keys"),
        (dict(metrics="Deletion", method_kwargs={"Saliency": 3}), r"method_kwargs\['Saliency'\]"),
        (dict(metrics="Deletion", seed=-1), "seed must be an int >= 0"),
    ]
    for kwargs, match in cases:
        arguments = dict(methods="Saliency", **kwargs)
        with pytest.raises(ValueError, match=match):
            evaluate_attributions(model, x, y, **arguments)
    with pytest.raises(ValueError, match="same length"):
        evaluate_attributions(model, x, y[:5], "Saliency", "Deletion")
    tabular = Sequential([keras.Input((64,)), SpectralDense(10)])
    with pytest.raises(ValueError, match="RandomLogitMetric compares explanations with SSIM"):
        evaluate_attributions(tabular, x.reshape(10, 64), y, "Saliency", "RandomLogitMetric")


def test_missing_xplique_gives_the_install_command(monkeypatch):
    for name in list(sys.modules):
        if name == "xplique" or name.startswith(("xplique.", "deel_lip.xai")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "xplique", None)  # makes `import xplique` fail
    with pytest.raises(ImportError, match=r'pip install "keras-lipschitz\[xai\]"'):
        importlib.import_module("deel_lip.xai")
