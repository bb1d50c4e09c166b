"""The optimisers behind `deel_lip.xai.feature_visualization`.

* `maco_optimize` (Fel et al. 2023, MACO): Nadam ascent on the phase of
  ``irfft2(M e^{i phi})`` with the magnitude spectrum ``M`` of real images fixed; each
  step scores random noisy crops of the canvas. Xplique's parametrisation
  (``init_maco_buffer``, ``maco_image_parametrization``), one traced step per layer view
  and settings, reused for every target (the target is a mask argument); random draws
  are stateless from per-step seeds, so a seeded run repeats.
* `fourier_optimize`: Xplique's ``optimize`` (Olah et al. 2017).
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf  # Xplique's optimisation runs on TensorFlow tensors

from deel_lip.xai._xplique import require_xplique

__all__ = ["maco_optimize", "fourier_optimize"]


def _reference_dataset(reference_images, channels: int):
    if reference_images is None:
        if channels != 3:
            raise ValueError(
                "reference_images must be given for inputs with "
                f"{channels} channel(s): MACO takes its magnitude spectrum from real images "
                "(Xplique only ships an RGB ImageNet spectrum), e.g. a few hundred training "
                "images (N, H, W, C)"
            )
        return None
    images = np.asarray(reference_images, dtype="float32")
    if images.ndim != 4 or images.shape[-1] != channels or len(images) == 0:
        raise ValueError(
            f"reference_images must be a batch (N, H, W, {channels}), received shape {images.shape}"
        )
    return tf.data.Dataset.from_tensor_slices(images).batch(128)


#: view -> {(canvas, nb_crops, values_range): traced MACO step}: one trace serves every
#: target of a layer (the target is a mask argument); views are not kept alive.
_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _random_crops(image, box, nb_crops: int, size, seeds):
    """``nb_crops`` square crops of ``image``, centres ~ N(0.5, 0.15), sides ~ N(box, 0.05)."""
    centers = 0.5 + tf.random.stateless_normal((nb_crops, 2), seeds[0], stddev=0.15)
    side = tf.random.stateless_normal((nb_crops, 1), seeds[1], mean=box, stddev=0.05)
    side = tf.clip_by_value(side, 0.05, 1.0)
    boxes = tf.concat([centers - side / 2, centers + side / 2], axis=-1)  # (y1, x1, y2, x2)
    indices = tf.zeros((nb_crops,), dtype=tf.int32)
    return tf.image.crop_and_resize(image[None], boxes, indices, size)


def _maco_step(view, nb_crops: int, values_range):
    """Traced step: gradients of the masked objective on noisy crops w.r.t. the phase."""
    from xplique.features_visualizations.preconditioning import maco_image_parametrization

    size = tuple(int(d) for d in view.inputs[0].shape[1:3])

    @tf.function(autograph=False)  # no Python control flow to convert
    def step(magnitude, phase, mask, box, noise, seed):
        # stateless draws from a per-step seed: a traced step reused by later calls
        # repeats exactly under the same seed (stateful ops would continue their stream)
        seeds = tf.random.experimental.stateless_split(seed, num=4)
        with tf.GradientTape() as tape:
            tape.watch(phase)
            image = maco_image_parametrization(magnitude, phase, values_range)
            crops = _random_crops(image, box, nb_crops, size, seeds)
            shape = tf.shape(crops)
            crops += tf.random.stateless_normal(shape, seeds[2], stddev=noise)
            crops += tf.random.stateless_uniform(shape, seeds[3], -noise / 2, noise / 2)
            outputs = view(crops, training=False)
            axes = list(range(1, len(mask.shape)))
            loss = tf.reduce_mean(tf.reduce_sum(outputs * mask, axis=axes))
        grad_phase, grad_image = tape.gradient(loss, [phase, image])
        return grad_phase, grad_image, loss

    return step


def maco_optimize(
    view,
    mask,
    reference_images,
    canvas,
    nb_steps,
    box_size,
    noise,
    nb_crops,
    learning_rate,
    values_range,
    verbose,
):
    """MACO: Nadam ascent on the phase of ``irfft2(M e^{i phi})``, magnitude ``M`` fixed.

    Returns ``(image, transparency, history)``: the image in ``values_range``, the summed
    absolute image gradients (MACO's transparency map) and the objective per step.
    """
    from xplique.features_visualizations.preconditioning import (
        init_maco_buffer,
        maco_image_parametrization,
    )

    channels = int(view.inputs[0].shape[-1])
    dataset = _reference_dataset(reference_images, channels)
    magnitude, phase = init_maco_buffer(canvas, dataset=dataset)
    # Xplique draws the initial phase (std 1) from TensorFlow's stateful stream, which
    # other code moves; redraw it statelessly from numpy's (seeded) stream instead.
    phase_seed = tf.constant(np.random.randint(0, 2**31 - 1, size=2), tf.int64)
    phase = tf.random.stateless_normal(tf.shape(phase), phase_seed, stddev=1.0)
    phase = tf.Variable(phase, trainable=True)
    key = (canvas, nb_crops, values_range)
    steps = _STEPS.setdefault(view, {})
    if key not in steps:
        steps[key] = _maco_step(view, nb_crops, values_range)
    step_fn = steps[key]
    optimizer = keras.optimizers.Nadam(learning_rate)
    transparency = np.zeros((*canvas, channels), dtype="float32")
    progress = keras.utils.Progbar(nb_steps, verbose=1) if verbose else None
    history = []
    mask = tf.constant(mask)
    noise_t = tf.constant(noise, tf.float32)
    step_seeds = np.random.randint(0, 2**31 - 1, size=(nb_steps, 2))  # numpy's (seeded) stream
    for step in range(nb_steps):
        box = box_size(step) if callable(box_size) else box_size
        grads, grads_image, loss = step_fn(
            magnitude,
            phase,
            mask,
            tf.constant(box, tf.float32),
            noise_t,
            tf.constant(step_seeds[step], tf.int64),
        )
        optimizer.apply_gradients([(-grads, phase)])
        transparency += np.abs(grads_image.numpy())
        history.append(float(loss))
        if progress is not None:
            progress.update(step + 1, values=[("objective", float(loss))])
    image = maco_image_parametrization(magnitude, phase, values_range).numpy()
    return image, transparency, history


def fourier_optimize(objective, canvas, nb_steps, learning_rate, values_range):
    """Xplique's Fourier-preconditioned ``optimize``; returns ``(image, None, [])``."""
    features = require_xplique().features_visualizations
    images, _ = features.optimize(
        objective,
        optimizer=keras.optimizers.Adam(learning_rate),
        nb_steps=nb_steps,
        values_range=values_range,
        custom_shape=canvas,
    )
    return np.asarray(images[-1][0]), None, []
