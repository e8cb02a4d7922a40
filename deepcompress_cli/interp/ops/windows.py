"""Signal windows (opset 17): HannWindow, HammingWindow, BlackmanWindow.

Each is a cosine sum w[n] = a0 - a1 cos(2 pi n / L) + a2 cos(4 pi n / L), n = 0 .. size-1, with
L = size (periodic, the default: for spectral analysis) or size - 1 (symmetric, for filter
design).  A symmetric window of one sample is [1], as numpy's np.hanning(1).
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from ...errors import DczError
from . import op

_COEFFICIENTS = {  # name -> (a0, a1, a2)
    "HannWindow": (0.5, 0.5, 0.0),
    "HammingWindow": (25 / 46, 21 / 46, 0.0),
    "BlackmanWindow": (0.42, 0.5, 0.08),
}


def output_datatype(attrs: dict, name: str, ctx) -> np.dtype:
    """The numpy dtype of the `output_datatype` attribute of a generator op (default float32)."""
    to = attrs.get("output_datatype", 1)
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(to))
    except (KeyError, TypeError, ValueError):
        raise DczError(f"{name} node {ctx.node_name!r}: output_datatype {to} is not a "
                       f"tensor type.") from None


def _window(name, a0, a1, a2):
    def kernel(inputs, attrs, ctx):
        if np.size(inputs[0]) != 1 or inputs[0].dtype.kind not in "iu":
            raise DczError(f"{name} node {ctx.node_name!r}: size must be one integer.")
        size = int(np.asarray(inputs[0]).reshape(-1)[0])
        dtype = output_datatype(attrs, name, ctx)
        ctx.check_size(name, [size], dtype.itemsize)
        length = size if attrs.get("periodic", 1) else size - 1
        if length == 0:
            return [np.ones(size, dtype)]
        phase = 2 * np.pi * np.arange(size) / length
        return [(a0 - a1 * np.cos(phase) + a2 * np.cos(2 * phase)).astype(dtype)]
    return kernel


for _name, _coefficients in _COEFFICIENTS.items():
    op(_name)(_window(_name, *_coefficients))
