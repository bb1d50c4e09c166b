"""The few TensorFlow-only calls of the library, kept in one place."""

from __future__ import annotations

import contextlib
import os
import warnings
import weakref

import numpy as np
import tensorflow as tf

__all__ = [
    "batch_jacobian",
    "check_collective_keys",
    "compile_function",
    "cross_replica_sum",
    "eager_scope",
    "eager_value",
    "executing_eagerly",
    "in_xla_context",
    "xla_island",
    "is_dataset",
    "num_replicas_in_sync",
    "value_and_input_gradient",
    "vjp",
]


def executing_eagerly() -> bool:
    """True outside of any traced function."""
    return tf.executing_eagerly()


def in_xla_context() -> bool:
    """True while tracing a function compiled by XLA (``jit_compile=True``)."""
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.ops import control_flow_util

    return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))


#: ``DEEL_LIP_XLA_ISLANDS=0`` in the environment turns `xla_island` off (plain TF kernels).
XLA_ISLANDS_ENV = "DEEL_LIP_XLA_ISLANDS"


def _islands_enabled() -> bool:
    if os.environ.get(XLA_ISLANDS_ENV, "1") == "0":
        return False
    from tensorflow.python.framework.config import is_op_determinism_enabled

    if is_op_determinism_enabled():  # not every op has a deterministic XLA kernel
        return False
    return tf.distribute.get_strategy().num_replicas_in_sync == 1


def xla_island(fn):
    """``fn`` compiled by XLA as one cluster when its caller is a graph XLA does not compile.

    Keras runs ``compile(jit_compile="auto")`` without XLA on CPU-only machines, where
    TensorFlow's own kernels for chains of small elementwise ops (the sort networks of
    `GroupSort`, the L2-norm pooling, the normalisation iterations) are several times
    slower than XLA's fused ones, while its convolutions and matmuls (oneDNN) are faster.
    An island gives each its best executor: ``fn`` becomes a ``tf.function(jit_compile=
    True)`` called from the plain graph (its gradient is compiled likewise). Eager calls
    (no compilation per shape for one-off calls), callers already compiled by XLA, op
    determinism, multi-replica strategies and ``DEEL_LIP_XLA_ISLANDS=0`` run ``fn`` as
    is. ``fn`` takes and returns tensors (Python values belong in its closure); the
    result is the same function, computed by another executor.
    """
    compiled = tf.function(fn, jit_compile=True, autograph=False)

    def run(*args):
        if tf.executing_eagerly() or in_xla_context() or not _islands_enabled():
            return fn(*args)
        return compiled(*args)

    run.__doc__ = fn.__doc__
    run.__name__ = getattr(fn, "__name__", "xla_island")
    return run


def eager_scope():
    """Context that runs eagerly even when entered inside a traced function.

    Used to initialise and refresh layer state outside of a `tf.function` being traced
    (e.g. a layer built during `model.fit`'s first trace).
    """
    if tf.executing_eagerly():
        return contextlib.nullcontext()
    return tf.init_scope()


def eager_value(variable) -> np.ndarray | None:
    """The variable's current value as a numpy array, read outside any traced function.

    None when it has no value yet (a variable created while tracing a `tf.function` is
    initialised only when that function first runs).
    """
    with eager_scope():
        try:
            return np.asarray(variable.numpy())
        except (tf.errors.OpError, ValueError):
            return None


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


def value_and_input_gradient(fn, x, objective=None):
    """``(fn(x), g)`` with ``g = d sum(objective(fn(x))) / dx`` (``objective`` defaults to
    the identity).

    With ``fn`` treating the samples of a batch independently (inference mode) and
    ``objective`` giving one value per sample, ``g`` holds the per-sample input gradients.
    """
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = fn(x)
        target = value if objective is None else objective(value)
    return value, tape.gradient(target, x)


def compile_function(fn):
    """``fn`` traced into a TensorFlow graph, retraced only for new input signatures.

    Used by loops that call the same small computation many times (attack steps), where
    eager dispatch would dominate the cost.
    """
    return tf.function(fn, reduce_retracing=True)


def is_dataset(obj) -> bool:
    """True for a `tf.data.Dataset`."""
    return isinstance(obj, tf.data.Dataset)


def num_replicas_in_sync() -> int:
    """Number of replicas of the current ``tf.distribute`` strategy (1 without one).

    This is the count Keras divides a ``"sum_over_batch_size"`` loss by
    (``keras.losses.loss.scale_loss_for_distribution``).
    """
    return int(tf.distribute.get_strategy().num_replicas_in_sync)


# strategy (weak reference) that first ran our collectives, per collective key base
_COLLECTIVE_KEY_OWNERS: dict[int, weakref.ref] = {}


def check_collective_keys(strategy) -> bool:
    """Warn when a second collective strategy of the process reuses the first one's keys.

    TensorFlow 2.20 numbers the collectives of every ``MirroredStrategy`` (and
    ``MultiWorkerMirroredStrategy``) from the same group key 1 and instance key 100,
    unless its test-only ``_collective_key_base`` is changed. The collectives of a second
    strategy object created in the same process then collide in the runtime with those
    of the first one (used or not any more): the first collective whose shape differs
    aborts every later collective ("Shape mismatch in the collective instance 100"),
    until the program restarts. Plain Keras layers and optimizers are affected too. The
    check sees the strategies whose replicas run a deel_lip loss with cross-replica
    statistics (it is called from `cross_replica_sum` while tracing). Returns whether it
    warned.
    """
    extended = getattr(strategy, "extended", None)
    if type(getattr(extended, "_cross_device_ops", None)).__name__ != "CollectiveAllReduce":
        return False
    base = getattr(extended, "_collective_key_base", None)
    if not isinstance(base, int):
        return False
    owner = _COLLECTIVE_KEY_OWNERS.get(base)
    if owner is not None and owner() is strategy:
        return False
    _COLLECTIVE_KEY_OWNERS[base] = weakref.ref(strategy)
    if owner is None:
        return False
    warnings.warn(
        f"A second {type(strategy).__name__} object runs collectives in this process: "
        "TensorFlow gives the collectives of every such strategy the same keys, so they "
        "collide with those of the first one and abort ('Collective ops is aborted by: "
        "Shape mismatch in the collective instance ...') as soon as their shapes differ. "
        "Create one strategy and train every model under its scope, or give the other "
        "strategies non-collective reductions: tf.distribute.MirroredStrategy(devices, "
        "cross_device_ops=tf.distribute.ReductionToOneDevice()) (or "
        "HierarchicalCopyAllReduce() on GPUs). See docs/distributed.md.",
        UserWarning,
        stacklevel=2,
    )
    return True


def cross_replica_sum(x):
    """Sum of ``x`` over the replicas of a ``tf.distribute`` strategy.

    Inside a replica context with several replicas (e.g. the train step of a model
    under ``MirroredStrategy``), every replica receives the sum of the values of all
    replicas. Outside a replica context, or with a single replica, ``x`` is returned
    unchanged (it already covers the whole batch). The result carries no gradient.
    A second collective strategy in the process gets a warning (`check_collective_keys`).
    """
    x = tf.stop_gradient(tf.convert_to_tensor(x))
    if tf.distribute.in_cross_replica_context():
        return x
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return x
    check_collective_keys(context.strategy)
    return tf.stop_gradient(context.all_reduce(tf.distribute.ReduceOp.SUM, x))
