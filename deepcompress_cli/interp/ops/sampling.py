"""Sampling images at continuous coordinates: GridSample, AffineGrid, RoiAlign.

An interpolation is a sum over "taps": per spatial dimension, a few integer positions with
weights (1 for nearest, 2 for linear, 4 for cubic).  The kernels gather one tap combination at a
time for every output point at once, so loops run 2**r or 4**r times, never over pixels.
Coordinates are computed in float64 and the output keeps the input's dtype.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ...errors import DczError
from . import op
from .shape import ints, str_attr

_CUBIC_A = -0.75  # the cubic convolution coefficient GridSample uses (as PyTorch)
_MODES = {"bilinear": "linear", "bicubic": "cubic"}  # opset 16 names -> opset 20 names


def _reflect(x, low: float, high: float):
    """Coordinates folded into [low, high] by mirroring at the borders, as often as needed."""
    span = high - low
    if span <= 0:
        return np.zeros_like(x)
    folded = np.mod(np.abs(x - low), 2 * span)
    return low + np.where(folded > span, 2 * span - folded, folded)


def _cubic_weights(t):
    """Weights of the taps at floor-1 .. floor+2 for fractional offsets t (a list of 4 arrays)."""
    a = _CUBIC_A

    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


class _Axis:
    """Tap positions and weights along one spatial dimension of size `size`."""

    def __init__(self, coord, size: int, mode: str, padding: str, align_corners: bool):
        self.size = size
        if align_corners:
            low, high = 0.0, size - 1.0
            x = (coord + 1) / 2 * (size - 1)
        else:
            low, high = -0.5, size - 0.5
            x = ((coord + 1) * size - 1) / 2
        self.padding, self.low, self.high = padding, low, high
        if mode != "cubic":  # nearest and linear pad the coordinate itself
            if padding == "border":
                x = np.clip(x, 0, size - 1)
            elif padding == "reflection":
                x = np.clip(_reflect(x, low, high), 0, size - 1)
        if mode == "nearest":
            self.taps = [(np.rint(x), np.ones_like(x))]  # rint: halfway goes to the even index
        elif mode == "linear":
            base = np.floor(x)
            t = x - base
            self.taps = [(base, 1 - t), (base + 1, t)]
        else:
            base = np.floor(x)
            self.taps = [(base + k - 1, w) for k, w in enumerate(_cubic_weights(x - base))]

    def index(self, position):
        """(integer index to read, weight multiplier: 0 where zeros padding reads outside).
        A NaN position is outside for zeros padding, else it reads index 0."""
        nan = np.isnan(position)
        position = np.where(nan, 0.0, position)
        if self.padding == "zeros":
            inside = (position >= 0) & (position <= self.size - 1) & ~nan
            return np.clip(position, 0, self.size - 1).astype(np.intp), inside
        if self.padding == "reflection":  # only cubic taps still fall outside here
            position = _reflect(position, self.low, self.high)
        return np.clip(position, 0, self.size - 1).astype(np.intp), None


@op("GridSample")
def grid_sample(inputs, attrs, ctx):
    x, grid = inputs
    r = x.ndim - 2
    if r < 1 or grid.shape[0] != x.shape[0] or grid.ndim != r + 2 or grid.shape[-1] != r:
        raise DczError(f"GridSample node {ctx.node_name!r}: grid {list(grid.shape)} does not fit X {list(x.shape)}.")
    mode = str_attr(attrs, "mode", "bilinear" if ctx.opset < 20 else "linear")
    mode = _MODES.get(mode, mode)
    padding = str_attr(attrs, "padding_mode", "zeros")
    if mode not in ("nearest", "linear", "cubic") or padding not in ("zeros", "border", "reflection"):
        raise DczError(f"GridSample: unsupported mode {mode!r} / padding_mode {padding!r}.")
    n, c = x.shape[:2]
    out_spatial = grid.shape[1:-1]
    ctx.check_size("GridSample", [n, c, *out_spatial], x.itemsize)
    coords = grid.astype(np.float64)
    # grid's last axis lists (x, y, z...): the innermost spatial dimension first
    axes = [_Axis(coords[..., r - 1 - i], x.shape[2 + i], mode, padding, bool(attrs.get("align_corners", 0)))
            for i in range(r)]
    channels_last = np.moveaxis(x, 1, -1)  # gathers give [N, *out, C]
    batch = np.arange(n).reshape((n,) + (1,) * r)
    out = np.zeros((n, *out_spatial, c), np.float64)
    for taps in itertools.product(*(axis.taps for axis in axes)):
        index, weight = [batch], 1.0
        for axis, (position, tap_weight) in zip(axes, taps):
            i, inside = axis.index(position)
            index.append(i)
            weight = weight * (tap_weight if inside is None else tap_weight * inside)
        out += channels_last[tuple(index)] * weight[..., None]
    return [np.moveaxis(out, -1, 1).astype(x.dtype)]


@op("AffineGrid")
def affine_grid(inputs, attrs, ctx):
    """grid[n, ..., :] = theta[n] @ (x, y[, z], 1) over an even lattice of [-1, 1] positions."""
    theta, size = inputs[0], ints(inputs[1])
    r = len(size) - 2
    if r not in (2, 3) or theta.shape != (size[0], r, r + 1):
        raise DczError(f"AffineGrid node {ctx.node_name!r}: theta {list(theta.shape)} does not fit size {size}.")
    spatial = size[2:]
    ctx.check_size("AffineGrid", [size[0], *spatial, r], theta.itemsize)
    align_corners = bool(attrs.get("align_corners", 0))

    def lattice(steps: int):
        if align_corners:
            return np.linspace(-1.0, 1.0, steps) if steps > 1 else np.zeros(steps)
        return (2 * np.arange(steps) + 1) / steps - 1

    positions = np.meshgrid(*(lattice(s) for s in spatial), indexing="ij")  # one per spatial dim
    base = np.stack([*positions[::-1], np.ones(spatial)], axis=-1).reshape(-1, r + 1)
    grid = base @ np.swapaxes(theta.astype(np.float64), 1, 2)  # [N, points, r]
    return [grid.reshape(size[0], *spatial, r).astype(theta.dtype)]


# ------------------------------------------------------------------------------ RoiAlign


def _roi_taps(start: float, bin_size: float, bins: int, samples: int, size: int):
    """Bilinear taps of the sample points along one axis of a RoI (the Mask R-CNN recipe).

    Points more than one pixel outside the image read nothing; the rest are clamped to it.
    """
    offsets = (np.arange(samples) + 0.5) / samples
    pos = start + (np.arange(bins)[:, None] + offsets) * bin_size  # [bins, samples]
    pos = pos.reshape(-1)
    valid = (pos >= -1.0) & (pos <= size)
    pos = np.clip(pos, 0, None)
    low = np.minimum(np.floor(pos).astype(np.intp), size - 1)
    high = np.minimum(low + 1, size - 1)
    frac = np.where(low >= size - 1, 0.0, pos - low)
    return low, high, (1 - frac) * valid, frac * valid


@op("RoiAlign")
def roi_align(inputs, attrs, ctx):
    x, rois, batch_indices = inputs
    if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 4 or batch_indices.shape != (rois.shape[0],):
        raise DczError(f"RoiAlign node {ctx.node_name!r}: X {list(x.shape)}, rois {list(rois.shape)} and "
                       f"batch_indices {list(batch_indices.shape)} do not fit.")
    mode = str_attr(attrs, "mode", "avg")
    if mode not in ("avg", "max"):
        raise DczError(f"RoiAlign: unknown mode {mode!r} (avg, max).")
    default_transform = "half_pixel" if ctx.opset >= 16 else "output_half_pixel"
    half_pixel = str_attr(attrs, "coordinate_transformation_mode", default_transform) == "half_pixel"
    out_h, out_w = int(attrs.get("output_height", 1)), int(attrs.get("output_width", 1))
    scale = float(attrs.get("spatial_scale", 1.0))
    ratio = int(attrs.get("sampling_ratio", 0))
    n, c, height, width = x.shape
    if (batch_indices < 0).any() or (batch_indices >= n).any():
        raise DczError(f"RoiAlign node {ctx.node_name!r}: a batch index is outside 0..{n - 1}.")
    out = np.zeros((rois.shape[0], c, out_h, out_w), np.float64)
    for k, (roi, b) in enumerate(zip(rois.astype(np.float64), batch_indices)):
        x1, y1, x2, y2 = roi * scale - (0.5 if half_pixel else 0.0)
        roi_w, roi_h = x2 - x1, y2 - y1
        if not half_pixel:  # the legacy mode keeps RoIs at least one pixel wide
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        samples_h = ratio if ratio > 0 else math.ceil(roi_h / out_h)
        samples_w = ratio if ratio > 0 else math.ceil(roi_w / out_w)
        if samples_h < 1 or samples_w < 1:
            continue  # an empty RoI pools nothing
        ctx.check_size("RoiAlign", [4, c, out_h * samples_h, out_w * samples_w], 8)  # RoI size sets the samples
        ys = _roi_taps(y1, roi_h / out_h, out_h, samples_h, height)
        xs = _roi_taps(x1, roi_w / out_w, out_w, samples_w, width)
        image = x[int(b)].astype(np.float64)
        terms = [image[:, ys[iy]][:, :, xs[ix]] * (ys[2 + iy][:, None] * xs[2 + ix])
                 for iy in (0, 1) for ix in (0, 1)]  # [C, out_h * samples_h, out_w * samples_w]
        if mode == "avg":
            pooled = sum(terms).reshape(c, out_h, samples_h, out_w, samples_w).mean(axis=(2, 4))
        else:  # onnxruntime's max: the largest weighted corner of any sample point
            pooled = np.maximum.reduce(terms).reshape(c, out_h, samples_h, out_w, samples_w).max(axis=(2, 4))
        out[k] = pooled
    return [out.astype(x.dtype)]


def _bin_masks(start: int, size: int, bins: int, limit: int) -> tuple[np.ndarray, int, int]:
    """(mask [bins, span] of the pixels in each bin, first pixel, span) of one RoI axis (Caffe's ROIPool).

    Bins of a RoI `size` pixels long start at floor(i * size / bins) and end at
    ceil((i + 1) * size / bins), clipped to the image; they may overlap or be empty.
    """
    edges = np.arange(bins + 1) * (size / bins)
    begin = np.clip(np.floor(edges[:-1]).astype(np.int64) + start, 0, limit)
    end = np.clip(np.ceil(edges[1:]).astype(np.int64) + start, 0, limit)
    first, last = int(begin.min()), int(end.max())
    pixels = np.arange(first, max(last, first))
    return (pixels >= begin[:, None]) & (pixels < end[:, None]), first, max(last - first, 0)


@op("MaxRoiPool")
def max_roi_pool(inputs, attrs, ctx):
    x, rois = inputs
    if "pooled_shape" not in attrs:
        raise DczError("MaxRoiPool: the pooled_shape attribute is missing.")
    out_h, out_w = (int(v) for v in attrs["pooled_shape"])
    if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 5 or out_h < 1 or out_w < 1:
        raise DczError(f"MaxRoiPool node {ctx.node_name!r}: X {list(x.shape)}, rois {list(rois.shape)} and "
                       f"pooled_shape [{out_h}, {out_w}] do not fit.")
    n, c, height, width = x.shape
    scale = float(attrs.get("spatial_scale", 1.0))
    out = np.zeros((rois.shape[0], c, out_h, out_w), x.dtype)
    for k, roi in enumerate(rois.astype(np.float64)):
        b = int(roi[0])
        if not 0 <= b < n:
            raise DczError(f"MaxRoiPool node {ctx.node_name!r}: batch id {b} is outside 0..{n - 1}.")
        x1, y1, x2, y2 = (int(v) for v in np.sign(roi[1:]) * np.floor(np.abs(roi[1:]) * scale + 0.5))
        rows, top, span_h = _bin_masks(y1, max(y2 - y1 + 1, 1), out_h, height)
        cols, left, span_w = _bin_masks(x1, max(x2 - x1 + 1, 1), out_w, width)
        if span_h == 0 or span_w == 0:
            continue
        region = x[b, :, top:top + span_h, left:left + span_w]  # [C, span_h, span_w]
        by_rows = np.where(rows[None, :, :, None], region[:, None], -np.inf).max(axis=2)  # [C, out_h, span_w]
        pooled = np.where(cols[None, None], by_rows[:, :, None], -np.inf).max(axis=3)  # [C, out_h, out_w]
        nonempty = rows.any(axis=1)[:, None] & cols.any(axis=1)
        out[k] = np.where(nonempty, pooled, 0)  # an empty bin pools to 0
    return [out]
