"""The few TensorFlow-only calls of the library, kept in one place."""

from __future__ import annotations

import contextlib

import tensorflow as tf

__all__ = ["eager_scope", "executing_eagerly"]


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
