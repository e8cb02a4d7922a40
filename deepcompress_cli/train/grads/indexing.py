"""Backward rules of ops that move or select values: slicing, splitting, padding and cropping,
gathering, compressing, reversing, broadcasting, tiling and block rearrangements.

Most of them are found by running the forward kernel itself on the input's element numbers
(`source_indices`): each output element then names the input element it was copied from, and the
gradient is `g` summed into those elements.  That follows every attribute, default and opset form
of the kernel by construction (negative steps, clamped bounds, negative pads, reflect modes ...)
instead of re-deriving them.  Expand, Tile, Split and Gather have direct forms: they run on big
tensors (embedding tables) where numbering every element would cost more than the rule.
"""

from __future__ import annotations

import math

import numpy as np

from ...interp.ops import KERNELS, OpContext
from ...interp.ops.shape import ints, norm_axis, pad_amounts, str_attr
from . import grad, unbroadcast


def source_indices(op_name, inputs, attrs, opset) -> np.ndarray:
    """For every output element of the forward op, 1 + the flat index of the input-0 element it
    copies, or 0 where it copies none (the kernel must fill those with 0: padding, extrapolation)."""
    x = inputs[0]
    numbers = np.arange(1, x.size + 1, dtype=np.int64).reshape(x.shape)
    return KERNELS[op_name]([numbers, *inputs[1:]], attrs, OpContext(opset))[0]


def scatter_sources(sources: np.ndarray, g: np.ndarray, shape) -> np.ndarray:
    """The input gradient: g summed into the elements `sources` (from source_indices) name."""
    size = math.prod(shape)
    total = np.bincount(sources.reshape(-1), weights=g.reshape(-1), minlength=size + 1)
    return total[1:].astype(np.float32).reshape(shape)


def _by_sources(inputs, attrs, g, opset, op_name):
    sources = source_indices(op_name, inputs, attrs, opset)
    return [scatter_sources(sources, g, inputs[0].shape)] + [None] * (len(inputs) - 1)


def _copies(op_name):
    def rule(inputs, y, attrs, g, needs, opset):
        return _by_sources(inputs, attrs, g, opset, op_name)
    return rule


for _name in ("Slice", "GatherElements", "GatherND", "DepthToSpace", "SpaceToDepth", "CenterCropPad",
              "ReverseSequence", "Compress"):
    grad(_name)(_copies(_name))


@grad("Pad")
def _pad(inputs, y, attrs, g, needs, opset):
    """Constant padding copies each kept input element once: its gradient is g's window over
    them (the pad value, a constant, gets none).  Reflect, edge and wrap copy some elements
    several times: g summed by source (see the module docstring)."""
    if str_attr(attrs, "mode", "constant") != "constant":
        return _by_sources(inputs, attrs, g, opset, "Pad")
    x = inputs[0]
    begin, end = pad_amounts(inputs, attrs, opset)
    kept = [d - max(-b, 0) - max(-e, 0) for d, b, e in zip(x.shape, begin, end)]  # after negative pads crop
    window = g[tuple(slice(max(b, 0), max(b, 0) + k) for b, k in zip(begin, kept))]
    dx = np.zeros(x.shape, np.float32)
    dx[tuple(slice(max(-b, 0), max(-b, 0) + k) for b, k in zip(begin, kept))] = window
    return [dx] + [None] * (len(inputs) - 1)


@grad("Split", outputs="all")
def _split(inputs, y, attrs, g, needs, opset):
    """The parts' gradients side by side (zeros for a part no gradient reached): the outputs'
    own shapes give the sizes, however the node stated them."""
    axis = norm_axis(attrs.get("axis", 0), inputs[0].ndim, "Split")
    parts = [np.zeros(yk.shape, np.float32) if gk is None else gk for yk, gk in zip(y, g)]
    return [np.concatenate(parts, axis=axis)] + [None] * (len(inputs) - 1)


@grad("Expand")
def _expand(inputs, y, attrs, g, needs, opset):
    return [unbroadcast(g, inputs[0].shape), None]


@grad("Tile")
def _tile(inputs, y, attrs, g, needs, opset):
    """Output axis i is repeats[i] copies of input axis i one after the other: sum the copies."""
    x, repeats = inputs[0], ints(inputs[1])
    copies = g.reshape([n for r, d in zip(repeats, x.shape) for n in (r, d)])
    return [copies.sum(axis=tuple(range(0, 2 * x.ndim, 2))).astype(np.float32), None]


@grad("Gather")
def _gather(inputs, y, attrs, g, needs, opset):
    """Rows picked several times (a token repeated in a batch) get the sum of their gradients."""
    x, indices = inputs
    axis = norm_axis(attrs.get("axis", 0), x.ndim, "Gather")
    n = x.shape[axis]
    rows = np.asarray(indices, dtype=np.int64).reshape(-1)  # negative ones count from the end, as in np.take
    before, after = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:])
    picked = g.reshape(before, rows.size, after).transpose(1, 0, 2)
    dx = np.zeros((n, before, after), np.float32)
    np.add.at(dx, rows, picked)
    return [dx.transpose(1, 0, 2).reshape(x.shape), None]
