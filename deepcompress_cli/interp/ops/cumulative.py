"""Running sums and products along an axis: CumSum (opset 11) and CumProd (opset 26).

`exclusive` shifts the result by one (the first element is the identity, 0 or 1), `reverse`
runs from the end.  The shift is a copy, not a subtraction or division, so it is exact.
"""

from __future__ import annotations

import numpy as np

from ...errors import DczError
from . import op
from .shape import norm_axis


def _cumulative(name, fn, identity):
    def kernel(inputs, attrs, ctx):
        x, axis = inputs
        if axis is None or np.size(axis) != 1:
            raise DczError(f"{name} node {ctx.node_name!r}: axis must be a scalar tensor.")
        axis = norm_axis(np.asarray(axis).reshape(-1)[0], x.ndim, name)
        if x.shape[axis] == 0:
            return [x]
        if attrs.get("reverse", 0):
            x = np.flip(x, axis)
        y = fn(x, axis=axis, dtype=x.dtype)  # dtype: numpy would widen int32 sums to int64
        if attrs.get("exclusive", 0):
            first = np.full_like(np.take(y, [0], axis=axis), identity)
            y = np.concatenate([first, np.delete(y, -1, axis=axis)], axis=axis)
        if attrs.get("reverse", 0):
            y = np.flip(y, axis)
        return [np.asarray(y)]
    return kernel


op("CumSum")(_cumulative("CumSum", np.cumsum, 0))
op("CumProd")(_cumulative("CumProd", np.cumprod, 1))
