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


def check_scales(scales: np.ndarray) -> None:
    if not np.all(np.isfinite(scales)) or not np.all(scales > 0):
        raise DczError("scale is not finite and positive")


def decode(params: dict, target, arrays: dict) -> np.ndarray:
    channels, inner = params["channels"], params["inner"]
    values, scales = arrays["values"], arrays["scales"]
    check_scales(scales)
    shaped = values.reshape(-1, channels, inner).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf (float16 targets): what the file says
        return (shaped * scales[:, None]).astype(target.dtype).reshape(-1)


def channel_scales(values: np.ndarray, channels: int, inner: int, method: str = "max") -> np.ndarray:
    """One scale per channel for normalizing `values` (flat): by `method` "max" the channel's
    max |w| (every normalized value then lies in [-1, 1]: a linear range over them clips nothing),
    by "rms" the root mean square of its non-zero weights (pruned zeros do not shrink it).  An
    all-zero channel, or one too small for a float32 scale, gets 1.0 (any positive scale works).
    """
    grouped = values.reshape(-1, channels, inner).astype(np.float64)
    if method == "max":
        peak = np.abs(grouped).max(axis=(0, 2), initial=0.0)
    elif method == "rms":
        count = np.count_nonzero(grouped, axis=(0, 2))
        peak = np.sqrt((grouped ** 2).sum(axis=(0, 2)) / np.maximum(count, 1))
    else:
        raise ValueError(f"unknown scale method {method!r}")
    with np.errstate(over="ignore"):
        scales = peak.astype(np.float32)
    ok = np.isfinite(scales) & (scales >= np.finfo(np.float32).tiny)
    return np.where(ok, scales, np.float32(1.0)).astype(np.float32)


def normalize(values: np.ndarray, scales: np.ndarray, channels: int, inner: int) -> np.ndarray:
    """`values` (flat) divided by their channel's scale, in float64."""
    grouped = values.reshape(-1, channels, inner).astype(np.float64)
    return (grouped / scales.astype(np.float64)[:, None]).reshape(-1)
