"""Trigonometric and hyperbolic functions (Sin ... Atanh): numpy's ufuncs, dtype kept.

Out-of-domain inputs (asin(2), acosh(0.5), atanh(1)) give NaN or +-inf as IEEE says, silently.
"""

from __future__ import annotations

import numpy as np

from . import op

_FUNCTIONS = {
    "Sin": np.sin, "Cos": np.cos, "Tan": np.tan,
    "Asin": np.arcsin, "Acos": np.arccos, "Atan": np.arctan,
    "Sinh": np.sinh, "Cosh": np.cosh,
    "Asinh": np.arcsinh, "Acosh": np.arccosh, "Atanh": np.arctanh,
}


def _kernel(fn):
    def kernel(inputs, attrs, ctx):
        x = inputs[0]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return [np.asarray(fn(x)).astype(x.dtype, copy=False)]
    return kernel


for _name, _fn in _FUNCTIONS.items():
    op(_name)(_kernel(_fn))
