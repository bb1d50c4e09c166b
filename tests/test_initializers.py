"""SpectralInitializer: orthogonal kernel matrices for Dense and Conv shapes, serialisation."""

import keras
import numpy as np
import pytest
from keras import ops

from deel_lip.initializers import SpectralInitializer

SHAPES = [(64, 16), (16, 64), (32, 32), (3, 3, 8, 16), (3, 3, 16, 8), (5, 4, 6)]


def _sv(w):
    w = np.asarray(ops.convert_to_numpy(w), dtype=np.float64)
    return np.linalg.svd(w.reshape(-1, w.shape[-1]), compute_uv=False)


@pytest.mark.parametrize("base", ["orthogonal", "glorot_uniform", "random_normal"])
@pytest.mark.parametrize("k_coef_lip", [1.0, 2.0])
def test_kernel_matrix_is_orthogonal(base, k_coef_lip):
    init = SpectralInitializer(k_coef_lip=k_coef_lip, base_initializer=base)
    for shape in SHAPES:
        w = init(shape)
        assert tuple(w.shape) == shape
        sv = _sv(w)
        assert sv.max() <= k_coef_lip * (1 + 1e-4), (shape, sv.max())
        assert sv.min() >= k_coef_lip * (1 - 5e-3), (shape, sv.min())


def test_without_bjorck_only_bounds_the_norm():
    init = SpectralInitializer(eps_bjorck=None, base_initializer="random_normal")
    for shape in SHAPES:
        sv = _sv(init(shape))
        assert 0.9 <= sv.max() <= 1.0 + 1e-4
        assert sv.min() < 0.9  # a random matrix, only rescaled


def test_dtypes():
    init = SpectralInitializer(eps_bjorck=1e-6, base_initializer="glorot_uniform")
    w64 = init((24, 12), dtype="float64")
    assert keras.backend.standardize_dtype(w64.dtype) == "float64"
    np.testing.assert_allclose(_sv(w64), 1.0, atol=1e-6)
    w16 = init((24, 12), dtype="float16")
    assert keras.backend.standardize_dtype(w16.dtype) == "float16"


def test_seeded_base_is_reproducible():
    seeded = SpectralInitializer(base_initializer=keras.initializers.GlorotNormal(seed=3))
    a = ops.convert_to_numpy(seeded((10, 6)))
    b = ops.convert_to_numpy(SpectralInitializer.from_config(seeded.get_config())((10, 6)))
    np.testing.assert_allclose(a, b, atol=1e-6)
    # like Keras initializers, two unseeded instances draw different kernels
    c, d = (
        ops.convert_to_numpy(SpectralInitializer(base_initializer="glorot_normal")((10, 6)))
        for _ in range(2)
    )
    assert np.abs(c - d).max() > 1e-2


def test_config_round_trip():
    init = SpectralInitializer(
        eps_spectral=1e-4,
        eps_bjorck=None,
        beta_bjorck=0.25,
        k_coef_lip=3.0,
        base_initializer=keras.initializers.RandomNormal(stddev=0.2, seed=1),
    )
    config = init.get_config()
    assert config["base_initializer"] == keras.initializers.serialize(init.base_initializer)
    clone = SpectralInitializer.from_config(config)
    assert clone.get_config() == config
    restored = keras.initializers.deserialize(keras.initializers.serialize(init))
    assert isinstance(restored, SpectralInitializer)
    assert restored.get_config() == config
    assert isinstance(restored.base_initializer, keras.initializers.RandomNormal)


def test_in_keras_layers_and_model_config():
    init = SpectralInitializer(k_coef_lip=0.5, base_initializer="glorot_uniform")
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(6, 3, kernel_initializer=init, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, kernel_initializer=init, name="dense"),
        ]
    )
    for name in ("conv", "dense"):
        sv = _sv(model.get_layer(name).kernel)
        np.testing.assert_allclose(sv, 0.5, atol=5e-3)
    clone = keras.Sequential.from_config(model.get_config())
    layer_init = clone.get_layer("dense").kernel_initializer
    assert isinstance(layer_init, SpectralInitializer)
    assert layer_init.get_config() == init.get_config()


BAD_ARGUMENTS = [
    ("eps_spectral", 0.0),
    ("eps_spectral", -1.0),
    ("eps_bjorck", 0.0),
    ("beta_bjorck", 0.75),
    ("beta_bjorck", -0.1),
    ("k_coef_lip", 0.0),
    ("k_coef_lip", float("nan")),
    ("base_initializer", "no_such_initializer"),
    ("base_initializer", 3),
    ("base_initializer", None),
]


def test_bad_arguments():
    for name, value in BAD_ARGUMENTS:
        with pytest.raises(ValueError, match=name):
            SpectralInitializer(**{name: value})
            pytest.fail(f"SpectralInitializer({name}={value!r}) did not raise")


def test_rank_one_shape_rejected():
    with pytest.raises(ValueError, match="rank >= 2"):
        SpectralInitializer()((5,))
