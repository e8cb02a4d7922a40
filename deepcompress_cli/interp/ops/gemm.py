"""Gemm and MatMul on BLAS (numpy matmul), keeping the input dtype."""

from __future__ import annotations

import numpy as np

from . import op

# Set by the interpreter's plan on a MatMul that absorbed the Add of a constant bias (its third
# input); never by a model.
FUSED_BIAS = "_fused_bias"


@op("Gemm")
def gemm(inputs, attrs, ctx):
    """Y = alpha * A' @ B' + beta * C; C broadcasts to [M, N] (opset <= 6's `broadcast` is moot)."""
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    if attrs.get("transA", 0):
        a = a.T
    if attrs.get("transB", 0):
        b = b.T  # a transposed view: BLAS reads it in place, no copy of the weights
    y = np.matmul(a, b)
    alpha = attrs.get("alpha", 1.0)
    beta = attrs.get("beta", 1.0)
    # Python-float scalars keep float32 arrays float32; "unsafe" lets integer Gemm truncate.
    if alpha != 1.0:
        np.multiply(y, alpha, out=y, casting="unsafe")
    if c is not None and beta != 0.0:
        np.add(y, c if beta == 1.0 else c * beta, out=y, casting="unsafe")
    return [y]


@op("MatMul")
def matmul(inputs, attrs, ctx):
    y = np.matmul(inputs[0], inputs[1])
    if y.dtype != inputs[0].dtype:  # numpy computes bfloat16 (ml_dtypes) products in float32
        y = y.astype(inputs[0].dtype)
    if attrs.get(FUSED_BIAS):  # y is fresh: the bias goes in place
        y += inputs[2]
    return [y]
