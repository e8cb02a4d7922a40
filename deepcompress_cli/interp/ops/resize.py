"""Resize (opset 10+) and Upsample (opset 7-9): nearest, N-linear and (Resize 11+) N-cubic
interpolation, with Resize-18's antialias.

Every mode is separable, so the kernel resamples one axis at a time with a gather (nearest), two
gathers and a blend (linear), or a weighted sum of a few gathers (cubic, and antialiased
downscaling); interpolation over several axes is the product of the per-axis weights, which is
what this computes.  Coordinates are computed in float32 with the formulas of
the spec in the order onnxruntime evaluates them, and nearest-rounding ties are detected with the
same small tolerance, so both pick the same pixels.

Two onnxruntime shortcuts are *not* copied, the spec is followed instead: onnxruntime returns the
input unchanged when the output shape equals the input shape (even for scales != 1), and skips
the coordinate transform on axes of scale 1 (which matters only for tf_crop_and_resize with a
roi on such an axis and for tf_half_pixel_for_nn with the ceil rounding modes).

Resize-10 and Upsample predate the coordinate_transformation_mode / nearest_mode attributes;
onnxruntime (the de-facto definition) runs them as 'asymmetric' with a nearest rule that
floors when upsampling and ceils when downsampling ('simple' below).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import DczError
from . import op
from .shape import input_at, ints, norm_axes, str_attr

_F = np.float32
_COORD_MODES = {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                "asymmetric", "tf_half_pixel_for_nn", "tf_crop_and_resize"}
_NEAREST_MODES = {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple"}


def _present(value):
    """An optional input that may be omitted or given as an empty tensor (Resize-11 idiom)."""
    return value is not None and np.asarray(value).size > 0


@op("Resize")
def resize(inputs, attrs, ctx):
    x = inputs[0]
    if ctx.opset < 11:
        _check_old_mode(attrs, "Resize")
        plan = _scales_shape(x, inputs[1], "Resize")
        ctx.check_size("Resize", plan[1], x.itemsize)
        return [_resample(x, plan, str_attr(attrs, "mode", "nearest"), "asymmetric", "simple", "Resize")]
    roi, scales, sizes = input_at(inputs, 1), input_at(inputs, 2), input_at(inputs, 3)
    axes = list(range(x.ndim))
    if ctx.opset >= 18 and attrs.get("axes") is not None:
        axes = norm_axes(ints(attrs["axes"]), x.ndim, "Resize")
    if _present(sizes):
        plan = _sizes_plan(x, ints(sizes), axes, str_attr(attrs, "keep_aspect_ratio_policy", "stretch"))
    elif _present(scales):
        full = np.ones(x.ndim, dtype=_F)
        full[axes] = np.asarray(scales, dtype=_F).reshape(-1)
        plan = _scales_shape(x, full, "Resize")
    else:
        raise DczError("Resize: one of the scales and sizes inputs must be given.")
    ctx.check_size("Resize", plan[1], max(x.itemsize, 4))  # linear mode blends in float32
    coord = str_attr(attrs, "coordinate_transformation_mode", "half_pixel")
    crop = None
    if coord == "tf_crop_and_resize":
        crop = (*_roi(roi, x.ndim, axes), _F(attrs.get("extrapolation_value", 0.0)))
    taps = _Filter(_F(attrs.get("cubic_coeff_a", -0.75)), bool(attrs.get("exclude_outside", 0)),
                   ctx.opset >= 18 and bool(attrs.get("antialias", 0)))
    return [_resample(x, plan, str_attr(attrs, "mode", "nearest"), coord,
                      str_attr(attrs, "nearest_mode", "round_prefer_floor"), "Resize", crop, taps)]


@op("Upsample")
def upsample(inputs, attrs, ctx):
    x = inputs[0]
    scales = attrs.get("scales") if ctx.opset < 9 else inputs[1]
    mode = str_attr(attrs, "mode", "nearest")
    mode = "linear" if mode == "bilinear" else mode  # Upsample-7's old spelling
    _check_old_mode({"mode": mode}, "Upsample")
    plan = _scales_shape(x, scales, "Upsample")
    ctx.check_size("Upsample", plan[1], max(x.itemsize, 4))
    return [_resample(x, plan, mode, "asymmetric", "simple", "Upsample")]


def _check_old_mode(attrs, op_name):
    """Resize-10 and Upsample know only nearest and linear."""
    mode = str_attr(attrs, "mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise DczError(f"{op_name}: mode {mode!r} is not supported at this opset (nearest, linear).")


# ------------------------------------------------------------------------------ output shape


def _scales_shape(x, scales, op_name):
    """(per-axis float32 scales, output shape, unrounded output lengths): out = floor(in * scale),
    multiplied in float32 like onnxruntime (so that 10 * 0.7f gives 7, not 6)."""
    scales = np.asarray(scales, dtype=_F).reshape(-1)
    if scales.size != x.ndim or np.any(scales <= 0):
        raise DczError(f"{op_name}: scales {scales.tolist()} do not fit a rank-{x.ndim} input.")
    lengths = [_F(d) * s for d, s in zip(x.shape, scales)]
    return scales, [int(np.floor(n)) for n in lengths], lengths


def _sizes_plan(x, sizes, axes, policy):
    shape = list(x.shape)
    scales = np.ones(x.ndim, dtype=_F)
    lengths = [_F(d) for d in x.shape]
    if len(sizes) != len(axes):
        raise DczError(f"Resize: {len(sizes)} sizes for {len(axes)} axes.")
    ratios = [_F(s) / _F(x.shape[a]) for s, a in zip(sizes, axes)]
    if policy == "stretch":
        for a, s, r in zip(axes, sizes, ratios):
            shape[a], scales[a], lengths[a] = s, r, _F(s)
    elif policy in ("not_larger", "not_smaller"):
        # One scale for every axis, so the aspect ratio is kept; sizes become a bound.
        r = min(ratios) if policy == "not_larger" else max(ratios)
        for a in axes:
            lengths[a] = _F(x.shape[a]) * r
            shape[a], scales[a] = int(np.floor(lengths[a] + _F(0.5))), r
    else:
        raise DczError(f"Resize: keep_aspect_ratio_policy {policy!r} is not supported.")
    return scales, shape, lengths


def _roi(roi, rank, axes):
    """Crop box (starts, ends) per axis, normalized coordinates; default the whole input."""
    starts, ends = np.zeros(rank, dtype=_F), np.ones(rank, dtype=_F)
    if _present(roi):
        roi = np.asarray(roi, dtype=_F).reshape(-1)
        if roi.size != 2 * len(axes):
            raise DczError(f"Resize: roi has {roi.size} values for {len(axes)} axes.")
        starts[axes], ends[axes] = roi[:len(axes)], roi[len(axes):]
    return starts, ends


# ------------------------------------------------------------------------------ resampling


@dataclass(frozen=True)
class _Filter:
    """Resize's interpolation options beyond the mode (opset 11+; antialias 18+)."""

    cubic_a: np.float32 = _F(-0.75)
    exclude_outside: bool = False
    antialias: bool = False


