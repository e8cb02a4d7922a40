"""MeanVarianceNormalization: (X - E[X]) / (sqrt(E[(X - E[X])^2]) + 1e-9) over `axes`."""

from __future__ import annotations

import numpy as np

from . import op
from .shape import norm_axes

_EPSILON = 1e-9  # the constant of the ONNX function body


@op("MeanVarianceNormalization")
def mean_variance_normalization(inputs, attrs, ctx):
    x = inputs[0]
    axes = tuple(norm_axes(attrs.get("axes", [0, 2, 3]), x.ndim, "MeanVarianceNormalization"))
    values = x.astype(np.float64)
    centered = values - values.mean(axis=axes, keepdims=True)
    std = np.sqrt(np.mean(centered * centered, axis=axes, keepdims=True))
    return [(centered / (std + _EPSILON)).astype(x.dtype)]
