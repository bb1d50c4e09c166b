"""Exact Lipschitz measurements of layers and models.

* `layer_operator_matrix`: the dense matrix ``A`` of a layer's linear part, so that
  ``flatten(layer(x)) = A flatten(x) + b`` (bias and activation excluded), built column by
  column from the identity basis: ``A[:, i] = f(e_i) - f(0)``.
* `compute_layer_sv` / `compute_model_sv`: the smallest and largest singular values of
  each layer's linear operator (exact SVD on small inputs, iterative methods otherwise).
  They read the layer's weights and never modify them (no ``assign``, no ``condense``).
* `evaluate_lip_const`: ``max_x ||J_f(x)||_2`` over samples, from exact Jacobians. It is a
  *lower bound* of the Lipschitz constant ``sup_x ||J_f(x)||_2`` of the model.

The Jacobians and adjoints come from automatic differentiation, the only TensorFlow-only
calls (`deel_lip._backend.batch_jacobian` and `deel_lip._backend.vjp`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import keras
import numpy as np
from keras import ops

from deel_lip import _backend
from deel_lip.linear_parts import (
    has_linear_part,
    inference_kernel,
    layer_operator_matrix,
    linear_function,
    sample_shape,
)
from deel_lip.losses import process_labels_for_multi_gpu  # deel-lip kept it in utils

__all__ = [
    "MAX_DENSE_DIM",
    "evaluate_lip_const",
    "evaluate_lip_const_gen",
    "l2_normalize",
    "process_labels_for_multi_gpu",
    "layer_operator_matrix",
    "compute_layer_sv",
    "compute_model_sv",
]

#: Largest input dimension for which `compute_layer_sv` builds the dense operator matrix.
MAX_DENSE_DIM = 4096
#: Largest number of entries of a dense operator matrix (2**25 float64 = 256 MiB).
_MAX_DENSE_ENTRIES = 2**25
_JACOBIAN_CHUNK = 16
_POWER_TOL = 1e-6
_POWER_MAXITER = 20000

SvFunction = Callable[[keras.layers.Layer, tuple | None], tuple]


# ------------------------------------------------------------------ singular values


def _build_input_shape(layer) -> tuple | None:
    """Input shape (batch axis included) the layer was built or called with, if known.

    deel_lip layers state it (``built_input_shape``); for plain Keras layers, which have
    no public record of it, Keras's build record or the layer's symbolic input.
    """
    own = getattr(layer, "built_input_shape", None)
    if own is not None:
        return tuple(own)
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    shape = next(iter(shapes.values()), None)
    if shape is None:  # layers without weights record no build shape
        try:
            shape = layer.input.shape
        except (AttributeError, ValueError):
            return None
    return tuple(shape)


def _find_handler(layer, mapping: dict) -> SvFunction | None:
    """Function registered for the layer's type or its closest base class."""
    for cls in type(layer).__mro__:
        if cls in mapping:
            return mapping[cls]
    return None


def _output_shape(fn, shape) -> tuple:
    """Shape of one output of ``fn`` on inputs of shape ``shape``."""
    return tuple(fn(ops.zeros((1,) + shape, dtype="float64")).shape[1:])


def _top_singular_value(fn, shape) -> float:
    """Largest singular value by power iteration on ``A^T A`` (adjoint by autodiff).

    Stops when the estimate changes by less than ``1e-6`` relatively between two
    iterations (at most 20000 iterations). The estimate ``||A v||`` (``v`` unit) is a
    lower bound that approaches the largest singular value from below; when the top of
    the spectrum is clustered (convolutions on large inputs) it can still be below it by
    more than ``1e-6`` (e.g. 7e-4 for a 3x3 convolution on 64x64 inputs).
    """
    rng = np.random.default_rng(0)
    v = rng.standard_normal((1,) + shape)
    v /= np.linalg.norm(v)
    anchor = ops.zeros((1,) + shape, dtype="float64")
    sigma_prev = 0.0
    sigma = 0.0
    for _ in range(_POWER_MAXITER):
        av = fn(ops.convert_to_tensor(v))
        sigma = float(np.linalg.norm(ops.convert_to_numpy(av)))
        if sigma == 0.0:
            return 0.0
        w = ops.convert_to_numpy(_backend.vjp(fn, anchor, av))
        v = w / np.linalg.norm(w)
        if abs(sigma - sigma_prev) <= _POWER_TOL * sigma:
            break
        sigma_prev = sigma
    return sigma


