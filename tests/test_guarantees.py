"""The Lipschitz guarantee of every constrained layer, measured exactly.

Each constrained layer is checked on selections of the configurations it accepts (kernel
sizes, strides, padding modes, output padding, channel counts, input sizes from 4 to 8 per
axis or lengths 4 to 10, ``k_coef_lip``, normalisation settings; `lipschitz_cases.py`).
The exact operator norm - the largest singular value of the dense float64 matrix of the
layer's linear part - must be at most ``k_coef_lip * (1 + 1e-4)`` (for ``FrobeniusDense``
with disjoint neurons: the norm of each output's row):

* (a) with a random, non-orthogonal raw kernel, for a pairwise selection (every pair of
  values of every two axes);
* (b) after training steps on real digits, for the inference kernel and for the exported
  plain Keras layer, whose outputs equal the layer's (every value of every axis; the
  pairwise selection with longer training is marked slow; transposed convolutions with a
  kernel smaller than the stride crash TensorFlow's oneDNN kernels in training and are
  checked in (a) only, see `lipschitz_cases.is_trainable`);
* (c) with the default Bjorck run, the kernel matrix scaled back (by ``factor / k``, or by
  its largest singular value under the frequency bound) has all its singular values within
  1e-3 of 1, after training and from a non-orthogonal random
  kernel with singular values in [0.5, 2];
* (c') an `OrthogonalConv2D` with circular padding, stride 1 and ``filters >= c_in`` has
  all its singular values within 1e-3 of ``k`` (exactly orthogonal);
* (d) for stride-1 "valid"/"same"/"circular" convolutions, the ratio exact norm / k is
  printed (``pytest -rP`` or ``-s`` shows the ``TIGHTNESS`` lines), not asserted.

The slow run adds the full product of the geometric axes for (a).

The SLL residual blocks (nonlinear, `lipschitz_cases.BLOCK_AXES`) are checked through the
exact norm of their linear part ``T^-1/2 W^T`` (<= 1), exact Jacobians and random pairs
(<= ``k_coef_lip``), with random kernels, ``log q`` and biases.
"""

import keras
import lipschitz_cases as cases
import numpy as np
import pytest
from keras import ops

import deel_lip.layers
from deel_lip._backend import batch_jacobian
from deel_lip.layers import SpectralDense
from deel_lip.normalizers import kernel_matrix
from deel_lip.utils import layer_operator_matrix

BOUND_TOL = 1e-4
BJORCK_TOL = 1e-3
EXPORT_TOL = 1e-6


def _bjorck_deviation(layer) -> float:
    """``max |s_i - 1|`` over the singular values of the kernel matrix scaled back to 1.

    Coverage bound: the scale is ``factor / k``; frequency bound (the scale depends on the
    kernel): the largest singular value."""
    matrix = ops.convert_to_numpy(kernel_matrix(layer.constrained_kernel)).astype(np.float64)
    values = np.linalg.svd(matrix, compute_uv=False)
    if getattr(layer, "conv_bound", "coverage") == "frequency":
        values = values / values.max()
    else:
        values = values * layer._lipschitz_factor() / layer._get_coef()
    return float(np.abs(values - 1.0).max())


def _check(kind, cfg, layer, stage, worst, matrix=None, bjorck=False) -> list[str]:
    """Failures of the bound (and, if asked, of Bjorck orthogonality); prints (d).

    ``worst[stage]`` keeps the largest ratio exact norm / k seen at that stage.
    """
    shape = cases.input_shape(kind, cfg)
    if matrix is None:
        matrix = layer_operator_matrix(layer, shape)
    k = cfg["k_coef_lip"]
    norm = cases.worst_norm(kind, cfg, matrix)
    label = f"{cases.case_id(kind, cfg)} input={shape} [{stage}]"
    worst[stage] = max(worst.get(stage, 0.0), norm / k)
    failures = []
    if norm > k * (1 + BOUND_TOL):
        failures.append(f"{label}: exact norm {norm:.8f} > k_coef_lip {k} (ratio {norm / k:.6f})")
    if cases.is_tightness_reported(kind, cfg):
        print(f"TIGHTNESS {label}: exact norm / k = {norm / k:.4f}")
    if cases.is_orthogonal(kind, cfg):
        low = float(np.linalg.svd(matrix, compute_uv=False).min())
        if low < k * (1 - BJORCK_TOL):
            failures.append(f"{label}: not orthogonal, smallest singular value / k {low / k:.6f}")
    if bjorck and cases.is_bjorck(kind, cfg):
        deviation = _bjorck_deviation(layer)
        if deviation > BJORCK_TOL:
            failures.append(f"{label}: Bjorck singular values off 1 by {deviation:.2e}")
    return failures


def _conditioned_kernel(shape, rng, low=0.5, high=2.0) -> np.ndarray:
    """Random kernel whose matrix has singular values uniform in ``[low, high]``."""
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    n = min(rows, cols)
    left, _ = np.linalg.qr(rng.standard_normal((rows, n)))
    right, _ = np.linalg.qr(rng.standard_normal((cols, n)))
    return ((left * rng.uniform(low, high, n)) @ right.T).reshape(shape)


