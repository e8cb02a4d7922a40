"""The size guard of binary ops whose output broadcasting can grow past both inputs.

Broadcasting [N, 1] with [1, N] makes N * N values from 2 * N: a model of a few bytes could
otherwise ask for terabytes.  No ops live here; the binary kernels of other modules call it.
"""

from __future__ import annotations

import math

import numpy as np

from . import OpContext


def check_broadcast(ctx: OpContext, op_name: str, a: np.ndarray, b: np.ndarray) -> None:
    """Refuse a broadcast of a and b past ctx.max_bytes, before computing it.

    The output never holds more than size(a) * size(b) values, so the exact shape is worked
    out only when that product could pass the cap.
    """
    if np.size(a) * np.size(b) * 8 > ctx.max_bytes:
        shape = np.broadcast_shapes(np.shape(a), np.shape(b))
        if math.prod(shape) > max(np.size(a), np.size(b)):
            ctx.check_size(op_name, shape, np.result_type(a, b).itemsize)