def _bottom_singular_value(fn, shape, out_shape: tuple) -> float:
    """Smallest of the ``min(m, n)`` singular values by ARPACK (needs ``scipy``)."""
    try:
        from scipy.sparse.linalg import LinearOperator, svds
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The smallest singular value of a large operator needs scipy: pip install scipy"
        ) from error
    n = math.prod(shape)
    out_dim = math.prod(out_shape)
    anchor = ops.zeros((1,) + shape, dtype="float64")

    def matvec(vec):
        out = fn(ops.convert_to_tensor(np.reshape(vec, (1,) + shape).astype(np.float64)))
        return ops.convert_to_numpy(out).reshape(-1)

    def rmatvec(vec):
        cot = np.reshape(vec, (1,) + out_shape).astype(np.float64)
        grad = _backend.vjp(fn, anchor, ops.convert_to_tensor(cot))
        return ops.convert_to_numpy(grad).reshape(-1)

    operator = LinearOperator((out_dim, n), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)
    if min(out_dim, n) == 1:
        return float(np.linalg.norm(matvec(np.ones(n)) if n == 1 else rmatvec(np.ones(1))))
    values = svds(operator, k=1, which="SM", return_singular_vectors=False, random_state=0)
    return float(values.min())


def _dense_sv(layer) -> tuple[float, float]:
    kernel = ops.convert_to_numpy(inference_kernel(layer)).astype(np.float64)
    values = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)
    return float(values.min()), float(values.max())


def compute_layer_sv(
    layer: keras.layers.Layer,
    input_shape: Sequence[int] | None = None,
    supplementary_type2sv: dict[type, SvFunction] | None = None,
) -> tuple[float | None, float | None]:
    """Smallest and largest singular values of a layer's linear operator.

    The operator is the one used at inference (``training=False``): for constrained
    layers, the cached constrained kernel. Bias and activation are excluded. The layer is
    read, never modified.

    * Dense layers: SVD of the kernel (the operator on ``(..., d)`` inputs is a block
      diagonal of copies of it, with the same singular values).
    * Convolutions (and transposed ones): SVD of `layer_operator_matrix` on inputs of
      shape ``input_shape`` if given, else the layer's own build input shape, when the
      input has at most `MAX_DENSE_DIM` entries (and the matrix at most 2**25). Otherwise
      the largest value comes from power iteration on ``A^T A`` (to a relative change of
      1e-6 per iteration; a lower estimate, see below) and the smallest from ARPACK
      (``scipy.sparse.linalg.svds(which="SM")``, needs ``scipy``) on the operator and
      its adjoint. Power iteration converges slowly on large convolutions, whose top
      singular values are clustered: pass a small ``input_shape`` for exact values.
    * Types (or base types) in ``supplementary_type2sv`` use the registered function,
      called as ``fn(layer, input_shape)`` with the batch-shaped input shape (or None);
      it takes precedence over the built-in rules.
    * Any other layer (activations, pooling, reshaping, ...): ``(None, None)``.

    The smallest value is the smallest of the ``min(rows, cols)`` singular values of the
    operator matrix.

    Args:
        layer: a built Keras layer.
        input_shape: shape of one input (without batch axis) for convolutions; needed when
            the layer was built with unknown spatial sizes.
        supplementary_type2sv: ``{layer type: fn(layer, input_shape) -> (min, max)}``.

    Returns:
        ``(min_sv, max_sv)`` as floats, or ``(None, None)``.

    Raises:
        ValueError: if the layer is not built or the input shape is unknown.
    """
    own_shape = _build_input_shape(layer)
    handler = _find_handler(layer, supplementary_type2sv or {})
    if handler is not None:
        shape = (None,) + sample_shape(input_shape) if input_shape is not None else own_shape
        return handler(layer, shape)
    if not has_linear_part(layer):
        return None, None
    if not layer.built:
        raise ValueError(f"Layer {layer.name!r} must be built before compute_layer_sv().")
    if isinstance(layer, keras.layers.Dense):
        return _dense_sv(layer)
    if input_shape is None and (own_shape is None or None in own_shape[1:]):
        raise ValueError(
            f"input_shape must be given for layer {layer.name!r}, built with input shape "
            f"{own_shape!r}"
        )
    shape = sample_shape(input_shape if input_shape is not None else own_shape)
    fn = linear_function(layer, "float64")
    in_dim = math.prod(shape)
    out_shape = _output_shape(fn, shape)
    out_dim = math.prod(out_shape)
    if in_dim <= MAX_DENSE_DIM and in_dim * out_dim <= _MAX_DENSE_ENTRIES:
        matrix = layer_operator_matrix(layer, shape)
        values = np.linalg.svd(matrix, compute_uv=False)
        return float(values.min()), float(values.max())
    return _bottom_singular_value(fn, shape, out_shape), _top_singular_value(fn, shape)


