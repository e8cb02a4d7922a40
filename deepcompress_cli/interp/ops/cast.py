"""Casts: Cast, CastLike and BitCast, for every numeric ONNX type.

The types numpy lacks (bfloat16, float8, float4, int4, int2 ...) are the `ml_dtypes` dtypes that
onnx.numpy_helper gives their tensors, so values of those types flow through the interpreter as
ordinary arrays.  ml_dtypes rounds to nearest even but does not saturate, so the float8 rules of
the Cast spec (saturate, and float8e8m0's round_mode) are applied here.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx import TensorProto, helper

from ...errors import DczError
from . import op
from .shape import str_attr

# The float8 types whose out-of-range values `saturate` clamps to +-max instead of NaN / Inf.
_SATURATING_FLOAT8 = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2,
                      TensorProto.FLOAT8E5M2FNUZ}
_E8M0_BIAS, _E8M0_MAX_CODE, _E8M0_NAN_CODE = 127, 254, 255
# Element widths in bits of the types ml_dtypes stores one per byte.
_SUB_BYTE_BITS = {np.dtype(d): b for d, b in ((ml_dtypes.int4, 4), (ml_dtypes.uint4, 4),
                                               (ml_dtypes.float4_e2m1fn, 4), (ml_dtypes.int2, 2),
                                               (ml_dtypes.uint2, 2))}


def numeric_dtype(to: int, op_name: str) -> np.dtype:
    """The numpy dtype of ONNX type `to`; strings and unknown types are a DczError."""
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    except (KeyError, TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind in "OUS":
        raise DczError(f"{op_name}: target type {to} ({dtype}) is not supported.")
    return dtype


def cast_to(x: np.ndarray, to: int, saturate: bool = True, round_mode: str = "up") -> np.ndarray:
    """x converted to ONNX type `to` by the rules of the Cast spec."""
    dtype = numeric_dtype(to, "Cast")
    if x.dtype == dtype:
        return x
    if x.dtype.kind in "OUS" and dtype.kind == "V":
        x = x.astype(np.float64)  # numpy parses "1e-5", "INF", "NaN"; ml_dtypes types cannot
    if to == TensorProto.FLOAT8E8M0:
        return _to_e8m0(x.astype(np.float64), saturate, round_mode)
    if to in _SATURATING_FLOAT8 and saturate:
        # Clamping before rounding is the spec's "[x] > FLT_MAX -> FLT_MAX" (Inf included, NaN
        # stays NaN); float64 holds every source value exactly, so there is one rounding.
        limit = float(ml_dtypes.finfo(dtype).max)
        return np.clip(x.astype(np.float64), -limit, limit).astype(dtype)
    return x.astype(dtype)


def _to_e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """float8e8m0: a bare exponent, 2 ** (code - 127) for codes 0..254, 255 is NaN.

    The sign is dropped (negative inputs are undefined in the spec).  round_mode picks the power of
    two: 'down' the one below, 'up' the one above (unless exact), 'nearest' the closer one, ties up.
    Out of range (0 and Inf included) saturates to the extreme codes, or is NaN without saturate.
    """
    magnitude = np.abs(x)
    mantissa, exponent = np.frexp(magnitude)  # magnitude = mantissa * 2**exponent, mantissa in [0.5, 1)
    power = exponent.astype(np.int64) - 1  # floor(log2(magnitude))
    if round_mode == "up":
        power += mantissa > 0.5
    elif round_mode == "nearest":
        power += mantissa >= 0.75  # 1.5 * 2**power is the midpoint
    elif round_mode != "down":
        raise DczError(f"Cast: round_mode {round_mode!r} is not supported (up, down, nearest).")
    code = power + _E8M0_BIAS
    too_small = (code < 0) | (magnitude == 0)
    too_large = (code > _E8M0_MAX_CODE) | np.isinf(magnitude)
    if saturate:
        code = np.where(too_small, 0, np.where(too_large, _E8M0_MAX_CODE, code))
    else:
        code = np.where(too_small | too_large, _E8M0_NAN_CODE, code)
    code = np.where(np.isnan(magnitude), _E8M0_NAN_CODE, code)
    return code.astype(np.uint8).view(ml_dtypes.float8_e8m0fnu)


def _rounding_attrs(attrs: dict, ctx) -> tuple[bool, str]:
    saturate = bool(attrs.get("saturate", 1)) if ctx.opset >= 19 else True
    return saturate, str_attr(attrs, "round_mode", "up")


@op("Cast")
def cast(inputs, attrs, ctx):
    return [cast_to(np.asarray(inputs[0]), attrs["to"], *_rounding_attrs(attrs, ctx))]


@op("CastLike")
def cast_like(inputs, attrs, ctx):
    target = np.asarray(inputs[1]).dtype
    try:
        to = helper.np_dtype_to_tensor_dtype(target)
    except (KeyError, TypeError, ValueError):
        raise DczError(f"CastLike: target type {target} is not supported.") from None
    return [cast_to(np.asarray(inputs[0]), to, *_rounding_attrs(attrs, ctx))]


def _bits(dtype: np.dtype) -> int:
    return _SUB_BYTE_BITS.get(dtype, dtype.itemsize * 8)


@op("BitCast")
def bitcast(inputs, attrs, ctx):
    """The same bits read as another type of the same width (little-endian, as numpy stores them)."""
    x = np.asarray(inputs[0])
    dtype = numeric_dtype(attrs["to"], "BitCast")
    if _bits(x.dtype) != _bits(dtype):
        raise DczError(f"BitCast node {ctx.node_name!r}: {x.dtype} ({_bits(x.dtype)} bits) and {dtype} "
                       f"({_bits(dtype)} bits) differ in width.")
    if x.dtype in _SUB_BYTE_BITS or dtype in _SUB_BYTE_BITS:
        raise DczError(f"BitCast node {ctx.node_name!r}: {x.dtype} -> {dtype}: sub-byte types are not supported.")
    return [x.view(dtype)]  # same itemsize: any layout views
