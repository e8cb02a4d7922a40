"""Backward rules of normalization: BatchNormalization (frozen statistics, or the batch's own in
training mode), LayerNormalization, InstanceNormalization, GroupNormalization, LRN."""

from __future__ import annotations

import numpy as np

from . import grad, unbroadcast


def _normalized_grad(x: np.ndarray, dxhat: np.ndarray, axes: tuple[int, ...], eps: float):
    """(dx, xhat) for xhat = (x - mean) / sqrt(var + eps) with the statistics over `axes`:
    dx = (dxhat - mean(dxhat) - xhat · mean(dxhat · xhat)) / sqrt(var + eps)."""
    centered = x - x.mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(np.square(centered).mean(axis=axes, keepdims=True) + np.float32(eps))
    xhat = centered * inv_std
    dx = dxhat - dxhat.mean(axis=axes, keepdims=True) - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True)
    dx *= inv_std
    return dx.astype(np.float32, copy=False), xhat


def _param_shape(param: np.ndarray, ndim: int) -> tuple:
    """How a [C] parameter broadcasts over [N, C, *spatial] (a [C, *spatial] one, opset < 9
    spatial=0, just gains the batch axis), as the kernel's _per_channel shapes it."""
    return (-1, *(1,) * (ndim - 2)) if param.ndim == 1 else param.shape


@grad("BatchNormalization")
def _batch_norm(inputs, y, attrs, g, needs, opset):
    """Inference statistics are constants: y = (x - mean) · scale / sqrt(var + ε) + bias is a
    per-channel affine map.  training_mode=1 (opset 14+) normalizes with the batch's statistics,
    which depend on x; the running statistics it also returns get no gradient."""
    x, scale, bias, mean, var = inputs[:5]
    eps = attrs.get("epsilon", 1e-5)
    shape = _param_shape(scale, x.ndim)
    grads = [None] * len(inputs)
    if opset >= 14 and attrs.get("training_mode", 0):
        axes = (0, *range(2, x.ndim))
        dx, xhat = _normalized_grad(x, g * scale.reshape(shape), axes, eps)
        grads[0] = dx if needs[0] else None
        if needs[1]:
            grads[1] = (g * xhat).sum(axis=axes).astype(np.float32)
        if needs[2]:
            grads[2] = g.sum(axis=axes).astype(np.float32)
        return grads
    inv_std = (1 / np.sqrt(var.astype(np.float64) + eps)).astype(np.float32)
    factor = scale * inv_std

    def reduce(v, like):  # summed over what `like` broadcasts across
        return unbroadcast(v, (1, *like.reshape(shape).shape)).reshape(like.shape)
    if needs[0]:
        grads[0] = g * factor.reshape(shape)
    if needs[1]:
        grads[1] = reduce(g * ((x - mean.reshape(shape)) * inv_std.reshape(shape)), scale)
    if needs[2]:
        grads[2] = reduce(g, bias)
    if needs[3]:
        grads[3] = -reduce(g, mean) * factor
    if needs[4]:
        grads[4] = reduce(g * (x - mean.reshape(shape)), var) * scale * -0.5 * inv_std ** 3
    return grads


@grad("LayerNormalization")
def _layer_norm(inputs, y, attrs, g, needs, opset):
    """Statistics over axes [axis, rank); scale and bias broadcast over those axes.  The
    optional Mean and InvStdDev outputs are not differentiated."""
    x = inputs[0]
    scale = inputs[1] if len(inputs) > 1 else None
    bias = inputs[2] if len(inputs) > 2 else None
    axes = tuple(range(attrs.get("axis", -1) % x.ndim, x.ndim))
    dx, xhat = _normalized_grad(x, g if scale is None else g * scale, axes, attrs.get("epsilon", 1e-5))
    grads = [None] * len(inputs)
    grads[0] = dx if needs[0] else None
    if scale is not None and needs[1]:
        grads[1] = unbroadcast(g * xhat, scale.shape).reshape(scale.shape).astype(np.float32)
    if bias is not None and needs[2]:
        grads[2] = unbroadcast(g, bias.shape).reshape(bias.shape)
    return grads


@grad("InstanceNormalization")
def _instance_norm(inputs, y, attrs, g, needs, opset):
    x, scale = inputs[:2]
    shape = (-1, *(1,) * (x.ndim - 2))
    axes = tuple(range(2, x.ndim))
    dx, xhat = _normalized_grad(x, g * scale.reshape(shape), axes, attrs.get("epsilon", 1e-5))
    return [dx if needs[0] else None,
            (g * xhat).sum(axis=(0, *axes)).astype(np.float32) if needs[1] else None,
            g.sum(axis=(0, *axes)) if needs[2] else None]


@grad("GroupNormalization")
def _group_norm(inputs, y, attrs, g, needs, opset):
    """Statistics per instance and group of channels; scale and bias are per group at opset 18
    (the kernel repeats them over the group's channels) and per channel from opset 21."""
    x, scale = inputs[:2]
    groups = int(attrs["num_groups"])
    n, channels = x.shape[:2]
    per_channel = scale if opset >= 21 else np.repeat(scale, channels // groups)
    shape = (-1, *(1,) * (x.ndim - 2))
    dxhat = (g * per_channel.reshape(shape)).reshape(n, groups, -1)
    dx, xhat = _normalized_grad(x.reshape(n, groups, -1), dxhat, (2,), attrs.get("epsilon", 1e-5))
    sum_axes = (0, *range(2, x.ndim))
    grads = [dx.reshape(x.shape) if needs[0] else None, None, None]
    for i, term in ((1, lambda: g * xhat.reshape(x.shape)), (2, lambda: g)):
        if needs[i]:
            total = term().sum(axis=sum_axes)  # per channel
            grads[i] = (total if opset >= 21 else total.reshape(groups, -1).sum(axis=1)).astype(np.float32)
    return grads


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
