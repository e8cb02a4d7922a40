"""Backward rules of reductions (ReduceSum/Mean/Max/Min/L2/SumSquare/LogSumExp) and GlobalMaxPool.

The axes are resolved as the forward kernel does: an attribute before the opset where they became
an input (13 for ReduceSum, 18 for the others), no axes meaning all of them unless
noop_with_empty_axes (input form only) makes the op an identity.  The output's gradient is given
back its reduced axes (keepdims=0 dropped them) and broadcast over the input.
"""

from __future__ import annotations

import math

import numpy as np

from ...interp.ops import OpContext
from ...interp.ops.shape import attr_or_input, ints, norm_axes
from . import grad

AXES_INPUT_SINCE = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18, "ReduceMin": 18, "ReduceL2": 18,
                    "ReduceSumSquare": 18, "ReduceLogSumExp": 18}


def _even_split(x, y, g):
    """Max/min's gradient, shared equally among the elements that tie for the extreme value."""
    chosen = x == y
    count = chosen.sum(axis=tuple(a for a in range(x.ndim) if y.shape[a] == 1 != x.shape[a]), keepdims=True)
    return chosen * g / np.maximum(count, 1)


# name -> d(reduction)/dx from x, y and g (float64, y and g with the reduced axes kept as 1s)
_LOCAL = {
    "ReduceSum": lambda x, y, g, count: g,
    "ReduceMean": lambda x, y, g, count: g / max(count, 1),
    "ReduceMax": lambda x, y, g, count: _even_split(x, y, g),
    "ReduceMin": lambda x, y, g, count: _even_split(x, y, g),
    "ReduceL2": lambda x, y, g, count: g * np.where(y > 0, x / np.where(y > 0, y, 1), 0),
    "ReduceSumSquare": lambda x, y, g, count: 2 * x * g,
    "ReduceLogSumExp": lambda x, y, g, count: g * np.exp(x - y),
}


def _reduction(name, local):
    since = AXES_INPUT_SINCE[name]

    def rule(inputs, y, attrs, g, needs, opset):
        x = inputs[0]
        rest = [None] * (len(inputs) - 1)  # the axes input
        axes = ints(attr_or_input(inputs, attrs, OpContext(opset), "axes", 1, since))
        if not axes:
            if opset >= since and attrs.get("noop_with_empty_axes", 0):
                return [g.astype(np.float32)] + rest
            axes = range(x.ndim)
        axes = tuple(norm_axes(axes, x.ndim, name))
        if not attrs.get("keepdims", 1):
            g, y = np.expand_dims(g, axes), np.expand_dims(y, axes)
        count = math.prod(x.shape[a] for a in axes)
        x64, y64, g64 = x.astype(np.float64), y.astype(np.float64), g.astype(np.float64)
        dx = np.broadcast_to(local(x64, y64, g64, count), x.shape)
        return [dx.astype(np.float32)] + rest
    return rule


for _name, _local in _LOCAL.items():
    grad(_name)(_reduction(_name, _local))


@grad("GlobalMaxPool")
def _global_max_pool(inputs, y, attrs, g, needs, opset):
    x = inputs[0]
    return [_even_split(x, y, g.astype(np.float64)).astype(np.float32)]
