"""Indexing, rearrangement and MeanVarianceNormalization kernels against onnxruntime.

Each case is a one-node model run by onnxruntime and by the kernel called the way the
interpreter calls it.  Where onnxruntime lacks the op or opset, or departs from the ONNX spec,
the oracle is onnx.reference (`oracle="ref"`, reason in a comment); edge cases the spec pins down
are written out by hand.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from deepcompress_cli.errors import DczError
from deepcompress_cli.interp.ops import KERNELS, OpContext
from deepcompress_cli.interp.ops import indexing, rearrange, standardize  # noqa: F401  (registration)

ort = pytest.importorskip("onnxruntime")
from one_node import check, run  # noqa: E402
RNG = np.random.default_rng(7)
F32, I64 = np.float32, np.int64


def randn(*shape):
    return RNG.standard_normal(shape).astype(F32)



# ------------------------------------------------------------------------------ scatters


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_scatter_elements(axis, reduction):
    data = randn(4, 5, 3)
    shape = (3, 4, 2)
    size = data.shape[axis]
    ax = axis % data.ndim
    if reduction == "none":  # distinct targets along the axis: the result may not depend on order
        full = list(shape)
        full[ax] = size
        indices = np.take(np.argsort(RNG.random(full), axis=ax), np.arange(shape[ax]), axis=ax)
        indices = indices - size * (RNG.random(shape) < 0.5)  # some counted from the end
    else:  # duplicates accumulate; negative indices count from the end
        indices = RNG.integers(-size, size, shape)
    check("ScatterElements", [data, indices.astype(I64), randn(*shape)],
          dict(axis=axis, reduction=reduction))


def test_scatter_opset9_is_scatter_elements():
    data, indices, updates = randn(3, 3), np.array([[1, 0, 2], [0, 2, 1]], I64), randn(2, 3)
    check("Scatter", [data, indices, updates], dict(axis=0), opset=9)
    assert np.array_equal(run("Scatter", [data, indices, updates], dict(axis=0), 9),
                          run("ScatterElements", [data, indices, updates], dict(axis=0), 11))


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_scatter_nd(k, reduction):
    data = randn(4, 3, 5)
    if reduction == "none":
        flat = RNG.permutation(int(np.prod(data.shape[:k])))[:4]
        indices = np.stack(np.unravel_index(flat, data.shape[:k]), axis=-1).reshape(2, 2, k)
        indices = indices - np.array(data.shape[:k]) * (RNG.random(indices.shape) < 0.5)  # some negative
    else:
        indices = np.stack([RNG.integers(0, d, (2, 2)) for d in data.shape[:k]], axis=-1)
    check("ScatterND", [data, indices.astype(I64), randn(2, 2, *data.shape[k:])], dict(reduction=reduction))


def test_scatter_min_max_need_opset_18():
    with pytest.raises(DczError, match="opset 18"):
        run("ScatterND", [randn(3), np.array([[0]], I64), randn(1)], {"reduction": b"max"}, opset=16)


def test_scatter_out_of_range_index_is_dcz_error():
    with pytest.raises(DczError, match="out of range"):
        run("ScatterElements", [randn(3, 3), np.array([[3, 0, 0]], I64), randn(1, 3)])
    with pytest.raises(DczError, match="out of range"):
        run("GatherND", [randn(3, 3), np.array([[0, -4]], I64)])


@pytest.mark.parametrize("mode", ["linear", "circular"])
def test_tensor_scatter(mode):
    cache, update = randn(3, 2, 6, 4), randn(3, 2, 3, 4)
    starts = np.array([0, 2, 5 if mode == "circular" else 3], I64)
    got = run("TensorScatter", [cache, update, starts], {"mode": mode.encode()}, opset=24)
    want = cache.copy()
    for b in range(3):
        for i in range(3):
            want[b, :, (starts[b] + i) % 6] = update[b, :, i]
    np.testing.assert_array_equal(got, want)
    # no write_indices: the update lands at the start of the (explicit) sequence axis
    short = randn(3, 2, 2, 4)
    got = run("TensorScatter", [cache, short], {"axis": 2}, opset=24)
    np.testing.assert_array_equal(got[:, :, :2], short)
    np.testing.assert_array_equal(got[:, :, 2:], cache[:, :, 2:])
    with pytest.raises(DczError, match="do not fit"):
        run("TensorScatter", [cache, update, np.array([0, 0, 4], I64)], opset=24)


# ------------------------------------------------------------------------------ gathers and selection


@pytest.mark.parametrize("batch_dims,data_shape,indices", [
    (0, (3, 4), np.array([[0, 1], [2, -1]], I64)),
    (0, (3, 4, 2), np.array([[[1], [0]], [[2], [-3]]], I64)),
    (1, (2, 3, 4), np.array([[[0, 1]], [[2, 3]]], I64)),
    (1, (2, 3, 4), np.array([[1], [0]], I64)),
    (2, (2, 3, 4, 5), RNG.integers(0, 4, (2, 3, 6, 1)).astype(I64)),
])
def test_gather_nd(batch_dims, data_shape, indices):
    check("GatherND", [randn(*data_shape), indices], dict(batch_dims=batch_dims), opset=13)


@pytest.mark.parametrize("axis", [-1, 0, 1, -2])
def test_one_hot(axis):
    indices = np.array([[0, 3, -1], [-4, 2, 5]], I64)  # -4 -> 0; 5 is out of range: an all-off row
    check("OneHot", [indices, np.array([4], I64), np.array([-2.0, 3.0], F32)], dict(axis=axis), opset=11)
    got = run("OneHot", [indices, np.array(4.0, F32), np.array([0, 1], np.int32)], {"axis": axis}, 11)
    assert got.dtype == np.int32 and got.sum() == 5


@pytest.mark.parametrize("x", [np.array([[1, 0, 2], [0, 0, 3]], np.int32), randn(2, 3, 4) > 0, np.zeros((2, 3), F32)])
def test_non_zero(x):
    check("NonZero", [x], opset=13)


def test_value_sized_outputs_are_refused_before_allocation():
    small = OpContext(opset=18, node_name="n", max_bytes=1 << 20)
    with pytest.raises(DczError, match="limit"):
        KERNELS["OneHot"]([np.array([0, 1], I64), np.array(1 << 40, I64), np.array([0, 1], F32)], {}, small)
    with pytest.raises(DczError, match="limit"):
        KERNELS["CenterCropPad"]([randn(2, 2), np.array([1 << 20, 1 << 20], I64)], {}, small)
    with pytest.raises(DczError, match="limit"):
        KERNELS["Col2Im"]([randn(1, 1, 1), np.array([1 << 20, 1 << 20], I64), np.array([1, 1], I64)],
                          {"strides": [1 << 20, 1 << 20]}, small)  # one block, a huge sparse image


def test_non_zero_of_scalar():
    assert run("NonZero", [np.array(2.0, F32)]).shape == (0, 1)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_compress(axis):
    x = randn(3, 4)
    condition = np.array([True, False, True], bool)  # shorter than the axis: the rest is dropped
    check("Compress", [x, condition], {} if axis is None else dict(axis=axis), opset=11)


def test_compress_condition_past_the_end_is_dcz_error():
    with pytest.raises(DczError, match="past the end"):
        run("Compress", [randn(2, 2), np.array([0, 0, 1], bool)], {"axis": 0})


@pytest.mark.parametrize("time_axis,batch_axis", [(0, 1), (1, 0)])
def test_reverse_sequence(time_axis, batch_axis):
    x = randn(5, 4, 3) if time_axis == 0 else randn(4, 5, 3)
    check("ReverseSequence", [x, np.array([5, 1, 0, 3], I64)], dict(time_axis=time_axis, batch_axis=batch_axis),
          opset=10)


def test_reverse_sequence_spec_example():
    x = np.arange(16, dtype=F32).reshape(4, 4).T.copy()  # example 1 of the spec
    got = run("ReverseSequence", [x, np.array([4, 3, 2, 1], I64)], {"time_axis": 0, "batch_axis": 1})
    np.testing.assert_array_equal(got, [[3, 6, 9, 12], [2, 5, 8, 13], [1, 4, 10, 14], [0, 7, 11, 15]])


@pytest.mark.parametrize("attrs", [{}, dict(k=1), dict(k=-2, dtype=onnx.TensorProto.INT32), dict(k=9)])
def test_eye_like(attrs):
    check("EyeLike", [randn(3, 5)], attrs, opset=9)


# ------------------------------------------------------------------------------ rearrangement


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_and_back(mode):
    x = randn(2, 8, 3, 5)
    check("DepthToSpace", [x], dict(blocksize=2, mode=mode), opset=13)
    y = run("DepthToSpace", [x], {"blocksize": 2, "mode": mode.encode()})
    np.testing.assert_array_equal(run("SpaceToDepth", [y], {"blocksize": 2, "mode": mode.encode()}, 28), x)


def test_space_to_depth():
    check("SpaceToDepth", [randn(2, 3, 6, 4)], dict(blocksize=2), opset=13)
    with pytest.raises(DczError, match="multiple"):
        run("SpaceToDepth", [randn(1, 1, 3, 4)], {"blocksize": 2})


@pytest.mark.parametrize("shape,axes", [([3, 8, 5], None), ([6, 2], [1, 2]), ([9, 1], [-3, -1]), ([4, 4, 4], None)])
def test_center_crop_pad(shape, axes):
    # onnxruntime has no CenterCropPad; onnx.reference implements the spec
    check("CenterCropPad", [randn(4, 5, 6), np.array(shape, I64)], {} if axes is None else dict(axes=axes),
          oracle="ref")


def test_center_crop_pad_by_hand():
    got = run("CenterCropPad", [np.arange(5, dtype=F32), np.array([2], I64)])
    np.testing.assert_array_equal(got, [1, 2])  # (5 - 2) // 2 = 1: the window starts rounded down
    got = run("CenterCropPad", [np.ones(2, F32), np.array([5], I64)])
    np.testing.assert_array_equal(got, [0, 1, 1, 0, 0])  # the odd padding pixel goes to the end


@pytest.mark.parametrize("image,block,attrs", [
    ([5, 5], [1, 5], {}),
    ([6, 7], [2, 3], dict(strides=[2, 1])),
    ([6, 7], [3, 2], dict(pads=[1, 0, 2, 1], dilations=[2, 1])),
    ([5, 6, 4], [2, 2, 3], dict(strides=[1, 2, 1], pads=[0, 1, 1, 0, 1, 0])),
])
def test_col2im(image, block, attrs):
    d = len(image)
    strides, dilations = attrs.get("strides", [1] * d), attrs.get("dilations", [1] * d)
    pads = attrs.get("pads", [0] * 2 * d)
    blocks = [(i + pads[a] + pads[a + d] - dl * (k - 1) - 1) // s + 1
              for a, (i, k, s, dl) in enumerate(zip(image, block, strides, dilations))]
    cols = randn(2, 3 * int(np.prod(block)), int(np.prod(blocks)))
    check("Col2Im", [cols, np.array(image, I64), np.array(block, I64)], attrs, tol=1e-4)


def test_max_unpool_inverts_max_pool():
    pooled, indices = np.array([[[[4.0, 8.0], [9.0, 7.0]]]], F32), np.array([[[[5, 3], [12, 15]]]], I64)
    check("MaxUnpool", [pooled, indices], dict(kernel_shape=[2, 2], strides=[2, 2]), opset=11)
    check("MaxUnpool", [randn(1, 2, 3), np.array([[[0, 3, 5], [6, 7, 11]]], I64)],
          dict(kernel_shape=[2], strides=[2]), opset=11)


def test_max_unpool_output_shape_keeps_coordinates():
    # The node tests' reading (onnxruntime instead reuses the flat indices in the bigger shape).
    got = run("MaxUnpool", [np.array([[[[5.0, 6.0], [7.0, 8.0]]]], F32), np.array([[[[5, 7], [13, 15]]]], I64),
                            np.array([1, 1, 5, 5], I64)], {"kernel_shape": [2, 2], "strides": [2, 2]})
    want = np.zeros((1, 1, 5, 5), F32)
    want[0, 0, 1, 1], want[0, 0, 1, 3], want[0, 0, 3, 1], want[0, 0, 3, 3] = 5, 6, 7, 8
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------ MeanVarianceNormalization


@pytest.mark.parametrize("axes", [None, [0, 2, 3], [1], [-1, -2]])
def test_mean_variance_normalization(axes):
    check("MeanVarianceNormalization", [randn(2, 3, 4, 5) * 3 + 1], {} if axes is None else dict(axes=axes),
          opset=13, tol=1e-4)
