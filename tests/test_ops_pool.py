"""MaxPool / AveragePool against onnxruntime on the geometries the separable, phase-split
reduction treats apart: stride phases shared by kernel offsets, dilations, pads and ceil_mode
overhang on either axis, kernels of 1, strides past the kernel, 1-D and 3-D, 8-bit types, and
big batches reduced in chunks of planes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
from one_node import check  # noqa: E402

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