def _random_kernel_layer(kind, cfg, seed, conditioned=False):
    layer = cases.make_layer(kind, cfg)
    shape = cases.input_shape(kind, cfg)
    layer.build((None,) + shape)
    rng = np.random.default_rng(seed)
    for kernel in cases.raw_parameters(layer):
        if conditioned:
            value = _conditioned_kernel(tuple(kernel.shape), rng)
        else:
            value = 2.0 * rng.standard_normal(kernel.shape)
        kernel.assign(value.astype(kernel.dtype))
    layer(np.zeros((1,) + shape, "float32"), training=True)  # refresh the cache
    return layer


def _check_random_kernel(kind, cfg, seed, worst) -> list[str]:
    layer = _random_kernel_layer(kind, cfg, seed)
    return _check(kind, cfg, layer, "random kernel", worst)


def _report(kind, worst) -> None:
    for stage, ratio in worst.items():
        print(f"MAX NORM {kind} [{stage}]: exact norm / k_coef_lip = {ratio:.7f}")


@pytest.mark.parametrize("kind", cases.KINDS)
def test_exact_bound_with_random_kernel(kind):
    failures, worst = [], {}
    for i, cfg in enumerate(cases.pairwise(kind)):
        failures += _check_random_kernel(kind, cfg, seed=i, worst=worst)
    _report(kind, worst)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize("kind", cases.KINDS)
def test_exact_bound_with_random_kernel_sweep(kind):
    failures, worst = [], {}
    for i, cfg in enumerate(cases.sweep(kind)):
        failures += _check_random_kernel(kind, cfg, seed=1000 + i, worst=worst)
    _report(kind, worst)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "kind", [kind for kind in cases.KINDS if "normalization" in cases.AXES[kind]]
)
def test_bjorck_orthogonalizes_a_non_orthogonal_kernel(kind):
    """(c) Default Bjorck run on a random kernel with singular values in [0.5, 2]."""
    failures, worst = [], {}
    for i, cfg in enumerate(cases.pairwise(kind)):
        if cases.is_bjorck(kind, cfg):
            layer = _random_kernel_layer(kind, cfg, seed=i, conditioned=True)
            stage = "conditioned random kernel"
            failures += _check(kind, cfg, layer, stage, worst, bjorck=True)
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- SLL residual blocks


def _random_block(kind, cfg, seed):
    """SLL block of the configuration with random kernel, log q (spread over e^+-4) and bias."""
    layer = cases.make_layer(kind, cfg)
    shape = cases.input_shape(kind, cfg)
    layer.build((None,) + shape)
    rng = np.random.default_rng(seed)
    layer.kernel.assign((2.0 * rng.standard_normal(layer.kernel.shape)).astype("float32"))
    layer.log_q.assign((2.0 * rng.standard_normal(layer.log_q.shape)).astype("float32"))
    layer.bias.assign(rng.standard_normal(layer.bias.shape).astype("float32"))
    return layer, shape, rng


@pytest.mark.parametrize("kind", cases.BLOCK_KINDS)
def test_exact_sll_linear_bound_and_jacobians(kind):
    """SLL blocks are nonlinear; for a pairwise selection of configurations with random
    parameters: the exact norm of the linear part ``T^-1/2 W^T`` (the block's certificate)
    is <= 1, and the spectral norm of the exact Jacobian at 32 random points, and the ratio
    ``||f(x) - f(y)|| / ||x - y||`` on 32 random pairs, are <= ``k_coef_lip``."""
    failures, worst = [], {}
    for i, cfg in enumerate(cases.pairwise(kind)):
        layer, shape, rng = _random_block(kind, cfg, seed=i)
        k, label = cfg["k_coef_lip"], cases.case_id(kind, cfg)
        linear = np.linalg.norm(layer_operator_matrix(layer.linear_bound_map, shape), 2)
        x = rng.standard_normal((32,) + shape).astype("float32")
        y = rng.standard_normal((32,) + shape).astype("float32")
        jac = ops.convert_to_numpy(batch_jacobian(layer, x)).astype(np.float64)
        jacobian = max(np.linalg.norm(j, 2) for j in jac) / k
        diff = ops.convert_to_numpy(layer(x) - layer(y)).reshape(32, -1)
        pairs = np.linalg.norm(diff, axis=1) / np.linalg.norm((x - y).reshape(32, -1), axis=1)
        measured = {
            "linear part (bound 1, not k)": linear,
            "jacobian / k": jacobian,
            "pairs / k": pairs.max() / k,
        }
        for stage, value in measured.items():
            worst[stage] = max(worst.get(stage, 0.0), value)
            if value > 1 + BOUND_TOL:
                failures.append(f"{label} [{stage}]: {value:.8f} > 1")
    _report(kind, worst)
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- after training


