"""Lp norms: LpNormalization (x / ||x||_p along an axis) and LpPool ((sum |x|^p)^(1/p) over
each pooling window, zero padding).

float16/bfloat16 sum in float32: squares of a few hundred half-precision values overflow.
"""

from __future__ import annotations

import numpy as np

from ...errors import DczError
from . import op
from .conv import pad_spatial, patch_view
from .pool import pool_geometry
from .shape import norm_axis


def _work(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) if x.itemsize < 4 else x


@op("LpNormalization")
def lp_normalization(inputs, attrs, ctx):
    x = inputs[0]
    p = int(attrs.get("p", 2))
    if p not in (1, 2):
        raise DczError(f"LpNormalization node {ctx.node_name!r}: p must be 1 or 2, got {p}.")
    axis = norm_axis(attrs.get("axis", -1), x.ndim, "LpNormalization")
    w = _work(x)
    norm = np.sum(np.abs(w), axis=axis, keepdims=True) if p == 1 else \
        np.sqrt(np.sum(np.square(w), axis=axis, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(norm == 0, 0, w / norm)  # a zero vector stays zero (onnx's tests)
    return [y.astype(x.dtype, copy=False)]


@op("LpPool")
def lp_pool(inputs, attrs, ctx):
    """p is a float attribute in opset 1 and an int from opset 2; ceil_mode and dilations come
    in opset 18 (pool_geometry reads them with their defaults)."""
    x = inputs[0]
    p = attrs.get("p", 2)
    if p <= 0:
        raise DczError(f"LpPool node {ctx.node_name!r}: p must be positive, got {p}.")
    kernel_shape, strides, dilations, pads, out_spatial = pool_geometry(attrs, x.shape, "LpPool")
    n = len(kernel_shape)
    # ceil_mode windows may overhang the end pads: more zeros there add nothing to the sums.
    ends = [max(pads[n + i], (o - 1) * s + (k - 1) * d + 1 - size - pads[i])
            for i, (o, s, k, d, size) in enumerate(zip(out_spatial, strides, kernel_shape,
                                                       dilations, x.shape[2:]))]
    powered = np.abs(_work(x)) ** p
    windows = patch_view(pad_spatial(powered, pads[:n] + ends), kernel_shape, strides, dilations,
                         out_spatial)
    total = np.sum(windows, axis=tuple(range(2, 2 + n)))
    return [np.asarray(total ** (1 / p)).astype(x.dtype, copy=False)]