def _resample(x, plan, mode, coord, nearest_mode, op_name, crop=None, taps=_Filter()):
    scales, shape, lengths = plan
    if mode not in ("nearest", "linear", "cubic"):
        raise DczError(f"{op_name}: mode {mode!r} is not supported (nearest, linear, cubic).")
    if coord not in _COORD_MODES:
        raise DczError(f"{op_name}: coordinate_transformation_mode {coord!r} is not supported.")
    if mode == "nearest" and nearest_mode not in _NEAREST_MODES:
        raise DczError(f"{op_name}: nearest_mode {nearest_mode!r} is not supported.")
    # Linear blends in float32 (float64 stays float64); integer inputs are rounded back.
    y = x if mode == "nearest" or x.dtype in (np.float32, np.float64) else x.astype(_F)
    # crop: (roi starts, roi ends, extrapolation_value) of tf_crop_and_resize, whose samples
    # outside the input take the extrapolation value.
    outside = np.zeros((1,) * x.ndim, dtype=bool)
    for axis in range(x.ndim):
        n_in, n_out = x.shape[axis], shape[axis]
        roi = (crop[0][axis], crop[1][axis]) if crop else None
        c = _coordinates(coord, n_out, n_in, scales[axis], lengths[axis], roi)
        if crop is not None:
            out_mask = (c < 0) | (c > n_in - 1)
            outside = outside | out_mask.reshape([-1] + [1] * (x.ndim - axis - 1))
        if mode == "nearest":
            idx = np.clip(_nearest(c, nearest_mode, scales[axis] < 1), 0, n_in - 1)
            if n_out != n_in or np.any(idx != np.arange(n_in)):
                y = np.take(y, idx, axis=axis)
        elif mode == "linear" and not (taps.antialias and scales[axis] < 1):
            if n_out != n_in or np.any(c != np.arange(n_in)):
                y = _linear(y, axis, np.clip(c, _F(0), _F(n_in - 1)))
        else:
            y = _convolve(y, axis, c, mode, scales[axis], taps)
    if crop is not None and outside.any():
        y = np.where(outside, crop[2].astype(y.dtype), y)
    if y.dtype != x.dtype:
        if x.dtype.kind in "iu":
            info = np.iinfo(x.dtype)
            y = np.clip(np.rint(y), info.min, info.max)
        y = y.astype(x.dtype)
    return y


