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

import functools

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
    if g.size == 0:
        return np.zeros(inputs[0].shape, np.float32)
    dx = g.astype(np.float32)
    frozen = tuple(_frozen(v) for v in inputs[1:])
    for axis, blend in enumerate(_axis_blends(op_name, opset, inputs[0].shape, _frozen(attrs), frozen)):
        if blend is not None:  # its transpose spreads the gradient back along the axis
            dx = np.moveaxis(np.tensordot(blend.T, dx, axes=([1], [axis])), 0, axis)
    return np.ascontiguousarray(dx, dtype=np.float32)


@functools.lru_cache(maxsize=64)
def _axis_blends(op_name, opset, shape, attrs, inputs):
    """Each axis's [n_out, n_in] interpolation matrix (None where the kernel leaves the axis
    alone), from one kernel run per axis.  They depend only on the node and the input shape, so
    they are cached: training steps after the first pay only the products."""
    attrs = {**dict(attrs), "extrapolation_value": np.nan}  # marks the samples outside a crop box
    inputs = [_thawed(v) for v in inputs]
    blends = []
    for axis, n_in in enumerate(shape):
        ramp = np.arange(n_in, dtype=np.float64).reshape([-1 if a == axis else 1 for a in range(len(shape))])
        resized = KERNELS[op_name]([np.broadcast_to(ramp, shape), *inputs], attrs, OpContext(opset))[0]
        n_out = resized.shape[axis]
        rows = np.moveaxis(resized, axis, 0).reshape(n_out, -1)
        # A sample outside the crop box on another axis is NaN too; a row is outside only if all are.
        c = np.fmax.reduce(rows, axis=1) if rows.shape[1] else np.zeros(n_out)
        inside = ~np.isnan(c)
        if n_out == n_in and inside.all() and np.array_equal(c, np.arange(n_in)):
            blends.append(None)
            continue
        c = np.where(inside, c, 0)
        i0 = np.floor(c).astype(np.int64)
        w = (c - i0) * inside
        blend = np.zeros((n_out, n_in), np.float32)  # dense: faster than np.add.at on the gradient
        np.add.at(blend, (np.arange(n_out), i0), (1 - w) * inside)
        np.add.at(blend, (np.arange(n_out), np.minimum(i0 + 1, n_in - 1)), w)
        blends.append(blend)
    return blends


def _frozen(value):
    """A hashable form of an attribute dict, attribute value or input, for the cache key."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    return tuple(value) if isinstance(value, list) else value


def _thawed(value):
    if isinstance(value, tuple) and value and value[0] == "array":
        return np.frombuffer(value[3], dtype=value[1]).reshape(value[2])
    return value
