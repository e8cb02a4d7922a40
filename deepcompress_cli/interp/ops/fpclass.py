"""Floating-point classification: IsInf (with its sign filters) and IsNaN, as bool tensors."""

from __future__ import annotations

import numpy as np

from . import op


@op("IsInf")
def is_inf(inputs, attrs, ctx):
    x = inputs[0]
    positive = bool(attrs.get("detect_positive", 1))
    negative = bool(attrs.get("detect_negative", 1))
    inf = np.isinf(x)
    if positive and not negative:
        inf &= x > 0
    elif negative and not positive:
        inf &= x < 0
    elif not positive and not negative:
        inf = np.zeros(x.shape, dtype=bool)
    return [np.asarray(inf)]


@op("IsNaN")
def is_nan(inputs, attrs, ctx):
    return [np.asarray(np.isnan(inputs[0]))]
