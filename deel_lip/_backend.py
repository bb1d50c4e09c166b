"""The few TensorFlow-only calls of the library, kept in one place."""

from __future__ import annotations

import contextlib

import tensorflow as tf

__all__ = ["batch_jacobian", "eager_scope", "executing_eagerly", "vjp"]


def executing_eagerly() -> bool:
    """True outside of any traced function."""
    return tf.executing_eagerly()


def eager_scope():
    """Context that runs eagerly even when entered inside a traced function.

    Used to initialise and refresh layer state outside of a `tf.function` being traced
    (e.g. a layer built during `model.fit`'s first trace).
    """
    if tf.executing_eagerly():
        return contextlib.nullcontext()
    return tf.init_scope()


def batch_jacobian(fn, x):
    """Per-sample Jacobians ``(batch, out_dim, in_dim)`` of ``fn`` at ``x`` (flattened).

    ``fn`` must treat the samples of a batch independently (inference mode).
    """
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
        y = tf.reshape(y, (tf.shape(y)[0], -1))
    jac = tape.batch_jacobian(y, x)
    return tf.reshape(jac, (tf.shape(jac)[0], tf.shape(jac)[1], -1))


def vjp(fn, x, cotangent):
    """Vector-Jacobian product ``J_fn(x)^T cotangent`` (the adjoint of a linear ``fn``)."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return tape.gradient(y, x, output_gradients=tf.cast(cotangent, y.dtype))


def no_autocast():
    """Context in which Keras variables are read in their own dtype.

    Under a mixed-precision policy a layer's ``call`` reads float32 variables as
    bfloat16/float16; the kernel normalisation must run in float32 to keep its bound.
    """
    from keras.src.backend.common.variables import AutocastScope

    return AutocastScope(None)
