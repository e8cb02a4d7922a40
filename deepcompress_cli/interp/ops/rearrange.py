"""Spatial rearrangements: SpaceToDepth, DepthToSpace, CenterCropPad, Col2Im, MaxUnpool.

Block moves are one reshape-transpose-reshape; Col2Im adds one strided view of the padded image
per kernel offset (as the pools do), so its loop runs prod(block_shape) times, never over pixels.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ...errors import DczError
from . import op
from .indexing import checked_indices
from .shape import input_at, ints, norm_axes, str_attr


def _blocksize(x, attrs, op_name: str, ctx) -> int:
    block = int(attrs.get("blocksize", 0))
    if x.ndim != 4 or block < 1:
        raise DczError(f"{op_name} node {ctx.node_name!r}: needs a 4-D input and a positive blocksize "
                       f"(got shape {list(x.shape)}, blocksize {block}).")
    return block


@op("SpaceToDepth")
def space_to_depth(inputs, attrs, ctx):
    x = inputs[0]
    b = _blocksize(x, attrs, "SpaceToDepth", ctx)
    n, c, h, w = x.shape
    if h % b or w % b:
        raise DczError(f"SpaceToDepth node {ctx.node_name!r}: {h}x{w} is not a multiple of blocksize {b}.")
    blocks = x.reshape(n, c, h // b, b, w // b, b)
    mode = str_attr(attrs, "mode", "DCR")  # the inverse orders of DepthToSpace (mode: opset 28)
    if mode == "DCR":
        blocks = blocks.transpose(0, 3, 5, 1, 2, 4)
    elif mode == "CRD":
        blocks = blocks.transpose(0, 1, 3, 5, 2, 4)
    else:
        raise DczError(f"SpaceToDepth: unknown mode {mode!r} (DCR, CRD).")
    return [blocks.reshape(n, c * b * b, h // b, w // b)]


@op("DepthToSpace")
def depth_to_space(inputs, attrs, ctx):
    x = inputs[0]
    b = _blocksize(x, attrs, "DepthToSpace", ctx)
    n, c, h, w = x.shape
    if c % (b * b):
        raise DczError(f"DepthToSpace node {ctx.node_name!r}: {c} channels are not a multiple of {b}x{b}.")
    mode = str_attr(attrs, "mode", "DCR")
    if mode == "DCR":  # channel = (row offset, column offset, depth)
        blocks = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    elif mode == "CRD":  # channel = (depth, row offset, column offset)
        blocks = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        raise DczError(f"DepthToSpace: unknown mode {mode!r} (DCR, CRD).")
    return [blocks.reshape(n, c // (b * b), h * b, w * b)]


@op("CenterCropPad")
def center_crop_pad(inputs, attrs, ctx):
    """Crop windows start rounded down; odd padding puts the extra zero at the end."""
    x, shape = inputs[0], ints(inputs[1])
    axes = norm_axes(attrs.get("axes", range(x.ndim)), x.ndim, "CenterCropPad")
    if len(axes) != len(shape) or min(shape, default=0) < 0:
        raise DczError(f"CenterCropPad node {ctx.node_name!r}: shape {shape} does not fit axes {axes}.")
    out_shape = list(x.shape)
    source, target = [slice(None)] * x.ndim, [slice(None)] * x.ndim
    for axis, size in zip(axes, shape):
        have = x.shape[axis]
        out_shape[axis] = size
        if size <= have:
            start = (have - size) // 2
            source[axis] = slice(start, start + size)
        else:
            start = (size - have) // 2
            target[axis] = slice(start, start + have)
    ctx.check_size("CenterCropPad", out_shape, x.itemsize)
    out = np.zeros(out_shape, x.dtype)
    out[tuple(target)] = x[tuple(source)]
    return [out]


@op("Col2Im")
def col2im(inputs, attrs, ctx):
    """Sum column blocks [N, C*prod(block), L] back into an image [N, C, *image_shape]."""
    cols, image_shape, block_shape = inputs[0], ints(inputs[1]), ints(inputs[2])
    d = len(image_shape)
    strides = list(attrs.get("strides", [1] * d))
    dilations = list(attrs.get("dilations", [1] * d))
    pads = list(attrs.get("pads", [0] * 2 * d))
    if len(block_shape) != d or len(strides) != d or len(dilations) != d or len(pads) != 2 * d \
            or min(image_shape + block_shape + strides + dilations) < 1 or min(pads) < 0:
        raise DczError(f"Col2Im node {ctx.node_name!r}: image_shape {image_shape}, block_shape {block_shape}, "
                       f"strides, dilations and pads do not agree.")
    padded = [size + pads[i] + pads[i + d] for i, size in enumerate(image_shape)]
    blocks = [(p - dil * (k - 1) - 1) // s + 1 for p, k, s, dil in zip(padded, block_shape, strides, dilations)]
    kernel = math.prod(block_shape)
    n, ck, length = cols.shape
    if ck % kernel or length != math.prod(blocks) or min(blocks) < 1:
        raise DczError(f"Col2Im node {ctx.node_name!r}: input {list(cols.shape)} does not hold blocks "
                       f"{block_shape} over {blocks} positions.")
    c = ck // kernel
    ctx.check_size("Col2Im", [n, c] + padded, cols.itemsize)
    cols = cols.reshape(n, c, kernel, *blocks)
    image = np.zeros([n, c] + padded, cols.dtype)
    for k, offset in enumerate(itertools.product(*(range(b) for b in block_shape))):
        window = tuple(slice(o * dil, o * dil + (b - 1) * s + 1, s)
                       for o, dil, b, s in zip(offset, dilations, blocks, strides))
        image[(slice(None), slice(None)) + window] += cols[:, :, k]
    crop = tuple(slice(pads[i], pads[i] + size) for i, size in enumerate(image_shape))
    return [image[(slice(None), slice(None)) + crop]]


@op("MaxUnpool")
def max_unpool(inputs, attrs, ctx):
    """Zeros with each X value put back where its MaxPool index (flat over the whole tensor) says.

    The indices address the unpooled shape the attributes give.  An explicit output_shape
    replaces the pads: like the ONNX node tests (onnxruntime differs), the values keep their
    coordinates and the output grows (or shrinks) at the end.
    """
    x, indices = inputs[0], inputs[1]
    output_shape = ints(input_at(inputs, 2))
    if "kernel_shape" not in attrs:
        raise DczError("MaxUnpool: the kernel_shape attribute is missing.")
    kernel = list(attrs["kernel_shape"])
    d = len(kernel)
    strides = list(attrs.get("strides", [1] * d))
    pads = [0] * 2 * d if output_shape is not None else list(attrs.get("pads", [0] * 2 * d))
    if x.ndim != d + 2 or indices.shape != x.shape:
        raise DczError(f"MaxUnpool node {ctx.node_name!r}: X {list(x.shape)} and I {list(indices.shape)} "
                       f"do not fit kernel {kernel}.")
    unpooled = list(x.shape[:2]) + [(size - 1) * s + k - pads[i] - pads[i + d] for i, (size, s, k)
                                    in enumerate(zip(x.shape[2:], strides, kernel))]
    output_shape = unpooled if output_shape is None else output_shape
    ctx.check_size("MaxUnpool", output_shape, x.itemsize)
    if len(output_shape) != x.ndim or list(output_shape[:2]) != list(x.shape[:2]):
        raise DczError(f"MaxUnpool node {ctx.node_name!r}: output_shape {output_shape} does not fit X {list(x.shape)}.")
    flat = checked_indices(indices.reshape(-1, 1), [math.prod(unpooled)], "MaxUnpool", ctx)[:, 0]
    coords = np.stack(np.unravel_index(flat, unpooled), axis=-1)
    coords = checked_indices(coords, output_shape, "MaxUnpool", ctx)
    out = np.zeros(output_shape, x.dtype)
    out[tuple(coords.T)] = x.reshape(-1)
    return [out]
