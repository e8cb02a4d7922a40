"""Linear algebra on batches of matrices: Det."""

from __future__ import annotations

import numpy as np

from ...errors import DczError
from . import op


@op("Det")
def det(inputs, attrs, ctx):
    x = inputs[0]
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise DczError(f"Det node {ctx.node_name!r}: needs [..., M, M] matrices, got shape {list(x.shape)}.")
    # LU in float64 (numpy.linalg has no float16/bfloat16), the result in the input's dtype
    return [np.asarray(np.linalg.det(x.astype(np.float64))).astype(x.dtype)]
