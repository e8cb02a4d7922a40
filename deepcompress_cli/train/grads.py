"""Backward rules: for each differentiable op, the gradients of its inputs from its output's.

Every rule has the signature

    def rule(inputs, y, attrs, g, needs, opset) -> list[np.ndarray | None]

`inputs` are the node's forward inputs, `y` its (first) forward output, `g` the gradient of the
loss with respect to `y`, `needs[i]` whether input i wants a gradient (others may be None).  Rules
follow the forward kernels in `interp/ops/` (same attributes and defaults) and, like them, loop
at most over kernel offsets, never over pixels or weights.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import DczError
from ..interp.ops.conv import conv_attrs, im2col
from ..interp.ops.pool import pool_geometry

GRADS: dict = {}


def grad(*names: str):
    def register(rule):
        for name in names:
            GRADS[name] = rule
        return rule
    return register


def unbroadcast(g: np.ndarray, shape) -> np.ndarray:
    """Sum a broadcast result's gradient back down to an operand's shape."""
    shape = tuple(shape)
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    axes = tuple(i for i, (a, b) in enumerate(zip(g.shape, shape)) if b == 1 and a != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


# ---------------------------------------------------------------------------------- elementwise

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


@grad("Softmax")
def _softmax(inputs, y, attrs, g, needs, opset):
    axis = attrs.get("axis", -1 if opset >= 13 else 1)
    if opset >= 13:
        return [y * (g - (g * y).sum(axis=axis, keepdims=True))]
    # before opset 13 Softmax works on the input flattened to 2-D at `axis`
    y2, g2 = y.reshape(int(np.prod(y.shape[:axis])), -1), g.reshape(int(np.prod(y.shape[:axis])), -1)
    return [(y2 * (g2 - (g2 * y2).sum(axis=1, keepdims=True))).reshape(y.shape)]


# -------------------------------------------------------------------------------------- shapes

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


# ------------------------------------------------------------------------------- linear layers

@grad("Gemm")
def _gemm(inputs, y, attrs, g, needs, opset):
    a, b = inputs[0], inputs[1]
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    trans_a, trans_b = attrs.get("transA", 0), attrs.get("transB", 0)
    a2, b2 = (a.T if trans_a else a), (b.T if trans_b else b)
    grads = [None] * len(inputs)
    if needs[0]:
        da = alpha * (g @ b2.T)
        grads[0] = da.T if trans_a else da
    if needs[1]:
        db = alpha * (a2.T @ g)
        grads[1] = db.T if trans_b else db
    if len(inputs) > 2 and inputs[2] is not None and needs[2]:
        grads[2] = beta * unbroadcast(g, inputs[2].shape)
    return grads


@grad("MatMul")
def _matmul(inputs, y, attrs, g, needs, opset):
    a, b = inputs
    if a.ndim == 1 and b.ndim == 1:  # a dot product: y is a scalar
        return [g * b if needs[0] else None, g * a if needs[1] else None]
    a2 = a[None, :] if a.ndim == 1 else a  # numpy's 1-D promotion rules, undone at the end
    b2 = b[:, None] if b.ndim == 1 else b
    g2 = g
    if a.ndim == 1:
        g2 = np.expand_dims(g2, -2)
    if b.ndim == 1:
        g2 = np.expand_dims(g2, -1)
    grads = [None, None]
    if needs[0]:
        grads[0] = unbroadcast(g2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
    if needs[1]:
        grads[1] = unbroadcast(np.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)
    return grads


@grad("Conv")
def _conv(inputs, y, attrs, g, needs, opset):
    """im2col once; dW = dY·colsᵀ and dX = col2im(Wᵀ·dY) per group, as BLAS matmuls."""
    x, w = inputs[0], inputs[1]
    kernel_shape, strides, pads, dilations, group = conv_attrs(attrs, x.shape, w.shape)
    n, m = x.shape[0], w.shape[0]
    c_g, m_g = w.shape[1], m // group
    k = int(np.prod(kernel_shape))
    g3 = g.reshape(n, m, -1)  # [N, M, L]
    grads = [None] * len(inputs)
    if len(inputs) > 2 and inputs[2] is not None and needs[2]:
        grads[2] = g3.sum(axis=(0, 2))
    if needs[1]:
        cols, _ = im2col(x, kernel_shape, strides, pads, dilations)  # [N, C*K, L]
        dw = np.empty(w.shape, dtype=np.float32)
        for j in range(group):
            gy = g3[:, j * m_g:(j + 1) * m_g]  # [N, M/g, L]
            cj = cols[:, j * c_g * k:(j + 1) * c_g * k]  # [N, C/g*K, L]
            dw[j * m_g:(j + 1) * m_g] = np.einsum("nml,nkl->mk", gy, cj, optimize=True).reshape(m_g, *w.shape[1:])
        grads[1] = dw
    if needs[0]:
        dcols = np.empty((n, c_g * group * k, g3.shape[2]), dtype=np.float32)
        for j in range(group):
            wj = w[j * m_g:(j + 1) * m_g].reshape(m_g, c_g * k)
            dcols[:, j * c_g * k:(j + 1) * c_g * k] = np.matmul(wj.T, g3[:, j * m_g:(j + 1) * m_g])
        grads[0] = _col2im(dcols, x.shape, kernel_shape, strides, pads, dilations, y.shape[2:])
    return grads


def _col2im(dcols, x_shape, kernel_shape, strides, pads, dilations, out_spatial) -> np.ndarray:
    """The adjoint of im2col: add each kernel offset's column block back onto the input."""
    n_sp = len(kernel_shape)
    n, c = x_shape[:2]
    padded = [s + pads[i] + pads[i + n_sp] for i, s in enumerate(x_shape[2:])]
    dx = np.zeros((n, c, *padded), dtype=np.float32)
    blocks = dcols.reshape(n, c, -1, *out_spatial)  # [N, C, K, *out]
    for index, offset in enumerate(itertools.product(*(range(k) for k in kernel_shape))):
        window = tuple(slice(i * d, i * d + (o - 1) * s + 1, s)
                       for i, d, o, s in zip(offset, dilations, out_spatial, strides))
        dx[(..., *window)] += blocks[:, :, index]
    return dx[(..., *(slice(b, b + s) for b, s in zip(pads[:n_sp], x_shape[2:])))]


