"""Index-driven kernels: scatters, GatherND, OneHot, NonZero, Compress, ReverseSequence, EyeLike.

Index values come from tensors, so they are checked against the data shape first: a bad index
is the model's error (DczError), not a numpy IndexError.  Scatter reductions use numpy's
unbuffered `ufunc.at`, which applies duplicate indices one after another as the spec's loop does.
"""

from __future__ import annotations

import numpy as np

from ...errors import DczError
from . import OpContext, op
from .shape import input_at, norm_axis, str_attr

_REDUCTIONS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def onnx_dtype(to: int, op_name: str) -> np.dtype:
    """The numpy dtype of a TensorProto data type number (an op's `dtype`/`output_datatype`)."""
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(int(to)))
    except (KeyError, TypeError, ValueError):
        raise DczError(f"{op_name}: unsupported data type {to}.") from None


def checked_indices(indices: np.ndarray, dims, op_name: str, ctx: OpContext) -> np.ndarray:
    """`indices` (last axis: one entry per dim of `dims`) as int64 in 0..dim-1, negatives wrapped."""
    indices = np.asarray(indices).astype(np.int64, copy=False)
    dims = np.asarray(dims, dtype=np.int64)
    if indices.size and ((indices < -dims).any() or (indices >= dims).any()):
        raise DczError(f"{op_name} node {ctx.node_name!r}: an index is out of range for dims {dims.tolist()}.")
    return np.where(indices < 0, indices + dims, indices)


def _scatter(data, index_tuple, updates, reduction: str, op_name: str):
    """A copy of data with `updates` written (or reduced) at `index_tuple`."""
    out = data.copy()
    if reduction == "none":
        out[index_tuple] = updates
    elif reduction in _REDUCTIONS:
        _REDUCTIONS[reduction].at(out, index_tuple, updates)
    else:
        raise DczError(f"{op_name}: unknown reduction {reduction!r} (none, add, mul, max, min).")
    return out


def _reduction(attrs, ctx: OpContext, op_name: str, since_minmax: int) -> str:
    reduction = str_attr(attrs, "reduction", "none")
    if reduction in ("max", "min") and ctx.opset < since_minmax:
        raise DczError(f"{op_name}: reduction {reduction!r} needs opset {since_minmax} (model has {ctx.opset}).")
    return reduction


# ------------------------------------------------------------------------------ scatters


@op("ScatterElements", "Scatter")
def scatter_elements(inputs, attrs, ctx):
    """output[..., indices[i, j, k], ...] = updates[i, j, k] along `axis` (Scatter: opset 9-10)."""
    data, indices, updates = inputs
    axis = norm_axis(attrs.get("axis", 0), data.ndim, "ScatterElements")
    if indices.shape != updates.shape or indices.ndim != data.ndim:
        raise DczError(f"ScatterElements node {ctx.node_name!r}: indices {list(indices.shape)} and updates "
                       f"{list(updates.shape)} must have one shape of data's rank {data.ndim}.")
    if any(i > d for a, (i, d) in enumerate(zip(indices.shape, data.shape)) if a != axis):
        raise DczError(f"ScatterElements node {ctx.node_name!r}: indices {list(indices.shape)} exceed data "
                       f"{list(data.shape)} off the scatter axis.")
    along = checked_indices(indices[..., None], [data.shape[axis]], "ScatterElements", ctx)[..., 0]
    grid = list(np.indices(indices.shape, sparse=True))
    grid[axis] = along
    reduction = _reduction(attrs, ctx, "ScatterElements", 18)
    return [_scatter(data, tuple(grid), updates.astype(data.dtype, copy=False), reduction, "ScatterElements")]


@op("ScatterND")
def scatter_nd(inputs, attrs, ctx):
    data, indices, updates = inputs
    k = indices.shape[-1]
    if not 1 <= k <= data.ndim or updates.shape != indices.shape[:-1] + data.shape[k:]:
        raise DczError(f"ScatterND node {ctx.node_name!r}: updates {list(updates.shape)} do not fit indices "
                       f"{list(indices.shape)} into data {list(data.shape)}.")
    indices = checked_indices(indices, data.shape[:k], "ScatterND", ctx)
    index_tuple = tuple(np.moveaxis(indices, -1, 0))
    reduction = _reduction(attrs, ctx, "ScatterND", 18)
    return [_scatter(data, index_tuple, updates.astype(data.dtype, copy=False), reduction, "ScatterND")]


@op("TensorScatter")
def tensor_scatter(inputs, attrs, ctx):
    """Write `update` into the cache along the sequence axis at each batch's write index (KV caches)."""
    cache, update = inputs[0], inputs[1]
    write_indices = input_at(inputs, 2)
    axis = norm_axis(attrs.get("axis", -2), cache.ndim, "TensorScatter")
    mode = str_attr(attrs, "mode", "linear")
    if axis == 0 or update.ndim != cache.ndim or any(
            u != c for a, (u, c) in enumerate(zip(update.shape, cache.shape)) if a != axis):
        raise DczError(f"TensorScatter node {ctx.node_name!r}: update {list(update.shape)} does not fit cache "
                       f"{list(cache.shape)} along axis {axis}.")
    batch, max_len, seq_len = cache.shape[0], cache.shape[axis], update.shape[axis]
    starts = np.zeros(batch, np.int64) if write_indices is None else np.asarray(write_indices, np.int64).reshape(-1)
    positions = starts[:, None] + np.arange(seq_len)  # [batch, seq_len]
    if mode == "circular":
        positions = positions % max_len
    elif mode != "linear":
        raise DczError(f"TensorScatter: unknown mode {mode!r} (linear, circular).")
    if starts.shape != (batch,) or positions.size and (positions.min() < 0 or positions.max() >= max_len):
        raise DczError(f"TensorScatter node {ctx.node_name!r}: write indices {starts.tolist()[:8]} + "
                       f"{seq_len} steps do not fit a sequence axis of {max_len}.")
    grid = list(np.indices(update.shape, sparse=True))
    grid[axis] = positions.reshape((batch,) + (1,) * (axis - 1) + (seq_len,) + (1,) * (cache.ndim - axis - 1))
    out = cache.copy()
    out[tuple(grid)] = update
    return [out]


