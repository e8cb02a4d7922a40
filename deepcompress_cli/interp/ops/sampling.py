"""Spatial transformer ops: AffineGrid (opset 20) makes normalized sampling positions from
affine matrices, GridSample (opset 16; N-D from 20) reads an image at such positions.

Positions are normalized to [-1, 1] per spatial axis, x first: grid[..., 0] indexes the last
(width) axis, grid[..., 1] the one before, as in PyTorch's affine_grid / grid_sample, which the
spec follows.  align_corners=1 puts -1 and 1 at the centres of the corner pixels, 0 at their
outer edges.
"""

from __future__ import annotations

import itertools

import numpy as np

from ...errors import DczError
from . import op
from .shape import ints, str_attr

_CUBIC_A = -0.75  # the cubic convolution constant of PyTorch and onnxruntime


def _axis_positions(size: int, align_corners: bool) -> np.ndarray:
    """Normalized centres of `size` pixels along one axis."""
    if align_corners:
        return np.linspace(-1.0, 1.0, size) if size > 1 else np.zeros(size)
    return (2 * np.arange(size) + 1) / size - 1


@op("AffineGrid")
def affine_grid(inputs, attrs, ctx):
    """[N, *spatial, r] positions theta[n] @ (x, y[, z], 1) over the pixel centres of size."""
    theta, size = inputs
    size = ints(size)
    r = len(size) - 2
    if r not in (2, 3) or theta.shape[1:] != (r, r + 1):
        raise DczError(f"AffineGrid node {ctx.node_name!r}: theta {list(theta.shape)} does not fit "
                       f"size {size} (expected [N, 2, 3] with a 4-D size, [N, 3, 4] with 5-D).")
    ctx.check_size("AffineGrid", [theta.shape[0], *size[2:], r], theta.dtype.itemsize)
    align = bool(attrs.get("align_corners", 0))
    axes = np.meshgrid(*(_axis_positions(s, align) for s in size[2:]), indexing="ij")
    base = np.stack([*axes[::-1], np.ones_like(axes[0])], axis=-1)  # (x, y, z, 1)
    grid = np.einsum("...k,nik->n...i", base, theta.astype(np.float64))
    return [grid.astype(theta.dtype)]


def _reflect(c: np.ndarray, low: float, high: float) -> np.ndarray:
    """c folded into [low, high] by reflecting at both ends, as often as needed."""
    span = high - low
    if span <= 0:
        return np.zeros_like(c)
    distance = np.abs(c - low)
    flips = np.floor(distance / span)
    extra = distance - flips * span
    return np.where(flips % 2 == 0, low + extra, high - extra)


def _padded(c: np.ndarray, size: int, padding: str, align: bool) -> np.ndarray:
    """Pixel coordinate c brought inside the image for border/reflection padding."""
    if padding == "border":
        return np.clip(c, 0, size - 1)
    if padding == "reflection":
        low, high = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
        return np.clip(_reflect(c, low, high), 0, size - 1)
    return c


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    """Weights of taps floor-1 .. floor+2 at fractional offset t (Keys' cubic, A = -0.75)."""
    a = _CUBIC_A

    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


@op("GridSample")
def grid_sample(inputs, attrs, ctx):
    """Y[n, c, *out] = X[n, c] interpolated at grid[n, *out] (nearest, N-linear or N-cubic).

    padding_mode: zeros reads 0 outside the image; border and reflection move the position
    inside first (for cubic, each tap instead, as PyTorch).  Nearest rounds halves to even.
    """
    x, grid = inputs
    r = x.ndim - 2
    if r < 1 or grid.ndim != r + 2 or grid.shape[0] != x.shape[0] or grid.shape[-1] != r:
        raise DczError(f"GridSample node {ctx.node_name!r}: grid {list(grid.shape)} does not fit "
                       f"input {list(x.shape)} (expected [N, *out, {r}]).")
    mode = str_attr(attrs, "mode", "linear")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)  # opset 16's names
    padding = str_attr(attrs, "padding_mode", "zeros")
    if mode not in ("linear", "nearest", "cubic") or padding not in ("zeros", "border", "reflection"):
        raise DczError(f"GridSample node {ctx.node_name!r}: mode {mode!r} / padding_mode "
                       f"{padding!r} is not supported.")
    align = bool(attrs.get("align_corners", 0))
    n, channels, sizes = x.shape[0], x.shape[1], x.shape[2:]
    out_shape = grid.shape[1:-1]
    g = grid.astype(np.float64).reshape(n, -1, r)
    coords = []  # pixel coordinate per spatial axis, [N, L]
    for axis, size in enumerate(sizes):
        u = g[..., r - 1 - axis]
        c = (u + 1) / 2 * (size - 1) if align else ((u + 1) * size - 1) / 2
        coords.append(c if mode == "cubic" else _padded(c, size, padding, align))

    if mode == "nearest":
        taps_per_axis = [[(np.rint(c), np.ones_like(c))] for c in coords]
    elif mode == "linear":
        taps_per_axis = [[(np.floor(c), 1 - (c - np.floor(c))), (np.floor(c) + 1, c - np.floor(c))]
                         for c in coords]
    else:
        taps_per_axis = []
        for c, size in zip(coords, sizes):
            base = np.floor(c)
            taps_per_axis.append([(_padded(base + k - 1, size, padding, align), w)
                                  for k, w in enumerate(_cubic_weights(c - base))])

    flat_x = x.reshape(n, channels, -1).astype(np.float64)
    y = np.zeros((n, channels, g.shape[1]))
    for taps in itertools.product(*taps_per_axis):  # 2^r, 4^r or 1 taps: never a pixel loop
        weight = np.ones(g.shape[:2])
        index = np.zeros(g.shape[:2], dtype=np.int64)
        inside = np.ones(g.shape[:2], dtype=bool)
        for (position, w), size in zip(taps, sizes):
            weight = weight * w
            on_axis = (position >= 0) & (position <= size - 1)  # False for NaN positions
            inside &= on_axis
            index = index * size + np.where(on_axis, position, 0).astype(np.int64)
        values = np.take_along_axis(flat_x, index[:, None, :], axis=2)
        y += values * np.where(inside, weight, 0)[:, None, :]
    return [y.reshape(n, channels, *out_shape).astype(x.dtype)]
