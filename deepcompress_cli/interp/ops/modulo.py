"""Mod: the remainder with the sign of the divisor (fmod=0, Python's %) or of the dividend
(fmod=1, C's fmod).  Before opset 28, fmod=0 is for integers only.

numpy's np.mod has the IEEE special cases opset 28 spells out (mod(-0, 2) = +0, mod(-1, inf) =
inf, mod(inf, y) = NaN), and np.fmod those of C.  A zero divisor gives NaN for floats and 0 for
integers (numpy's choice; the spec leaves it undefined), without warnings.
"""

from __future__ import annotations

import numpy as np

from ...errors import DczError
from . import op
from .broadcast import check_broadcast


@op("Mod")
def mod(inputs, attrs, ctx):
    a, b = inputs
    fmod = bool(attrs.get("fmod", 0))
    is_int = a.dtype.kind in "iu"
    if not fmod and not is_int and ctx.opset < 28:
        raise DczError(f"Mod node {ctx.node_name!r}: fmod must be 1 for {a.dtype} inputs "
                       f"before opset 28.")
    check_broadcast(ctx, "Mod", a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.fmod(a, b) if fmod else np.mod(a, b)
    return [np.asarray(y).astype(a.dtype, copy=False)]
