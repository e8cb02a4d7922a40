"""Bitwise ops on integer tensors: BitwiseAnd/Or/Xor/Not (opset 18) and BitShift (opset 11).

numpy's shifts give 0 for a shift of the full bit width or more (C leaves it undefined).
"""

from __future__ import annotations

import numpy as np

from ...errors import DczError
from . import op
from .broadcast import check_broadcast
from .shape import str_attr


def _require_ints(name, ctx, *arrays):
    for a in arrays:
        if a.dtype.kind not in "iu":
            raise DczError(f"{name} node {ctx.node_name!r}: needs integer tensors, got {a.dtype}.")


def _bitwise(name, fn):
    def kernel(inputs, attrs, ctx):
        a, b = inputs
        _require_ints(name, ctx, a, b)
        check_broadcast(ctx, name, a, b)
        return [np.asarray(fn(a, b))]
    return kernel


for _name, _fn in {"BitwiseAnd": np.bitwise_and, "BitwiseOr": np.bitwise_or,
                   "BitwiseXor": np.bitwise_xor}.items():
    op(_name)(_bitwise(_name, _fn))


@op("BitwiseNot")
def bitwise_not(inputs, attrs, ctx):
    _require_ints("BitwiseNot", ctx, inputs[0])
    return [np.asarray(np.invert(inputs[0]))]


@op("BitShift")
def bit_shift(inputs, attrs, ctx):
    x, shift = inputs
    _require_ints("BitShift", ctx, x, shift)
    direction = str_attr(attrs, "direction", "")
    if direction not in ("LEFT", "RIGHT"):
        raise DczError(f"BitShift node {ctx.node_name!r}: direction must be LEFT or RIGHT, "
                       f"got {direction!r}.")
    check_broadcast(ctx, "BitShift", x, shift)
    fn = np.left_shift if direction == "LEFT" else np.right_shift
    return [np.asarray(fn(x, shift.astype(x.dtype, copy=False)))]
