"""Backward rules: for each differentiable op, the gradients of its inputs from its output's.

Every rule has the signature

    def rule(inputs, y, attrs, g, needs, opset) -> list[np.ndarray | None]

`inputs` are the node's forward inputs, `y` its (first) forward output, `g` the gradient of the
loss with respect to `y`, `needs[i]` whether input i wants a gradient (others may be None).  A
rule registered with `grad(..., outputs="all")` (Split, ...) gets instead `y` the list of all the
node's outputs and `g` the list of their gradients (None where no gradient reached an output).
Rules follow the forward kernels in `interp/ops/` (same attributes and defaults) and, like them,
loop at most over kernel offsets, never over pixels or weights.

The rules live in one module per op family in this package; a new family is one new file
(`load_all` lists the package, as the interpreter's kernels do).
"""

from __future__ import annotations

import numpy as np

GRADS: dict = {}
ALL_OUTPUTS: set[str] = set()  # ops whose rule takes every output and its gradient


def grad(*names: str, outputs: str = "first"):
    def register(rule):
        for name in names:
            GRADS[name] = rule
            if outputs == "all":
                ALL_OUTPUTS.add(name)
        return rule
    return register


def unbroadcast(g: np.ndarray, shape) -> np.ndarray:
    """Sum a broadcast result's gradient back down to an operand's shape."""
    shape = tuple(shape)
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    axes = tuple(i for i, (a, b) in enumerate(zip(g.shape, shape)) if b == 1 and a != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def load_all() -> None:
    """Import every rule module of this package (each registers its rules on import)."""
    import importlib
    import pkgutil
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}")


load_all()
