"""Micro-benchmark of one kernel normalisation step (forward + backward, XLA).

Compares `deel_lip.normalizers.reshaped_kernel_orthogonalization` (Bjorck iterations on
the small Gram matrix, one final step on the full matrix) with the textbook scheme that
iterates on the full matrix, ``W <- (1 + beta) W - beta W W^T W``, same iteration count.
Kernel matrices go from 9x16 (3x3x1 -> 16) to 4608x512 (3x3x512 -> 512).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import tensorflow as tf

from deel_lip.normalizers import reshaped_kernel_orthogonalization

SHAPES = ((9, 16), (144, 32), (288, 64), (1568, 64), (1152, 128), (2304, 256), (4608, 512))


def full_matrix_bjorck(w, u, iterations: int = 15, beta: float = 0.5):
    """Reference: power iteration on W, then Bjorck iterations on the full matrix."""
    for _ in range(10):
        v = tf.linalg.l2_normalize(tf.matmul(u, tf.transpose(w)))
        u = tf.linalg.l2_normalize(tf.matmul(v, w))
    sigma = tf.reduce_sum(tf.matmul(v, w) * u)
    w = w / sigma
    for _ in range(iterations):
        w = (1 + beta) * w - beta * tf.matmul(w, tf.matmul(tf.transpose(w), w))
    return w


def _ours(w, u):
    return reshaped_kernel_orthogonalization(w, u, 1.0, eps_bjorck=1e-30, maxiter_bjorck=15)[0]


def _step_fn(normalize):
    @tf.function(jit_compile=True)
    def step(w, u):
        with tf.GradientTape() as tape:
            tape.watch(w)
            loss = tf.reduce_sum(tf.square(normalize(w, u)))
        return loss, tape.gradient(loss, w)

    return step


def _median_seconds(fn, *args, repeats: int) -> float:
    fn(*args)  # trace and compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        np.asarray(out[0])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_normalization_benchmark(shapes=SHAPES, repeats: int = 15) -> list[dict]:
    """Median milliseconds per forward+backward step for each kernel matrix shape."""
    rng = np.random.default_rng(0)
    ours, reference = _step_fn(_ours), _step_fn(full_matrix_bjorck)
    rows = []
    for shape in shapes:
        w = tf.constant(rng.normal(size=shape).astype("float32"))
        u_small = tf.constant(rng.normal(size=(1, min(shape))).astype("float32"))
        u_full = tf.constant(rng.normal(size=(1, shape[1])).astype("float32"))
        ours_s = _median_seconds(ours, w, u_small, repeats=repeats)
        ref_s = _median_seconds(reference, w, u_full, repeats=repeats)
        rows.append(
            {
                "shape": list(shape),
                "ours_ms": ours_s * 1e3,
                "full_matrix_ms": ref_s * 1e3,
                "speedup": ref_s / ours_s,
            }
        )
    return rows
