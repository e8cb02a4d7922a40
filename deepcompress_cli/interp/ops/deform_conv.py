"""DeformConv (N-D): a convolution whose kernel taps sample the input at learned offsets.

Each tap of each output position reads X by N-linear interpolation at its regular position plus
an offset (zero outside the image), scaled by the optional mask.  The samples form im2col-like
columns [N, C, taps, *out] that one einsum contracts with the weights; loops run over taps and
interpolation corners (prod(kernel) * 2**n), never over pixels.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ...errors import DczError
from . import op
from .shape import input_at


def _sample(x, positions, og: int):
    """x [N, C, *S] read at positions (n arrays [N, og, *out]) per offset group -> [N, C, *out]."""
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    out_spatial = positions[0].shape[2:]
    lows = [np.floor(p) for p in positions]
    batch = np.arange(n).reshape((n, 1, 1) + (1,) * len(out_spatial))
    channel = np.arange(c).reshape((1, og, c // og) + (1,) * len(out_spatial))
    values = np.zeros((n, og, c // og) + out_spatial, np.float64)
    for corner in itertools.product((0, 1), repeat=len(spatial)):
        index, weight = [batch, channel], 1.0
        for p, low, step, size in zip(positions, lows, corner, spatial):
            i = low + step
            weight = weight * np.where((i >= 0) & (i <= size - 1), 1 - np.abs(p - i), 0.0)
            index.append(np.clip(i, 0, size - 1).astype(np.intp)[:, :, None])
        values += x[tuple(index)] * weight[:, :, None]
    return values.reshape((n, c) + out_spatial)


@op("DeformConv")
def deform_conv(inputs, attrs, ctx):
    x, w, offset = inputs[0], inputs[1], inputs[2]
    bias, mask = input_at(inputs, 3), input_at(inputs, 4)
    d = x.ndim - 2
    kernel = list(attrs.get("kernel_shape", w.shape[2:]))
    strides = list(attrs.get("strides", [1] * d))
    dilations = list(attrs.get("dilations", [1] * d))
    pads = list(attrs.get("pads", [0] * 2 * d))
    group, og = int(attrs.get("group", 1)), int(attrs.get("offset_group", 1))
    n, c = x.shape[:2]
    oc = w.shape[0]
    taps = math.prod(kernel)
    out = [(size + pads[i] + pads[i + d] - dil * (k - 1) - 1) // s + 1
           for i, (size, k, s, dil) in enumerate(zip(x.shape[2:], kernel, strides, dilations))]
    if (d < 1 or list(w.shape[2:]) != kernel or c % group or oc % group or c % og or w.shape[1] != c // group
            or min(out) < 1 or offset.shape != (n, og * taps * d, *out)
            or (mask is not None and mask.shape != (n, og * taps, *out))):
        raise DczError(f"DeformConv node {ctx.node_name!r}: X {list(x.shape)}, W {list(w.shape)}, offset "
                       f"{list(offset.shape)} and the attributes do not fit.")
    offsets = offset.astype(np.float64).reshape(n, og, taps, d, *out)
    grids = np.meshgrid(*(np.arange(o) * s - pads[i] for i, (o, s) in enumerate(zip(out, strides))), indexing="ij")
    values = x.astype(np.float64)
    columns = np.empty((n, c, taps, *out), np.float64)
    for t, tap in enumerate(itertools.product(*(range(k) for k in kernel))):
        positions = [grids[i] + tap[i] * dilations[i] + offsets[:, :, t, i] for i in range(d)]
        columns[:, :, t] = _sample(values, positions, og)
    if mask is not None:  # one mask per offset group and tap, shared by the group's channels
        scale = mask.astype(np.float64).reshape(n, og, 1, taps, *out)
        columns = (columns.reshape(n, og, c // og, taps, *out) * scale).reshape(columns.shape)
    columns = columns.reshape(n, group, c // group, taps, -1)
    weights = w.astype(np.float64).reshape(group, oc // group, c // group, taps)
    y = np.einsum("ngckp,gock->ngop", columns, weights).reshape(n, oc, *out)
    if bias is not None:
        y = y + bias.astype(np.float64).reshape((oc,) + (1,) * d)
    return [y.astype(x.dtype)]
