"""`linear`: TensorFlow-style linear quantization, `value = (code - zero_point) * scale`.

Element i belongs to channel `(i // inner) % channels` (channels = 1 for per-tensor), so the codec
needs no shape: `inner` is the product of the dims after the channel axis.  Roles:
`codes` (uint8 if bits <= 8 else uint16, one per element), `scales` (float32 per channel, finite
and > 0), `zero_points` (codes' dtype per channel, < 2^bits).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DczError
from .slots import uint_dtype

NAME = "linear"
ROLES = ("codes", "scales", "zero_points")


def label(params: dict) -> str:
    kind = "sym" if params.get("symmetric") else ""
    return f"linear{params.get('bits', '?')}{kind}{'/ch' if params.get('channels', 1) > 1 else ''}"



def check(params: dict, target, parts: dict) -> None:
    if set(params) != {"bits", "channels", "inner", "symmetric"} or type(params["symmetric"]) is not bool \
            or any(type(params[k]) is not int for k in ("bits", "channels", "inner")):
        raise DczError("linear needs params {bits, channels, inner, symmetric}")
    bits, channels, inner = params["bits"], params["channels"], params["inner"]
    # channels x inner divides n and is at most n: an empty tensor has C = I = 1 (a larger
    # product, such as inner 2^62, would pass "divides 0" but numpy cannot lay it out)
    if not 2 <= bits <= 16 or channels < 1 or inner < 1 or target.count % (channels * inner) \
            or channels * inner > max(target.count, 1):
        raise DczError("linear params do not fit the tensor (bits 2..16, channels x inner must divide "
                       "its element count, and be 1 for an empty tensor)")
    if target.dtype not in ("float32", "float16", "float64"):
        raise DczError(f"linear cannot produce {target.dtype}")
    codes, scales, zero_points = parts["codes"], parts["scales"], parts["zero_points"]
    if codes.dtype != uint_dtype(bits) or codes.count != target.count:
        raise DczError("linear codes have the wrong type or count")
    if scales.dtype != "float32" or scales.count != channels or zero_points.dtype != uint_dtype(bits) \
            or zero_points.count != channels:
        raise DczError("linear scales/zero points need one float32 / code per channel")


def decode(params: dict, target, arrays: dict) -> np.ndarray:
    bits, channels, inner = params["bits"], params["channels"], params["inner"]
    codes, scales, zero_points = arrays["codes"], arrays["scales"], arrays["zero_points"]
    if not np.all(np.isfinite(scales)) or not np.all(scales > 0):
        raise DczError("linear scale is not finite and positive")
    if int(zero_points.max(initial=0)) >> bits or int(codes.max(initial=0)) >> bits:
        raise DczError(f"linear code or zero point over {bits} bits")
    shaped = codes.reshape(-1, channels, inner).astype(np.int32) - zero_points.astype(np.int32)[:, None]
    with np.errstate(over="ignore"):  # a float16 target may overflow to inf: what the file says
        return (shaped.astype(np.float32) * scales[:, None]).astype(target.dtype).reshape(-1)


def quantize(values: np.ndarray, bits: int, channels: int = 1, inner: int = 1, symmetric: bool = False):
    """(codes, scales, zero_points) for `values` (flat), the seed's way.

    The range is widened to include 0 so that zero is exact; the zero point is the rounded
    quantized min (`round(-min / scale)`), and each code is `round(x / scale) + zero_point` -
    rounding the min once instead of rounding `x - min`, so errors do not drift in one direction.
    Symmetric: the codes are offset by 2^(bits-1) (the zero point), over a range +-max|x|.
    """
    top = (1 << bits) - 1
    grouped = values.reshape(-1, channels, inner).astype(np.float64)
    low = grouped.min(axis=(0, 2), initial=0.0)  # the range always includes 0 (an empty one too)
    high = grouped.max(axis=(0, 2), initial=0.0)
    if symmetric:
        half = (1 << (bits - 1)) - 1  # restricted range -127..127, as onnxruntime's int8 weights
        scales = np.maximum(np.abs(low), high) / half
        zero_points = np.full(channels, 1 << (bits - 1), dtype=np.int64)
    else:
        scales = (high - low) / top
        zero_points = None
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)  # all-zero channel: any scale works
    if zero_points is None:
        zero_points = np.clip(np.round(-low / scales), 0, top).astype(np.int64)
    codes = np.clip(np.round(grouped / scales[:, None]) + zero_points[:, None], 0, top)
    dtype = uint_dtype(bits)
    return codes.astype(dtype).reshape(-1), scales, zero_points.astype(dtype)


def channel_layout(shape: tuple[int, ...], axis: int | None) -> tuple[int, int]:
    """(channels, inner) for quantizing along `axis` (None: per tensor)."""
    if axis is None:
        return 1, 1
    return shape[axis], math.prod(shape[axis + 1:])


def channel_axis(shape: tuple[int, ...], channels: int, inner: int) -> int | None:
    """Inverse of channel_layout: the axis with `channels` entries and `inner` elements after it."""
    trailing = 1
    for axis in range(len(shape) - 1, -1, -1):
        if trailing == inner and shape[axis] == channels:
            return axis
        trailing *= shape[axis]
    return None
