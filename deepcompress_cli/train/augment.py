"""Random flips and crops of image inputs (`--augment`): more distinct samples from a few hundred.

Per sample and image input: a horizontal flip with probability 1/2, and a random crop back to the
size after padding each spatial side by reflection by 1/8 of it (a shift of up to side // 8
pixels, so 8 x 8 digits move by at most 1, 224 x 224 images by 28).  Flip and shift are folded
into per-sample row and column indices, so a whole batch is one gather (no loop over samples).
"""

from __future__ import annotations

import numpy as np

from ..data import InputSpec
from ..errors import DczError
from ..preprocess import CHANNEL_COUNTS


def image_layouts(specs: list[InputSpec], arrays: dict, layout: dict) -> dict[str, str]:
    """Input name -> "NCHW" or "NHWC" for every input that varies per sample; a one-line error
    naming the first that is not an image (float, 4-D, samples on axis 0)."""
    layouts = {}
    for spec in specs:
        axis = layout.get(spec.name)
        if axis is None:
            continue  # shared by every sample: nothing to augment
        array = arrays[spec.name]
        if array.dtype.kind != "f" or array.ndim != 4 or axis != 0:
            raise DczError(f"--augment: the model's input {spec.name!r} is not an image (float N x C x H x W or "
                           f"N x H x W x C): the data has {array.dtype} {list(array.shape)}")
        layouts[spec.name] = channel_order(spec.dims, array.shape)
    if not layouts:
        raise DczError("--augment: the model has no input that varies per sample")
    return layouts


def channel_order(declared, shape) -> str:
    """Where the channels are: the declared dims decide (a channel count 1, 3 or 4 on axis 1 or on
    axis 3, not on both), else the data's shape; undecided, ONNX's usual NCHW."""
    for dims in (declared, shape):
        if dims is not None and len(dims) == 4:
            first, last = dims[1] in CHANNEL_COUNTS, dims[3] in CHANNEL_COUNTS
            if first != last:
                return "NCHW" if first else "NHWC"
    return "NCHW"


def augment(feeds: dict, layouts: dict[str, str], rng: np.random.Generator) -> dict:
    """`feeds` with each image input flipped and cropped per sample (draws from `rng`)."""
    out = dict(feeds)
    for name, order in layouts.items():
        x = feeds[name]
        nhwc = x if order == "NHWC" else x.transpose(0, 2, 3, 1)
        n, h, w = nhwc.shape[:3]
        rows, cols = shifted(h, n, rng), shifted(w, n, rng)
        flip = rng.random(n) < 0.5
        cols = np.where(flip[:, None], w - 1 - cols, cols)
        y = nhwc[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
        out[name] = y if order == "NHWC" else np.ascontiguousarray(y.transpose(0, 3, 1, 2))
    return out


def shifted(side: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, side) source indices: per sample, a crop at a random shift of the axis padded by
    reflection (index -1 reads 1, index side reads side - 2)."""
    pad = side // 8
    index = np.arange(side)[None, :] + rng.integers(-pad, pad + 1, n)[:, None]
    index = np.abs(index)
    return np.where(index > side - 1, 2 * (side - 1) - index, index)
