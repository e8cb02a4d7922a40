"""`codebook`: weight sharing.  `indices[i]` picks one of the `codebook` values (k-means centroids)."""

from __future__ import annotations

import numpy as np

from ..errors import DczError
from .slots import uint_dtype

NAME = "codebook"
ROLES = ("codebook", "indices")


def label(params: dict) -> str:
    return f"codebook{params.get('bits', '?')}"



def check(params: dict, target, parts: dict) -> None:
    if set(params) != {"bits"} or type(params["bits"]) is not int or not 1 <= params["bits"] <= 16:
        raise DczError("codebook needs params {bits: 1..16}")
    codebook, indices = parts["codebook"], parts["indices"]
    if codebook.dtype != target.dtype or not 1 <= codebook.count <= 1 << params["bits"]:
        raise DczError("codebook must hold 1..2^bits values of the tensor's dtype")
    if indices.dtype != uint_dtype(params["bits"]) or indices.count != target.count:
        raise DczError("codebook indices have the wrong type or count")


def decode(params: dict, target, arrays: dict) -> np.ndarray:
    codebook, indices = arrays["codebook"], arrays["indices"]
    if len(indices) and int(indices.max()) >= len(codebook):
        raise DczError(f"codebook index {int(indices.max())} >= codebook size {len(codebook)}")
    return codebook[indices]
