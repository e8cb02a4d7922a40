"""MaxPool / AveragePool against onnxruntime on the geometries the separable, phase-split
reduction treats apart: stride phases shared by kernel offsets, dilations, pads and ceil_mode
overhang on either axis, kernels of 1, strides past the kernel, 1-D and 3-D, 8-bit types, and
big batches reduced in chunks of planes; and random geometries (pads up to past the kernel,
which onnxruntime refuses) against a cell-by-cell brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
from one_node import check, run  # noqa: E402

from deepcompress_cli.errors import DczError  # noqa: E402
from deepcompress_cli.interp.ops import pool  # noqa: E402

RNG = np.random.default_rng(7)

CASES = {
    "squeezenet": ((1, 3, 23, 23), dict(kernel_shape=[3, 3], strides=[2, 2])),
    "resnet_stem": ((2, 3, 24, 24), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "ceil_odd": ((1, 2, 12, 13), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "ceil_pads_overhang": ((1, 2, 10, 9), dict(kernel_shape=[3, 2], strides=[3, 2], pads=[1, 0, 0, 1],
                                               ceil_mode=1)),
    "stride3_kernel5": ((1, 2, 17, 16), dict(kernel_shape=[5, 5], strides=[3, 3], pads=[2, 1, 2, 2])),
    "dilated_strided": ((1, 2, 15, 14), dict(kernel_shape=[3, 3], strides=[2, 2], dilations=[2, 3],
                                             pads=[1, 2, 2, 1])),
    "dilation_even_stride": ((1, 2, 13, 13), dict(kernel_shape=[2, 3], strides=[2, 2], dilations=[2, 2])),
    "stride_past_kernel": ((1, 2, 14, 15), dict(kernel_shape=[2, 2], strides=[3, 4])),
    "kernel_1xk": ((1, 2, 9, 10), dict(kernel_shape=[1, 3], strides=[2, 1], pads=[0, 1, 0, 1])),
    "kernel_kx1": ((1, 2, 9, 10), dict(kernel_shape=[3, 1], strides=[1, 2], pads=[1, 0, 1, 0])),
    "same_upper_odd": ((1, 2, 11, 7), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    "same_lower_odd": ((1, 2, 11, 7), dict(kernel_shape=[4, 3], strides=[2, 3], auto_pad="SAME_LOWER")),
    "1d_ceil_dilated": ((2, 3, 20), dict(kernel_shape=[3], strides=[2], dilations=[2], pads=[1, 2],
                                         ceil_mode=1)),
    "3d": ((1, 2, 7, 8, 9), dict(kernel_shape=[3, 2, 3], strides=[2, 2, 2], pads=[1, 0, 1, 1, 1, 0])),
    "3d_dilated": ((1, 1, 9, 8, 7), dict(kernel_shape=[2, 2, 2], strides=[1, 2, 3], dilations=[2, 1, 2])),
}


def rand(shape):
    return RNG.standard_normal(shape, dtype=np.float32)


@pytest.mark.parametrize("case", CASES)
def test_max_pool(case):
    shape, attrs = CASES[case]
    check("MaxPool", [rand(shape)], attrs, opset=12)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("case", CASES)
def test_average_pool(case, count_include_pad):
    shape, attrs = CASES[case]
    opset = 19 if "dilations" in attrs else 11  # AveragePool has dilations from opset 19
    check("AveragePool", [rand(shape)], dict(attrs, count_include_pad=count_include_pad), opset=opset)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("case", ["resnet_stem", "ceil_pads_overhang", "dilated_strided"])
def test_max_pool_8bit(case, dtype):
    shape, attrs = CASES[case]
    x = RNG.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    check("MaxPool", [x], attrs, opset=12)


@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("case", ["resnet_stem", "3d", "1d_ceil_dilated"])
def test_chunks_of_planes(op_type, case, monkeypatch):
    """Chunks of a few planes (here 1 to 3 of N*C) give the same result as one pass."""
    monkeypatch.setattr(pool, "CHUNK_ELEMENTS", 2 * int(np.prod(CASES[case][0][2:])) + 1)
    shape, attrs = CASES[case]
    check(op_type, [rand((3, 5, *shape[2:]))], attrs, opset=19 if "dilations" in attrs else 12)


def test_max_pool_padding_never_wins():
    """Windows partly in the padding (or the ceil_mode overhang) of an all-negative input."""
    x = -np.abs(rand((1, 2, 7, 8))) - 1
    check("MaxPool", [x], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[2, 1, 2, 2], ceil_mode=1),
          opset=12)


def brute_force_pool(x, kernel_shape, strides, dilations, pads, out_spatial, average, include_pad):
    """Every window read cell by cell: the max (missing cells ignored) or the mean over the cells
    inside x, plus those in the explicit pads with include_pad."""
    n = len(kernel_shape)
    y = np.zeros((*x.shape[:2], *out_spatial), dtype=np.float64)
    for out_index in itertools.product(*map(range, out_spatial)):
        values, count = [], 0
        for offset in itertools.product(*map(range, kernel_shape)):
            cell = [o * s + i * d - b for o, s, i, d, b in zip(out_index, strides, offset, dilations, pads)]
            inside = all(0 <= c < size for c, size in zip(cell, x.shape[2:]))
            in_pads = all(-b <= c < size + e for c, b, e, size in zip(cell, pads[:n], pads[n:], x.shape[2:]))
            count += inside or (include_pad and in_pads)
            if inside:
                values.append(x[(..., *cell)])
        if average:
            y[(..., *out_index)] = sum(values, np.zeros(x.shape[:2])) / max(count, 1)
        else:
            y[(..., *out_index)] = np.max(values, axis=0) if values else -np.inf
    return y


@pytest.mark.parametrize("seed", range(40))
def test_random_geometry_against_brute_force(seed):
    """Random kernels, strides, dilations, pads (up to past the kernel) and ceil_mode, 1-3 D."""
    rng = np.random.default_rng(seed)
    n = rng.integers(1, 4)
    kernel_shape = rng.integers(1, 4, n).tolist()
    strides = rng.integers(1, 4, n).tolist()
    dilations = rng.integers(1, 3, n).tolist()
    pads = rng.integers(0, 4, 2 * n).tolist()
    attrs = dict(kernel_shape=kernel_shape, strides=strides, dilations=dilations, pads=pads,
                 ceil_mode=int(rng.integers(0, 2)))
    x = rng.standard_normal((2, 2, *rng.integers(1, 9 if n < 3 else 6, n)), dtype=np.float32)
    try:
        geometry = pool.pool_geometry(attrs, x.shape, "MaxPool")
    except DczError:
        return  # kernel bigger than the padded input
    include_pad = int(rng.integers(0, 2))
    for op_type, average in (("MaxPool", False), ("AveragePool", True)):
        got = run(op_type, [x], dict(attrs, count_include_pad=include_pad), opset=19)
        want = brute_force_pool(x, *geometry, average, include_pad)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