def _coordinates(coord, n_out, n_in, scale, length, roi):
    """Input coordinate of every output index along one axis (float32); `length` is the output
    length before rounding (in * scale, or the size asked for)."""
    xr = np.arange(n_out, dtype=_F)
    half = _F(0.5)
    if coord == "asymmetric":
        return xr / scale
    if coord == "half_pixel":
        return (xr + half) / scale - half
    if coord == "pytorch_half_pixel":
        return (xr + half) / scale - half if n_out > 1 else np.zeros(n_out, dtype=_F)
    if coord == "tf_half_pixel_for_nn":
        return (xr + half) / scale
    if coord == "align_corners":
        # length_resized is the unrounded length, as in the ONNX reference and node tests
        # (onnxruntime divides by n_out - 1: the two differ when in * scale is fractional).
        return xr * _F(n_in - 1) / (length - _F(1)) if n_out > 1 else np.zeros(n_out, dtype=_F)
    if coord == "half_pixel_symmetric":
        # Centre the sampling grid when the integer output size rounded the scaled size down.
        # The offset is float32, the rest float64 (onnxruntime's literal 0.5 is a double).
        adjustment = _F(n_out) / (scale * _F(n_in))
        offset = _F(n_in) / _F(2) * (_F(1) - adjustment)
        xd = np.arange(n_out, dtype=np.float64)
        return (np.float64(offset) + (xd + 0.5) / np.float64(scale) - 0.5).astype(_F)
    start, end = roi  # tf_crop_and_resize: sample the roi box, corners aligned
    if n_out > 1:
        return start * _F(n_in - 1) + xr * (end - start) * _F(n_in - 1) / _F(n_out - 1)
    return np.full(n_out, half * (start + end) * _F(n_in - 1), dtype=_F)


# A coordinate within this of k + 0.5 is a tie: exact ties (e.g. 1 / (2/7) = 3.5) come out of
# float32 arithmetic a few ulps off.  onnxruntime breaks ties with the same tolerance.
_TIE = 1e-6


def _nearest(c, mode, downscale):
    base = np.floor(c)
    frac = c - base  # exact, unlike c + 0.5, which rounds 0.49999997 up
    if mode == "round_prefer_floor":
        idx = base + (frac > 0.5 + _TIE)
    elif mode == "round_prefer_ceil":
        idx = base + (frac >= 0.5 - _TIE)
    elif mode == "floor" or (mode == "simple" and not downscale):
        idx = base
    else:  # ceil, and 'simple' when downscaling
        idx = np.ceil(c)
    return idx.astype(np.int64)


def _linear(y, axis, c):
    """Linear interpolation along `axis` at (clamped) coordinates c."""
    n_in = y.shape[axis]
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (c - i0).astype(y.dtype).reshape([-1] + [1] * (y.ndim - axis - 1))
    return np.take(y, i0, axis=axis) * (1 - w) + np.take(y, i1, axis=axis) * w


def _cubic_weights(t, a):
    """Keys' cubic convolution kernel with coefficient a, at distances t (float64)."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _convolve(y, axis, c, mode, scale, taps: _Filter):
    """Cubic, or antialiased linear/cubic, resampling along `axis` at coordinates c.

    Each output is a weighted sum of the input samples within the kernel's support (radius 1 for
    linear, 2 for cubic) around c.  With antialias a downscale by s stretches the kernel by 1/s,
    so about 1/s times more samples contribute; the weights are then normalized to sum to 1.
    Samples past the edges repeat the edge sample, or with exclude_outside get weight 0 (and the
    rest are renormalized).  The loop runs over the few taps, never over samples (and a
    kernel longer than the axis, a huge downscale, is one matrix product).
    """
    n_in = y.shape[axis]
    stretch = float(scale) if taps.antialias and scale < 1 else 1.0
    radius = 2 if mode == "cubic" else 1
    first = int(np.floor(-radius / stretch)) + 1  # taps floor(c) + first .. floor(c) + 1 - first
    offsets = np.arange(first, 2 - first)
    base = np.floor(c.astype(np.float64))
    distances = (offsets[None, :] - (c - base)[:, None]) * stretch
    if mode == "cubic":
        weights = _cubic_weights(distances, float(taps.cubic_a))
    else:
        weights = np.clip(1 - np.abs(distances), 0, 1)
    weights /= weights.sum(axis=1, keepdims=True)
    index = base.astype(np.int64)[:, None] + offsets[None, :]
    if taps.exclude_outside:
        weights = np.where((index >= 0) & (index < n_in), weights, 0.0)
        total = weights.sum(axis=1, keepdims=True)
        weights /= np.where(total == 0, 1, total)
    index = np.clip(index, 0, n_in - 1)
    weights = weights.astype(y.dtype)
    if offsets.size > n_in:  # a kernel longer than the axis: one [n_out, n_in] matrix instead
        matrix = np.zeros((c.size, n_in), dtype=y.dtype)
        np.add.at(matrix, (np.arange(c.size)[:, None], index), weights)
        return np.moveaxis(np.tensordot(matrix, y, axes=([1], [axis])), 0, axis)
    shape = [-1] + [1] * (y.ndim - axis - 1)
    out = None
    for k in range(offsets.size):
        term = np.take(y, index[:, k], axis=axis) * weights[:, k].reshape(shape)
        out = term if out is None else out + term
    return out
