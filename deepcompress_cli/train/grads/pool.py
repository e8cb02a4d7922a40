"""Backward rules of pooling."""

from __future__ import annotations

import itertools

import numpy as np

from ...errors import DczError
from ...interp.ops.pool import pool_geometry
from . import grad


def _pool_windows(attrs, x, op_name):
    """(padded shape, begins, crop, [window slices per kernel offset]) of a pool's input."""
    kernel_shape, strides, dilations, pads, out_spatial = pool_geometry(attrs, x.shape, op_name)
    n_sp = len(kernel_shape)
    # pad the end far enough for ceil_mode windows that overhang the trailing padding
    ends = [max(pads[i + n_sp], (o - 1) * s + (k - 1) * d + 1 - size - pads[i])
            for i, (size, k, s, d, o) in enumerate(zip(x.shape[2:], kernel_shape, strides, dilations, out_spatial))]
    shape = (*x.shape[:2], *(size + b + e for size, b, e in zip(x.shape[2:], pads[:n_sp], ends)))
    crop = (..., *(slice(b, b + s) for b, s in zip(pads[:n_sp], x.shape[2:])))
    windows = [tuple(slice(i * d, i * d + (o - 1) * s + 1, s)
                     for i, d, o, s in zip(offset, dilations, out_spatial, strides))
               for offset in itertools.product(*(range(k) for k in kernel_shape))]
    return shape, crop, windows


@grad("MaxPool")
def _max_pool(inputs, y, attrs, g, needs, opset):
    """The gradient goes to the first maximum of each window (as a strict `>` scan finds it)."""
    x = inputs[0]
    if attrs.get("storage_order", 0):
        raise DczError("retraining: MaxPool with storage_order=1 is not supported")
    shape, crop, windows = _pool_windows(attrs, x, "MaxPool")
    xp = np.full(shape, -np.inf, dtype=np.float32)
    xp[crop] = x
    best = np.full(g.shape, -np.inf, dtype=np.float32)
    winner = np.zeros(g.shape, dtype=np.int32)
    for index, window in enumerate(windows):
        tap = xp[(..., *window)]
        better = tap > best
        best = np.where(better, tap, best)
        winner[better] = index
    dx = np.zeros(shape, dtype=np.float32)
    for index, window in enumerate(windows):
        dx[(..., *window)] += np.where(winner == index, g, 0)
    return [dx[crop]]


@grad("AveragePool")
def _average_pool(inputs, y, attrs, g, needs, opset):
    x = inputs[0]
    shape, crop, windows = _pool_windows(attrs, x, "AveragePool")
    inside = np.zeros(shape[2:], dtype=np.float32)  # which padded cells are real input
    inside[crop[1:]] = 1
    if attrs.get("count_include_pad", 0):
        # padding counts, but not cells past it (ceil_mode overhang)
        kernel_shape, _, _, pads, _ = pool_geometry(attrs, x.shape, "AveragePool")
        n_sp = len(kernel_shape)
        inside[:] = 0
        inside[tuple(slice(0, s + pads[i] + pads[i + n_sp]) for i, s in enumerate(x.shape[2:]))] = 1
    count = sum(inside[window] for window in windows)
    share = g / np.maximum(count, 1)
    dx = np.zeros(shape, dtype=np.float32)
    for window in windows:
        dx[(..., *window)] += share
    return [dx[crop]]


@grad("GlobalAveragePool")
def _global_average_pool(inputs, y, attrs, g, needs, opset):
    x = inputs[0]
    return [np.broadcast_to(g / np.prod(x.shape[2:]), x.shape).astype(np.float32)]
