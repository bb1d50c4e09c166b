"""One process of `tests/test_multiworker.py` (a script, not a test module).

``python tests/multiworker_worker.py OUT.npz`` trains on one device; with ``TF_CONFIG``
set it is one worker of a `tf.distribute.MultiWorkerMirroredStrategy` cluster and trains
the same models on the same global batches, each worker feeding its half of every
batch. Every process writes its per-step losses, final weights and loss statistics to
``OUT.npz``; the test compares them.

The models: spectral convolution, GroupSort2, L2-norm pooling and a spectral dense
layer, trained with `MulticlassHKR` (class means of the KR term over the global batch)
and `MulticlassSoftHKR` (running mean of ``|f|`` over the global batch).
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

GLOBAL_BATCH = 32
STEPS = 6
COLLECTIVE_TIMEOUT = 60.0  # seconds: a collective waiting longer for its peer fails


def make_strategy():
    """The cluster's strategy when ``TF_CONFIG`` is set, else the default (no) strategy.

    `MultiWorkerMirroredStrategy` must be created before any other TensorFlow operation.
    """
    if not os.environ.get("TF_CONFIG"):
        return tf.distribute.get_strategy()
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING,
        timeout_seconds=COLLECTIVE_TIMEOUT,
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


STRATEGY = make_strategy()

import keras  # noqa: E402

from deel_lip import losses  # noqa: E402
from deel_lip.datasets import load_digits  # noqa: E402
from deel_lip.layers import (  # noqa: E402
    GroupSort2,
    ScaledL2NormPooling2D,
    SpectralConv2D,
    SpectralDense,
)

LOSSES = {
    "hkr": lambda: losses.MulticlassHKR(alpha=0.5, min_margin=1.0),
    "soft": lambda: losses.MulticlassSoftHKR(
        alpha=0.5, min_margin=0.05, alpha_mean=0.5, temperature=2.0
    ),
}


def load_data():
    """``STEPS`` global batches of real digits, each sorted by class.

    Sorted batches put the low digits on the first worker and the high ones on the
    second, so per-worker class means or ``|f|`` means would differ from the global ones.
    """
    images, labels = load_digits()
    n = GLOBAL_BATCH * STEPS
    order = np.concatenate(
        [
            start + np.argsort(labels[start : start + GLOBAL_BATCH], kind="stable")
            for start in range(0, n, GLOBAL_BATCH)
        ]
    )
    x = images[order]
    y = keras.utils.to_categorical(labels[order], 10).astype("float32")
    return x, y


def make_model():
    keras.utils.set_random_seed(11)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            SpectralConv2D(8, 3, padding="same"),
            GroupSort2(),
            ScaledL2NormPooling2D(pool_size=2),
            keras.layers.Flatten(),
            SpectralDense(10),
        ]
    )


def distributed_batches(x, y):
    """The global batches of ``GLOBAL_BATCH`` rows, split over the replicas.

    Input pipeline ``p`` of ``P`` (one per worker) feeds rows ``[p R, (p + 1) R)`` of
    every global batch, ``R = GLOBAL_BATCH / P``, in per-replica batches; without a
    strategy the one pipeline feeds whole batches.
    """

    def dataset_fn(context):
        per_pipeline = GLOBAL_BATCH // context.num_input_pipelines
        first = context.input_pipeline_id * per_pipeline
        rows = np.concatenate(
            [
                np.arange(start + first, start + first + per_pipeline)
                for start in range(0, len(x), GLOBAL_BATCH)
            ]
        )
        per_replica = context.get_per_replica_batch_size(GLOBAL_BATCH)
        return tf.data.Dataset.from_tensor_slices((x[rows], y[rows])).batch(per_replica)

    return STRATEGY.distribute_datasets_from_function(dataset_fn)


def train(make_loss, x, y):
    """``STEPS`` SGD steps in a custom loop: the losses of the steps, the model, the loss.

    `keras.Model.fit` cannot run under `MultiWorkerMirroredStrategy` with Keras 3.15
    (its symbolic build reduces a nested data batch, which the strategy refuses), so
    the loop is written with `tf.distribute.Strategy.run`, as a user would.
    """
    with STRATEGY.scope():
        model = make_model()
        loss_fn = make_loss()
        optimizer = keras.optimizers.SGD(0.05)
        optimizer.build(model.trainable_variables)

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            # Keras divides a "sum_over_batch_size" loss by the number of replicas:
            # the replicas' values add up to the mean over the global batch
            value = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(value, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))  # summed over replicas
        return value

    @tf.function
    def step(xb, yb):
        values = STRATEGY.run(replica_step, args=(xb, yb))
        return STRATEGY.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)

    step_losses = [float(step(xb, yb)) for xb, yb in distributed_batches(x, y)]
    return np.asarray(step_losses), model, loss_fn


def per_half_gaps(x, y):
    """How far per-worker statistics would be from global ones, on the first batch.

    ``hkr``: |mean of the halves' losses - loss of the batch| (the KR class means);
    ``soft``: |running mean of ``|f|`` after the first half - after the batch|. Both
    must be large for the comparison with one-device training to be discriminative.
    """
    half = GLOBAL_BATCH // 2
    xb, yb = x[:GLOBAL_BATCH], y[:GLOBAL_BATCH]
    pred = make_model()(xb, training=True)
    whole, first, second = (LOSSES["hkr"]() for _ in range(3))
    hkr_gap = abs(
        (float(first(yb[:half], pred[:half])) + float(second(yb[half:], pred[half:]))) / 2
        - float(whole(yb, pred))
    )
    whole, first = LOSSES["soft"](), LOSSES["soft"]()
    whole(yb, pred)
    first(yb[:half], pred[:half])
    soft_gap = abs(float(first.current_mean) - float(whole.current_mean))
    return {"hkr": hkr_gap, "soft": soft_gap}


def main(out: str) -> None:
    x, y = load_data()
    distributed = bool(os.environ.get("TF_CONFIG"))
    result = {"replicas": np.int64(STRATEGY.num_replicas_in_sync)}
    for name, make_loss in LOSSES.items():
        initial = make_model().get_weights()
        step_losses, model, loss = train(make_loss, x, y)
        result[f"{name}_loss"] = step_losses
        for i, (start, weight) in enumerate(zip(initial, model.get_weights())):
            # float64 for every variable, the boolean cache flag included (0 / 1)
            result[f"{name}_init{i}"] = np.asarray(start, dtype=np.float64)
            result[f"{name}_weight{i}"] = np.asarray(weight, dtype=np.float64)
        if hasattr(loss, "current_mean"):
            result[f"{name}_mean"] = np.float64(keras.ops.convert_to_numpy(loss.current_mean))
    if distributed:
        result["task"] = np.int64(json.loads(os.environ["TF_CONFIG"])["task"]["index"])
    else:
        result.update({f"{k}_gap": np.float64(v) for k, v in per_half_gaps(x, y).items()})
    result["cpu_seconds"] = np.float64(time.process_time())
    np.savez(out, **result)


if __name__ == "__main__":
    main(sys.argv[1])
