"""`scale` (encoding version 2): per-channel scaling, `value = values[i] * scales[(i // inner) % channels]`.

It divides each output channel by its own scale so that what follows in the chain (`sparse`,
a per-tensor `linear`, one `codebook`) sees values of one common range: per-channel steps and
codebooks then combine with pruning, which a per-channel `linear` cannot (a sparse entry list has
no channel layout).  Roles: `values` (the tensor's dtype, one per element) and `scales` (float32
per channel, finite and > 0).  Channel layout as in `linear`: `inner` is the product of the dims
after the channel axis.
"""

from __future__ import annotations

import numpy as np

from ..errors import DczError

NAME = "scale"
ROLES = ("values", "scales")
SINCE = 2  # the encoding version that defines this codec
FLOAT_TARGETS = ("float32", "float16", "float64")


def label(params: dict) -> str:
    return "scale/ch" if params.get("channels", 1) > 1 else "scale"


def check(params: dict, target, parts: dict) -> None:
    if set(params) != {"channels", "inner"} or any(type(params[k]) is not int for k in ("channels", "inner")):
        raise DczError("scale needs params {channels, inner}")
    channels, inner = params["channels"], params["inner"]
    # as in linear: channels x inner divides n and is at most n (1 x 1 for an empty tensor)
    if channels < 1 or inner < 1 or target.count % (channels * inner) or channels * inner > max(target.count, 1):
        raise DczError("scale params do not fit the tensor (channels x inner must divide its element count, "
                       "and be 1 for an empty tensor)")
    if target.dtype not in FLOAT_TARGETS:
        raise DczError(f"scale cannot produce {target.dtype}")
    values, scales = parts["values"], parts["scales"]
    if values.dtype != target.dtype or values.count != target.count:
        raise DczError("scale values have the wrong type or count")
    if scales.dtype != "float32" or scales.count != channels:
        raise DczError("scale needs one float32 scale per channel")


def decode(params: dict, target, arrays: dict) -> np.ndarray:
    channels, inner = params["channels"], params["inner"]
    values, scales = arrays["values"], arrays["scales"]
    if not np.all(np.isfinite(scales)) or not np.all(scales > 0):
        raise DczError("scale is not finite and positive")
    shaped = values.reshape(-1, channels, inner).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf (float16 targets): what the file says
        return (shaped * scales[:, None]).astype(target.dtype).reshape(-1)


def channel_scales(values: np.ndarray, channels: int, inner: int) -> np.ndarray:
    """One scale per channel for normalizing `values` (flat): the channel's max |w|, so every
    normalized value lies in [-1, 1].  An all-zero channel gets 1.0 (any positive scale works).

    Max rather than RMS: a per-tensor linear grid then spans each channel's own range exactly
    (nothing is clipped), and after normalization every channel's largest weight sits at +-1,
    so one codebook or one linear range serves channels whose raw ranges differ by orders of
    magnitude (batch-norm-folded and depthwise convs).
    """
    grouped = np.abs(values.reshape(-1, channels, inner).astype(np.float64))
    peak = grouped.max(axis=(0, 2), initial=0.0)
    scales = peak.astype(np.float32)
    # float32 rounding of the peak may make peak / scale > 1 by an ulp; a tiny scale may be 0 or
    # subnormal as float32: then 1.0 (the channel is zero, or too small to matter)
    ok = np.isfinite(scales) & (scales >= np.finfo(np.float32).tiny)
    return np.where(ok, scales, np.float32(1.0)).astype(np.float32)


def normalize(values: np.ndarray, scales: np.ndarray, channels: int, inner: int) -> np.ndarray:
    """`values` (flat) divided by their channel's scale, in float64."""
    grouped = values.reshape(-1, channels, inner).astype(np.float64)
    return (grouped / scales.astype(np.float64)[:, None]).reshape(-1)
