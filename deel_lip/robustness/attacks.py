"""Empirical L2 attacks: projected gradient ascent and a minimal-perturbation search.

Both attacks are white-box: they follow the input gradient of a per-sample loss of the
model's logits, computed in inference mode (``model(x, training=False)``). The loss is
either the negative signed margin ``-(f_y - max_{j != y} f_j)`` (``"margin"``; binary:
``-s f``) or the cross-entropy of the logits (``"crossentropy"``; binary: the logistic
loss ``softplus(-s f)``). A point is adversarial when its signed margin is ``< 0``.

* `pgd_l2`: ``delta <- Proj_{||delta|| <= eps}(delta + alpha g / ||g||)`` followed by the
  input-range clip, keeping the iterate with the lowest margin (Madry et al., 2018).
* `minimal_adversarial_l2`: decoupled direction and norm (Rony et al., 2019): a gradient
  step gives the direction, the norm ``eps_k`` shrinks by ``(1 - gamma)`` after an
  adversarial iterate and grows by ``(1 + gamma)`` otherwise; the smallest adversarial
  iterate is then shortened by bisection on the segment from ``x`` to it.

All arithmetic is `keras.ops`; the input gradient is `deel_lip._backend`'s.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from deel_lip._checks import check_batch_size, check_positive_float, check_positive_int
from deel_lip.robustness._attack_utils import (
    LOSSES,
    TINY,
    check_inputs,
    check_loss,
    checked_targets,
    clip_batch,
    compiled_functions,
    per_sample,
    per_sample_eps,
    progress_bar,
    sample_norms,
)

__all__ = ["pgd_l2", "minimal_adversarial_l2", "LOSSES"]

# ------------------------------------------------------------------ PGD


def _pgd_batch(fns, x, targets, eps, steps, step_size, clip, start, bar):
    delta = clip_batch(x + start, *clip) - x
    best_adv, best_margin = x, fns.margin(x, targets)
    for _ in range(steps):
        x_adv = x + delta
        margin, grad = fns.margin_and_gradient(x_adv, targets)
        improved = margin < best_margin
        best_adv = ops.where(per_sample(improved, x), x_adv, best_adv)
        best_margin = ops.minimum(margin, best_margin)
        delta = delta + step_size * grad / per_sample(ops.maximum(sample_norms(grad), TINY), x)
        scale = ops.minimum(1.0, eps / ops.maximum(sample_norms(delta), TINY))
        delta = clip_batch(x + delta * per_sample(scale, x), *clip) - x
        if bar is not None:
            bar.add(1)
    x_adv = x + delta
    improved = fns.margin(x_adv, targets) < best_margin
    return ops.where(per_sample(improved, x), x_adv, best_adv)


def pgd_l2(
    model,
    x,
    y,
    eps,
    steps: int = 50,
    step_size: float | None = None,
    clip_min: float | None = None,
    clip_max: float | None = None,
    random_start: bool = False,
    loss: str = "margin",
    batch_size: int = 256,
    seed: int | None = None,
    verbose: bool = False,
) -> np.ndarray:
    """Projected gradient ascent in the L2 ball: adversarial examples of ``model``.

    For each sample: ``delta <- clip(x + Proj_eps(delta + alpha g / ||g||)) - x``, with
    ``g`` the input gradient of the per-sample loss (see the module docstring),
    ``Proj_eps`` the projection on the L2 ball ``||delta|| <= eps`` and ``clip`` the
    input range. Clipping a point of the ball towards ``x`` (itself in range) keeps it in
    the ball. The returned point is the iterate (``x`` included) of lowest signed margin.

    Args:
        model: Keras model returning logits (binary ``(n, 1)`` or ``(n, n_classes)``).
        x: inputs ``(n, ...)`` in ``[clip_min, clip_max]``.
        y: labels: class ids, one-hot, or binary labels in {0, 1} / {-1, +1}.
        eps: L2 radius (>= 0), one for all samples or an array ``(n,)``.
        steps: number of gradient steps (>= 1).
        step_size: L2 length ``alpha`` of a step; default ``2.5 * eps / steps``.
        clip_min, clip_max: input range (None: unbounded on that side).
        random_start: start from a uniform point of the ball instead of ``x``.
        loss: "margin" or "crossentropy".
        batch_size: samples attacked together.
        seed: seed of the random start.
        verbose: show a `keras.utils.Progbar`.

    Returns:
        Adversarial candidates, float32 array of the shape of ``x``, with
        ``||x_adv - x|| <= eps`` (up to float32 rounding) and values in the input range.
        Whether each one is misclassified is for the caller to check.

    Raises:
        ValueError / TypeError: for bad arguments (named in the message).

    Reference:
        Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards deep learning models resistant to
        adversarial attacks", ICLR 2018.
    """
    x = check_inputs(x, y, clip_min, clip_max)
    n = len(x)
    eps = per_sample_eps(eps, n)
    steps = check_positive_int("steps", steps)
    step_size = check_positive_float("step_size", step_size, allow_none=True)
    loss = check_loss(loss)
    batch_size = check_batch_size(batch_size)
    if not isinstance(random_start, bool):
        raise TypeError(f"random_start must be a bool, received: {random_start!r}")
    targets = checked_targets(model, x, y)
    alphas = 2.5 * eps / steps if step_size is None else np.full((n,), step_size, "float32")
    start = np.zeros_like(x)
    if random_start:
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal(x.shape).astype("float32")
        dims = int(np.prod(x.shape[1:]))
        radius = eps * rng.uniform(size=n).astype("float32") ** (1.0 / dims)
        norms = np.linalg.norm(noise.reshape(n, -1), axis=1)
        start = noise * (radius / np.maximum(norms, TINY)).reshape((n,) + (1,) * (x.ndim - 1))
    fns = compiled_functions(model, loss)
    bar = progress_bar(verbose, steps * math.ceil(n / batch_size))
    out = []
    for lo in range(0, n, batch_size):
        hi = lo + batch_size
        adv = _pgd_batch(
            fns,
            ops.convert_to_tensor(x[lo:hi]),
            ops.convert_to_tensor(targets[lo:hi]),
            ops.convert_to_tensor(eps[lo:hi]),
            steps,
            per_sample(ops.convert_to_tensor(alphas[lo:hi]), x[lo:hi]),
            (clip_min, clip_max),
            ops.convert_to_tensor(start[lo:hi]),
            bar,
        )
        out.append(ops.convert_to_numpy(adv))
    return np.concatenate(out, axis=0).astype("float32")


# ------------------------------------------------------------------ minimal perturbation


def _ddn_batch(fns, x, targets, config, bar):
    """Decoupled direction and norm on one batch: ``(best_adv, best_dist)`` tensors."""
    steps, init_eps, gamma, step_size, max_eps, clip = config
    n = x.shape[0]
    margin0 = fns.margin(x, targets)
    best_dist = ops.where(margin0 <= 0, 0.0, np.inf)
    best_adv = x
    delta = ops.zeros_like(x)
    eps_k = ops.full((n,), init_eps if max_eps is None else min(init_eps, max_eps))
    min_step = step_size / 100.0
    for k in range(steps):
        x_adv = x + delta
        margin, grad = fns.margin_and_gradient(x_adv, targets)
        dist = sample_norms(delta)
        is_adv = margin < 0
        better = ops.logical_and(is_adv, dist < best_dist)
        best_dist = ops.where(better, dist, best_dist)
        best_adv = ops.where(per_sample(better, x), x_adv, best_adv)
        # norm: shrink below the current adversarial norm, grow otherwise
        eps_k = ops.where(is_adv, (1.0 - gamma) * ops.minimum(eps_k, dist), (1.0 + gamma) * eps_k)
        if max_eps is not None:
            eps_k = ops.minimum(eps_k, max_eps)
        # direction: a normalised gradient step with a cosine-annealed length
        alpha = min_step + 0.5 * (step_size - min_step) * (1.0 + math.cos(math.pi * k / steps))
        delta = delta + alpha * grad / per_sample(ops.maximum(sample_norms(grad), TINY), x)
        delta = delta * per_sample(eps_k / ops.maximum(sample_norms(delta), TINY), x)
        delta = clip_batch(x + delta, *clip) - x
        if bar is not None:
            bar.add(1)
    x_adv = x + delta
    dist = sample_norms(delta)
    better = ops.logical_and(fns.margin(x_adv, targets) < 0, dist < best_dist)
    best_dist = ops.where(better, dist, best_dist)
    best_adv = ops.where(per_sample(better, x), x_adv, best_adv)
    return best_adv, best_dist


def _bisect_segment(fns, x, adv, targets, refine_steps):
    """Shortest adversarial point ``x + t (adv - x)`` found by bisection on ``t`` in [0, 1].

    Points whose ``adv`` is not adversarial are returned unchanged. The result is a convex
    combination of ``x`` and ``adv``, so it stays in any box containing both.
    """
    direction = adv - x
    n = x.shape[0]
    low, high = ops.zeros((n,)), ops.ones((n,))
    for _ in range(refine_steps):
        mid = 0.5 * (low + high)
        is_adv = fns.margin(x + per_sample(mid, x) * direction, targets) < 0
        high = ops.where(is_adv, mid, high)
        low = ops.where(is_adv, low, mid)
    shortened = x + per_sample(high, x) * direction
    return ops.where(per_sample(high < 1.0, x), shortened, adv)


def minimal_adversarial_l2(
    model,
    x,
    y,
    max_eps: float | None = None,
    steps: int = 100,
    init_eps: float = 1.0,
    gamma: float = 0.05,
    step_size: float = 1.0,
    refine_steps: int = 20,
    clip_min: float | None = None,
    clip_max: float | None = None,
    loss: str = "margin",
    batch_size: int = 256,
    verbose: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smallest L2 perturbation found that changes the class of each sample.

    Decoupled direction and norm: at step ``k`` the iterate ``x + delta`` is evaluated;
    ``delta`` moves by ``alpha_k g / ||g||`` (``g`` the input gradient of the loss,
    ``alpha_k`` cosine-annealed from ``step_size`` to ``step_size / 100``) and is then
    rescaled to the norm ``eps_k``, which is ``(1 - gamma) min(eps_{k-1}, ||delta||)``
    after an adversarial iterate and ``(1 + gamma) eps_{k-1}`` otherwise (at most
    ``max_eps``), then clipped to the input range. The smallest adversarial iterate is
    then shortened by ``refine_steps`` bisection steps on the segment from ``x`` to it.
    The distances found are upper bounds of the true minimal adversarial distance.

    Args:
        model: Keras model returning logits (binary ``(n, 1)`` or ``(n, n_classes)``).
        x: inputs ``(n, ...)`` in ``[clip_min, clip_max]``.
        y: labels: class ids, one-hot, or binary labels in {0, 1} / {-1, +1}.
        max_eps: largest L2 norm searched (> 0), or None for no limit.
        steps: number of gradient steps (>= 1).
        init_eps: initial norm ``eps_0`` (> 0).
        gamma: norm update factor in (0, 1).
        step_size: initial L2 length of the gradient step (> 0); suited to inputs whose
            range has size about 1, scale it with the input range.
        refine_steps: bisection steps on the segment (>= 0).
        clip_min, clip_max: input range (None: unbounded on that side).
        loss: "margin" or "crossentropy".
        batch_size: samples attacked together.
        verbose: show a `keras.utils.Progbar`.

    Returns:
        ``(adversarials, distances, success)``: float32 array of the shape of ``x``,
        float64 distances ``||adv - x||`` ``(n,)`` and a boolean mask ``(n,)``. Where
        ``success`` is False no adversarial was found (within ``max_eps``): ``adv = x``
        and the distance is ``inf``. Samples misclassified from the start (signed margin
        ``<= 0``) have ``adv = x``, distance 0 and ``success`` True. Every successful
        ``adv`` is verified misclassified and in the input range.

    Raises:
        ValueError / TypeError: for bad arguments (named in the message).

    Reference:
        Rony, Hafemann, Oliveira, Ben Ayed, Sabourin, Granger, "Decoupling direction and
        norm for efficient gradient-based L2 adversarial attacks and defenses", CVPR 2019.
    """
    x = check_inputs(x, y, clip_min, clip_max)
    n = len(x)
    max_eps = check_positive_float("max_eps", max_eps, allow_none=True)
    steps = check_positive_int("steps", steps)
    init_eps = check_positive_float("init_eps", init_eps)
    gamma = check_positive_float("gamma", gamma)
    if gamma >= 1:
        raise ValueError(f"gamma must be in (0, 1), received: {gamma!r}")
    step_size = check_positive_float("step_size", step_size)
    refine_steps = check_positive_int("refine_steps", refine_steps, minimum=0)
    loss = check_loss(loss)
    batch_size = check_batch_size(batch_size)
    targets = checked_targets(model, x, y)
    fns = compiled_functions(model, loss)
    config = (steps, init_eps, gamma, step_size, max_eps, (clip_min, clip_max))
    bar = progress_bar(verbose, (steps + refine_steps + 1) * math.ceil(n / batch_size))
    adversarials, success = [], []
    for lo in range(0, n, batch_size):
        hi = lo + batch_size
        x_b = ops.convert_to_tensor(x[lo:hi])
        t_b = ops.convert_to_tensor(targets[lo:hi])
        adv, _ = _ddn_batch(fns, x_b, t_b, config, bar)
        adv = _bisect_segment(fns, x_b, adv, t_b, refine_steps)
        final_margin = fns.margin(adv, t_b)
        start_margin = fns.margin(x_b, t_b)
        found = ops.logical_or(final_margin < 0, start_margin <= 0)
        adversarials.append(ops.convert_to_numpy(ops.where(per_sample(found, x_b), adv, x_b)))
        success.append(ops.convert_to_numpy(found))
        if bar is not None:
            bar.add(refine_steps + 1)
    adversarials = np.concatenate(adversarials, axis=0).astype("float32")
    success = np.concatenate(success, axis=0).astype(bool)
    distances = np.linalg.norm((adversarials.astype("float64") - x).reshape(n, -1), axis=1)
    if max_eps is not None:
        success &= distances <= max_eps * (1 + 1e-6)
    adversarials[~success] = x[~success]
    distances[~success] = np.inf
    return adversarials, distances, success
