"""Already-quantized models: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, and the
integer layers MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv.

Quantized types are the numpy integers and ml_dtypes' int4/uint4/int2/uint2 and float8/float4/
float6 types (what onnx's numpy_helper gives).  Scales and zero points are per tensor (one
value), per axis (1-D along `axis`) or blocked (the input's rank, `block_size` elements of `axis`
per value).

The integer layers multiply (code - zero point) exactly on float32 BLAS: those values are small
integers, and the shared axis is cut into chunks short enough that no partial sum passes 2^24
(float32's exact integers); chunks add up in float64, exact far past int32.  Requantization rounds half to even and saturates.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import helper

from ...errors import DczError
from . import op
from .conv import conv

try:  # onnx >= 1.17 brings it; its int4/float8/... types are what numpy_helper decodes those tensors to
    import ml_dtypes
except ImportError:  # then no such tensor can reach these kernels
    ml_dtypes = None

EXACT_FLOAT32 = 1 << 24
INTEGER_CODES = {"int4", "uint4", "int2", "uint2"}  # ml_dtypes integers (numpy kind "V")


def onnx_dtype(code: int, op_name: str) -> np.dtype:
    """The numpy dtype of an ONNX TensorProto element type."""
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(code))
    except (KeyError, TypeError, ValueError):
        raise DczError(f"{op_name}: element type {code} is not supported.") from None


def is_integer(dtype: np.dtype) -> bool:
    return dtype.kind in "iu" or dtype.name in INTEGER_CODES


def saturate_cast(values: np.ndarray, dtype: np.dtype, saturate: bool = True) -> np.ndarray:
    """Float `values` into a quantized type: integers round half to even and clamp to the type's
    range; float8/float4/float6 round to nearest even, clamped to +-max when `saturate` (else out of
    range values become Inf or NaN, as the type allows)."""
    if is_integer(dtype):
        info = np.iinfo(dtype) if dtype.kind in "iu" else ml_dtypes.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    if saturate:
        limit = float(ml_dtypes.finfo(dtype).max)
        values = np.clip(values, -limit, limit)  # NaN stays NaN
    return values.astype(dtype)


def float_type(dtype: np.dtype) -> np.dtype:
    """A scale's type as the type to compute in: float32 for an int32 or float8e8m0 scale."""
    return dtype if dtype.kind == "f" or dtype.name == "bfloat16" else np.dtype(np.float32)


def as_float(x: np.ndarray) -> np.ndarray:
    """Codes as float32 values (float64 for 32-bit integers, which float32 cannot hold)."""
    return x.astype(np.float64 if x.dtype.itemsize >= 4 and is_integer(x.dtype) else np.float32)


