"""Backward rules of unary math (Abs, Erf, Sqrt, Exp, Log, Neg, Reciprocal), Pow, Cast, the
variadic ops (Sum, Mean, Max, Min) and Where."""

from __future__ import annotations

import math

import numpy as np

from ...interp.ops import KERNELS, OpContext
from . import grad, unbroadcast


def erf(x: np.ndarray) -> np.ndarray:
    """The interpreter's own erf (float64 in, float64 out), so the rules match its forward pass."""
    return KERNELS["Erf"]([np.asarray(x, dtype=np.float64)], {}, OpContext(13))[0]


def is_float(dtype: np.dtype) -> bool:
    """numpy floats and ml_dtypes' (bfloat16, float8...), which numpy sees as kind 'V'."""
    return dtype.kind == "f" or dtype.name.startswith(("bfloat", "float"))


def _unary(derivative):
    """A rule g · f'(x, y) for an elementwise op with input x and output y."""
    def rule(inputs, y, attrs, g, needs, opset):
        x = inputs[0]
        return [(g * derivative(x.astype(np.float64), y.astype(np.float64))).astype(np.float32)]
    return rule


_DERIVATIVES = {
    "Abs": lambda x, y: np.sign(x),
    "Erf": lambda x, y: 2 / math.sqrt(math.pi) * np.exp(-x * x),
    "Sqrt": lambda x, y: 0.5 / y,
    "Exp": lambda x, y: y,
    "Log": lambda x, y: 1 / x,
    "Neg": lambda x, y: -1.0,
    "Reciprocal": lambda x, y: -y * y,
}

for _name, _derivative in _DERIVATIVES.items():
    grad(_name)(_unary(_derivative))


@grad("Pow")
def _pow(inputs, y, attrs, g, needs, opset):
    """d(a^b)/da = b a^(b-1); d(a^b)/db = a^b ln a, taken as 0 where a <= 0 (no real derivative
    there: a negative base only has integer powers).  An integer base or exponent gets none."""
    a, b = inputs
    a64, b64, gd = a.astype(np.float64), b.astype(np.float64), g.astype(np.float64)
    da = db = None
    if needs[0] and is_float(a.dtype):
        with np.errstate(divide="ignore", invalid="ignore"):
            da = unbroadcast(gd * b64 * np.power(a64, b64 - 1), a.shape).astype(np.float32)
    if needs[1] and is_float(b.dtype):
        positive = a64 > 0
        log_a = np.log(np.where(positive, a64, 1.0))
        db = unbroadcast(np.where(positive, gd * y * log_a, 0.0), b.shape).astype(np.float32)
    return [da, db]


@grad("Cast")
def _cast(inputs, y, attrs, g, needs, opset):
    """Float to float passes the gradient through; to or from integers or booleans, none."""
    x = np.asarray(inputs[0])
    return [g.astype(np.float32) if is_float(x.dtype) and is_float(np.asarray(y).dtype) else None]


@grad("Sum")
def _sum(inputs, y, attrs, g, needs, opset):
    return [unbroadcast(g, x.shape) if need and x is not None else None for x, need in zip(inputs, needs)]


@grad("Mean")
def _mean(inputs, y, attrs, g, needs, opset):
    share = g / sum(x is not None for x in inputs)
    return [unbroadcast(share, x.shape).astype(np.float32) if need and x is not None else None
            for x, need in zip(inputs, needs)]


@grad("Max", "Min")
def _extreme(inputs, y, attrs, g, needs, opset):
    """Each output element's gradient goes to the first operand holding the chosen value."""
    taken = np.zeros(y.shape, dtype=bool)
    grads = []
    for x, need in zip(inputs, needs):
        if x is None:
            grads.append(None)
            continue
        chosen = (np.broadcast_to(x, y.shape) == y) & ~taken
        taken |= chosen
        grads.append(unbroadcast(np.where(chosen, g, 0).astype(np.float32), x.shape) if need else None)
    return grads


@grad("Where")
def _where(inputs, y, attrs, g, needs, opset):
    cond, x, other = inputs
    zero = np.zeros((), dtype=np.float32)
    return [None,
            unbroadcast(np.where(cond, g, zero), x.shape) if needs[1] else None,
            unbroadcast(np.where(cond, zero, g), other.shape) if needs[2] else None]
