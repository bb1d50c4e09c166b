"""Fast kernels equal their references: values and gradients, with and without XLA.

The sorting layers use sorting networks with permutation gradients, the poolings
TensorFlow's average pooling kernel without XLA and a reshape under XLA; each is compared
here with a plain reference (numpy sort / window sums, TensorFlow's sort gradient).
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from deel_lip.layers import FullSort, GroupSort, ScaledAveragePooling2D, ScaledL2NormPooling2D
from deel_lip.layers._sort_kernels import sorting_network
from deel_lip.layers.activations import MAX_NETWORK_GROUP


@pytest.mark.parametrize("n", range(1, 13))
def test_sorting_network_sorts_every_zero_one_vector(n):
    # 0-1 principle (Knuth, TAOCP 5.3.4): a comparator network sorting every 0/1 input
    # sorts every input.
    values = np.array(list(itertools.product((0, 1), repeat=n)), dtype="int8").reshape(-1, n)
    for i, j in sorting_network(n):
        assert 0 <= i < j < n
        low, high = np.minimum(values[:, i], values[:, j]), np.maximum(values[:, i], values[:, j])
        values[:, i], values[:, j] = low, high
    assert (np.diff(values, axis=1) >= 0).all()


@pytest.mark.parametrize("n", [16, 24, 32])
def test_sorting_network_sorts_random_vectors(n):
    values = np.random.default_rng(n).normal(size=(2000, n))
    sorted_values = values.copy()
    for i, j in sorting_network(n):
        low = np.minimum(sorted_values[:, i], sorted_values[:, j])
        high = np.maximum(sorted_values[:, i], sorted_values[:, j])
        sorted_values[:, i], sorted_values[:, j] = low, high
    np.testing.assert_array_equal(sorted_values, np.sort(values, axis=1))


def _sort_reference(x, n):
    """TensorFlow's sort of groups of ``n`` on the last axis (top-k scatter gradient)."""
    shape = tuple(x.shape)
    groups = tf.sort(tf.reshape(x, shape[:-1] + (shape[-1] // n, n)), axis=-1)
    return tf.reshape(groups, shape)


def _values_and_gradients(layer, reference, x, upstream, jit_compile):
    @tf.function(jit_compile=jit_compile)
    def run(x):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            ours, ref = layer(x), reference(x)
        return (
            ours,
            ref,
            tape.gradient(ours, x, output_gradients=upstream),
            tape.gradient(ref, x, output_gradients=upstream),
        )

    return [np.asarray(t) for t in run(x)]


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize(
    ("make", "n"),
    [
        (lambda: GroupSort(3), 3),
        (lambda: GroupSort(4), 4),
        (lambda: GroupSort(8), 8),
        (lambda: FullSort(), 24),
    ],
)
def test_sort_kernels_equal_reference_without_ties(make, n, jit_compile):
    rng = np.random.default_rng(n)
    x = tf.constant(rng.permutation(3 * 5 * 4 * 24).reshape(3, 5, 4, 24).astype("float32"))
    upstream = tf.constant(rng.normal(size=x.shape).astype("float32"))
    ours, ref, grad_ours, grad_ref = _values_and_gradients(
        make(), lambda t: _sort_reference(t, n), x, upstream, jit_compile
    )
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(grad_ours, grad_ref)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("n", [4, 6, 12])
def test_sort_gradient_is_a_permutation_at_ties(n, data_format, jit_compile):
    """With many ties the gradient still moves each upstream value to one input."""
    rng = np.random.default_rng(7)
    x = np.round(rng.normal(size=(4, 3, 5, 12))).astype("float32")
    upstream = rng.permutation(x.size).reshape(x.shape).astype("float32")
    layer = GroupSort(n, data_format=data_format)
    if data_format == "channels_first":
        x, upstream = np.moveaxis(x, -1, 1), np.moveaxis(upstream, -1, 1)
    x, upstream = tf.constant(x), tf.constant(upstream)
    y, _, grad, _ = _values_and_gradients(layer, lambda t: t, x, upstream, jit_compile)
    if data_format == "channels_first":
        x, y, grad, upstream = (np.moveaxis(np.asarray(t), 1, -1) for t in (x, y, grad, upstream))
    x, y, grad, upstream = (np.asarray(t).reshape(-1, n) for t in (x, y, grad, upstream))
    np.testing.assert_array_equal(y, np.sort(x, axis=1))
    for xs, ys, gs, us in zip(x, y, grad, upstream):
        # grad = P^T upstream for a permutation P with y = P x: each input receives the
        # upstream value of the output slot holding it.
        assert sorted(gs.tolist()) == sorted(us.tolist())
        slots = [int(np.flatnonzero(us == g)[0]) for g in gs]
        assert len(set(slots)) == n
        np.testing.assert_array_equal(ys[slots], xs)


def _window_sums_reference(x, pool, strides):
    """Window sums of a channels-last numpy batch, "valid" windows, by explicit loops."""
    (ph, pw), (sh, sw) = pool, strides
    rows, cols = (x.shape[1] - ph) // sh + 1, (x.shape[2] - pw) // sw + 1
    out = np.zeros((x.shape[0], rows, cols, x.shape[3]), dtype="float64")
    for r in range(rows):
        for c in range(cols):
            out[:, r, c] = x[:, r * sh : r * sh + ph, c * sw : c * sw + pw].sum(axis=(1, 2))
    return out


POOLS = [
    ((2, 2), None, (4, 8, 8, 3)),
    ((2, 2), None, (4, 9, 7, 3)),
    ((3, 2), (1, 2), (2, 8, 9, 3)),
    ((3, 3), (2, 2), (2, 9, 9, 2)),
]


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(("pool", "strides", "shape"), POOLS)
def test_poolings_equal_window_sum_reference(pool, strides, shape, data_format, jit_compile):
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape).astype("float32")
    x[0, :3, :3] = 0.0  # windows of zeros: the L2 gradient there is 0
    steps = strides or pool
    sums = _window_sums_reference(x.astype("float64"), pool, steps)
    overlap = np.prod([-(-p // s) for p, s in zip(pool, steps)])
    area = np.prod(pool)
    expected = {
        "avg": 1.5 * sums / area * np.sqrt(area / overlap),
        "l2": 1.5
        * np.sqrt(_window_sums_reference(x.astype("float64") ** 2, pool, steps) / overlap),
    }
    layers = {
        "avg": ScaledAveragePooling2D(pool, strides, data_format=data_format, k_coef_lip=1.5),
        "l2": ScaledL2NormPooling2D(pool, strides, data_format=data_format, k_coef_lip=1.5),
    }
    for name, layer in layers.items():
        inputs = x if data_format == "channels_last" else np.moveaxis(x, -1, 1)
        upstream = rng.normal(size=expected[name].shape)
        upstream_in = upstream if data_format == "channels_last" else np.moveaxis(upstream, -1, 1)

        def reference(t, name=name):
            # Autodiff reference in float64 for the gradient (window sums by a strided conv).
            t = tf.cast(t, "float64")
            if data_format == "channels_first":
                t = tf.transpose(t, (0, 2, 3, 1))
            ones = tf.ones(tuple(pool) + (1, 1), "float64")
            channels = tf.split(t**2 if name == "l2" else t, t.shape[-1], axis=-1)
            window = tf.concat([tf.nn.conv2d(c, ones, steps, "VALID") for c in channels], -1)
            out = 1.5 * (
                tf.sqrt(window / overlap)
                if name == "l2"
                else window / area * np.sqrt(area / overlap)
            )
            out = tf.cast(out, "float32")
            return out if data_format == "channels_last" else tf.transpose(out, (0, 3, 1, 2))

        ours, ref, grad_ours, grad_ref = _values_and_gradients(
            layer, reference, tf.constant(inputs), tf.constant(upstream_in, "float32"), jit_compile
        )
        ours_last = ours if data_format == "channels_last" else np.moveaxis(ours, 1, -1)
        np.testing.assert_allclose(ours_last, expected[name], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
        # The reference gradient of sqrt at a zero window is nan; ours is 0 there.
        grad_ref = np.nan_to_num(grad_ref, nan=0.0)
        np.testing.assert_allclose(grad_ours, grad_ref, rtol=1e-4, atol=1e-5)
        if name == "l2":
            zero = (slice(0, 1), slice(0, pool[0]), slice(0, pool[1]))
            grad_last = (
                grad_ours if data_format == "channels_last" else np.moveaxis(grad_ours, 1, -1)
            )
            np.testing.assert_array_equal(grad_last[zero], 0.0)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_groups_above_network_limit_use_backend_sort(jit_compile):
    n = MAX_NETWORK_GROUP * 2
    rng = np.random.default_rng(11)
    x = tf.constant(rng.normal(size=(3, 4, n)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(3, 4, n)).astype("float32"))
    ours, ref, grad_ours, grad_ref = _values_and_gradients(
        FullSort(), lambda t: _sort_reference(t, n), x, upstream, jit_compile
    )
    np.testing.assert_array_equal(ours, np.sort(np.asarray(x), axis=-1))
    np.testing.assert_array_equal(grad_ours, grad_ref)
