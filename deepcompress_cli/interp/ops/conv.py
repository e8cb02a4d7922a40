"""Convolutions: Conv and ConvTranspose as im2col + one BLAS matmul (N-D, grouped, dilated).

The geometry helpers (`conv_attrs`, `resolve_pads`, `conv_output_shape`, `pad_spatial`, `im2col`)
are public: the int8 Conv kernels reuse them, padding with the input zero point instead of 0.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ...errors import DczError
from . import op

# The stride-1 "wide" im2col computes (padded width - output width) junk columns per output row;
# beyond this share of extra matmul work the exact im2col is cheaper.
_WIDE_MAX_WASTE = 1.15
# Patch bytes per tile: small enough to stay in cache, large enough for an efficient matmul.
_TILE_BYTES = 8 << 20


# (low, high) of the activation the plan fused into a Conv (Relu: (0, inf), Clip: its bounds);
# set by the interpreter's plan, never by a model.
FUSED_CLAMP = "_fused_clamp"
# Set when the plan merged a following Add into the Conv: its fourth input is the addend.
FUSED_RESIDUAL = "_fused_residual"
# Set when the Conv's output is one part of a Concat on the channel axis: the Concat's output
# name, and [first channel, channels in all] of the shared buffer the Conv writes its part into.
FUSED_INTO, FUSED_SLICE = "_fused_into", "_fused_slice"


def attr_str(attrs: dict, name: str, default: str) -> str:
    """A string attribute; graph attributes arrive as bytes (onnx.helper.get_attribute_value)."""
    value = attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else value


def resolve_pads(in_spatial, kernel_shape, strides, dilations, auto_pad="NOTSET", pads=None,
                 op_name="Conv") -> list[int]:
    """Explicit pads `[begin_1..begin_n, end_1..end_n]` for an ONNX `auto_pad`/`pads` pair.

    SAME_UPPER/SAME_LOWER pad so that output = ceil(input / stride), the odd pixel going to the
    end (UPPER) or the beginning (LOWER); VALID pads nothing; NOTSET uses `pads` (default 0s).
    """
    n = len(kernel_shape)
    if auto_pad in ("NOTSET", ""):
        pads = list(pads) if pads is not None else [0] * (2 * n)
        if len(pads) != 2 * n or min(pads) < 0:
            raise DczError(f"{op_name}: pads {pads} must be {2 * n} non-negative integers.")
        return pads
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise DczError(f"{op_name}: auto_pad {auto_pad!r} is not supported.")
    begins, ends = [], []
    for size, k, s, d in zip(in_spatial, kernel_shape, strides, dilations):
        total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        small = total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return begins + ends


def conv_output_shape(in_spatial, kernel_shape, strides, pads, dilations) -> tuple[int, ...]:
    """Output spatial shape: floor((in + begin + end - ((k - 1) * d + 1)) / s) + 1 per axis."""
    n = len(kernel_shape)
    return tuple((size + pads[i] + pads[i + n] - (kernel_shape[i] - 1) * dilations[i] - 1)
                 // strides[i] + 1 for i, size in enumerate(in_spatial))


def conv_attrs(attrs: dict, x_shape, w_shape, op_name="Conv"):
    """(kernel_shape, strides, pads, dilations, group) of a Conv-like node, pads made explicit.

    Shared by Conv, ConvInteger and QLinearConv, which have the same attributes.  Raises
    DczError when the shapes do not fit (channels vs group, empty output).
    """
    kernel_shape = list(w_shape[2:])
    n = len(kernel_shape)
    strides = list(attrs.get("strides", [1] * n))
    dilations = list(attrs.get("dilations", [1] * n))
    group = int(attrs.get("group", 1))
    pads = resolve_pads(x_shape[2:], kernel_shape, strides, dilations,
                        attr_str(attrs, "auto_pad", "NOTSET"), attrs.get("pads"), op_name)
    if len(x_shape) != n + 2 or x_shape[1] != w_shape[1] * group or w_shape[0] % group:
        raise DczError(f"{op_name}: input {list(x_shape)} does not fit weight {list(w_shape)} "
                       f"with group {group}.")
    out = conv_output_shape(x_shape[2:], kernel_shape, strides, pads, dilations)
    if min(out, default=1) < 1:
        raise DczError(f"{op_name}: input {list(x_shape)} is smaller than kernel {kernel_shape}.")
    return kernel_shape, strides, pads, dilations, group


def conv_output_spatial(x_shape, w_shape, attrs: dict) -> tuple[int, ...]:
    """The spatial shape of a Conv's output (its attributes checked against the shapes)."""
    kernel_shape, strides, pads, dilations, _ = conv_attrs(attrs, x_shape, w_shape)
    return conv_output_shape(x_shape[2:], kernel_shape, strides, pads, dilations)


