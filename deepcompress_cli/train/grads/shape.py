"""Backward rules of ops that only move values: reshapes, transposes, concatenation."""

from __future__ import annotations

import numpy as np

from . import grad


@grad("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(inputs, y, attrs, g, needs, opset):
    return [g.reshape(inputs[0].shape)] + [None] * (len(inputs) - 1)


@grad("Transpose")
def _transpose(inputs, y, attrs, g, needs, opset):
    perm = attrs.get("perm", list(range(inputs[0].ndim))[::-1])
    return [g.transpose(np.argsort(perm))]


@grad("Concat")
def _concat(inputs, y, attrs, g, needs, opset):
    axis = attrs["axis"] % y.ndim
    bounds = np.cumsum([x.shape[axis] for x in inputs])[:-1]
    return [part if need else None for part, need in zip(np.split(g, bounds, axis=axis), needs)]
