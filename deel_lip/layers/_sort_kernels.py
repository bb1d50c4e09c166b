"""Sorting kernels of the `GroupSort` family: values and permutation gradients.

Both route the gradient through the comparison masks of the forward pass, so the
Jacobian is exactly the sorting permutation (at ties too) and no intermediate value is
kept for the backward pass. Each picks the layout its executor runs fastest: 1-D
contiguous tensors for TensorFlow's CPU kernels, static grouped shapes for XLA.
"""

from __future__ import annotations

from keras import ops

from deel_lip._backend import in_xla_context, xla_island

__all__ = ["sort_groups", "sort_pairs", "sorting_network", "static_shape"]


def static_shape(x) -> tuple:
    """Shape of ``x`` with static sizes where known and -1 for an unknown batch size."""
    static = tuple(x.shape)
    if all(d is not None for d in static[1:]):
        return (-1,) + static[1:]
    return tuple(ops.shape(x))


def sort_pairs(x):
    """Sort consecutive pairs of the last axis of ``x`` (even size) with one comparison.

    The pairs are taken from the flattened tensor: every elementwise op then runs on a 1-D
    tensor, which TensorFlow's CPU kernels handle 10x faster than the same op on a 5-D one;
    in a graph that XLA does not compile it runs as an XLA island
    (`deel_lip._backend.xla_island`: 3x faster again on CPU). Where ``keep = first <=
    second`` the pair is kept, otherwise swapped; the custom gradient routes each output's
    gradient back through that one mask, so the Jacobian is a permutation (at ties too;
    ``minimum``/``maximum`` would send both outputs' gradients to the same input) and no
    intermediate of the forward pass is kept.
    """
    return _sort_pairs_island(x)


@ops.custom_gradient
def _sort_pairs_op(x):
    shape = static_shape(x)
    # XLA fuses the static (..., pairs, 2) layout best; TensorFlow's own kernels the 1-D one.
    pairs_shape = (-1, shape[-1] // 2, 2) if in_xla_context() else (-1, 2)
    pairs = ops.reshape(x, pairs_shape)
    keep = pairs[..., 0] <= pairs[..., 1]

    def route(values):
        first, second = values[..., 0], values[..., 1]
        low = ops.where(keep, first, second)
        high = ops.where(keep, second, first)
        return ops.reshape(ops.stack([low, high], axis=-1), shape)

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        return route(ops.reshape(upstream, pairs_shape))

    return route(pairs), grad


_sort_pairs_island = xla_island(_sort_pairs_op)


def sorting_network(n: int) -> list[tuple[int, int]]:
    """Comparators ``(i, j)``, ``i < j``, of Batcher's odd-even merge sort for ``n`` items.

    Applied in order (each puts the smaller value at ``i``) they sort any ``n`` values.
    Built for the next power of two and pruned of the comparators reaching past ``n``
    (as if padded with ``+inf``, which those comparators never move): ``n = 4`` needs 5
    comparators, ``n = 16`` 63. Reference: Batcher, "Sorting networks and their
    applications", AFIPS 1968.
    """
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


def sort_groups(x, n: int):
    """Sort each group of ``n`` consecutive entries of the last axis of ``x``.

    A sorting network of compare-and-swap steps on whole columns (one per group
    position), each one comparison and two selects. Without XLA the groups are transposed
    to ``(n, groups)`` so every column is a contiguous 1-D tensor (TensorFlow's CPU
    kernels are fastest there; 2.5-3x faster than its sort, whose gradient scatters);
    traced for XLA the static ``(..., groups, n)`` layout is kept and fused (4-8x faster
    than XLA's sort on CPU; a graph that XLA does not compile runs it as an XLA island).
    The custom gradient replays the comparison masks in reverse,
    so the Jacobian is the sorting permutation, at ties too.
    """
    return _sort_groups_island(n)(x)


_SORT_GROUPS: dict[int, object] = {}


def _sort_groups_island(n: int):
    """`xla_island` of the group sort of size ``n`` (one per size)."""
    if n not in _SORT_GROUPS:
        _SORT_GROUPS[n] = xla_island(_sort_groups_op(n))
    return _SORT_GROUPS[n]


def _sort_groups_op(n: int):
    comparators = sorting_network(n)

    @ops.custom_gradient
    def sort(x):
        shape = static_shape(x)
        xla = in_xla_context()
        axis = -1 if xla else 0

        def columns(t):
            if xla:
                return list(ops.unstack(ops.reshape(t, shape[:-1] + (shape[-1] // n, n)), axis=-1))
            return list(ops.unstack(ops.transpose(ops.reshape(t, (-1, n))), axis=0))

        def assemble(cols):
            stacked = ops.stack(cols, axis=axis)
            return ops.reshape(stacked if xla else ops.transpose(stacked), shape)

        cols, masks = columns(x), []
        for i, j in comparators:
            keep = cols[i] <= cols[j]
            cols[i], cols[j] = ops.where(keep, cols[i], cols[j]), ops.where(keep, cols[j], cols[i])
            masks.append(keep)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            grads = columns(upstream)
            for (i, j), keep in zip(reversed(comparators), reversed(masks)):
                grads[i], grads[j] = (
                    ops.where(keep, grads[i], grads[j]),
                    ops.where(keep, grads[j], grads[i]),
                )
            return assemble(grads)

        return assemble(cols), grad

    return sort