def param_layout(param: np.ndarray, shape, axis: int, block_size: int, op_name: str) -> np.ndarray:
    """A scale or zero point shaped to broadcast against an input of `shape`: a scalar, a 1-D
    per-axis vector, or a blocked tensor each value of which repeats `block_size` times on `axis`."""
    param = np.asarray(param)
    if param.size == 1 and param.ndim <= 1:
        return param.reshape(())
    rank = len(shape)
    if not -rank <= axis < rank:
        raise DczError(f"{op_name}: axis {axis} is out of range for an input of rank {rank}.")
    axis %= rank
    if param.ndim == 1 and not block_size:
        if param.shape[0] != shape[axis]:
            raise DczError(f"{op_name}: {param.shape[0]} scales for axis {axis} of length {shape[axis]}.")
        return param.reshape(-1, *(1,) * (rank - axis - 1))
    fits = (block_size > 0 and param.ndim == rank and param.shape[axis] == -(-shape[axis] // block_size)
            and all(p == s for i, (p, s) in enumerate(zip(param.shape, shape)) if i != axis))
    if not fits:
        raise DczError(f"{op_name}: scale of shape {list(param.shape)} does not fit input {list(shape)} "
                       f"with axis {axis} and block_size {block_size}.")
    return np.repeat(param, block_size, axis=axis).take(np.arange(shape[axis]), axis=axis)


def layout_attrs(attrs: dict) -> tuple[int, int]:
    return attrs.get("axis", 1), attrs.get("block_size", 0)


@op("QuantizeLinear")
def quantize_linear(inputs, attrs, ctx):
    """y = saturate(round(x / scale) + zero_point); the zero point's type (or output_dtype, or
    uint8) is the output type.  The division runs in `precision`, else in the scale's type."""
    x, scale = inputs[:2]
    zero_point = inputs[2] if len(inputs) > 2 else None
    if attrs.get("output_dtype"):
        out_dtype = onnx_dtype(attrs["output_dtype"], "QuantizeLinear")
        if zero_point is not None and zero_point.dtype != out_dtype:
            raise DczError(f"QuantizeLinear node {ctx.node_name!r}: output_dtype {out_dtype} differs "
                           f"from the zero point's type {zero_point.dtype}.")
    else:
        out_dtype = zero_point.dtype if zero_point is not None else np.dtype(np.uint8)
    precision = onnx_dtype(attrs["precision"], "QuantizeLinear") if attrs.get("precision") else float_type(scale.dtype)
    axis, block_size = layout_attrs(attrs)
    scale = param_layout(scale, x.shape, axis, block_size, "QuantizeLinear").astype(precision)
    values = x.astype(precision, copy=False) / scale
    if is_integer(out_dtype):
        values = np.rint(values)
    if zero_point is not None:
        values = values + as_float(param_layout(zero_point, x.shape, axis, block_size, "QuantizeLinear"))
    return [saturate_cast(values, out_dtype, bool(attrs.get("saturate", 1)))]


@op("DequantizeLinear")
def dequantize_linear(inputs, attrs, ctx):
    """y = (x - zero_point) * scale in the output type (output_dtype, else the scale's type)."""
    x, scale = inputs[:2]
    zero_point = inputs[2] if len(inputs) > 2 else None
    out_dtype = onnx_dtype(attrs["output_dtype"], "DequantizeLinear") if attrs.get("output_dtype") \
        else float_type(scale.dtype)
    axis, block_size = layout_attrs(attrs)
    diff = as_float(x)  # exact differences of codes
    if zero_point is not None:
        diff = diff - as_float(param_layout(zero_point, x.shape, axis, block_size, "DequantizeLinear"))
    scale = param_layout(scale, x.shape, axis, block_size, "DequantizeLinear")
    return [diff.astype(out_dtype) * scale.astype(np.float32).astype(out_dtype)]


@op("DynamicQuantizeLinear")
def dynamic_quantize_linear(inputs, attrs, ctx):
    """uint8 codes over [min(x, 0), max(x, 0)]: returns y, y_scale, y_zero_point."""
    x = inputs[0].astype(np.float32, copy=False)
    low = min(float(x.min()), 0.0) if x.size else 0.0
    high = max(float(x.max()), 0.0) if x.size else 0.0
    scale = np.float32((np.float32(high) - np.float32(low)) / np.float32(255))
    if scale == 0:  # x is all zeros: every code is the zero point 0
        return [np.zeros(x.shape, np.uint8), np.array(scale), np.array(0, np.uint8)]
    zero_point = np.clip(np.rint(-np.float32(low) / scale), 0, 255)
    y = saturate_cast(np.rint(x / scale) + zero_point, np.dtype(np.uint8))
    return [y, np.array(scale), np.array(zero_point, np.uint8)]


def centered(x: np.ndarray, zero_point, shape_for_zp=None) -> np.ndarray:
    """x - zero_point as float32 values (exact for 8-bit codes); `shape_for_zp` reshapes a
    per-row/per-channel zero point to broadcast."""
    values = as_float(x)
    if zero_point is None:
        return values
    zp = as_float(np.asarray(zero_point))
    if shape_for_zp is not None and zp.size > 1:
        zp = zp.reshape(shape_for_zp)
    return values - zp


def magnitude(x: np.ndarray) -> float:
    return float(np.abs(x).max()) if x.size else 0.0


def chunked_sum(parts) -> np.ndarray:
    """The float64 sum of exact float32 partial results."""
    total = None
    for part in parts:
        part = part.astype(np.float64)
        total = part if total is None else np.add(total, part, out=total)
    return total


def integer_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b of integer-valued float arrays, exactly: float32 BLAS over chunks of the shared axis
    short enough that no partial sum passes 2^24, chunks added in float64."""
    a, b = a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)
    k = a.shape[-1]
    step = EXACT_FLOAT32 // max(1.0, magnitude(a) * magnitude(b))
    if step >= k:
        return np.matmul(a, b)
    if b.ndim < 2 or step < 1:  # a vector (or absurd values): float64 is exact to 2^53
        return np.matmul(a.astype(np.float64), b.astype(np.float64))
    step = int(step)
    return chunked_sum(np.matmul(a[..., i:i + step], b[..., i:i + step, :]) for i in range(0, k, step))


def integer_conv(x: np.ndarray, w: np.ndarray, attrs: dict) -> np.ndarray:
    """Conv of integer-valued float arrays (x already centered, so zero padding is right), exactly:
    float32 over chunks of input channels that keep partial sums below 2^24 (grouped convs whose
    groups are too deep for float32 run in float64)."""
    x, w = x.astype(np.float32, copy=False), w.astype(np.float32, copy=False)
    channels = w.shape[1]
    step = EXACT_FLOAT32 // max(1.0, magnitude(x) * magnitude(w) * math.prod(w.shape[2:]))
    if step >= channels:
        return conv(x, w, None, attrs)
    if int(attrs.get("group", 1)) != 1 or step < 1:
        return conv(x.astype(np.float64), w.astype(np.float64), None, attrs)
    step = int(step)
    return chunked_sum(conv(x[:, i:i + step], w[:, i:i + step], None, attrs) for i in range(0, channels, step))


def wrap_int32(acc: np.ndarray) -> np.ndarray:
    """Exact integer sums as int32; accumulation may wrap in 32 bits, as the spec allows."""
    return acc.astype(np.int64).astype(np.int32)


def channel_shape(ndim: int) -> tuple:
    """Shape of a per-output-channel parameter against [N, M, *spatial]."""
    return (-1,) + (1,) * (ndim - 2)


def row_shape(zp) -> tuple | None:
    """A per-row 1-D zero point of `a` [..., M, K] becomes [M, 1]; N-D ones are already shaped."""
    return (-1, 1) if zp is not None and np.ndim(zp) == 1 else None


def scalar(x) -> np.ndarray:
    """A per-tensor scale (a scalar or a one-element vector) as a float32 0-d array."""
    return np.asarray(x, np.float32).reshape(())


def requantize(acc: np.ndarray, multiplier: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """saturate(round(acc * multiplier) + zero_point) in the zero point's type."""
    values = acc.astype(np.float64, copy=False) * multiplier.astype(np.float32).astype(np.float64)
    out_dtype = zero_point.dtype
    if is_integer(out_dtype):
        values = np.rint(values)
    return saturate_cast(values + as_float(zero_point), out_dtype)


@op("MatMulInteger")
def matmul_integer(inputs, attrs, ctx):
    a, b = inputs[:2]
    a_zp = inputs[2] if len(inputs) > 2 else None
    b_zp = inputs[3] if len(inputs) > 3 else None
    acc = integer_matmul(centered(a, a_zp, row_shape(a_zp)), centered(b, b_zp))
    return [wrap_int32(acc)]


@op("ConvInteger")
def conv_integer(inputs, attrs, ctx):
    x, w = inputs[:2]
    x_zp = inputs[2] if len(inputs) > 2 else None
    w_zp = inputs[3] if len(inputs) > 3 else None
    acc = integer_conv(centered(x, x_zp), centered(w, w_zp, (-1,) + (1,) * (w.ndim - 1)), attrs)
    return [wrap_int32(acc)]


@op("QLinearMatMul")
def qlinear_matmul(inputs, attrs, ctx):
    """Quantized matmul: per-tensor, per-row (a) or per-column (b) scales and zero points."""
    a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = inputs[:8]
    acc = integer_matmul(centered(a, a_zp, row_shape(a_zp)), centered(b, b_zp))
    a_scale = np.asarray(a_scale, np.float32)
    if a_scale.ndim == 1 and a_scale.size > 1:
        a_scale = a_scale.reshape(-1, 1)
    multiplier = a_scale * np.asarray(b_scale, np.float32) / np.asarray(y_scale, np.float32)
    return [requantize(acc, multiplier, np.asarray(y_zp))]


@op("QLinearConv")
def qlinear_conv(inputs, attrs, ctx):
    """Quantized Conv: per-tensor input/output, per-tensor or per-output-channel weight; the int32
    bias has scale x_scale * w_scale."""
    x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp = inputs[:8]
    bias = inputs[8] if len(inputs) > 8 else None
    per_channel = channel_shape(w.ndim)
    acc = integer_conv(centered(x, x_zp), centered(w, w_zp, (-1,) + (1,) * (w.ndim - 1)), attrs)
    if bias is not None:
        acc = acc.astype(np.float64, copy=False) + bias.astype(np.float64).reshape(per_channel)
    w_scale = np.asarray(w_scale, np.float32)
    multiplier = scalar(x_scale) * (w_scale.reshape(per_channel) if w_scale.size > 1 else w_scale) / scalar(y_scale)
    return [requantize(acc, multiplier, np.asarray(y_zp))]
