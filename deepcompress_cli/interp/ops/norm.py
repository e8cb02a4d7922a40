"""Normalizations: BatchNormalization (inference and training_mode), LRN, Softmax/LogSoftmax,
LayerNormalization, InstanceNormalization, GroupNormalization, RMSNormalization."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ...errors import DczError
from . import op
from .cast import numeric_dtype


def _per_channel(param: np.ndarray, ndim: int) -> np.ndarray:
    """A [C] parameter shaped to broadcast over [N, C, *spatial]; a [C, *spatial] one (opset < 9
    spatial=0) just gains the batch axis."""
    if param.ndim == 1:
        return param.reshape(-1, *(1,) * (ndim - 2))
    return param


@op("BatchNormalization")
def batch_normalization(inputs, attrs, ctx):
    """Inference normalizes with the given statistics.  training_mode=1 (opset 14+) normalizes
    with the batch's own (population variance over every axis but the channel's) and also returns
    the running statistics, input * momentum + batch * (1 - momentum)."""
    x, scale, bias, mean, var = inputs[:5]
    eps = attrs.get("epsilon", 1e-5)
    running = []
    if ctx.opset >= 14 and attrs.get("training_mode", 0):
        axes = (0, *range(2, x.ndim))
        momentum = attrs.get("momentum", 0.9)
        batch_mean, batch_var = x.mean(axis=axes, dtype=np.float64), x.var(axis=axes, dtype=np.float64)
        running = [(mean * momentum + batch_mean * (1 - momentum)).astype(mean.dtype),
                   (var * momentum + batch_var * (1 - momentum)).astype(var.dtype)]
        mean, var = batch_mean, batch_var
    # Fold into one multiply-add per element; the per-channel terms are computed in float64.
    a = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    c = bias.astype(np.float64) - mean.astype(np.float64) * a
    y = x * _per_channel(a.astype(x.dtype), x.ndim)
    y += _per_channel(c.astype(x.dtype), x.ndim)
    return [y, *running]


@op("LRN")
def lrn(inputs, attrs, ctx):
    """y = x / (bias + alpha / size * sum of x^2 over `size` neighbouring channels) ^ beta."""
    x = inputs[0]
    size = int(attrs["size"])
    alpha = attrs.get("alpha", 1e-4)
    beta = attrs.get("beta", 0.75)
    bias = attrs.get("bias", 1.0)
    before = (size - 1) // 2
    channels = x.shape[1]
    squares = np.zeros((x.shape[0], channels + size - 1, *x.shape[2:]), dtype=x.dtype)
    np.square(x, out=squares[:, before:before + channels])
    # A sum of `size` shifted slices rather than a cumulative sum: no float32 cancellation.
    window = squares[:, 0:channels].copy()
    for shift in range(1, size):
        window += squares[:, shift:shift + channels]
    window *= alpha / size
    window += bias
    np.power(window, -beta, out=window)
    window *= x
    return [window]


def _softmax_frame(x: np.ndarray, attrs: dict, opset: int):
    """(array, axis) to reduce over: before opset 13 the input is coerced to 2-D at `axis`."""
    if opset >= 13:
        return x, attrs.get("axis", -1)
    axis = attrs.get("axis", 1) % max(x.ndim, 1)
    rows = int(np.prod(x.shape[:axis]))
    return x.reshape(rows, -1), 1


@op("Softmax")
def softmax(inputs, attrs, ctx):
    x = inputs[0]
    frame, axis = _softmax_frame(x, attrs, ctx.opset)
    y = frame - frame.max(axis=axis, keepdims=True)
    np.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return [y.reshape(x.shape)]


@op("LogSoftmax")
def log_softmax(inputs, attrs, ctx):
    x = inputs[0]
    frame, axis = _softmax_frame(x, attrs, ctx.opset)
    y = frame - frame.max(axis=axis, keepdims=True)
    y -= np.log(np.exp(y).sum(axis=axis, keepdims=True))
    return [y.reshape(x.shape)]


def _normalize(x: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) over `axes`, in the dtype of x."""
    centered = x - x.mean(axis=axes, keepdims=True)
    var = np.square(centered).mean(axis=axes, keepdims=True)
    centered /= np.sqrt(var + np.asarray(eps, dtype=var.dtype))
    return centered


