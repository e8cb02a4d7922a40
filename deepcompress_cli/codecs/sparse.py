"""`sparse`: the seed's relative index.  Kept weights are stored as (gap, value) entries in C order.

Entry i sits `gaps[i] + 1` positions after entry i-1 (the first after position -1).  A gap must fit
in `index_bits` bits, so a run of more than 2^bits - 1 pruned weights gets *filler* entries of value 0
every 2^bits positions, exactly as in the paper.  Fillers also run to the end of the tensor, so
fewer than 2^bits positions follow the last entry: that bounds the tensor size by the entry count.
"""

from __future__ import annotations

import numpy as np

from ..errors import DczError
from .slots import uint_dtype

NAME = "sparse"
ROLES = ("gaps", "values")
MAX_INDEX_BITS = 16


def label(params: dict) -> str:
    return f"sparse{params.get('index_bits', '?')}"



def check(params: dict, target, parts: dict) -> None:
    if set(params) != {"index_bits"} or type(params["index_bits"]) is not int \
            or not 1 <= params["index_bits"] <= MAX_INDEX_BITS:
        raise DczError(f"sparse needs params {{index_bits: 1..{MAX_INDEX_BITS}}}")
    bits = params["index_bits"]
    gaps, values = parts["gaps"], parts["values"]
    if gaps.dtype != uint_dtype(bits) or values.dtype != target.dtype or gaps.count != values.count:
        raise DczError("sparse gaps/values have the wrong type or differ in length")
    if gaps.count > target.count or (gaps.count + 1) << bits <= target.count:
        raise DczError(f"sparse: {gaps.count} entries cannot cover {target.count} positions")


def positions(params: dict, target, gaps: np.ndarray) -> np.ndarray:
    """Checked positions of the entries (int64, one per gap), without allocating the tensor."""
    bits = params["index_bits"]
    if len(gaps) and int(gaps.max()) >= 1 << bits:
        raise DczError(f"sparse gap over {bits} bits")
    at = np.cumsum(gaps, dtype=np.int64)
    at += np.arange(len(gaps), dtype=np.int64)
    end = int(at[-1]) + 1 if len(at) else 0
    if not 0 <= target.count - end < 1 << bits:
        raise DczError(f"sparse entries end at {end}, tensor has {target.count} positions")
    return at


def decode(params: dict, target, arrays: dict) -> np.ndarray:
    at = positions(params, target, arrays["gaps"])
    values = arrays["values"]
    out = np.zeros(target.count, dtype=values.dtype)
    out[at] = values
    return out


def encode(flat: np.ndarray, keep: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(gaps, values) for the positions where `keep` is true, fillers included."""
    span = 1 << index_bits
    kept = np.flatnonzero(keep)
    # Distance of each kept weight from the previous entry, and one extra "virtual" step to the end.
    steps = np.diff(np.concatenate(([-1], kept, [flat.size - 1 + span])))
    fillers = (steps - 1) // span  # entries needed before each kept weight (and before the end)
    fillers[-1] = max(0, (steps[-1] - span) // span)  # the tail needs entries only every `span`
    entries = fillers.sum() + len(kept)
    gaps = np.full(entries, span - 1, dtype=uint_dtype(index_bits))
    values = np.zeros(entries, dtype=flat.dtype)
    real = np.cumsum(fillers[:-1] + 1) - 1  # entry index of each kept weight
    gaps[real] = steps[:-1] - 1 - fillers[:-1] * span
    values[real] = flat[kept]
    return gaps, values