def compute_model_sv(
    model: keras.Model,
    supplementary_type2sv: dict[type, SvFunction] | None = None,
) -> dict[str, tuple[float | None, float | None]]:
    """`compute_layer_sv` of every layer of a model, nested models included.

    Args:
        model: a built Keras model.
        supplementary_type2sv: as in `compute_layer_sv`.

    Returns:
        ``{layer name: (min_sv, max_sv)}`` in layer order; the layers of a nested model
        are keyed ``"nested_model_name/layer_name"`` (input layers are skipped).
    """
    mapping = supplementary_type2sv or {}
    result = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model) and _find_handler(layer, mapping) is None:
            for name, values in compute_model_sv(layer, mapping).items():
                result[f"{layer.name}/{name}"] = values
        else:
            result[layer.name] = compute_layer_sv(layer, supplementary_type2sv=mapping)
    return result


# ------------------------------------------------------------------ Jacobian estimate


def evaluate_lip_const(model, x, eps: float | None = None, seed: int | None = None) -> float:
    """Largest spectral norm of the model's Jacobian over the given samples.

    ``L_est = max_i ||J_f(x_i)||_2`` with ``J_f`` the exact Jacobian of the flattened
    output with respect to the input (automatic differentiation, inference mode). For
    any differentiable ``f``, ``L_est <= Lip(f)``: it is a *lower bound* of the true
    Lipschitz constant, useful to check that a bound is reached or not exceeded on data.

    Args:
        model: a Keras model or layer (called with ``training=False``), or a callable.
        x: samples ``(batch, ...)``.
        eps: if given (> 0), the Jacobian is also evaluated at ``x_i + eps * d_i`` with
            ``d_i`` a random unit direction per sample, to explore the neighbourhood.
        seed: seed of the random directions (ignored without ``eps``, as deel-lip's
            Jacobian estimator ignores it).

    Returns:
        The estimate, a float.

    Raises:
        ValueError: if ``eps <= 0``.
    """
    points = np.asarray(x)
    if eps is not None:
        if not isinstance(eps, (int, float, np.number)) or isinstance(eps, bool) or eps <= 0:
            raise ValueError(f"eps must be a number > 0 or None, received: {eps!r}")
        rng = np.random.default_rng(seed)
        directions = rng.standard_normal(points.shape)
        norms = np.linalg.norm(directions.reshape(len(points), -1), axis=1)
        directions /= norms.reshape((-1,) + (1,) * (points.ndim - 1))
        points = np.concatenate([points, points + eps * directions.astype(points.dtype)])

    def fn(inputs):
        if isinstance(model, keras.layers.Layer):
            return model(inputs, training=False)
        return model(inputs)

    best = 0.0
    for start in range(0, len(points), _JACOBIAN_CHUNK):
        chunk = ops.convert_to_tensor(points[start : start + _JACOBIAN_CHUNK])
        jac = ops.convert_to_numpy(_backend.batch_jacobian(fn, chunk)).astype(np.float64)
        norms = np.linalg.norm(jac, ord=2, axis=(1, 2))
        best = max(best, float(norms.max()))
    return best


def evaluate_lip_const_gen(model, generator, eps: float | None = None, seed: int | None = None):
    """`evaluate_lip_const` on the inputs of the first ``(x, y)`` batch of ``generator``."""
    x, _ = next(iter(generator))
    return evaluate_lip_const(model, x, eps=eps, seed=seed)


def l2_normalize(x, axis=None, epsilon: float = 1e-12):
    """``x / sqrt(max(sum(x^2, axis), epsilon))`` (deel-lip's helper)."""
    x = ops.convert_to_tensor(x)
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), epsilon))
