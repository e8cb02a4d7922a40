"""Pooling: MaxPool (with its optional Indices), AveragePool (N-D, padded, dilated, ceil_mode)
and the global pools.

A pool is a reduction over kernel offsets, combined elementwise on whole arrays, so the loops
run over kernel offsets (one spatial axis at a time: max and sum are separable) and never over
pixels.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ...errors import DczError
from . import op
from .conv import attr_str, resolve_pads


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


# Planes reduced per pass: big batches go through in chunks whose buffers stay in the cache.
CHUNK_ELEMENTS = 1 << 20


def _window_reduce(x, kernel_shape, strides, dilations, begins, out_spatial, fill, combine):
    """Combine (np.maximum / np.add) every pooling window of x, as [N, C, *out_spatial].

    x is read as if padded by `begins` before and by `fill` everywhere else.
    """
    planes = x.reshape(-1, *x.shape[2:])
    y = np.empty((len(planes), *out_spatial), dtype=x.dtype)
    chunk = max(1, CHUNK_ELEMENTS // max(1, math.prod(x.shape[2:])))
    for start in range(0, len(planes), chunk):
        _planes_reduce(planes[start:start + chunk], kernel_shape, strides, dilations, begins,
                       fill, combine, y[start:start + chunk])
    return y.reshape(*x.shape[:2], *out_spatial)


def _planes_reduce(x, kernel_shape, strides, dilations, begins, fill, combine, out):
    """`_window_reduce` of planes x [P, *spatial] into out [P, *out_spatial].

    Both combines are separable, so the spatial axes are reduced one after another (2 + 2
    combines for a 3x3 window instead of 8).  numpy's SIMD loops only run on flat contiguous
    operands (strided ones, even of whole rows, are 2-3x slower), so every combine is one flat
    run of a buffer: x is first copied, padded, into one buffer per stride phase of its leading
    spatial axes (space-to-depth: whole-row copies), where a kernel offset along a leading axis
    is a shift of the flat buffer; the last axis is combined at stride 1 the same way and
    subsampled by the final copy.  Runs overhang a row (or the buffer's spare tail) only in
    cells that no kept output reads.
    """
    out_spatial = out.shape[1:]
    lead = len(kernel_shape) - 1
    reach = [(k - 1) * d // s for k, d, s in zip(kernel_shape, dilations, strides)][:lead]
    k, s, d, o = kernel_shape[-1], strides[-1], dilations[-1], out_spatial[-1]
    grid = [o + r for o, r in zip(out_spatial, reach)] + [(o - 1) * s + (k - 1) * d + 1]
    steps = [math.prod(grid[a + 1:]) for a in range(len(grid))]  # flat step of each axis
    size = len(x) * math.prod(grid)
    spare = [(k - 1) * d + sum(r * st for r, st in zip(reach[:a], steps))
             for a in range(lead + 1)]  # runs of a buffer reduced up to axis a end here
    phase_strides = strides[:lead] + [1]

    def phase(key):
        """x's cells of stride phase `key` (of the leading axes) on the padded grid."""
        buf = np.empty(size + spare[lead], dtype=x.dtype)
        cells = buf[:size].reshape(len(x), *grid)
        dst, src = [], []
        for axis, (p, s, b, g, n) in enumerate(zip((*key, 0), phase_strides, begins, grid, x.shape[1:])):
            lo = max(0, -((p - b) // s))  # first grid cell inside x
            hi = max(lo, min(g, (n - 1 + b - p) // s + 1))
            dst.append(slice(lo, hi))
            src.append(slice(p + s * lo - b, p + s * hi - b, s))
            before = (slice(None),) * (1 + axis)
            if lo > 0:
                cells[(*before, slice(0, lo))] = fill
            if hi < g:
                cells[(*before, slice(hi, None))] = fill
        buf[size:] = fill
        cells[(slice(None), *dst)] = x[(slice(None), *src)]
        return buf

    # The phases the taps read, then the leading axes reduced from the last one back: per phase
    # of the axes before it, an axis's taps are runs of the buffers of its phases.
    tap_phases = [sorted({i * d % s for i in range(k)})
                  for k, d, s in zip(kernel_shape, dilations, strides)][:lead]
    phases = {key: phase(key) for key in itertools.product(*tap_phases)}
    buffers = phases
    for a in reversed(range(lead)):
        taps = [(i * dilations[a] // strides[a] * steps[a], i * dilations[a] % strides[a])
                for i in range(kernel_shape[a])]  # (shift, phase)
        # The run of a buffer no other tap reads can take the result in place (less memory to
        # stream through the cache).
        alone = [t for t in taps if [p for _, p in taps].count(t[1]) == 1]
        if alone and len(taps) > 1:
            taps.remove(alone[0])
            taps.insert(0, alone[0])
        length = size + spare[a]
        reduced = {}
        for key in itertools.product(*tap_phases[:a]):
            runs = [buffers[(*key, p)][shift:shift + length] for shift, p in taps]
            reduced[key] = _combine_runs(runs, combine, out=runs[0] if alone else None)
        buffers = reduced
    flat = buffers[()]
    # A phase buffer the leading axes are done with takes the last axis's result.
    spent = [buf[:size] for buf in phases.values() if not np.may_share_memory(buf, flat)]
    y = _combine_runs([flat[i * d:i * d + size] for i in range(k)], combine,
                      out=spent[0] if spent and k > 1 else None)
    keep = (slice(None), *(slice(o) for o in out_spatial[:-1]), slice(0, (o - 1) * s + 1, s))
    out[...] = y.reshape(len(x), *grid)[keep]


def _combine_runs(runs, combine, out=None):
    """combine over equal-length arrays, into `out` (a new array by default; runs[0] itself if
    it is the only one)."""
    if len(runs) == 1:
        return runs[0]
    y = combine(runs[0], runs[1], out=out)
    for run in runs[2:]:
        combine(y, run, out=y)
    return y


def _lowest(dtype):
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


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
    y = _window_reduce(x, kernel_shape, strides, dilations, pads[:n], out_spatial, 0, np.add)
    # The divisor counts a window's cells inside the input, plus those in the explicit pads with
    # count_include_pad; never the ceil_mode overhang past the pads (as onnxruntime and
    # PyTorch).  Those cells are a box, so the count is a product of one count per axis.
    include_pad = attrs.get("count_include_pad", 0)
    count = np.ones((), dtype=y.dtype)
    axes = zip(kernel_shape, strides, dilations, pads[:n], out_spatial, x.shape[2:])
    for a, (k, s, d, b, o, size) in enumerate(axes):
        lo, hi = (-b, size + pads[n + a]) if include_pad else (0, size)
        cells = np.arange(o)[:, None] * s + np.arange(k) * d - b
        inside = ((cells >= lo) & (cells < hi)).sum(axis=1)
        count = count * inside.reshape(-1, *[1] * (n - 1 - a)).astype(y.dtype)
    # A window wholly in padding (pads >= kernel) averages to 0.  Dividing plane by plane keeps
    # numpy's inner loop a whole plane long.
    planes = y.reshape(-1, count.size)  # a view: y is fresh and contiguous
    planes /= np.maximum(count, 1).reshape(-1)
    return [y]


@op("GlobalAveragePool")
def global_average_pool(inputs, attrs, ctx):
    x = inputs[0]
    return [x.reshape(*x.shape[:2], -1).mean(axis=-1).reshape(*x.shape[:2], *(1,) * (x.ndim - 2))]


@op("GlobalMaxPool")
def global_max_pool(inputs, attrs, ctx):
    x = inputs[0]
    return [x.reshape(*x.shape[:2], -1).max(axis=-1).reshape(*x.shape[:2], *(1,) * (x.ndim - 2))]
