"""Backward rules of elementwise ops."""

from __future__ import annotations

import numpy as np

from . import grad, unbroadcast


@grad("Add")
def _add(inputs, y, attrs, g, needs, opset):
    return [unbroadcast(g, x.shape) if need else None for x, need in zip(inputs, needs)]


@grad("Sub")
def _sub(inputs, y, attrs, g, needs, opset):
    a, b = inputs
    return [unbroadcast(g, a.shape) if needs[0] else None, unbroadcast(-g, b.shape) if needs[1] else None]


@grad("Mul")
def _mul(inputs, y, attrs, g, needs, opset):
    a, b = inputs
    return [unbroadcast(g * b, a.shape) if needs[0] else None, unbroadcast(g * a, b.shape) if needs[1] else None]


@grad("Div")
def _div(inputs, y, attrs, g, needs, opset):
    a, b = inputs
    return [unbroadcast(g / b, a.shape) if needs[0] else None,
            unbroadcast(-g * a / (b * b), b.shape) if needs[1] else None]


@grad("Relu")
def _relu(inputs, y, attrs, g, needs, opset):
    return [g * (y > 0)]


@grad("LeakyRelu")
def _leaky_relu(inputs, y, attrs, g, needs, opset):
    return [np.where(inputs[0] > 0, g, g * attrs.get("alpha", 0.01))]


@grad("Sigmoid")
def _sigmoid(inputs, y, attrs, g, needs, opset):
    return [g * y * (1 - y)]


@grad("Tanh")
def _tanh(inputs, y, attrs, g, needs, opset):
    return [g * (1 - y * y)]


@grad("Dropout", "Identity")
def _identity(inputs, y, attrs, g, needs, opset):
    return [g] + [None] * (len(inputs) - 1)


def _softmax_frame(t: np.ndarray, attrs: dict, opset: int) -> tuple[np.ndarray, int]:
    """(array, axis) the forward kernel normalizes over: before opset 13 the input flattened to
    2-D at `axis` (default 1), from 13 one axis (default -1)."""
    if opset >= 13:
        return t, attrs.get("axis", -1)
    axis = attrs.get("axis", 1)
    return t.reshape(int(np.prod(t.shape[:axis])), -1), 1


@grad("Softmax")
def _softmax(inputs, y, attrs, g, needs, opset):
    (y2, axis), (g2, _) = _softmax_frame(y, attrs, opset), _softmax_frame(g, attrs, opset)
    return [(y2 * (g2 - (g2 * y2).sum(axis=axis, keepdims=True))).reshape(y.shape)]


@grad("LogSoftmax")
def _log_softmax(inputs, y, attrs, g, needs, opset):
    """y = x - logsumexp(x): dx = g - softmax(x) · Σ g, softmax being exp(y)."""
    (y2, axis), (g2, _) = _softmax_frame(y, attrs, opset), _softmax_frame(g, attrs, opset)
    return [(g2 - np.exp(y2) * g2.sum(axis=axis, keepdims=True)).reshape(y.shape)]
