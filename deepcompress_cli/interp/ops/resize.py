"""Resize (opset 10+) and Upsample (opset 7-9): nearest and N-linear interpolation.

Both modes are separable, so the kernel resamples one axis at a time with a gather (nearest) or
two gathers and a blend (linear); N-linear over several axes is the product of the per-axis
weights, which is what this computes.  Coordinates are computed in float32 with the formulas of
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
    mode = str_attr(attrs, "mode", "nearest")
    if attrs.get("antialias", 0) and mode != "nearest" and any(s < 1 for s in plan[0]):
        raise DczError("Resize: antialias when downscaling is not supported.")
    return [_resample(x, plan, mode, coord, str_attr(attrs, "nearest_mode", "round_prefer_floor"),
                      "Resize", crop)]


@op("Upsample")
def upsample(inputs, attrs, ctx):
    x = inputs[0]
    scales = attrs.get("scales") if ctx.opset < 9 else inputs[1]
    mode = str_attr(attrs, "mode", "nearest")
    mode = "linear" if mode == "bilinear" else mode  # Upsample-7's old spelling
    plan = _scales_shape(x, scales, "Upsample")
    ctx.check_size("Upsample", plan[1], max(x.itemsize, 4))
    return [_resample(x, plan, mode, "asymmetric", "simple", "Upsample")]


# ------------------------------------------------------------------------------ output shape


def _scales_shape(x, scales, op_name):
    """(per-axis float32 scales, output shape): out = floor(in * scale), multiplied in float32
    like onnxruntime (so that 10 * 0.7f gives 7, not 6)."""
    scales = np.asarray(scales, dtype=_F).reshape(-1)
    if scales.size != x.ndim or np.any(scales <= 0):
        raise DczError(f"{op_name}: scales {scales.tolist()} do not fit a rank-{x.ndim} input.")
    shape = [int(np.floor(_F(d) * s)) for d, s in zip(x.shape, scales)]
    return scales, shape


def _sizes_plan(x, sizes, axes, policy):
    shape = list(x.shape)
    scales = np.ones(x.ndim, dtype=_F)
    if len(sizes) != len(axes):
        raise DczError(f"Resize: {len(sizes)} sizes for {len(axes)} axes.")
    ratios = [_F(s) / _F(x.shape[a]) for s, a in zip(sizes, axes)]
    if policy == "stretch":
        for a, s, r in zip(axes, sizes, ratios):
            shape[a], scales[a] = s, r
    elif policy in ("not_larger", "not_smaller"):
        # One scale for every axis, so the aspect ratio is kept; sizes become a bound.
        r = min(ratios) if policy == "not_larger" else max(ratios)
        for a in axes:
            shape[a], scales[a] = int(np.floor(_F(x.shape[a]) * r + _F(0.5))), r
    else:
        raise DczError(f"Resize: keep_aspect_ratio_policy {policy!r} is not supported.")
    return scales, shape


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


def _resample(x, plan, mode, coord, nearest_mode, op_name, crop=None):
    scales, shape = plan
    if mode not in ("nearest", "linear"):
        raise DczError(f"{op_name}: mode {mode!r} is not supported (nearest, linear).")
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
        c = _coordinates(coord, n_out, n_in, scales[axis], roi)
        if crop is not None:
            out_mask = (c < 0) | (c > n_in - 1)
            outside = outside | out_mask.reshape([-1] + [1] * (x.ndim - axis - 1))
        if mode == "nearest":
            idx = np.clip(_nearest(c, nearest_mode, scales[axis] < 1), 0, n_in - 1)
            if n_out != n_in or np.any(idx != np.arange(n_in)):
                y = np.take(y, idx, axis=axis)
        elif n_out != n_in or np.any(c != np.arange(n_in)):
            y = _linear(y, axis, np.clip(c, _F(0), _F(n_in - 1)))
    if crop is not None and outside.any():
        y = np.where(outside, crop[2].astype(y.dtype), y)
    if y.dtype != x.dtype:
        if x.dtype.kind in "iu":
            info = np.iinfo(x.dtype)
            y = np.clip(np.rint(y), info.min, info.max)
        y = y.astype(x.dtype)
    return y


def _coordinates(coord, n_out, n_in, scale, roi):
    """Input coordinate of every output index along one axis (float32)."""
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
        return xr * _F(n_in - 1) / _F(n_out - 1) if n_out > 1 else np.zeros(n_out, dtype=_F)
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
