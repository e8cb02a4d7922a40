"""Pooling: MaxPool (with its optional Indices), AveragePool (N-D, padded, dilated, ceil_mode)
and the global pools.

A pool is a reduction over kernel offsets: one view of the (padded) input per offset,
combined elementwise, so the loop runs prod(kernel_shape) times and never over pixels.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ...errors import DczError
from . import op
from .conv import attr_str, pad_spatial, resolve_pads


def pool_geometry(attrs: dict, x_shape, op_name: str):
    """(kernel_shape, strides, dilations, pads, out_spatial) of a MaxPool/AveragePool.

    ceil_mode rounds the output size up, but a window must start inside the input or its
    leading padding (ONNX / onnxruntime); windows may then overhang the trailing padding.
    """
    if "kernel_shape" not in attrs:
        raise DczError(f"{op_name}: the kernel_shape attribute is missing.")
    kernel_shape = list(attrs["kernel_shape"])
    n = len(kernel_shape)
    in_spatial = list(x_shape[2:])
    if len(in_spatial) != n:
        raise DczError(f"{op_name}: input {list(x_shape)} does not fit kernel {kernel_shape}.")
    strides = list(attrs.get("strides", [1] * n))
    dilations = list(attrs.get("dilations", [1] * n))
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    pads = resolve_pads(in_spatial, kernel_shape, strides, dilations,
                        attr_str(attrs, "auto_pad", "NOTSET"), attrs.get("pads"), op_name)
    out_spatial = []
    for i, size in enumerate(in_spatial):
        span = size + pads[i] + pads[i + n] - (kernel_shape[i] - 1) * dilations[i] - 1
        out = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (out - 1) * strides[i] >= size + pads[i]:
            out -= 1
        out_spatial.append(out)
    if min(out_spatial) < 1:
        raise DczError(f"{op_name}: input {list(x_shape)} is smaller than kernel {kernel_shape}.")
    return kernel_shape, strides, dilations, pads, out_spatial


def _window_reduce(x, kernel_shape, strides, dilations, begins, out_spatial, fill, combine):
    """Combine (np.maximum / np.add) every pooling window of x, as [N, C, *out_spatial].

    x is read as if padded by `begins` before and by `fill` everywhere else.
    """
    phases = math.prod(min(s, k) for s, k in zip(strides, kernel_shape))
    inside = all((o - 1) * s + (k - 1) * d < n for o, s, k, d, n in
                 zip(out_spatial, strides, kernel_shape, dilations, x.shape[2:]))
    if inside and not any(begins) and math.prod(kernel_shape) <= phases:
        return _direct_reduce(x, kernel_shape, strides, dilations, out_spatial, combine)
    return _phase_reduce(x, kernel_shape, strides, dilations, begins, out_spatial, fill, combine)


def _direct_reduce(x, kernel_shape, strides, dilations, out_spatial, combine):
    """Windows inside x and no kernel offset sharing a stride phase (e.g. 2x2 stride 2): one
    strided view of x per offset, no copy of x."""
    y = None
    for offset in itertools.product(*(range(k) for k in kernel_shape)):
        tap = x[(..., *(slice(i * d, i * d + (o - 1) * s + 1, s)
                        for i, d, o, s in zip(offset, dilations, out_spatial, strides)))]
        if y is None:
            y = tap.copy()
        else:
            combine(y, tap, out=y)
    return y


def _phase_reduce(x, kernel_shape, strides, dilations, begins, out_spatial, fill, combine):
    """`_window_reduce` for padded inputs or offsets that share a stride phase.

    Strided reads defeat numpy's SIMD loops, so x is first split into stride phases
    (space-to-depth: one copy, which also pads), each laid out flat on one shared grid.  A
    kernel offset then reads one contiguous run of one phase, so each combine is a single flat
    vectorized op; the grid's extra cells are cropped at the end.
    """
    N, C = x.shape[:2]
    reach = [(k - 1) * d // s for k, d, s in zip(kernel_shape, dilations, strides)]
    grid = [o + r for o, r in zip(out_spatial, reach)]
    steps = [math.prod(grid[a + 1:]) for a in range(len(grid))]  # flat step of each axis
    size = N * C * math.prod(grid)
    spare = sum(r * st for r, st in zip(reach, steps))  # the last offsets' runs end past the grid
    phases = {}

    def phase(key):
        if key not in phases:
            buf = np.full(size + spare, fill, dtype=x.dtype)
            dst, src = [], []
            for p, s, b, g, n in zip(key, strides, begins, grid, x.shape[2:]):
                lo = max(0, -((p - b) // s))  # first grid cell inside x
                hi = min(g, (n - 1 + b - p) // s + 1)
                hi = max(hi, lo)
                dst.append(slice(lo, hi))
                src.append(slice(p + s * lo - b, p + s * lo - b + s * (hi - lo), s))
            buf[:size].reshape(N, C, *grid)[(..., *dst)] = x[(..., *src)]
            phases[key] = buf
        return phases[key]

    y = None
    for offset in itertools.product(*(range(k) for k in kernel_shape)):
        taps = [i * d for i, d in zip(offset, dilations)]
        start = sum((t // s) * st for t, s, st in zip(taps, strides, steps))
        run = phase(tuple(t % s for t, s in zip(taps, strides)))[start:start + size]
        if y is None:
            y = run.copy()
        else:
            combine(y, run, out=y)
    y = y.reshape(N, C, *grid)
    if grid != list(out_spatial):
        y = np.ascontiguousarray(y[(..., *(slice(o) for o in out_spatial))])
    return y


def _lowest(dtype):
    return -np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).min


@op("MaxPool")
def max_pool(inputs, attrs, ctx):
    x = inputs[0]
    kernel_shape, strides, dilations, pads, out_spatial = pool_geometry(attrs, x.shape, "MaxPool")
    n = len(kernel_shape)
    y = _window_reduce(x, kernel_shape, strides, dilations, pads[:n], out_spatial, _lowest(x.dtype), np.maximum)
    if ctx.num_outputs < 2:
        return [y]
    return [y, _argmax_indices(x, kernel_shape, strides, dilations, pads[:n], out_spatial,
                               attrs.get("storage_order", 0))]


def _argmax_indices(x, kernel_shape, strides, dilations, begins, out_spatial, storage_order):
    """MaxPool's Indices: where each window's maximum is, as an index into x flattened (padding
    not counted) row-major, or with the spatial axes column-major when storage_order=1.

    Ties go to the first kernel offset in row-major order (onnxruntime's window scan).
    """
    spatial = x.shape[2:]
    n = len(spatial)
    if storage_order:
        steps = [math.prod(spatial[:a]) for a in range(n)]
    else:
        steps = [math.prod(spatial[a + 1:]) for a in range(n)]
    ends = [max(0, (o - 1) * s + (k - 1) * d + 1 - b - size)
            for o, s, k, d, b, size in zip(out_spatial, strides, kernel_shape, dilations, begins, spatial)]
    padded = np.pad(x, [(0, 0), (0, 0), *zip(begins, ends)], constant_values=_lowest(x.dtype))
    outputs = [np.arange(o) * s - b for o, s, b in zip(out_spatial, strides, begins)]  # window starts
    best = best_index = None
    for offset in itertools.product(*(range(k) for k in kernel_shape)):
        tap = padded[(..., *(slice(i * d, i * d + (o - 1) * s + 1, s)
                             for i, d, o, s in zip(offset, dilations, out_spatial, strides)))]
        index = sum(((start + i * d) * step).reshape([-1] + [1] * (n - a - 1))
                    for a, (start, i, d, step) in enumerate(zip(outputs, offset, dilations, steps)))
        if best is None:
            best, best_index = tap, np.broadcast_to(index, tap.shape)
        else:
            better = tap > best
            best, best_index = np.where(better, tap, best), np.where(better, index, best_index)
    planes = np.arange(x.shape[0] * x.shape[1], dtype=np.int64).reshape(x.shape[:2] + (1,) * n)
    return (planes * math.prod(spatial) + best_index).astype(np.int64)


@op("AveragePool")
def average_pool(inputs, attrs, ctx):
    x = inputs[0]
    kernel_shape, strides, dilations, pads, out_spatial = pool_geometry(
        attrs, x.shape, "AveragePool")
    n = len(kernel_shape)
    geometry = (kernel_shape, strides, dilations)
    y = _window_reduce(x, *geometry, pads[:n], out_spatial, 0, np.add)
    # The divisor is the same window sum over a mask of the cells that count: the input, plus
    # the explicit pads with count_include_pad; never the ceil_mode overhang past the pads
    # (as onnxruntime and PyTorch).
    mask = np.ones((1, 1, *x.shape[2:]), dtype=y.dtype)
    begins = pads[:n]
    if attrs.get("count_include_pad", 0):
        mask = pad_spatial(mask, pads, 1)
        begins = [0] * n
    count = _window_reduce(mask, *geometry, begins, out_spatial, 0, np.add)
    y /= np.maximum(count, 1)  # a window wholly in padding (pads >= kernel) averages to 0
    return [y]


@op("GlobalAveragePool")
def global_average_pool(inputs, attrs, ctx):
    x = inputs[0]
    return [x.reshape(*x.shape[:2], -1).mean(axis=-1).reshape(*x.shape[:2], *(1,) * (x.ndim - 2))]


@op("GlobalMaxPool")
def global_max_pool(inputs, attrs, ctx):
    x = inputs[0]
    return [x.reshape(*x.shape[:2], -1).max(axis=-1).reshape(*x.shape[:2], *(1,) * (x.ndim - 2))]