def pad_spatial(x: np.ndarray, pads, value=0) -> np.ndarray:
    """x [N, C, *spatial] padded on its spatial axes with `value`; pads `[begins..., ends...]`."""
    n = x.ndim - 2
    if not any(pads):
        return x
    shape = x.shape[:2] + tuple(s + pads[i] + pads[i + n] for i, s in enumerate(x.shape[2:]))
    out = np.full(shape, value, dtype=x.dtype)
    out[(..., *(slice(b, b + s) for b, s in zip(pads[:n], x.shape[2:])))] = x
    return out


def patch_view(xp: np.ndarray, kernel_shape, strides, dilations, out_spatial) -> np.ndarray:
    """Read-only [N, C, *kernel_shape, *out_spatial] view of an already padded input: no copy."""
    n_sp = len(kernel_shape)
    st = xp.strides
    return as_strided(
        xp,
        shape=(*xp.shape[:2], *kernel_shape, *out_spatial),
        strides=(st[0], st[1], *(st[2 + i] * dilations[i] for i in range(n_sp)),
                 *(st[2 + i] * strides[i] for i in range(n_sp))),
        writeable=False)


def im2col(x: np.ndarray, kernel_shape, strides, pads, dilations, pad_value=0):
    """Patches of x for a convolution as one matrix per image: returns (cols, out_spatial).

    x: [N, C, *spatial] of any dtype; pads `[begin_1..begin_n, end_1..end_n]` filled with
    `pad_value` (the zero point for quantized inputs).

    cols: C-contiguous [N, C * K, L] with the dtype of x, where K = prod(kernel_shape) and
    L = prod(out_spatial).  Row `c * K + k` holds input channel c at kernel offset k (kernel
    offsets row-major: k = i_1 * k_2 * ... + i_n), column l is output position l (row-major over
    out_spatial).  So `w.reshape(M, C * K) @ cols` is the convolution, shaped [N, M, L]; for
    `group` g, split rows as cols.reshape(N, g, (C // g) * K, L) against
    w.reshape(g, M // g, (C // g) * K).  Memory is N * C * K * L items: the float Conv tiles
    large inputs instead (`conv`), an int8 kernel may want to call this per image.
    """
    out_spatial = conv_output_shape(x.shape[2:], kernel_shape, strides, pads, dilations)
    view = patch_view(pad_spatial(x, pads, pad_value), kernel_shape, strides, dilations,
                       out_spatial)
    n, c = x.shape[:2]
    cols = view.reshape(n, c * math.prod(kernel_shape), math.prod(out_spatial))
    return np.ascontiguousarray(cols), out_spatial


def _wide_view(slab: np.ndarray, kernel_shape, dilations, length: int) -> np.ndarray:
    """Stride-1 patches as read-only [N, C, *kernel_shape, length] runs of the flattened input.

    `slab` is padded input rows (a band of the first spatial axis, every other axis whole);
    output position p at kernel offset o reads flat element p + sum(o_i * d_i * step_i), so each
    (channel, offset) is one contiguous run and copying it is a memcpy.  Runs span the padded
    extent of axes 2..n: the caller drops those junk columns.  The slab needs one spare row at
    the end, which the last run reads into.
    """
    n_sp = len(kernel_shape)
    st = slab.strides
    return as_strided(
        slab,
        shape=(*slab.shape[:2], *kernel_shape, length),
        strides=(st[0], st[1], *(st[2 + i] * dilations[i] for i in range(n_sp)), slab.itemsize),
        writeable=False)


