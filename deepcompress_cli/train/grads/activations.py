"""Backward rules of activations with attributes or kinks: Clip, HardSigmoid, HardSwish, PRelu,
Elu, Selu, Celu, Softplus, Mish, Swish, Gelu.

Derivatives are computed in float64 from the forward input (the output alone does not say which
side of a kink an element is on) and returned as float32.
"""

from __future__ import annotations

import math

import numpy as np

from ...interp.ops import OpContext
from ...interp.ops.activations import SELU_ALPHA, SELU_GAMMA
from ...interp.ops.elementwise import sigmoid
from ...interp.ops.shape import attr_or_input, str_attr
from . import grad, unbroadcast
from .arithmetic import erf


def _chain(g, derivative) -> np.ndarray:
    return (g * derivative).astype(np.float32)


@grad("Clip")
def _clip(inputs, y, attrs, g, needs, opset):
    """Gradient passes where lo <= x <= hi; the bounds (attributes before opset 11, optional
    inputs since) get none.  With lo > hi the output is constant hi, and the mask is empty."""
    x = inputs[0]
    ctx = OpContext(opset)
    lo = attr_or_input(inputs, attrs, ctx, "min", 1, since=11)
    hi = attr_or_input(inputs, attrs, ctx, "max", 2, since=11)
    inside = np.ones(x.shape, dtype=bool)
    if lo is not None:
        inside &= x >= lo
    if hi is not None:
        inside &= x <= hi
    return [_chain(g, inside)] + [None] * (len(inputs) - 1)


@grad("HardSigmoid")
def _hardsigmoid(inputs, y, attrs, g, needs, opset):
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    z = inputs[0].astype(np.float64) * alpha + beta
    return [_chain(g, alpha * ((z > 0) & (z < 1)))]


@grad("HardSwish")
def _hard_swish(inputs, y, attrs, g, needs, opset):
    """y = x · clip(x/6 + 1/2, 0, 1): dy/dx = clip(...) + x/6 inside the linear part."""
    x = inputs[0].astype(np.float64)
    z = x / 6 + 0.5
    return [_chain(g, np.clip(z, 0, 1) + x / 6 * ((z > 0) & (z < 1)))]


@grad("PRelu")
def _prelu(inputs, y, attrs, g, needs, opset):
    """y = x·slope where x < 0, else x; the slope broadcasts to x, so its gradient sums back."""
    x, slope = inputs
    negative = x < 0
    gd = g.astype(np.float64)
    dx = unbroadcast(np.where(negative, gd * slope, gd), x.shape).astype(np.float32) if needs[0] else None
    dslope = unbroadcast(np.where(negative, gd * x, 0.0), slope.shape).astype(np.float32) if needs[1] else None
    return [dx, dslope]


@grad("Elu")
def _elu(inputs, y, attrs, g, needs, opset):
    x = inputs[0].astype(np.float64)
    return [_chain(g, np.where(x < 0, attrs.get("alpha", 1.0) * np.exp(np.minimum(x, 0)), 1.0))]


@grad("Selu")
def _selu(inputs, y, attrs, g, needs, opset):
    x = inputs[0].astype(np.float64)
    alpha, gamma = attrs.get("alpha", SELU_ALPHA), attrs.get("gamma", SELU_GAMMA)
    return [_chain(g, np.where(x > 0, gamma, gamma * alpha * np.exp(np.minimum(x, 0))))]


@grad("Celu")
def _celu(inputs, y, attrs, g, needs, opset):
    x = inputs[0].astype(np.float64)
    alpha = attrs.get("alpha", 1.0)
    return [_chain(g, np.where(x > 0, 1.0, np.exp(np.minimum(x, 0) / alpha)))]


@grad("Softplus")
def _softplus(inputs, y, attrs, g, needs, opset):
    return [_chain(g, sigmoid(inputs[0].astype(np.float64)))]


@grad("Mish")
def _mish(inputs, y, attrs, g, needs, opset):
    """y = x · tanh(softplus(x)): dy/dx = t + x (1 - t²) σ(x), as softplus' = σ."""
    x = inputs[0].astype(np.float64)
    t = np.tanh(np.logaddexp(x, 0))
    return [_chain(g, t + x * (1 - t * t) * sigmoid(x))]


@grad("Swish")
def _swish(inputs, y, attrs, g, needs, opset):
    x = inputs[0].astype(np.float64)
    alpha = attrs.get("alpha", 1.0)
    s = sigmoid(alpha * x)
    return [_chain(g, s + alpha * x * s * (1 - s))]


@grad("Gelu")
def _gelu(inputs, y, attrs, g, needs, opset):
    """approximate="none": y = x Φ(x), dy/dx = Φ(x) + x φ(x).  "tanh": y = x (1 + tanh u) / 2 with
    u = c (x + 0.044715 x³), dy/dx = (1 + t)/2 + x (1 - t²) c (1 + 3·0.044715 x²) / 2."""
    x = inputs[0].astype(np.float64)
    if str_attr(attrs, "approximate", "none") == "tanh":
        c = math.sqrt(2 / math.pi)
        t = np.tanh(c * (x + 0.044715 * x ** 3))
        derivative = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
    else:
        derivative = 0.5 * (1 + erf(x / math.sqrt(2))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return [_chain(g, derivative)]
