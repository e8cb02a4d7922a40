"""Sorting-based ops: TopK (the k largest/smallest along an axis) and Unique."""

from __future__ import annotations

import numpy as np

from ...errors import DczError
from . import op
from .shape import input_at, norm_axis


@op("TopK")
def top_k(inputs, attrs, ctx):
    """Values and int64 indices of the top k along `axis`, ties broken by the lower index.

    k is an attribute before opset 10 and an input from then on; `largest` and `sorted` come in
    opset 11 (unsorted output may be in any order, so it is sorted too).  NaN sorts as larger
    than every number, as numpy does.
    """
    x = inputs[0]
    k = attrs.get("k") if ctx.opset < 10 else input_at(inputs, 1)
    if k is None or np.size(k) != 1:
        raise DczError(f"TopK node {ctx.node_name!r}: k must be a single integer.")
    k = int(np.asarray(k).reshape(-1)[0])
    axis = norm_axis(attrs.get("axis", -1), x.ndim, "TopK")
    n = x.shape[axis]
    if not 0 <= k <= n:
        raise DczError(f"TopK node {ctx.node_name!r}: k={k} is outside [0, {n}] for axis {axis} "
                       f"of {list(x.shape)}.")
    if attrs.get("largest", 1):
        # A stable ascending sort of the flipped axis, read backwards: descending values, equal
        # values in ascending original index.
        order = n - 1 - np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    indices = np.take(order, np.arange(k), axis=axis).astype(np.int64, copy=False)
    return [np.take_along_axis(x, indices, axis=axis), indices]


@op("Unique")
def unique(inputs, attrs, ctx):
    """Unique values or slices along `axis` (the flattened input without it), and int64
    first-occurrence indices, inverse indices and counts.

    sorted=1 (default) orders them ascending (slices lexicographically); sorted=0 in order of
    first occurrence.
    """
    x = inputs[0]
    axis = attrs.get("axis")
    if axis is None:
        x, axis = x.reshape(-1), 0
    else:
        axis = norm_axis(axis, x.ndim, "Unique")
    try:
        y, first, inverse, counts = np.unique(x, axis=axis, return_index=True,
                                              return_inverse=True, return_counts=True)
    except TypeError as e:  # e.g. slices of a dtype numpy cannot compare field by field
        raise DczError(f"Unique node {ctx.node_name!r}: {x.dtype} input not supported: {e}") from None
    inverse = inverse.reshape(-1)
    if not attrs.get("sorted", 1):
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        y, first, counts, inverse = np.take(y, order, axis=axis), first[order], counts[order], rank[inverse]
    return [y, *(a.astype(np.int64, copy=False) for a in (first, inverse, counts))]