def _grouped_matmul(w: np.ndarray, cols: np.ndarray, group: int) -> np.ndarray:
    """[M, Cg, *k] weights times [N, C*K, L] patches -> [N, M, L]: one matmul batched on groups."""
    M = w.shape[0]
    N, _, L = cols.shape
    if group == 1:
        return np.matmul(w.reshape(M, -1), cols)
    wg = w.reshape(group, M // group, -1)
    return np.matmul(wg, cols.reshape(N, group, -1, L)).reshape(N, M, L)


def _depthwise(patches: np.ndarray, w: np.ndarray) -> np.ndarray:
    """group == channels: [N, C, *k, *out] patches (a view) -> [N, C * mult, *out].

    One multiply-add per kernel offset over the whole tile instead of an im2col copy and
    C tiny matmuls.
    """
    N, C = patches.shape[:2]
    kernel_shape = w.shape[2:]
    out_shape = patches.shape[2 + len(kernel_shape):]
    mult = w.shape[0] // C
    wk = w.reshape(C, mult, *kernel_shape)
    bcast = (C, mult) + (1,) * len(out_shape)
    y = tmp = None
    for offset in itertools.product(*(range(k) for k in kernel_shape)):
        tap = patches[(slice(None), slice(None), *offset)][:, :, None]
        weight = wk[(slice(None), slice(None), *offset)].reshape(bcast)
        if y is None:
            y = tap * weight
            tmp = np.empty_like(y)
        else:
            np.multiply(tap, weight, out=tmp)
            y += tmp
    return y.reshape(N, C * mult, *out_shape)


def _tiles(n_images: int, out_rows: int, row_bytes: int):
    """(n0, n1, r0, r1) tiles of ~_TILE_BYTES of patches: whole images when one fits, else bands
    of output rows of one image; keeps the im2col buffer in cache and bounds its memory."""
    image_bytes = out_rows * row_bytes
    if image_bytes <= _TILE_BYTES:
        per = max(1, _TILE_BYTES // image_bytes)
        for n0 in range(0, n_images, per):
            yield n0, min(n_images, n0 + per), 0, out_rows
        return
    rows = max(1, _TILE_BYTES // row_bytes)
    for n in range(n_images):
        for r0 in range(0, out_rows, rows):
            yield n, n + 1, r0, min(out_rows, r0 + rows)


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, attrs: dict, epilogue=None,
         bounds=None, residual: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Float Conv on [N, C, *spatial] inputs, tile by tile (see `_tiles`), plus the bias b and
    an addend `residual` of the output's shape, then clamped to a fused activation's `bounds`
    (see `clamp`); written into `out` when given (a view of the output's shape and dtype).

    The bias rides in the matmul when that reads less than a pass over the output would (a row
    of ones under the patches, the bias as one more weight column), and the clamp is the copy
    of each tile into the output: one pass over memory for all of them.
    `epilogue(block, n0, n1, band, source)`, when given, replaces bias, addend and clamp: it
    fills each block of output (images n0:n1, the slice `band` of the first spatial axis) from
    `source`, the block's raw sums while they are still in cache (None: they are in the block
    already), as the int8 rescaling does.
    """
    kernel_shape, strides, pads, dilations, group = conv_attrs(attrs, x.shape, w.shape)
    N, C = x.shape[:2]
    M = w.shape[0]
    n_sp = len(kernel_shape)
    out_spatial = conv_output_shape(x.shape[2:], kernel_shape, strides, pads, dilations)
    depthwise = group > 1 and group == C
    if epilogue is not None:
        b = bounds = residual = None  # the epilogue's job
    if set(kernel_shape) == {1} and set(strides) == {1} and not any(pads) and not depthwise:
        patches = x.reshape(N, C, -1)  # 1x1: x is the patches
        area = patches.shape[2]
        if b is not None and group == 1 and C * area + M * C < M * area:  # copies cheaper than a bias pass
            with_ones = np.empty((N, C + 1, area), dtype=x.dtype)
            with_ones[:, :C] = patches
            with_ones[:, C] = 1
            w, patches, b = _with_bias_column(w, b), with_ones, None
        if out is not None and group == 1:
            y = out
            np.matmul(w.reshape(M, -1), patches, out=out.reshape(N, M, -1))
        else:
            y = _grouped_matmul(w, patches, group).reshape(N, M, *out_spatial)
            if out is not None:
                out[...] = y
                y = out
        if epilogue is None:
            if residual is not None:
                y += residual
            clamp(_add_bias(y, b), bounds)
        else:
            epilogue(y, 0, N, slice(None), None)
        return y
    padded_rest = [s + pads[i + 1] + pads[i + 1 + n_sp] for i, s in enumerate(x.shape[3:])]
    wide = (n_sp > 1 and set(strides) == {1}
            and math.prod(padded_rest) <= _WIDE_MAX_WASTE * math.prod(out_spatial[1:]))
    if wide:  # one spare row at the end of the first axis for the last run (see _wide_view)
        xp = pad_spatial(x, [*pads[:n_sp], pads[n_sp] + 1, *pads[n_sp + 1:]])
        row_shape = padded_rest
    else:
        xp = pad_spatial(x, pads)
        row_shape = list(out_spatial[1:])
    row = math.prod(row_shape)
    K = C * math.prod(kernel_shape)
    span = (kernel_shape[0] - 1) * dilations[0] + 1 + wide  # input rows under one output row
    y = np.empty((N, M, *out_spatial), dtype=np.result_type(x, w)) if out is None else out
    keep = (..., *(slice(o) for o in out_spatial[1:]))  # drops a wide tile's junk columns
    # The bias as a weight column costs a copy of the weights: worth it when they are smaller
    # than the output the bias would otherwise take a pass over.
    with_ones = b is not None and group == 1 and not depthwise and K < N * math.prod(out_spatial)
    if with_ones:
        w, b = _with_bias_column(w, b), None
    cols = None  # the im2col buffer, reused by every tile (its last row the ones)
    # Depthwise reads its patches in place: tile by input size, not by an im2col's size.
    row_bytes = (C if depthwise else K) * row * x.itemsize
    for n0, n1, r0, r1 in _tiles(N, out_spatial[0], row_bytes):
        slab = xp[n0:n1, :, r0 * strides[0]:(r1 - 1) * strides[0] + span]
        if wide:
            patches = _wide_view(slab, kernel_shape, dilations, (r1 - r0) * row)
        else:
            patches = patch_view(slab, kernel_shape, strides, dilations,
                                  (r1 - r0, *out_spatial[1:]))
        if depthwise:
            tile = _depthwise(patches, w).reshape(n1 - n0, M, -1)
        else:
            shape = (n1 - n0, K + with_ones, (r1 - r0) * row)
            if cols is None or cols.shape != shape:
                cols = np.empty(shape, dtype=x.dtype)
                cols[:, K:] = 1
            cols[:, :K].reshape(patches.shape)[...] = patches
            tile = np.matmul(w, cols) if with_ones else _grouped_matmul(w, cols, group)
        block = y[n0:n1, :, r0:r1]
        tile = tile.reshape(n1 - n0, M, r1 - r0, *row_shape)[keep]
        if epilogue is None:
            _store(block, tile, b, bounds, None if residual is None else residual[n0:n1, :, r0:r1])
        else:
            epilogue(block, n0, n1, slice(r0, r1), tile)
    return y


def _with_bias_column(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[M, K + 1]: the weight as a matrix, the bias as its last column (for a row of ones)."""
    return np.concatenate([w.reshape(len(w), -1), b.reshape(-1, 1).astype(w.dtype)], axis=1)


def _store(block: np.ndarray, tile: np.ndarray, b: np.ndarray | None, bounds, addend: np.ndarray | None) -> None:
    """block = clamp(tile + b + addend): the copy into the output is an add or the clamp."""
    if b is not None or addend is not None:
        np.add(tile, b.reshape(-1, *(1,) * (tile.ndim - 2)) if addend is None else addend, out=block)
        if b is not None and addend is not None:
            _add_bias(block, b)
        clamp(block, bounds)
    elif bounds is None:
        block[...] = tile
    else:
        _clip(tile, bounds, block)


def _add_bias(y: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """y [N, M, ...] += b [M], in place."""
    if b is not None:
        y += b.reshape(-1, *(1,) * (y.ndim - 2))
    return y


def clamp(y: np.ndarray, bounds) -> None:
    """y clipped to a fused activation's (low, high), in place; None: no activation."""
    if bounds is not None:
        _clip(y, bounds, y)


def _clip(x: np.ndarray, bounds, out: np.ndarray) -> None:
    # np.clip, with an infinite bound for a Relu: 2.5-3x faster than np.maximum in numpy 2.4 on
    # AVX2 (the same values; a -0.0 stays -0.0)
    np.clip(x, np.asarray(bounds[0], out.dtype), np.asarray(bounds[1], out.dtype), out=out)


@op("Conv")
def conv_kernel(inputs, attrs, ctx):
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    bounds = attrs.get(FUSED_CLAMP)  # the activation that followed, if fused
    if not attrs.get(FUSED_RESIDUAL) and FUSED_INTO not in attrs:
        return [conv(x, w, b, attrs, bounds=bounds)]
    shape = (x.shape[0], w.shape[0], *conv_output_spatial(x.shape, w.shape, attrs))
    dtype = np.result_type(x, w)
    addend = inputs[3] if attrs.get(FUSED_RESIDUAL) else None
    if addend is not None and (addend.shape != shape or addend.dtype != dtype):
        y = conv(x, w, b, attrs) + addend  # an addend that broadcasts: the Add as its own pass
        clamp(y, bounds)
        return [y]
    return [conv(x, w, b, attrs, bounds=bounds, residual=addend, out=_concat_part(attrs, shape, dtype, ctx))]


def _concat_part(attrs: dict, shape: tuple, dtype, ctx) -> np.ndarray | None:
    """This Conv's slice of the buffer its Concat's parts share (made by the first part to run),
    or None when the Conv writes an array of its own (not fused, or the shapes do not fit)."""
    if FUSED_INTO not in attrs:
        return None
    key = attrs[FUSED_INTO]
    first, total = attrs[FUSED_SLICE]
    whole = (shape[0], total, *shape[2:])
    buffer = ctx.scratch.get(key)
    if buffer is None:
        buffer = ctx.scratch[key] = np.empty(whole, dtype)
    if buffer.shape != whole or buffer.dtype != dtype or first + shape[1] > total:
        return None
    return buffer[:, first:first + shape[1]]


def conv_transpose_geometry(attrs: dict, x_shape, w_shape):
    """(kernel_shape, strides, dilations, pads, out_spatial) of a ConvTranspose, per the spec.

    With `output_shape` (or SAME auto_pad, whose output is input * stride) the total padding is
    stride * (in - 1) + output_padding + (k - 1) * dilation + 1 - out, its odd pixel going to the
    beginning except for SAME_UPPER.
    """
    kernel_shape = list(w_shape[2:])
    n = len(kernel_shape)
    in_spatial = list(x_shape[2:])
    strides = list(attrs.get("strides", [1] * n))
    dilations = list(attrs.get("dilations", [1] * n))
    out_pad = list(attrs.get("output_padding", [0] * n))
    auto_pad = attr_str(attrs, "auto_pad", "NOTSET")
    full = [s * (i - 1) + op_ + (k - 1) * d + 1
            for i, s, op_, k, d in zip(in_spatial, strides, out_pad, kernel_shape, dilations)]
    if "output_shape" in attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if "output_shape" in attrs:
            out_spatial = list(attrs["output_shape"])[-n:]
        else:
            out_spatial = [i * s for i, s in zip(in_spatial, strides)]
        totals = [f - o for f, o in zip(full, out_spatial)]
        upper = auto_pad == "SAME_UPPER"
        begins = [t // 2 if upper else t - t // 2 for t in totals]
        pads = begins + [t - b for t, b in zip(totals, begins)]
    else:
        pads = resolve_pads(in_spatial, kernel_shape, strides, dilations, auto_pad,
                            attrs.get("pads"), "ConvTranspose")
        out_spatial = [f - pads[i] - pads[i + n] for i, f in enumerate(full)]
    if min(out_spatial, default=1) < 1:
        raise DczError(f"ConvTranspose: output shape {out_spatial} is empty.")
    return kernel_shape, strides, dilations, pads, out_spatial


def conv_transpose(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, attrs: dict) -> np.ndarray:
    """ConvTranspose: one matmul to per-offset contributions, then col2im by strided adds."""
    group = int(attrs.get("group", 1))
    N, C = x.shape[:2]
    if C != w.shape[0] or C % group:
        raise DczError(f"ConvTranspose: input {list(x.shape)} does not fit weight "
                       f"{list(w.shape)} with group {group}.")
    kernel_shape, strides, dilations, pads, out_spatial = conv_transpose_geometry(
        attrs, x.shape, w.shape)
    n_sp = len(kernel_shape)
    in_spatial = x.shape[2:]
    M = w.shape[1] * group
    # [g, Mg*K, Cg] @ [N, g, Cg, L] -> contributions of every input pixel at every kernel offset.
    wt = w.reshape(group, C // group, -1).transpose(0, 2, 1)
    contrib = np.matmul(wt, x.reshape(N, group, C // group, -1))
    contrib = contrib.reshape(N, M, *kernel_shape, *in_spatial)
    # Scatter into the uncropped output, then crop pads (negative pads read as zeros).
    full = [s * (i - 1) + (k - 1) * d + 1
            for i, s, k, d in zip(in_spatial, strides, kernel_shape, dilations)]
    acc = np.zeros((N, M, *full), dtype=contrib.dtype)
    for offset in itertools.product(*(range(k) for k in kernel_shape)):
        window = (slice(None),) * 2 + tuple(
            slice(i * d, i * d + (n - 1) * s + 1, s)
            for i, d, n, s in zip(offset, dilations, in_spatial, strides))
        acc[window] += contrib[(slice(None), slice(None), *offset)]
    y = np.zeros((N, M, *out_spatial), dtype=acc.dtype)
    src, dst = [], []
    for f, o, begin in zip(full, out_spatial, pads[:n_sp]):
        lo, hi = max(begin, 0), min(begin + o, f)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - begin, lo - begin + max(0, hi - lo)))
    y[(..., *dst)] = acc[(..., *src)]
    return _add_bias(y, b)


@op("ConvTranspose")
def conv_transpose_kernel(inputs, attrs, ctx):
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    return [conv_transpose(x, w, b, attrs)]
