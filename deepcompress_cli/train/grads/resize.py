"""Backward rules of Resize and Upsample (nearest and linear modes).

Like the indexing rules, these ask the forward kernel where each output sample comes from, so
every coordinate transformation, nearest rounding, scales/sizes form and opset variant the kernel
has is followed without re-deriving it:

- nearest copies one input element per output: numbering the input elements and resizing the
  numbers gives them (indexing.source_indices);
- linear is separable, and along one axis each output blends two neighbours i0 = floor(c) and
  min(i0 + 1, n - 1) with weights 1 - w and w, w = c - i0, at the clamped coordinate c.  Resizing a
  ramp 0, 1, ..., n - 1 along that axis (constant along the others) returns exactly c, so one
  kernel run per axis recovers the axis's interpolation; the gradient is then spread back along
  each axis in turn (the adjoint of the blend).

Cubic and antialiased filters blend more than two neighbours and have no rule here.
"""

from __future__ import annotations

import numpy as np

from ...errors import DczError
from ...interp.ops import KERNELS, OpContext
from ...interp.ops.shape import str_attr
from . import grad
from .indexing import scatter_sources, source_indices


def _resample_rule(op_name):
    def rule(inputs, y, attrs, g, needs, opset):
        return _resample_grad(op_name, inputs, attrs, g, opset)
    return rule


def _resample_grad(op_name, inputs, attrs, g, opset):
    mode = str_attr(attrs, "mode", "nearest")
    rest = [None] * (len(inputs) - 1)  # roi, scales and sizes are constants of the node
    if mode == "nearest":
        attrs = {**attrs, "extrapolation_value": 0.0}  # tf_crop_and_resize: outside samples copy nothing
        return [scatter_sources(source_indices(op_name, inputs, attrs, opset), g, inputs[0].shape)] + rest
    if mode not in ("linear", "bilinear"):
        raise DczError(f"retraining: {op_name} mode {mode!r} is not supported (nearest, linear)")
    if opset >= 18 and attrs.get("antialias", 0):
        raise DczError(f"retraining: {op_name} with antialias=1 is not supported")
    return [_linear_adjoint(op_name, inputs, attrs, g, opset)] + rest


grad("Resize")(_resample_rule("Resize"))
grad("Upsample")(_resample_rule("Upsample"))


def _linear_adjoint(op_name, inputs, attrs, g, opset):
    x = inputs[0]
    attrs = {**attrs, "extrapolation_value": np.nan}  # marks the samples outside a crop box
    dx = g.astype(np.float32)
    for axis, n_in in enumerate(x.shape):
        n_out = g.shape[axis]
        ramp = np.arange(n_in, dtype=np.float64).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
        resized = KERNELS[op_name]([np.broadcast_to(ramp, x.shape), *inputs[1:]], attrs, OpContext(opset))[0]
        rows = np.moveaxis(resized, axis, 0).reshape(n_out, -1)
        # A sample outside the crop box on another axis is NaN too; a row is outside only if all are.
        c = np.fmax.reduce(rows, axis=1) if rows.shape[1] else np.zeros(n_out)
        inside = ~np.isnan(c)
        if n_out == n_in and inside.all() and np.array_equal(c, np.arange(n_in)):
            continue  # the kernel leaves this axis alone
        c = np.where(inside, c, 0)
        i0 = np.floor(c).astype(np.int64)
        w = (c - i0) * inside
        spread = np.moveaxis(dx, axis, 0).reshape(n_out, -1)
        back = np.zeros((n_in, spread.shape[1]), np.float32)
        np.add.at(back, i0, spread * ((1 - w) * inside)[:, None].astype(np.float32))
        np.add.at(back, np.minimum(i0 + 1, n_in - 1), spread * w[:, None].astype(np.float32))
        dx = np.moveaxis(back.reshape((n_in,) + tuple(np.delete(dx.shape, axis))), 0, axis)
    return np.ascontiguousarray(dx)
