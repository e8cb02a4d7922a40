"""Backward rules of the linear layers: Gemm, MatMul, Conv, ConvTranspose."""

from __future__ import annotations

import itertools
import math

import numpy as np

from ...interp.ops.conv import conv, conv_attrs, conv_transpose_geometry, im2col, pad_spatial, patch_view
from . import grad, unbroadcast


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


# Bytes per chunk of images in the dense Conv backward: bounds the im2col buffer's memory.
_CHUNK_BYTES = 64 << 20


@grad("Conv")
def _conv(inputs, y, attrs, g, needs, opset):
    x, w = inputs[0], inputs[1]
    kernel_shape, strides, pads, dilations, group = conv_attrs(attrs, x.shape, w.shape)
    geometry = kernel_shape, strides, pads, dilations
    grads = [None] * len(inputs)
    if len(inputs) > 2 and inputs[2] is not None and needs[2]:
        grads[2] = g.sum(axis=(0, *range(2, g.ndim)))
    depthwise = group > 1 and group == x.shape[1]  # as the forward kernel decides
    backward = _depthwise_conv_grads if depthwise else _dense_conv_grads
    grads[0], grads[1] = backward(x, w, g, geometry, group, needs[0], needs[1])
    return grads


def _windows(kernel_shape, strides, dilations, out_spatial) -> list[tuple]:
    """Per kernel offset (row-major), the slices of the padded input that offset reads."""
    return [tuple(slice(i * d, i * d + (o - 1) * s + 1, s)
                  for i, d, o, s in zip(offset, dilations, out_spatial, strides))
            for offset in itertools.product(*(range(k) for k in kernel_shape))]


def _crop(pads, spatial) -> tuple:
    """The slices of a padded [N, C, *padded] array that hold the input."""
    return (..., *(slice(b, b + s) for b, s in zip(pads[:len(spatial)], spatial)))


def _padded_shape(x_shape, pads) -> tuple:
    n_sp = len(x_shape) - 2
    return (*x_shape[:2], *(s + pads[i] + pads[i + n_sp] for i, s in enumerate(x_shape[2:])))


def _depthwise_conv_grads(x, w, g, geometry, group, need_x, need_w):
    """group == channels: per kernel offset, one product-sum over images and output positions
    (dw) and one broadcast multiply-add over every channel and pixel (dx), as the forward does;
    no im2col and no loop over channels."""
    kernel_shape, strides, pads, dilations = geometry
    n, c = x.shape[:2]
    out_spatial = g.shape[2:]
    n_sp = len(out_spatial)
    mult = w.shape[0] // c  # output channel c * mult + j reads input channel c
    g5 = g.reshape(n, c, mult, *out_spatial)
    wk = w.reshape(c, mult, -1)
    windows = _windows(kernel_shape, strides, dilations, out_spatial)
    sp = "hwd"[:n_sp]  # einsum letters of the spatial axes
    dx = dw = None
    if need_w:
        xp = pad_spatial(x, pads)
        dw = np.empty(wk.shape, dtype=np.float32)
        for index, window in enumerate(windows):
            tap = xp[(..., *window)]  # [N, C, *out], a strided view
            dw[:, :, index] = np.einsum(f"ncm{sp},nc{sp}->cm", g5, tap)
        dw = dw.reshape(w.shape)
    full = [(k - 1) * d for k, d in zip(kernel_shape, dilations)]
    flipped_pads = [f - p for f, p in zip(full * 2, pads)]
    if need_x and set(strides) == {1} and min(flipped_pads) >= 0:
        # stride 1: dx is g correlated with the flipped kernel, itself a grouped Conv the forward
        # kernel runs fast (contiguous runs instead of strided windows)
        flipped = wk.reshape(c, mult, *kernel_shape)[(..., *[slice(None, None, -1)] * n_sp)]
        dx = conv(g, np.ascontiguousarray(flipped), None,
                  {"group": c, "pads": flipped_pads, "dilations": list(dilations)})
    elif need_x:
        dxp = np.zeros(_padded_shape(x.shape, pads), dtype=np.float32)
        tmp = np.empty((n, c, *out_spatial), dtype=np.float32)
        spread = (1,) * n_sp
        for index, window in enumerate(windows):
            if mult == 1:
                np.multiply(g, wk[:, 0, index].reshape(c, *spread), out=tmp)
            else:
                np.einsum(f"ncm{sp},cm->nc{sp}", g5, wk[:, :, index], out=tmp)
            dxp[(..., *window)] += tmp
        dx = dxp[_crop(pads, x.shape[2:])]
    return dx, dw


