"""Shared fixtures: real offline data (MNIST, digits) and reproducible seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from deel_lip.datasets import load_digits, load_mnist  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _fresh_session():
    """One Keras session per test module (clearing per test costs ~1 s each)."""
    yield
    keras.backend.clear_session()


@pytest.fixture(scope="session")
def mnist():
    """All 5,000 real MNIST images (28x28x1 in [0, 1]) and integer labels."""
    return load_mnist()


@pytest.fixture(scope="session")
def mnist_small(mnist):
    """1,000 real MNIST images (100 per class) and integer labels."""
    images, labels = mnist
    idx = np.concatenate([np.where(labels == c)[0][:100] for c in range(10)])
    return images[idx], labels[idx]


@pytest.fixture(scope="session")
def digits():
    """The 1,797 real 8x8 digits of scikit-learn (8x8x1 in [0, 1]) and labels."""
    return load_digits()