@op("LayerNormalization")
def layer_normalization(inputs, attrs, ctx):
    """Normalizes over axes [axis, rank) in the stash_type precision (float32 by default); the
    optional Mean and InvStdDev outputs keep the reduced axes as 1s."""
    x = inputs[0]
    scale = inputs[1] if len(inputs) > 1 else None
    bias = inputs[2] if len(inputs) > 2 else None
    axes = tuple(range(attrs.get("axis", -1) % x.ndim, x.ndim))
    stashed = x.astype(numeric_dtype(attrs.get("stash_type", TensorProto.FLOAT), "LayerNormalization"), copy=False)
    mean = stashed.mean(axis=axes, keepdims=True)
    centered = stashed - mean
    inv_std_dev = 1 / np.sqrt(np.square(centered).mean(axis=axes, keepdims=True)
                              + np.asarray(attrs.get("epsilon", 1e-5), dtype=stashed.dtype))
    y = (centered * inv_std_dev).astype(x.dtype, copy=False)
    if scale is not None:
        y *= scale
    if bias is not None:
        y += bias
    return [y, mean, inv_std_dev]


@op("InstanceNormalization")
def instance_normalization(inputs, attrs, ctx):
    x, scale, bias = inputs[:3]
    y = _normalize(x, tuple(range(2, x.ndim)), attrs.get("epsilon", 1e-5))
    y *= _per_channel(scale, x.ndim)
    y += _per_channel(bias, x.ndim)
    return [y]


def _stash_dtype(attrs: dict) -> np.dtype:
    """The precision of the statistics (`stash_type`, default float32) of opset 21+ norms."""
    return np.dtype(helper.tensor_dtype_to_np_dtype(attrs.get("stash_type", 1)))


@op("GroupNormalization")
def group_normalization(inputs, attrs, ctx):
    """Statistics per instance over each group of channels; scale and bias are per group at
    opset 18 and per channel from opset 21."""
    x, scale, bias = inputs[:3]
    groups = int(attrs["num_groups"])
    n, channels = x.shape[:2]
    if groups < 1 or channels % groups:
        raise DczError(f"GroupNormalization node {ctx.node_name!r}: {groups} groups do not divide {channels} channels.")
    if ctx.opset < 21:
        scale, bias = np.repeat(scale, channels // groups), np.repeat(bias, channels // groups)
    grouped = x.astype(_stash_dtype(attrs) if ctx.opset >= 21 else x.dtype).reshape(n, groups, -1)
    y = _normalize(grouped, (2,), attrs.get("epsilon", 1e-5)).reshape(x.shape).astype(x.dtype, copy=False)
    y *= _per_channel(scale, x.ndim)
    y += _per_channel(bias, x.ndim)
    return [y]


@op("RMSNormalization")
def rms_normalization(inputs, attrs, ctx):
    """x / sqrt(mean(x^2) + epsilon) over axes [axis, rank), times scale."""
    x, scale = inputs[:2]
    axis = attrs.get("axis", -1)
    if not -x.ndim <= axis < x.ndim:
        raise DczError(f"RMSNormalization node {ctx.node_name!r}: axis {axis} is out of range for rank {x.ndim}.")
    stash = x.astype(_stash_dtype(attrs))
    mean_square = np.square(stash).mean(axis=tuple(range(axis % x.ndim, x.ndim)), keepdims=True)
    y = (stash / np.sqrt(mean_square + stash.dtype.type(attrs.get("epsilon", 1e-5)))).astype(x.dtype)
    y *= scale
    return [y]
