"""`bitpack`: unsigned integers stored at a fixed width of `bits` bits, LSB first.

Value i occupies bits [i*bits, (i+1)*bits) of the stream, bit k of a byte being (byte >> k) & 1.
This is how the seed's 5-bit fc / 8-bit conv indices are stored before Huffman coding.
"""

from __future__ import annotations

import numpy as np

from ..errors import DczError

NAME = "bitpack"
ROLES = ("packed",)


def label(params: dict) -> str:
    return f"pack{params.get('bits', '?')}"


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def check(params: dict, target, parts: dict) -> None:
    if set(params) != {"bits"} or type(params["bits"]) is not int or not 1 <= params["bits"] <= 16:
        raise DczError("bitpack needs params {bits: 1..16}")
    if target.dtype not in ("uint8", "uint16") or (target.dtype == "uint8" and params["bits"] > 8):
        raise DczError(f"bitpack cannot produce {target.dtype} at {params['bits']} bits")
    packed = parts["packed"]
    if packed.dtype != "uint8" or packed.count != packed_size(target.count, params["bits"]):
        raise DczError("bitpack stream length does not match count x bits")


def decode(params: dict, target, arrays: dict) -> np.ndarray:
    # Unpack to one bit per byte, widen each value to its dtype's full width, pack again:
    # all in C loops (np.unpackbits/packbits), no per-value Python work.
    bits, width = params["bits"], np.dtype(target.dtype).itemsize * 8
    pad = len(arrays["packed"]) * 8 - target.count * bits  # 0..7 unused high bits of the last byte
    if pad and int(arrays["packed"][-1]) >> (8 - pad):
        raise DczError("bitpack pad bits are not zero")
    planes = np.unpackbits(arrays["packed"], bitorder="little")[:target.count * bits].reshape(target.count, bits)
    full = np.zeros((target.count, width), dtype=np.uint8)
    full[:, :bits] = planes
    return np.packbits(full, axis=1, bitorder="little").reshape(-1).view("<" + np.dtype(target.dtype).str[1:])


def encode(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8/uint16 `values` at `bits` bits each."""
    if len(values) and int(values.max()) >> bits:
        raise ValueError(f"values do not fit in {bits} bits")
    width = values.dtype.itemsize * 8
    planes = np.unpackbits(values.astype(values.dtype.newbyteorder("<")).view(np.uint8), bitorder="little")
    return np.packbits(planes.reshape(len(values), width)[:, :bits].reshape(-1), bitorder="little")