# ------------------------------------------------------------------------------------- pooling

def _pool_windows(attrs, x, op_name):
    """(padded shape, begins, crop, [window slices per kernel offset]) of a pool's input."""
    kernel_shape, strides, dilations, pads, out_spatial = pool_geometry(attrs, x.shape, op_name)
    n_sp = len(kernel_shape)
    # pad the end far enough for ceil_mode windows that overhang the trailing padding
    ends = [max(pads[i + n_sp], (o - 1) * s + (k - 1) * d + 1 - size - pads[i])
            for i, (size, k, s, d, o) in enumerate(zip(x.shape[2:], kernel_shape, strides, dilations, out_spatial))]
    shape = (*x.shape[:2], *(size + b + e for size, b, e in zip(x.shape[2:], pads[:n_sp], ends)))
    crop = (..., *(slice(b, b + s) for b, s in zip(pads[:n_sp], x.shape[2:])))
    windows = [tuple(slice(i * d, i * d + (o - 1) * s + 1, s)
                     for i, d, o, s in zip(offset, dilations, out_spatial, strides))
               for offset in itertools.product(*(range(k) for k in kernel_shape))]
    return shape, crop, windows


@grad("MaxPool")
def _max_pool(inputs, y, attrs, g, needs, opset):
    """The gradient goes to the first maximum of each window (as a strict `>` scan finds it)."""
    x = inputs[0]
    if attrs.get("storage_order", 0):
        raise DczError("retraining: MaxPool with storage_order=1 is not supported")
    shape, crop, windows = _pool_windows(attrs, x, "MaxPool")
    xp = np.full(shape, -np.inf, dtype=np.float32)
    xp[crop] = x
    best = np.full(g.shape, -np.inf, dtype=np.float32)
    winner = np.zeros(g.shape, dtype=np.int32)
    for index, window in enumerate(windows):
        tap = xp[(..., *window)]
        better = tap > best
        best = np.where(better, tap, best)
        winner[better] = index
    dx = np.zeros(shape, dtype=np.float32)
    for index, window in enumerate(windows):
        dx[(..., *window)] += np.where(winner == index, g, 0)
    return [dx[crop]]


@grad("AveragePool")
def _average_pool(inputs, y, attrs, g, needs, opset):
    x = inputs[0]
    shape, crop, windows = _pool_windows(attrs, x, "AveragePool")
    inside = np.zeros(shape[2:], dtype=np.float32)  # which padded cells are real input
    inside[crop[1:]] = 1
    if attrs.get("count_include_pad", 0):
        # padding counts, but not cells past it (ceil_mode overhang)
        kernel_shape, _, _, pads, _ = pool_geometry(attrs, x.shape, "AveragePool")
        n_sp = len(kernel_shape)
        inside[:] = 0
        inside[tuple(slice(0, s + pads[i] + pads[i + n_sp]) for i, s in enumerate(x.shape[2:]))] = 1
    count = sum(inside[window] for window in windows)
    share = g / np.maximum(count, 1)
    dx = np.zeros(shape, dtype=np.float32)
    for window in windows:
        dx[(..., *window)] += share
    return [dx[crop]]


@grad("GlobalAveragePool")
def _global_average_pool(inputs, y, attrs, g, needs, opset):
    x = inputs[0]
    return [np.broadcast_to(g / np.prod(x.shape[2:]), x.shape).astype(np.float32)]


# ------------------------------------------------------------------------------- normalization

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
