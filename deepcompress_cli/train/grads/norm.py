"""Backward rules of normalization: BatchNormalization (frozen statistics), LRN."""

from __future__ import annotations

import numpy as np

from . import grad


@grad("BatchNormalization")
def _batch_norm(inputs, y, attrs, g, needs, opset):
    """Inference statistics, frozen: a per-channel affine map, so dx = g · scale / sqrt(var + ε)."""
    x, scale, _, _, var = inputs[:5]
    factor = scale / np.sqrt(var + attrs.get("epsilon", 1e-5))
    if factor.ndim == 1:  # per channel
        factor = factor.reshape(1, -1, *[1] * (x.ndim - 2))
    # else: opset < 9 with spatial=0, statistics per [C, H, W] element: they broadcast as they are
    return [g * factor.astype(np.float32)] + [None] * (len(inputs) - 1)


@grad("LRN")
def _lrn(inputs, y, attrs, g, needs, opset):
    """y = x · s^-β with s = bias + α/size · Σ_window x²; the window sum's adjoint is the window
    sum with the window mirrored."""
    x = inputs[0].astype(np.float64)
    size, alpha, beta, bias = attrs["size"], attrs.get("alpha", 1e-4), attrs.get("beta", 0.75), attrs.get("bias", 1.0)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    s = bias + alpha / size * _channel_window_sum(x * x, before, after)
    gd = g.astype(np.float64)
    t = _channel_window_sum(gd * x * s ** (-beta - 1), after, before)  # mirrored window
    return [(gd * s ** -beta - 2 * alpha * beta / size * x * t).astype(np.float32)]


def _channel_window_sum(v: np.ndarray, before: int, after: int) -> np.ndarray:
    """out[:, c] = Σ v[:, c - before .. c + after] (clipped to the channels), by prefix sums."""
    c = v.shape[1]
    prefix = np.concatenate([np.zeros_like(v[:, :1]), np.cumsum(v, axis=1)], axis=1)
    hi = np.minimum(np.arange(c) + after + 1, c)
    lo = np.maximum(np.arange(c) - before, 0)
    return prefix[:, hi] - prefix[:, lo]
