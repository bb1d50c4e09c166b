"""CRAFT concepts (Fel et al., CVPR 2023) for deel_lip models, with Xplique's ``CraftTf``.

CRAFT cuts a model ``f = h o g`` at a layer, factorises the activations of image crops
``A = g(crops) ~ U W`` with non-negative matrix factorisation (``U, W >= 0``: concept
coefficients and concept bank), ranks concepts by total Sobol indices of
``h(U W)[class]`` under random masks on ``U``, and maps them on images (``U`` at every
spatial position). NMF needs ``A >= 0``: Xplique asserts it ("Activations must be
positive"), and Lipschitz networks have signed activations (GroupSort, no ReLU).

`split_model` chooses the cut, by layer name:

* a layer whose output is non-negative by construction (``ScaledL2NormPooling2D``, a
  ReLU, a pooling / reshaping of them) is used as is; it is the default (the last such
  layer with spatial axes);
* any other layer is *lifted* exactly: ``g'(x) = [relu(a), relu(-a)]`` (channels
  concatenated, ``a = g(x)``) and ``h'(p) = h(p+ - p-)``. Since ``relu(a) - relu(-a) = a``
  exactly (one term is 0), ``h'(g'(x)) = f(x)`` bit for bit, ``g'`` is 1-Lipschitz when
  ``g`` is (``||g'(x) - g'(y)|| <= ||a - b||``), and concepts may use both signs.

`LipschitzCraft` runs CRAFT on the split and adds: the factorisation's relative
reconstruction error ``||A - U W||_F / ||A||_F``, concept attribution maps at the image
size, concept deletion / insertion fidelity (`deel_lip.xai.concept_fidelity`), and plots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from deel_lip.layers.pooling import ScaledGlobalL2NormPooling2D, ScaledL2NormPooling2D
from deel_lip.xai._xplique import require_matplotlib, require_xplique
from deel_lip.xai.models import logits_model

__all__ = ["ModelSplit", "split_model", "LipschitzCraft", "concept_fidelity"]

_NONNEGATIVE_ACTIVATIONS = ("relu", "relu6", "sigmoid", "softplus", "exponential", "softmax")
#: layers that keep the sign of their inputs (pooling, reshaping, regularisation)
_SIGN_PRESERVING = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Dropout,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping2D,
    keras.layers.UpSampling2D,
)


@dataclass
class ModelSplit:
    """``f = h o g`` cut after ``layer``; ``lifted`` when ``g`` is the +/- lift.

    Attributes:
        g: input -> non-negative activations (``(N, H', W', C)`` or ``(N, C)``).
        h: activations -> logits.
        layer: name of the layer the model is cut after.
        lifted: True when ``g = [relu(a), relu(-a)]`` and ``h(p) = h_0(p+ - p-)``.
    """

    g: keras.Model
    h: keras.Model
    layer: str
    lifted: bool


def _activation_name(layer) -> str | None:
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", None)


def _nonnegative(layer, previous: bool) -> bool:
    """Whether ``layer``'s output is >= 0 by construction, given its input's sign."""
    if isinstance(layer, (ScaledL2NormPooling2D, ScaledGlobalL2NormPooling2D, keras.layers.ReLU)):
        return True
    name = _activation_name(layer)
    if name in _NONNEGATIVE_ACTIVATIONS:
        return True
    if isinstance(layer, keras.layers.Activation):
        return previous and name in ("linear", None)
    if isinstance(layer, _SIGN_PRESERVING):
        return previous
    return False


def _chain(view) -> list:
    return [layer for layer in view.layers if not isinstance(layer, keras.layers.InputLayer)]


def _default_layer(chain) -> tuple[str, bool]:
    """(name, non-negative) of the default cut: last non-negative 4-D layer, else last 4-D."""
    signs, sign = [], False
    for layer in chain:
        sign = _nonnegative(layer, sign)
        signs.append(sign)
    spatial = [i for i, layer in enumerate(chain[:-1]) if len(layer.output.shape) == 4]
    candidates = [i for i in spatial if signs[i]] or spatial
    if not candidates:
        raise ValueError(
            "split_model found no layer with spatial output (N, H, W, C) to cut "
            "after: pass layer=<name>"
        )
    index = candidates[-1]
    return chain[index].name, signs[index]


@keras.saving.register_keras_serializable("deel_lip")
class PositiveNegativeLift(keras.layers.Layer):
    """``a -> [relu(a), relu(-a)]`` on the last axis (non-negative, 1-Lipschitz, exact)."""

    def call(self, inputs):
        return keras.ops.concatenate([keras.ops.relu(inputs), keras.ops.relu(-inputs)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2 * input_shape[-1])


@keras.saving.register_keras_serializable("deel_lip")
class PositiveNegativeCombine(keras.layers.Layer):
    """``[p+, p-] -> p+ - p-`` on the last axis, the left inverse of `PositiveNegativeLift`."""

    def call(self, inputs):
        half = inputs.shape[-1] // 2
        return inputs[..., :half] - inputs[..., half:]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // 2)


def split_model(model: keras.Model, layer=None, *, lift="auto") -> ModelSplit:
    """Cut ``model``'s logits ``f`` (softmax dropped) into ``h o g`` after ``layer``.

    Args:
        model: a Sequential or functional Keras / deel_lip model whose layers after
            ``layer`` form a chain.
        layer: name (or index / instance) of a top-level layer; default the last layer
            with spatial output that is non-negative by construction, else the last layer
            with spatial output (lifted).
        lift: ``"auto"`` lifts a layer that is not known to be non-negative; True always
            lifts; False never does (and raises for a signed layer).

    Returns:
        A `ModelSplit` with ``h(g(x)) = f(x)`` exactly.

    Raises:
        ValueError: unknown layer, the model's last layer, ``lift=False`` on a layer not
            known to be non-negative, an invalid ``lift``, or a model that is not a chain
            after ``layer``.
    """
    if lift not in ("auto", True, False):
        raise ValueError(f"lift must be 'auto', True or False, received: {lift!r}")
    view = logits_model(model)
    chain = _chain(view)
    if layer is None:
        name, nonnegative = _default_layer(chain)
    else:
        name = layer if isinstance(layer, str) else getattr(layer, "name", None)
        if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
            name = model.layers[layer].name
        names = [item.name for item in chain]
        if name not in names[:-1]:
            raise ValueError(
                f"layer must name a layer of model {model.name!r} before its "
                f"output (layers: {names[:-1]}), received: {layer!r}"
            )
        sign = False
        for item in chain[: names.index(name) + 1]:
            sign = _nonnegative(item, sign)
        nonnegative = sign
    if lift is False and not nonnegative:
        raise ValueError(
            f"layer {name!r} has signed outputs and CRAFT's NMF needs "
            "non-negative activations: pass lift='auto' (exact +/- lift) or a "
            "non-negative layer such as a ScaledL2NormPooling2D"
        )
    lifted = lift is True or not nonnegative
    g = logits_model(model, output_layer=name)
    index = [item.name for item in chain].index(name)
    latent = keras.Input(tuple(g.outputs[0].shape[1:]))
    x = latent
    for item in chain[index + 1 :]:
        x = item(x)
    h = keras.Model(latent, x, name=f"{model.name}_h")
    if lifted:
        inputs = keras.Input(tuple(g.inputs[0].shape[1:]))
        g = keras.Model(inputs, PositiveNegativeLift()(g(inputs)), name=f"{model.name}_g_lift")
        lifted_in = keras.Input((*latent.shape[1:-1], 2 * latent.shape[-1]))
        h = keras.Model(lifted_in, h(PositiveNegativeCombine()(lifted_in)), name=f"{h.name}_lift")
    _check_chain(view, g, h, name)
    return ModelSplit(g=g, h=h, layer=name, lifted=lifted)


def _check_chain(view, g, h, name: str) -> None:
    probe = np.random.default_rng(0).uniform(size=(2, *view.inputs[0].shape[1:]))
    probe = probe.astype("float32")
    expected = keras.ops.convert_to_numpy(view(probe, training=False))
    got = keras.ops.convert_to_numpy(h(g(probe, training=False), training=False))
    if not np.allclose(got, expected, rtol=1e-5, atol=1e-5 * (1 + np.abs(expected).max())):
        raise ValueError(
            f"the model is not a chain of layers after {name!r} (h(g(x)) != f(x)):"
            " pass a layer of the main path"
        )


class LipschitzCraft:
    """CRAFT on a deel_lip (or any Keras) model, cut by `split_model`.

    Args:
        model: the classifier.
        layer, lift: as in `split_model`.
        number_of_concepts: rank ``r`` of the factorisation ``A ~ U W``.
        patch_size: side of the crops (default: half the input side); crops are taken
            with stride ``0.8 * patch_size`` and resized to the input size (Xplique).
        batch_size: batch size of ``g`` and ``h``.
    """

    def __init__(
        self,
        model,
        layer=None,
        *,
        lift="auto",
        number_of_concepts: int = 10,
        patch_size: int | None = None,
        batch_size: int = 128,
    ):
        concepts = require_xplique().concepts
        self.model = model
        self.split = split_model(model, layer, lift=lift)
        side = int(self.split.g.inputs[0].shape[1])
        if patch_size is None:
            patch_size = max(2, side // 2)
        for argument, value in (
            ("number_of_concepts", number_of_concepts),
            ("patch_size", patch_size),
            ("batch_size", batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{argument} must be an int >= 1, received: {value!r}")
        if patch_size > side:
            raise ValueError(f"patch_size must be <= the input side {side}, received {patch_size}")
        self.craft = concepts.CraftTf(
            self.split.g, self.split.h, int(number_of_concepts), int(batch_size), int(patch_size)
        )
        self.activations = None
        self.importances = None

    @property
    def number_of_concepts(self) -> int:
        return self.craft.number_of_concepts

    @property
    def concept_bank(self) -> np.ndarray:
        """``W``, ``(r, C)`` (``C`` doubled when lifted)."""
        self.craft.check_if_fitted()
        return self.craft.factorization.concept_bank_w

    def fit(self, inputs, class_id: int) -> LipschitzCraft:
        """Factorise the activations of crops of ``inputs`` (images of ``class_id``)."""
        inputs = np.asarray(inputs, dtype="float32")
        if inputs.ndim != 4:
            raise ValueError(f"inputs must be images (N, H, W, C), received shape {inputs.shape}")
        crops, activations = self.craft._extract_patches(inputs)
        self._fit_activations(inputs, np.asarray(crops), np.asarray(activations), int(class_id))
        return self

    def _fit_activations(self, inputs, crops, activations, class_id):
        from sklearn.decomposition import NMF
        from xplique.concepts.craft import Factorization

        reducer = NMF(
            n_components=self.number_of_concepts,
            alpha_W=1e-2,
            max_iter=400,
            init="nndsvda",
            random_state=0,
        )
        crops_u = reducer.fit_transform(activations)
        self.craft.factorization = Factorization(
            class_id=class_id,
            reducer=reducer,
            concept_bank_w=reducer.components_.astype(np.float32),
            inputs=inputs,
            crops=crops,
            crops_u=crops_u,
        )
        self.activations = activations

    def reconstruction_error(self, activations=None) -> float:
        """``||A - U W||_F / ||A||_F`` on the crops' activations (or given ones ``(n, C)``)."""
        self.craft.check_if_fitted()
        if activations is None:
            activations, u = self.activations, self.craft.factorization.crops_u
        else:
            activations = np.asarray(activations, dtype="float32")
            u = self.craft.transform(None, activations=activations)
        residual = activations - u @ self.concept_bank
        return float(np.linalg.norm(residual) / max(np.linalg.norm(activations), 1e-12))

    def estimate_importance(self, inputs=None, nb_design: int = 32) -> np.ndarray:
        """Total Sobol indices of the concepts for the class (global on the fit inputs)."""
        importances = self.craft.estimate_importance(inputs, nb_design=nb_design)
        if inputs is None:
            self.importances = np.asarray(importances)
        return np.asarray(importances)

    def concept_maps(self, images) -> np.ndarray:
        """``U`` at every position of ``images``, resized to the image: ``(N, H, W, r)``."""
        images = np.asarray(images, dtype="float32")
        u = self.craft.transform(images)
        if u.ndim != 4:
            raise ValueError(
                f"concept maps need a layer with spatial output; {self.split.layer!r}"
                f" gives coefficients of shape {u.shape}"
            )
        return tf.image.resize(u.astype("float32"), images.shape[1:3]).numpy()

    def class_scores(self, images, masks) -> np.ndarray:
        """``h((U * m) W)[class]`` for each image and each concept mask ``m``: ``(N, M)``."""
        images = np.asarray(images, dtype="float32")
        u = self.craft.transform(images).astype("float32")
        masks = np.asarray(masks, dtype="float32")
        if masks.ndim != 2 or masks.shape[1] != self.number_of_concepts:
            raise ValueError(
                f"masks must have shape (M, {self.number_of_concepts}), received {masks.shape}"
            )
        spatial = (1,) * (u.ndim - 2)
        masked = u[:, None] * masks.reshape((1, len(masks), *spatial, -1))
        latent = masked @ self.concept_bank  # (N, M, ..., C)
        latent = latent.reshape((-1, *latent.shape[2:]))
        logits = self.split.h.predict(latent, verbose=0, batch_size=512)
        class_id = self.craft.factorization.class_id
        return logits[:, class_id].reshape(len(images), len(masks)).astype("float64")

    # ------------------------------------------------------------------ plots

    def plot_concepts(
        self,
        nb_concepts: int = 5,
        nb_crops: int = 6,
        img_size: float = 1.2,
        dpi: int = 100,
        save_path: str | Path | None = None,
    ):
        """One row per concept (most important first): its importance and top crops."""
        if self.importances is None:
            raise ValueError("call estimate_importance() (global) before plot_concepts()")
        require_matplotlib()
        from matplotlib.figure import Figure

        order = np.argsort(self.importances)[::-1][:nb_concepts]
        crops = np.asarray(self.craft.factorization.crops)
        u = self.craft.factorization.crops_u
        fig = Figure(figsize=((nb_crops + 2) * img_size, len(order) * img_size), dpi=dpi)
        axes = fig.subplots(
            len(order),
            nb_crops + 1,
            squeeze=False,
            gridspec_kw={"width_ratios": [2] + [1] * nb_crops},
        )
        for row, concept in zip(axes, order):
            row[0].barh([0], [self.importances[concept]], color="tab:blue")
            row[0].set_xlim(0, float(self.importances.max()) * 1.05)
            row[0].set_yticks([])
            row[0].set_title(f"concept {concept}", fontsize=8)
            for ax, index in zip(row[1:], np.argsort(u[:, concept])[::-1][:nb_crops]):
                _imshow(ax, crops[index])
        return _finish(fig, dpi, save_path)

    def plot_concept_maps(
        self,
        images,
        nb_concepts: int = 3,
        img_size: float = 1.4,
        dpi: int = 100,
        save_path: str | Path | None = None,
    ):
        """Per image: the image, then the maps of the ``nb_concepts`` top concepts."""
        if self.importances is None:
            raise ValueError("call estimate_importance() (global) before plot_concept_maps()")
        require_matplotlib()
        from matplotlib.figure import Figure

        images = np.asarray(images, dtype="float32")
        maps = self.concept_maps(images)
        order = np.argsort(self.importances)[::-1][:nb_concepts]
        fig = Figure(figsize=((nb_concepts + 1) * img_size, len(images) * img_size), dpi=dpi)
        axes = fig.subplots(len(images), nb_concepts + 1, squeeze=False)
        for row, image, image_maps in zip(axes, images, maps):
            _imshow(row[0], image)
            for ax, concept in zip(row[1:], order):
                _imshow(ax, image, alpha=0.5)
                ax.imshow(image_maps[..., concept], cmap="magma", alpha=0.6)
                ax.set_title(f"concept {concept}", fontsize=7)
        return _finish(fig, dpi, save_path)


def _imshow(ax, image, alpha: float = 1.0) -> None:
    image = np.asarray(image, dtype="float32")
    low, high = float(image.min()), float(image.max())
    image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", alpha=alpha)
    else:
        ax.imshow(image, alpha=alpha)
    ax.set_xticks([])
    ax.set_yticks([])


def _finish(fig, dpi: int, save_path):
    fig.tight_layout()
    if save_path is not None:
        path = Path(save_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig


from deel_lip.xai.concept_metrics import concept_fidelity  # noqa: E402  (re-export)