def _dense_conv_grads(x, w, g, geometry, group, need_x, need_w):
    """im2col per chunk of images; dW = dY·colsᵀ and dX = col2im(Wᵀ·dY), each one matmul
    batched over images and groups."""
    kernel_shape, strides, pads, dilations = geometry
    n, m = x.shape[0], w.shape[0]
    out_spatial = g.shape[2:]
    length = math.prod(out_spatial)
    rows = w.shape[1] * math.prod(kernel_shape)  # per group: C/g * K
    pointwise = set(kernel_shape) == {1} and set(strides) == {1} and not any(pads)  # x is its own im2col
    w3 = w.reshape(group, m // group, rows)
    dx = np.empty(x.shape, dtype=np.float32) if need_x else None
    dw = np.zeros(w3.shape, dtype=np.float32) if need_w else None
    # images per chunk: their im2col, and their per-image dW before the sum, within _CHUNK_BYTES
    per = max(1, _CHUNK_BYTES // (4 * max(group * rows * length, w.size)))
    for n0 in range(0, n, per):
        n1 = min(n, n0 + per)
        gy = g[n0:n1].reshape(n1 - n0, group, m // group, length)
        if need_w:
            cols = x[n0:n1] if pointwise else im2col(x[n0:n1], kernel_shape, strides, pads, dilations)[0]
            cols = cols.reshape(n1 - n0, group, rows, length)
            dw += np.matmul(gy, cols.transpose(0, 1, 3, 2)).sum(axis=0)
        if need_x:
            dcols = np.matmul(w3.transpose(0, 2, 1), gy)  # [n, group, C/g*K, L]
            if pointwise:
                dx[n0:n1] = dcols.reshape(dx[n0:n1].shape)
            else:
                dx[n0:n1] = _col2im(dcols, dx[n0:n1].shape, kernel_shape, strides, pads, dilations, out_spatial)
    return dx, (dw.reshape(w.shape) if need_w else None)


def _col2im(dcols, x_shape, kernel_shape, strides, pads, dilations, out_spatial) -> np.ndarray:
    """The adjoint of im2col: add each kernel offset's column block back onto the input."""
    n, c = x_shape[:2]
    dx = np.zeros(_padded_shape(x_shape, pads), dtype=np.float32)
    blocks = dcols.reshape(n, c, -1, *out_spatial)  # [N, C, K, *out]
    for index, window in enumerate(_windows(kernel_shape, strides, dilations, out_spatial)):
        dx[(..., *window)] += blocks[:, :, index]
    return dx[_crop(pads, x_shape[2:])]


@grad("ConvTranspose")
def _conv_transpose(inputs, y, attrs, g, needs, opset):
    """The forward is contributions = Wᵀ·x per kernel offset, added at strided windows of an
    uncropped output, then cropped by pads: backward un-crops g, reads each offset's window back
    (a strided view, as a Conv's im2col) and undoes the matmul."""
    x, w = inputs[0], inputs[1]
    group = int(attrs.get("group", 1))
    kernel_shape, strides, dilations, pads, out_spatial = conv_transpose_geometry(attrs, x.shape, w.shape)
    n, c = x.shape[:2]
    in_spatial = x.shape[2:]
    grads = [None] * len(inputs)
    if len(inputs) > 2 and inputs[2] is not None and needs[2]:
        grads[2] = g.sum(axis=(0, *range(2, g.ndim)))
    if not (needs[0] or needs[1]):
        return grads
    full = [s * (i - 1) + (k - 1) * d + 1 for i, s, k, d in zip(in_spatial, strides, kernel_shape, dilations)]
    dacc = np.zeros((*g.shape[:2], *full), dtype=np.float32)
    src, dst = [], []  # the output's window on the uncropped result (pads may be negative)
    for f, o, begin in zip(full, out_spatial, pads[:len(full)]):
        lo, hi = max(begin, 0), min(begin + o, f)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - begin, lo - begin + max(0, hi - lo)))
    dacc[(..., *src)] = g[(..., *dst)]
    rows = w.shape[1] * math.prod(kernel_shape)  # per group: M/g * K
    dcontrib = patch_view(dacc, kernel_shape, strides, dilations, in_spatial)  # [N, M, *k, *in]
    dcontrib = dcontrib.reshape(n, group, rows, -1)
    x4 = x.reshape(n, group, c // group, -1)
    w3 = w.reshape(group, c // group, rows)
    if needs[0]:
        grads[0] = np.matmul(w3, dcontrib).reshape(x.shape)
    if needs[1]:
        grads[1] = np.matmul(x4, dcontrib.transpose(0, 1, 3, 2)).sum(axis=0).reshape(w.shape)
    return grads
