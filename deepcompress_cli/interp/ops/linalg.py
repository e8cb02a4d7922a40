"""Matrix ops beyond MatMul/Gemm: Einsum, Det and Trilu (triangular masks of the last two axes)."""

from __future__ import annotations

import math

import numpy as np

from ...errors import DczError
from . import op
from .shape import str_attr


def _widened(dtype: np.dtype) -> np.dtype:
    """float16/bfloat16 compute in float32 (np.linalg refuses them, np.einsum bfloat16)."""
    return np.dtype(np.float32) if dtype.kind in "fV" and dtype.itemsize < 4 else dtype


def _einsum_output_shape(equation: str, shapes) -> list[int] | None:
    """The output shape of `equation` over operands of `shapes`, None when it does not parse
    (np.einsum then says why)."""
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        return None
    sizes, counts, ellipsis = {}, {}, ()
    for term, shape in zip(terms, shapes):
        head, dots, tail = term.partition("...")
        n_ellipsis = len(shape) - len(head) - len(tail)
        if n_ellipsis < 0 or (n_ellipsis and not dots):
            return None
        try:
            ellipsis = np.broadcast_shapes(ellipsis, shape[len(head):len(head) + n_ellipsis])
        except ValueError:
            return None
        for letter, size in zip(head + tail, shape[:len(head)] + shape[len(head) + n_ellipsis:]):
            sizes[letter] = max(sizes.get(letter, 1), size)
            counts[letter] = counts.get(letter, 0) + 1
    if not arrow:  # implicit output: the broadcast dims, then the letters used once, sorted
        rhs = "..." + "".join(sorted(letter for letter, n in counts.items() if n == 1))
    head, dots, tail = rhs.partition("...")
    return [sizes.get(c, 0) for c in head] + list(ellipsis if dots else ()) + \
        [sizes.get(c, 0) for c in tail]


@op("Einsum")
def einsum(inputs, attrs, ctx):
    """np.einsum, including the implicit form (no '->': output letters in alphabetical order).

    An output larger than every input (an outer product: "i,j->ij") goes through the size cap.
    """
    equation = str_attr(attrs, "equation", "").replace(" ", "")
    dtype = inputs[0].dtype
    out_shape = _einsum_output_shape(equation, [a.shape for a in inputs])
    if out_shape is not None and math.prod(out_shape) > max(a.size for a in inputs):
        ctx.check_size("Einsum", out_shape, _widened(dtype).itemsize)
    operands = [np.asarray(a).astype(_widened(dtype), copy=False) for a in inputs]
    try:
        y = np.einsum(equation, *operands, optimize=len(operands) > 2)
    except ValueError as e:
        raise DczError(f"Einsum node {ctx.node_name!r}: equation {equation!r} does not fit the "
                       f"inputs {[list(a.shape) for a in inputs]}: {e}") from None
    return [np.asarray(y).astype(dtype, copy=False)]


@op("Det")
def det(inputs, attrs, ctx):
    x = inputs[0]
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise DczError(f"Det node {ctx.node_name!r}: needs [..., M, M] matrices, got {list(x.shape)}.")
    return [np.asarray(np.linalg.det(x.astype(_widened(x.dtype), copy=False))).astype(x.dtype)]


@op("Trilu")
def trilu(inputs, attrs, ctx):
    x = inputs[0]
    if x.ndim < 2:
        raise DczError(f"Trilu node {ctx.node_name!r}: needs a rank >= 2 input, got {list(x.shape)}.")
    k = inputs[1] if len(inputs) > 1 and inputs[1] is not None else 0
    k = int(np.asarray(k).reshape(-1)[0])
    # np.triu/np.tril mask the last two axes of a stacked input, any k (past the matrix: all/none).
    return [np.triu(x, k) if attrs.get("upper", 1) else np.tril(x, k)]
