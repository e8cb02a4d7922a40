"""Activations with attributes not in elementwise.py: Selu, Celu, ThresholdedRelu, Shrink,
Softsign, Mish, Swish, and Hardmax (the one-hot of the largest value along an axis).

Attribute constants are cast to x's dtype so float16/bfloat16 math stays in that dtype (numpy
would promote bfloat16 + a Python float to float32).
"""

from __future__ import annotations

import math

import numpy as np

from . import op
from .elementwise import sigmoid
from .shape import norm_axis

# Selu's defaults (opset 6+): the constants of Klambauer et al. 2017, as float32 values.
SELU_ALPHA = 1.67326319217681884765625
SELU_GAMMA = 1.05070102214813232421875


def _const(value, x: np.ndarray):
    return np.asarray(value, dtype=x.dtype)


def _softplus(x):
    return np.logaddexp(x, _const(0, x))  # log(1 + e^x) without overflow


@op("Selu")
def selu(inputs, attrs, ctx):
    x = inputs[0]
    alpha = _const(attrs.get("alpha", SELU_ALPHA), x)
    gamma = _const(attrs.get("gamma", SELU_GAMMA), x)
    return [np.where(x > 0, gamma * x, gamma * alpha * np.expm1(np.minimum(x, _const(0, x))))]


@op("Celu")
def celu(inputs, attrs, ctx):
    x = inputs[0]
    alpha = _const(attrs.get("alpha", 1.0), x)
    zero = _const(0, x)
    return [np.maximum(zero, x) + np.minimum(zero, alpha * np.expm1(np.minimum(x, zero) / alpha))]


@op("ThresholdedRelu")
def thresholded_relu(inputs, attrs, ctx):
    x = inputs[0]
    return [np.where(x > _const(attrs.get("alpha", 1.0), x), x, _const(0, x))]


@op("Shrink")
def shrink(inputs, attrs, ctx):
    x = inputs[0]
    # Integer inputs are allowed: compare and shift in float64, then cast back (as onnxruntime).
    work = x if x.dtype.kind == "f" or x.dtype.name == "bfloat16" else x.astype(np.float64)
    lambd = _const(attrs.get("lambd", 0.5), work)
    bias = _const(attrs.get("bias", 0.0), work)
    y = np.where(work < -lambd, work + bias, np.where(work > lambd, work - bias, _const(0, work)))
    return [y.astype(x.dtype, copy=False)]


@op("Softsign")
def softsign(inputs, attrs, ctx):
    x = inputs[0]
    return [np.asarray(x / (_const(1, x) + np.abs(x)))]


@op("Mish")
def mish(inputs, attrs, ctx):
    x = inputs[0]
    return [np.asarray(x * np.tanh(_softplus(x))).astype(x.dtype, copy=False)]


@op("Swish")
def swish(inputs, attrs, ctx):
    x = inputs[0]
    alpha = _const(attrs.get("alpha", 1.0), x)
    return [np.asarray(x * sigmoid(alpha * x)).astype(x.dtype, copy=False)]


@op("Hardmax")
def hardmax(inputs, attrs, ctx):
    """1 at the first largest value along the axis, 0 elsewhere.

    Before opset 13 the input is seen as 2-D, [prod(shape[:axis]), prod(shape[axis:])] (axis
    default 1), so the one-hot spans all trailing axes; from 13 it is one axis (default -1).
    """
    x = inputs[0]
    if ctx.opset >= 13:
        axis = norm_axis(attrs.get("axis", -1), x.ndim, "Hardmax")
        frame = x
    else:
        axis = norm_axis(attrs.get("axis", 1), x.ndim, "Hardmax")
        frame = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
        axis = 1
    y = np.zeros(frame.shape, dtype=x.dtype)
    if frame.size:
        np.put_along_axis(y, np.argmax(frame, axis=axis, keepdims=True), _const(1, x), axis=axis)
    return [y.reshape(x.shape)]
