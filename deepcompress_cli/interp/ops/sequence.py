"""Sequences and optionals: a sequence is a Python list of arrays, an empty optional is None.

Sequence ops return new lists (values are never modified in place, ops/__init__.py).
"""

from __future__ import annotations

import numpy as np

from ...errors import DczError
from . import op
from .shape import input_at, norm_axis


def position(ctx, op_name: str, value, length: int, default: int, end_ok: bool) -> int:
    """A possibly negative position in a sequence of `length` (up to `length` itself when `end_ok`)."""
    pos = default if value is None else int(np.asarray(value).reshape(-1)[0])
    high = length if end_ok else length - 1
    if not -length <= pos <= high:
        raise DczError(f"{op_name} node {ctx.node_name!r}: position {pos} is outside [{-length}, {high}].")
    return pos + length if pos < 0 else pos


def sequence_input(ctx, op_name: str, value) -> list:
    if not isinstance(value, list):
        raise DczError(f"{op_name} node {ctx.node_name!r}: input 0 is not a sequence.")
    return value


@op("SequenceEmpty")
def sequence_empty(inputs, attrs, ctx):
    return [[]]


@op("SequenceConstruct")
def sequence_construct(inputs, attrs, ctx):
    return [list(inputs)]


@op("SequenceInsert")
def sequence_insert(inputs, attrs, ctx):
    seq = sequence_input(ctx, "SequenceInsert", inputs[0])
    pos = position(ctx, "SequenceInsert", input_at(inputs, 2), len(seq), len(seq), end_ok=True)
    return [[*seq[:pos], inputs[1], *seq[pos:]]]


@op("SequenceAt")
def sequence_at(inputs, attrs, ctx):
    seq = sequence_input(ctx, "SequenceAt", inputs[0])
    return [seq[position(ctx, "SequenceAt", inputs[1], len(seq), 0, end_ok=False)]]


@op("SequenceErase")
def sequence_erase(inputs, attrs, ctx):
    seq = sequence_input(ctx, "SequenceErase", inputs[0])
    pos = position(ctx, "SequenceErase", input_at(inputs, 1), len(seq), -1, end_ok=False)
    return [seq[:pos] + seq[pos + 1:]]


@op("SequenceLength")
def sequence_length(inputs, attrs, ctx):
    return [np.array(len(sequence_input(ctx, "SequenceLength", inputs[0])), np.int64)]


@op("SplitToSequence")
def split_to_sequence(inputs, attrs, ctx):
    """Pieces of `split` sizes on `axis`: a scalar is one size (the last piece may be shorter),
    none is pieces of 1, squeezed unless keepdims."""
    x, split = inputs[0], input_at(inputs, 1)
    axis = norm_axis(attrs.get("axis", 0), x.ndim, "SplitToSequence")
    length = x.shape[axis]
    if split is None:
        pieces = np.split(x, length, axis=axis) if length else []
        return [pieces if attrs.get("keepdims", 1) else [np.squeeze(p, axis) for p in pieces]]
    split = np.asarray(split).astype(np.int64)
    if split.ndim == 0:
        if split <= 0:
            raise DczError(f"SplitToSequence node {ctx.node_name!r}: split {int(split)} is not positive.")
        sizes = [int(split)] * (length // int(split)) + ([length % int(split)] if length % int(split) else [])
    else:
        sizes = [int(s) for s in split]
    if sum(sizes) != length or any(s < 0 for s in sizes):
        raise DczError(f"SplitToSequence node {ctx.node_name!r}: split {sizes[:8]} does not add up to {length}.")
    return [np.split(x, np.cumsum(sizes)[:-1], axis=axis)]


@op("ConcatFromSequence")
def concat_from_sequence(inputs, attrs, ctx):
    """Concatenation on `axis`, or stacking on a new one with new_axis=1 (axis then up to rank)."""
    seq = sequence_input(ctx, "ConcatFromSequence", inputs[0])
    if not seq:
        raise DczError(f"ConcatFromSequence node {ctx.node_name!r}: the sequence is empty.")
    new_axis = bool(attrs.get("new_axis", 0))
    axis = norm_axis(attrs["axis"], seq[0].ndim + new_axis, "ConcatFromSequence")
    try:
        return [np.stack(seq, axis=axis) if new_axis else np.concatenate(seq, axis=axis)]
    except ValueError:
        raise DczError(f"ConcatFromSequence node {ctx.node_name!r}: shapes {[list(t.shape) for t in seq][:8]} "
                       f"do not {'stack' if new_axis else 'concatenate'} on axis {axis}.") from None


@op("Optional")
def optional(inputs, attrs, ctx):
    return [input_at(inputs, 0)]


@op("OptionalHasElement")
def optional_has_element(inputs, attrs, ctx):
    return [np.array(input_at(inputs, 0) is not None)]


@op("OptionalGetElement")
def optional_get_element(inputs, attrs, ctx):
    """The optional's value; a plain tensor or sequence (opset 18+) is its own value."""
    if inputs[0] is None:
        raise DczError(f"OptionalGetElement node {ctx.node_name!r}: the optional is empty.")
    return [inputs[0]]
