"""Nothing in a deel_lip train step blocks an accelerator.

The whole step (forward, hinge-KR loss, metrics, gradients, optimizer update, the inference
cache's stale flag) is traced into one graph: it must hold no Python/numpy callback and
no host print, in its own ops nor in any nested function (loops, conds, custom
gradients), and XLA must compile it whole (``jit_compile=True`` refuses any op it cannot
place on the device).
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from deel_lip.layers import (
    FrobeniusDense,
    GroupSort,
    GroupSort2,
    Householder,
    MaxMin,
    ScaledGlobalL2NormPooling2D,
    ScaledL2NormPooling2D,
    SpectralConv2D,
    SpectralDense,
)
from deel_lip.losses import MulticlassHKR
from deel_lip.metrics import CategoricalProvableRobustAccuracy
from deel_lip.model import Sequential

HOST_OPS = {
    "PyFunc",
    "PyFuncStateless",
    "EagerPyFunc",
    "NumpyFunction",
    "Print",
    "PrintV2",
    "OutfeedEnqueue",
    "OutfeedEnqueueTuple",
}


def _model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Sequential(
            [
                keras.Input((8, 8, 1)),
                SpectralConv2D(8, 3),
                GroupSort2(),
                ScaledL2NormPooling2D(2),
                SpectralConv2D(8, 3),
                Householder(),
                MaxMin(),
                ScaledGlobalL2NormPooling2D(),
                FrobeniusDense(16),
                GroupSort(4),
                SpectralDense(10),
            ]
        )
    model.compile(
        keras.optimizers.Adam(1e-3),
        MulticlassHKR(alpha=0.9, min_margin=0.1),
        metrics=[CategoricalProvableRobustAccuracy(epsilon=0.1)],
    )
    return model


def _op_types(graph_def) -> set:
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types |= {node.op for node in function.node_def}
    return types


def _train_step_function(model, x, y, jit_compile):
    model.optimizer.build(model.trainable_variables)
    step = tf.function(model.train_step, jit_compile=jit_compile)
    spec = (tf.TensorSpec((None,) + x.shape[1:]), tf.TensorSpec((None,) + y.shape[1:]))
    return step, step.get_concrete_function(spec)


def test_train_step_graph_has_no_host_op(digits):
    images, labels = digits
    x, y = images[:64], keras.utils.to_categorical(labels[:64], 10).astype("float32")
    model = _model()
    _, concrete = _train_step_function(model, x, y, jit_compile=False)
    types = _op_types(concrete.graph.as_graph_def())
    assert "While" in types or "StatelessWhile" in types  # the normalisation loops are in
    assert types & {"AssignVariableOp"}  # and the state updates
    assert not types & HOST_OPS, types & HOST_OPS


@pytest.mark.parametrize("jit_compile", [False, True])
def test_train_step_runs_whole_under_xla(digits, jit_compile):
    images, labels = digits
    x, y = images[:64], keras.utils.to_categorical(labels[:64], 10).astype("float32")
    model = _model()
    step, _ = _train_step_function(model, x, y, jit_compile=jit_compile)
    before = [np.array(v) for v in model.trainable_variables]
    logs = step((tf.constant(x), tf.constant(y)))
    assert np.isfinite(float(logs["loss"]))
    changed = [
        not np.array_equal(a, np.asarray(b))
        for a, b in zip(before, model.trainable_variables, strict=True)
    ]
    assert all(changed)
    stale = [layer.cache_stale for layer in model.layers if hasattr(layer, "cache_stale")]
    assert stale and all(bool(np.asarray(flag)) for flag in stale)


def test_predict_step_graph_has_no_host_op(digits):
    images, _ = digits
    model = _model()
    step = tf.function(model.predict_step, jit_compile=True)
    concrete = step.get_concrete_function(tf.TensorSpec((None, 8, 8, 1)))
    assert not _op_types(concrete.graph.as_graph_def()) & HOST_OPS
    np.testing.assert_allclose(
        np.asarray(step(tf.constant(images[:16]))), np.asarray(model(images[:16])), atol=1e-5
    )