# ------------------------------------------------------------------------------ gathers and selection


@op("GatherND")
def gather_nd(inputs, attrs, ctx):
    data, indices = inputs
    b = int(attrs.get("batch_dims", 0))
    k = indices.shape[-1]
    if not (0 <= b < min(data.ndim, indices.ndim) and 1 <= k <= data.ndim - b
            and data.shape[:b] == indices.shape[:b]):
        raise DczError(f"GatherND node {ctx.node_name!r}: indices {list(indices.shape)} with batch_dims {b} "
                       f"do not fit data {list(data.shape)}.")
    indices = checked_indices(indices, data.shape[b:b + k], "GatherND", ctx)
    batch_grid = np.indices(data.shape[:b], sparse=True)  # one broadcastable arange per batch dim
    pad = (1,) * (indices.ndim - 1 - b)
    index_tuple = tuple(g.reshape(g.shape + pad) for g in batch_grid) + tuple(np.moveaxis(indices, -1, 0))
    return [data[index_tuple]]


@op("OneHot")
def one_hot(inputs, attrs, ctx):
    indices, depth, values = inputs
    depth = np.asarray(depth).reshape(-1)
    values = np.asarray(values).reshape(-1)
    if depth.size != 1 or values.size != 2:
        raise DczError(f"OneHot node {ctx.node_name!r}: depth must be one value and values [off, on].")
    depth = int(depth[0])
    if depth < 1:
        raise DczError(f"OneHot node {ctx.node_name!r}: depth {depth} must be positive.")
    axis = norm_axis(attrs.get("axis", -1), indices.ndim + 1, "OneHot")
    shape = list(indices.shape)
    shape.insert(axis, depth)
    ctx.check_size("OneHot", shape, values.itemsize)
    idx = np.asarray(indices).astype(np.int64)  # non-integer indices are cast (truncated) first
    idx = np.where(idx < 0, idx + depth, idx)  # out of range stays out of range: an all-off row
    classes = np.arange(depth).reshape((depth,) + (1,) * (indices.ndim - axis))
    hot = np.expand_dims(idx, axis) == classes
    return [np.where(hot, values[1], values[0]).astype(values.dtype, copy=False)]


@op("NonZero")
def non_zero(inputs, attrs, ctx):
    x = np.asarray(inputs[0])
    if x.ndim == 0:  # a scalar has no coordinates: [0, 1] if it is non-zero, else [0, 0]
        return [np.zeros((0, int(x != 0)), np.int64)]
    return [np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)]


@op("Compress")
def compress(inputs, attrs, ctx):
    x, condition = inputs
    condition = np.asarray(condition).reshape(-1).astype(bool)
    if "axis" in attrs:
        axis = norm_axis(attrs["axis"], x.ndim, "Compress")
    else:
        x, axis = x.reshape(-1), 0
    if condition.size > x.shape[axis] and condition[x.shape[axis]:].any():
        raise DczError(f"Compress node {ctx.node_name!r}: condition selects past the end of axis {axis} "
                       f"({x.shape[axis]} entries).")
    return [np.compress(condition[:x.shape[axis]], x, axis=axis)]


@op("ReverseSequence")
def reverse_sequence(inputs, attrs, ctx):
    x, lengths = inputs
    time_axis, batch_axis = int(attrs.get("time_axis", 0)), int(attrs.get("batch_axis", 1))
    if {time_axis, batch_axis} != {0, 1} or x.ndim < 2:
        raise DczError(f"ReverseSequence node {ctx.node_name!r}: time_axis and batch_axis must be 0 and 1.")
    lengths = np.asarray(lengths, np.int64).reshape(-1)
    steps = x.shape[time_axis]
    if lengths.shape != (x.shape[batch_axis],) or (lengths < 0).any() or (lengths > steps).any():
        raise DczError(f"ReverseSequence node {ctx.node_name!r}: sequence_lens {lengths.tolist()[:8]} do not "
                       f"fit {x.shape[batch_axis]} sequences of {steps} steps.")
    t = np.arange(steps)[:, None]
    source = np.where(t < lengths, lengths - 1 - t, t)  # [time, batch]
    if time_axis == 1:
        source = source.T
    source = source.reshape(source.shape + (1,) * (x.ndim - 2))
    return [np.take_along_axis(x, source, axis=time_axis)]


# ------------------------------------------------------------------------------ constructors


@op("EyeLike")
def eye_like(inputs, attrs, ctx):
    x = inputs[0]
    if x.ndim != 2:
        raise DczError(f"EyeLike node {ctx.node_name!r}: input must be 2-D, got shape {list(x.shape)}.")
    dtype = onnx_dtype(attrs["dtype"], "EyeLike") if "dtype" in attrs else x.dtype
    return [np.eye(x.shape[0], x.shape[1], k=int(attrs.get("k", 0)), dtype=dtype)]