def _adapter(kind, cfg, images):
    """Map the 8x8x1 digits to the configuration's input shape (crop + projection)."""
    shape = cases.input_shape(kind, cfg)
    c_in = shape[-1]
    if kind.endswith("Dense"):
        if cfg["rank"] == 2:
            h = keras.layers.Flatten()(images)
        else:
            h = keras.layers.Cropping1D((2, 2))(keras.layers.Reshape((8, 8))(images))
        return keras.layers.Dense(c_in, use_bias=False)(h)
    if kind == "SpectralConv1D":
        length = shape[0]
        start = (64 - length) // 2
        h = keras.layers.Reshape((64, 1))(images)
        h = keras.layers.Cropping1D((start, 64 - start - length))(h)
        return keras.layers.Conv1D(c_in, 1, use_bias=False)(h)
    rows, cols = shape[:2]
    top, left = (8 - rows) // 2, (8 - cols) // 2
    crop = ((top, 8 - rows - top), (left, 8 - cols - left))
    h = keras.layers.Cropping2D(crop)(images)
    return keras.layers.Conv2D(c_in, 1, use_bias=False)(h)


def _branch_model(kind, cfgs):
    """One model with a branch per configuration, trained jointly on a digit classifier."""
    images = keras.Input((8, 8, 1))
    layers, features = [], []
    for i, cfg in enumerate(cfgs):
        layer = cases.make_layer(kind, cfg, name=f"case_{i}")
        layers.append(layer)
        features.append(keras.layers.Flatten()(layer(_adapter(kind, cfg, images))))
    logits = keras.layers.Dense(10)(keras.layers.Concatenate()(features))
    return keras.Model(images, logits), layers


def _train_and_check(kind, cfgs, digits, n_samples, epochs, learning_rate, seed):
    keras.utils.set_random_seed(seed)
    model, layers = _branch_model(kind, cfgs)
    images, labels = digits
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(images[:n_samples], labels[:n_samples], batch_size=64, epochs=epochs, verbose=0)

    x_eval = images[-64:]
    layer_inputs = keras.Model(model.input, [layer.input for layer in layers])(x_eval)
    failures, worst = [], {}
    for cfg, layer, x_in in zip(cfgs, layers, layer_inputs):
        shape = cases.input_shape(kind, cfg)
        failures += _check(kind, cfg, layer, "trained, inference kernel", worst, bjorck=True)
        exported = layer.vanilla_export()
        assert not isinstance(exported, deel_lip.layers.ConstrainedKernel)
        matrix = layer_operator_matrix(exported, shape)
        failures += _check(kind, cfg, layer, "trained, exported layer", worst, matrix=matrix)
        diff = float(np.max(np.abs(ops.convert_to_numpy(layer(x_in) - exported(x_in)))))
        if diff > EXPORT_TOL:
            failures.append(f"{cases.case_id(kind, cfg)}: export differs by {diff:.2e}")
    _report(kind, worst)
    return failures


@pytest.mark.parametrize("kind", cases.KINDS)
def test_exact_bound_after_training_and_export(kind, digits):
    cfgs = cases.each_value(kind)
    failures = _train_and_check(kind, cfgs, digits, 512, epochs=1, learning_rate=1e-2, seed=0)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize("kind", cases.KINDS)
def test_exact_bound_after_longer_training_and_export(kind, digits):
    cfgs = cases.trainable_pairwise(kind)
    failures = _train_and_check(kind, cfgs, digits, 1797, epochs=4, learning_rate=3e-2, seed=1)
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- gradient norm


def test_spectral_dense_network_keeps_each_output_gradient_norm_at_one(digits):
    """Orthogonal SpectralDense layers (and GroupSort2, a permutation of its inputs) make
    every output's input gradient a unit vector: ``||grad f_j(x)|| = 1``."""
    group_sort = getattr(deel_lip.layers, "GroupSort2", None)

    def activation():
        return [group_sort()] if group_sort is not None else []

    model = keras.Sequential(
        [keras.Input((64,)), SpectralDense(64)]
        + activation()
        + [SpectralDense(32)]
        + activation()
        + [SpectralDense(10)]
    )
    images, labels = digits
    x = images.reshape(len(images), 64)
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x[:1024], labels[:1024], batch_size=64, epochs=2, verbose=0)

    jac = ops.convert_to_numpy(batch_jacobian(lambda t: model(t, training=False), x[-512:])).astype(
        np.float64
    )
    norms = np.linalg.norm(jac, axis=2)  # (samples, outputs)
    network = "SpectralDense + GroupSort2" if group_sort is not None else "linear SpectralDense"
    print(
        f"GRADIENT NORM ({network}, 512 digits x 10 outputs): mean {norms.mean():.6f}, "
        f"max {norms.max():.6f}, min {norms.min():.6f}"
    )
    assert norms.max() <= 1.0 + BOUND_TOL
    assert norms.min() >= 1.0 - BJORCK_TOL
