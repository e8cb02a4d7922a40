"""Shape and data-movement kernels: reshapes, slicing, gathering, padding, reductions, constants.

Also home of the small helpers the other kernel modules share: axis normalization and reading a
value that was an attribute in old opsets and became an input in newer ones.

Kernels may return views of their inputs (Reshape, Transpose, Slice, Split, ...): like numpy
itself, the interpreter treats arrays as immutable.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import DczError
from . import OpContext, op

# ------------------------------------------------------------------------------ shared helpers


def norm_axis(axis, rank: int, op_name: str, allow_end: bool = False) -> int:
    """A possibly negative axis as 0..rank-1 (0..rank with `allow_end`, e.g. Flatten's axis)."""
    a = int(axis)
    if not -rank <= a < (rank + 1 if allow_end else rank):
        raise DczError(f"{op_name}: axis {a} is out of range for a rank-{rank} input.")
    return a + rank if a < 0 else a


def norm_axes(axes, rank: int, op_name: str) -> list[int]:
    """Possibly negative axes as 0..rank-1, rejecting duplicates (the spec forbids them)."""
    out = [norm_axis(a, rank, op_name) for a in axes]
    if len(set(out)) != len(out):
        raise DczError(f"{op_name}: axes {list(axes)} contain a duplicate.")
    return out


def ints(value) -> list[int] | None:
    """An int list/array attribute or input as a list of Python ints (None stays None)."""
    if value is None:
        return None
    return [int(v) for v in np.asarray(value).reshape(-1)]


def input_at(inputs: list, index: int):
    """Optional input `index`: None when omitted (empty name) or past the end of the list."""
    return inputs[index] if index < len(inputs) else None


def attr_or_input(inputs: list, attrs: dict, ctx: OpContext, name: str, index: int, since: int):
    """A value that is attribute `name` before opset `since` and input `index` from then on."""
    if ctx.opset >= since:
        return input_at(inputs, index)
    return attrs.get(name)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value  # protobuf hands out bytes


def str_attr(attrs: dict, name: str, default: str) -> str:
    """A string attribute, as str even when it arrives as bytes."""
    return _text(attrs.get(name, default))


# ------------------------------------------------------------------------------ reshaping


@op("Reshape")
def reshape(inputs, attrs, ctx):
    x, shape = inputs[0], ints(inputs[1])
    if not attrs.get("allowzero", 0):
        # 0 copies the input's dimension at that position (allowzero=1 makes it a literal 0).
        if any(d == 0 and i >= x.ndim for i, d in enumerate(shape)):
            raise DczError(f"Reshape: a 0 in shape {shape} has no input dimension to copy.")
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


@op("Flatten")
def flatten(inputs, attrs, ctx):
    x = inputs[0]
    axis = norm_axis(attrs.get("axis", 1), x.ndim, "Flatten", allow_end=True)
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@op("Transpose")
def transpose(inputs, attrs, ctx):
    x = inputs[0]
    perm = attrs.get("perm")
    return [np.transpose(x, None if perm is None else ints(perm))]


@op("Squeeze")
def squeeze(inputs, attrs, ctx):
    x = inputs[0]
    axes = ints(attr_or_input(inputs, attrs, ctx, "axes", 1, since=13))
    if not axes:  # absent (or empty): every size-1 dimension goes
        return [x.reshape([d for d in x.shape if d != 1])]
    axes = norm_axes(axes, x.ndim, "Squeeze")
    if any(x.shape[a] != 1 for a in axes):
        raise DczError(f"Squeeze: cannot squeeze axes {axes} of shape {list(x.shape)}.")
    return [np.squeeze(x, axis=tuple(axes))]


@op("Unsqueeze")
def unsqueeze(inputs, attrs, ctx):
    x = inputs[0]
    axes = ints(attr_or_input(inputs, attrs, ctx, "axes", 1, since=13))
    # Axes index the *output*, whose rank is the input's plus the number of new axes.
    axes = norm_axes(axes, x.ndim + len(axes), "Unsqueeze")
    return [np.expand_dims(x, tuple(axes))]


# Set by the plan on a Concat whose parts it had written into one buffer: the buffer's key in
# ctx.scratch (ops/conv.py FUSED_INTO).
FUSED_PARTS = "_fused_parts"


@op("Concat")
def concat(inputs, attrs, ctx):
    arrays = [a for a in inputs if a is not None]
    axis = norm_axis(attrs["axis"], arrays[0].ndim, "Concat")
    if FUSED_PARTS in attrs:
        ctx.scratch.pop(attrs[FUSED_PARTS], None)  # the buffer lives on as this output or not at all
        whole = _adjacent_parts(arrays, axis)
        if whole is not None:
            return [whole]
    return [np.concatenate(arrays, axis=axis)]


def _adjacent_parts(arrays: list, axis: int) -> np.ndarray | None:
    """The array whose consecutive slices on `axis` the arrays are, in order and covering it
    all (then it is their concatenation, with no copy), else None."""
    base = arrays[0].base if isinstance(arrays[0], np.ndarray) else None
    if not isinstance(base, np.ndarray) or base.ndim != arrays[0].ndim:
        return None
    address = base.__array_interface__["data"][0]
    for a in arrays:
        if not isinstance(a, np.ndarray) or a.base is not base or a.strides != base.strides or a.dtype != base.dtype \
                or a.shape[:axis] + a.shape[axis + 1:] != base.shape[:axis] + base.shape[axis + 1:] \
                or a.__array_interface__["data"][0] != address:
            return None
        address += a.shape[axis] * base.strides[axis]
    if address != base.__array_interface__["data"][0] + base.shape[axis] * base.strides[axis]:
        return None
    return base


@op("Split")
def split(inputs, attrs, ctx):
    x = inputs[0]
    axis = norm_axis(attrs.get("axis", 0), x.ndim, "Split")
    sizes = ints(attr_or_input(inputs, attrs, ctx, "split", 1, since=13))
    if not sizes:
        sizes = _equal_split(x.shape[axis], attrs, ctx)
    if sum(sizes) != x.shape[axis] or min(sizes) < 0:
        raise DczError(f"Split: sizes {sizes} do not add up to dimension {x.shape[axis]}.")
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


def _equal_split(dim: int, attrs: dict, ctx: OpContext) -> list[int]:
    # The part count is `num_outputs` from opset 18, else the node's output count, which only the
    # graph runner knows: it is read from `ctx.num_outputs` when the runner provides it.
    n = attrs.get("num_outputs") if ctx.opset >= 18 else None
    n = n or getattr(ctx, "num_outputs", None)
    if not n:
        raise DczError("Split: an equal split needs the node's output count, which is unknown here.")
    chunk = -(-dim // n)  # ceil: the last part is the smaller one when dim is not divisible by n
    return [chunk] * (n - 1) + [dim - chunk * (n - 1)]


@op("Slice")
def slice_(inputs, attrs, ctx):
    x = inputs[0]
    if ctx.opset < 10:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends, axes, steps = inputs[1], inputs[2], input_at(inputs, 3), input_at(inputs, 4)
    starts, ends = ints(starts), ints(ends)
    axes = norm_axes(ints(axes) if axes is not None else range(len(starts)), x.ndim, "Slice")
    steps = ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[axis] = _slice(start, end, step, x.shape[axis])
    return [x[tuple(index)]]


# An end of INT32_MAX or INT64_MAX means "through the last element in the step's direction"
# (numpy's None), as onnxruntime reads it; the spec's clamping alone would make it an empty
# slice when stepping backward, which no exporter means by it.
_END_SENTINELS = (2**31 - 1, 2**63 - 1)


def _slice(start: int, end: int, step: int, dim: int) -> slice:
    """One axis of ONNX Slice as a Python slice (negative bounds count from the end, then clamp)."""
    if step == 0:
        raise DczError("Slice: a step of 0 is not allowed.")
    if end in _END_SENTINELS and step < 0:
        end = -dim - 1  # becomes -1 below: through index 0
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start = max(min(start, dim - 1), 0)
    end = max(min(end, dim - 1), -1)
    return slice(start, None if end < 0 else end, step)  # end -1 means "through index 0"


@op("Expand")
def expand(inputs, attrs, ctx):
    x = inputs[0]
    # Bidirectional broadcast: a 1 in `shape` keeps the input's larger dimension.
    shape = np.broadcast_shapes(x.shape, tuple(ints(inputs[1])))
    ctx.check_size("Expand", shape, x.itemsize)
    return [np.broadcast_to(x, shape).copy()]  # a copy: broadcast views are read-only, 0-stride


@op("Tile")
def tile(inputs, attrs, ctx):
    x, repeats = inputs[0], ints(inputs[1])
    if len(repeats) != x.ndim:
        raise DczError(f"Tile: {len(repeats)} repeats for a rank-{x.ndim} input.")
    ctx.check_size("Tile", [d * r for d, r in zip(x.shape, repeats)], x.itemsize)
    return [np.tile(x, repeats)]


# ------------------------------------------------------------------------------ indexing


@op("Gather")
def gather(inputs, attrs, ctx):
    x, indices = inputs
    return [np.take(x, indices, axis=norm_axis(attrs.get("axis", 0), x.ndim, "Gather"))]


@op("GatherElements")
def gather_elements(inputs, attrs, ctx):
    x, indices = inputs
    axis = norm_axis(attrs.get("axis", 0), x.ndim, "GatherElements")
    # The output has the indices' shape: off the gather axis, indices may be shorter than data
    # (take_along_axis would broadcast them instead).
    x = x[tuple(slice(None) if i == axis else slice(0, d) for i, d in enumerate(indices.shape))]
    return [np.take_along_axis(x, indices.astype(np.int64), axis=axis)]


def _arg(fn):
    def kernel(inputs, attrs, ctx):
        x = inputs[0]
        axis = norm_axis(attrs.get("axis", 0), x.ndim, "ArgMax/ArgMin")
        if attrs.get("select_last_index", 0):  # ties go to the last index: search the flipped axis
            idx = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis)
        else:
            idx = fn(x, axis=axis)
        if attrs.get("keepdims", 1):
            idx = np.expand_dims(idx, axis)
        return [np.asarray(idx, dtype=np.int64)]
    return kernel


op("ArgMax")(_arg(np.argmax))
op("ArgMin")(_arg(np.argmin))


# ------------------------------------------------------------------------------ shapes and constants


@op("Shape")
def shape_(inputs, attrs, ctx):
    dims = np.array(inputs[0].shape, dtype=np.int64)
    if ctx.opset >= 15:  # start/end slice the shape, clamped like Python slicing
        dims = dims[attrs.get("start", 0):attrs.get("end", None)]
    return [dims]


@op("Size")
def size(inputs, attrs, ctx):
    return [np.array(inputs[0].size, dtype=np.int64)]


_CONSTANT_FORMS = {"value_float": np.float32, "value_floats": np.float32,
                   "value_int": np.int64, "value_ints": np.int64}


@op("Constant")
def constant(inputs, attrs, ctx):
    if "value" in attrs:
        return [np.asarray(attrs["value"])]
    for name, dtype in _CONSTANT_FORMS.items():
        if name in attrs:
            return [np.array(attrs[name], dtype=dtype)]
    if "value_string" in attrs:
        return [np.array(_text(attrs["value_string"]), dtype=object)]
    if "value_strings" in attrs:
        return [np.array([_text(s) for s in attrs["value_strings"]], dtype=object)]
    raise DczError(f"Constant: unsupported value attribute {sorted(attrs)} (sparse_value?).")


@op("ConstantOfShape")
def constant_of_shape(inputs, attrs, ctx):
    shape = ints(inputs[0])  # an empty shape gives a scalar
    value = np.asarray(attrs.get("value", np.zeros(1, np.float32)))
    ctx.check_size("ConstantOfShape", shape, value.itemsize)
    return [np.full(shape, value.reshape(-1)[0], dtype=value.dtype)]


@op("Range")
def range_(inputs, attrs, ctx):
    start, limit, delta = (np.asarray(v).reshape(()) for v in inputs)
    dtype = start.dtype
    if delta == 0:
        raise DczError("Range: delta must not be 0.")
    if dtype.kind in "iu":  # exact integer ceil division (floats lose int64 precision)
        n = -(-(int(limit) - int(start)) // int(delta))
    else:
        n = math.ceil((float(limit) - float(start)) / float(delta))
    ctx.check_size("Range", [max(n, 0)], dtype.itemsize)
    # output[i] = start + i * delta, as the spec writes it (no accumulated rounding).
    return [(np.arange(max(n, 0), dtype=dtype) * delta + start).astype(dtype, copy=False)]


# ------------------------------------------------------------------------------ padding


def pad_amounts(inputs, attrs, opset: int) -> tuple[list[int], list[int]]:
    """(begin, end) pads of every axis of a Pad node's input (negative: a crop)."""
    x = inputs[0]
    if opset < 11:
        pads, axes = ints(attrs["pads"]), None
    else:
        pads = ints(inputs[1])
        axes = input_at(inputs, 3) if opset >= 18 else None
    axes = norm_axes(ints(axes), x.ndim, "Pad") if axes is not None else list(range(x.ndim))
    if len(pads) != 2 * len(axes):
        raise DczError(f"Pad: {len(pads)} pads for {len(axes)} axes (expected twice as many).")
    begin, end = [0] * x.ndim, [0] * x.ndim
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = pads[i], pads[i + len(axes)]
    if any(d + b + e < 0 for d, b, e in zip(x.shape, begin, end)):
        raise DczError(f"Pad: pads {pads} crop more than the input shape {list(x.shape)} holds.")
    return begin, end


@op("Pad")
def pad(inputs, attrs, ctx):
    x = inputs[0]
    mode = str_attr(attrs, "mode", "constant")
    value = attrs.get("value", 0.0) if ctx.opset < 11 else input_at(inputs, 2)
    begin, end = pad_amounts(inputs, attrs, ctx.opset)
    # Negative pads crop; np.pad then adds the positive ones.
    x = x[tuple(slice(max(-b, 0), d - max(-e, 0)) for b, e, d in zip(begin, end, x.shape))]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
    ctx.check_size("Pad", [d + b + e for d, (b, e) in zip(x.shape, widths)], x.itemsize)
    if mode == "constant":
        fill = 0 if value is None else np.asarray(value).reshape(-1)[0]
        return [np.pad(x, widths, mode="constant", constant_values=np.asarray(fill, x.dtype))]
    if mode in ("reflect", "edge", "wrap"):  # numpy's modes of the same names match ONNX's
        return [np.pad(x, widths, mode=mode)]
    raise DczError(f"Pad: mode {mode!r} is not supported (constant, reflect, edge, wrap).")


# ------------------------------------------------------------------------------ reductions


def _empty_identity(dtype: np.dtype, for_max: bool):
    """ReduceMax/ReduceMin of nothing (opset 18): -inf / inf, or the dtype's extreme value."""
    if dtype.kind == "f":
        return -np.inf if for_max else np.inf
    if dtype.kind == "b":
        return not for_max
    info = np.iinfo(dtype)
    return info.min if for_max else info.max


def _extreme(fn, for_max: bool):
    def reduce(x, axis, keepdims):
        empty = {"initial": _empty_identity(x.dtype, for_max)} if x.size == 0 else {}
        return fn(x, axis=axis, keepdims=keepdims, **empty)
    return reduce


_reduce_max, _reduce_min = _extreme(np.max, True), _extreme(np.min, False)


def _reduce_mean(x, axis, keepdims):
    # An empty mean is undefined in the spec; like onnxruntime, give 0 (the empty sum) not nan.
    count = max(math.prod(x.shape[a] for a in axis), 1)
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=x.dtype) / count


def _log_sum_exp(x, axis, keepdims):
    peak = _reduce_max(x, axis, True)
    peak = np.where(np.isfinite(peak), peak, 0)  # all -inf (or inf, or empty) rows: skip the shift
    with np.errstate(divide="ignore"):  # log(0) = -inf for an empty reduction
        out = np.log(np.sum(np.exp(x - peak), axis=axis, keepdims=True)) + peak
    return out if keepdims else np.squeeze(out, axis=axis)


def _log_sum(x, axis, keepdims):
    with np.errstate(divide="ignore", invalid="ignore"):  # log(0) = -inf, log(< 0) = nan
        return np.log(np.sum(x, axis=axis, keepdims=keepdims, dtype=x.dtype))


# name -> (reduction(x, axis, keepdims), first opset where `axes` is an input)
_REDUCTIONS = {
    "ReduceSum": (lambda x, a, k: np.sum(x, axis=a, keepdims=k, dtype=x.dtype), 13),
    "ReduceMean": (_reduce_mean, 18),
    "ReduceMax": (_reduce_max, 18),
    "ReduceMin": (_reduce_min, 18),
    "ReduceProd": (lambda x, a, k: np.prod(x, axis=a, keepdims=k, dtype=x.dtype), 18),
    "ReduceL1": (lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k, dtype=x.dtype), 18),
    "ReduceL2": (lambda x, a, k: np.sqrt(np.sum(np.square(x), axis=a, keepdims=k, dtype=x.dtype)), 18),
    "ReduceSumSquare": (lambda x, a, k: np.sum(np.square(x), axis=a, keepdims=k, dtype=x.dtype), 18),
    "ReduceLogSumExp": (_log_sum_exp, 18),
    "ReduceLogSum": (_log_sum, 18),
}


def _reduction(name, fn, since):
    def kernel(inputs, attrs, ctx):
        x = inputs[0]
        axes = ints(attr_or_input(inputs, attrs, ctx, "axes", 1, since))
        if not axes:
            # No axes: reduce everything, unless noop_with_empty_axes (input-form opsets) says not to.
            if ctx.opset >= since and attrs.get("noop_with_empty_axes", 0):
                return [x]
            axes = range(x.ndim)
        y = fn(x, tuple(norm_axes(axes, x.ndim, name)), bool(attrs.get("keepdims", 1)))
        return [np.asarray(y).astype(x.dtype, copy=False)]  # e.g. an int mean is float64
    return kernel


for _name, (_fn, _since) in _REDUCTIONS.items():
    op(_name)(_reduction(_name, _fn, _since))
