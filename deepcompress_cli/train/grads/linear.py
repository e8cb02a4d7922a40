"""Backward rules of the linear layers: Gemm, MatMul, Conv."""

from __future__ import annotations

import itertools

import numpy as np

from ...interp.ops.conv import conv_attrs, im2col
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
