"""Backward rules of ops that move, select or resample values, against finite differences."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from deepcompress_cli.errors import DczError
from deepcompress_cli.interp.ops import KERNELS, OpContext
from deepcompress_cli.train.grads import ALL_OUTPUTS, GRADS
from test_network_gradients import entrywise_check
from test_train_grads import check_gradient

R = np.random.default_rng(2)
I64_MAX = 2**63 - 1


def rand(*shape):
    return R.standard_normal(shape).astype(np.float32)


def i64(*values):
    return np.array(values, dtype=np.int64)


def f32(*values):
    return np.array(values, dtype=np.float32)


def check(op, x, *fixed, attrs=None, opset=17, num_outputs=None, points=40):
    """check_gradient of `op` with respect to x, its other inputs (pads, indices, sizes ...) kept
    as given: check_gradient turns every input into float32, which Gather indices cannot be."""
    name = f"{op}, bound inputs"

    def kernel(xs, attrs, ctx):
        ctx = dataclasses.replace(ctx, num_outputs=num_outputs) if num_outputs else ctx
        return KERNELS[op]([xs[0], *fixed], attrs, ctx)

    def rule(xs, y, attrs, g, needs, opset):
        return GRADS[op]([xs[0], *fixed], y, attrs, g, [True] + [False] * len(fixed), opset)

    KERNELS[name], GRADS[name] = kernel, rule
    if op in ALL_OUTPUTS:
        ALL_OUTPUTS.add(name)
    try:
        check_gradient(name, [x], attrs, opset=opset, points=points)
    finally:
        del KERNELS[name], GRADS[name]
        ALL_OUTPUTS.discard(name)


# ------------------------------------------------------------------------------ Slice


def test_slice_attributes_opset_1():
    check("Slice", rand(4, 5, 3), attrs={"starts": [1, -4], "ends": [3, 100], "axes": [0, 1]}, opset=9)
    check("Slice", rand(4, 5), attrs={"starts": [0, 2], "ends": [-1, 4]}, opset=1)  # axes default


@pytest.mark.parametrize("starts,ends,axes,steps", [
    (i64(1), i64(4), None, None),  # axes default 0.., steps default 1
    (i64(0, 1), i64(5, 6), i64(1, 2), i64(2, 3)),
    (i64(-1), i64(-100), i64(1), i64(-2)),  # backwards, end clamped before index 0
    (i64(10, -2), i64(0, I64_MAX), i64(1, -1), i64(-1, -1)),  # start clamped to the last element
    (i64(3), i64(I64_MAX), i64(-2), i64(1)),  # negative axis, end sentinel
    (i64(-100, 2), i64(100, 2), i64(0, 2), i64(1, 1)),  # out-of-range start, an empty slice
])
def test_slice_inputs(starts, ends, axes, steps):
    fixed = [starts, ends] + ([axes] if axes is not None or steps is not None else []) + \
        ([steps] if steps is not None else [])
    check("Slice", rand(3, 6, 7), *fixed, opset=13)


# ------------------------------------------------------------------------------ Pad


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_attribute_opset_2(mode):
    check("Pad", rand(2, 4, 5), attrs={"mode": mode, "pads": [0, 1, 2, 0, 3, 1], "value": 1.5}, opset=2)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads", [i64(0, 0, 2, 1, 0, 0, 1, 3), i64(0, -1, 1, -2, 0, 2, -1, 1)])  # with cropping
def test_pad_inputs(mode, pads):
    check("Pad", rand(2, 4, 5, 6), pads, f32(2.5), attrs={"mode": mode}, opset=19)


def test_pad_constant_value_omitted_and_axes_opset_18():
    check("Pad", rand(2, 4, 5), i64(0, 1, 2, 1, 0, -1), attrs={"mode": "constant"}, opset=11)
    check("Pad", rand(2, 4, 5), i64(1, 0, 2, -1), None, i64(-1, 0), attrs={"mode": "reflect"}, opset=18)
    check("Pad", rand(2, 4, 5), i64(2, 3), f32(7), i64(1), opset=18)


# ------------------------------------------------------------------------------ Split


def test_split_variants():
    x = rand(2, 7, 3)
    check("Split", x, attrs={"axis": 1, "split": [2, 4, 1]}, opset=11)
    check("Split", x, i64(3, 4), attrs={"axis": -2}, opset=13)
    check("Split", x, attrs={"axis": 1, "num_outputs": 3}, opset=18)  # ceil: 3, 3, 1
    check("Split", x, attrs={"axis": 2}, opset=11, num_outputs=3)  # equal parts from the node's outputs
    check("Split", x, opset=13, num_outputs=2)


def test_split_with_unreached_outputs():
    x = rand(2, 6)
    y = KERNELS["Split"]([x], {"axis": 1, "split": [1, 3, 2]}, OpContext(11))
    g = [rand(2, 1), None, rand(2, 2)]
    dx = GRADS["Split"]([x], y, {"axis": 1, "split": [1, 3, 2]}, g, [True], 11)[0]
    np.testing.assert_array_equal(dx, np.concatenate([g[0], np.zeros((2, 3), np.float32), g[2]], axis=1))


# ------------------------------------------------------------------------------ gathers


@pytest.mark.parametrize("axis,indices", [
    (0, i64(3, 0, 3, -1, 2, 3)),  # repeated rows (a token seen twice) and a negative index
    (1, np.array([[1, -5], [4, 1]], np.int64)),
    (-1, np.array(2, np.int64)),  # a scalar index drops the axis
    (2, np.array([[0, 0, 5]], np.int32)),
])
def test_gather(axis, indices):
    check("Gather", rand(5, 5, 6), indices, attrs={"axis": axis})


def test_gather_embedding_table():
    table = rand(50, 8)
    tokens = R.integers(0, 50, size=(3, 20))
    check("Gather", table, tokens, points=100)


@pytest.mark.parametrize("axis,indices", [
    (0, np.array([[2, 0, 2, -1], [1, 1, 0, 2]], np.int64)),
    (1, np.array([[3, -1], [0, 0], [1, 2]], np.int64)),  # shorter than data off the axis
    (-1, np.array([[0], [3], [3]], np.int64)),
])
def test_gather_elements(axis, indices):
    check("GatherElements", rand(3, 4), indices, attrs={"axis": axis})


@pytest.mark.parametrize("batch_dims,indices", [
    (0, np.array([[0, 1], [2, -1], [0, 1]], np.int64)),  # whole rows of the last axis, one repeated
    (0, np.array([[[1, 0, 2]], [[2, 3, -1]]], np.int64)),  # single elements
    (1, np.array([[[1], [0]], [[3], [3]], [[-2], [0]]], np.int64)),
])
def test_gather_nd(batch_dims, indices):
    check("GatherND", rand(3, 4, 5), indices, attrs={"batch_dims": batch_dims})


# ------------------------------------------------------------------------------ broadcasting, tiling, blocks


@pytest.mark.parametrize("shape,target", [((3, 1), i64(2, 3, 4)), ((2, 1, 4), i64(1, 3, 1)), ((4,), i64(4)),
                                          ((1, 1), i64(3, 1, 5))])
def test_expand(shape, target):
    check("Expand", rand(*shape), target)


@pytest.mark.parametrize("repeats", [i64(2, 1, 3), i64(1, 1, 1), i64(1, 4, 2)])
def test_tile(repeats):
    check("Tile", rand(2, 3, 2), repeats)


@pytest.mark.parametrize("op,mode,shape", [("DepthToSpace", "DCR", (2, 8, 2, 3)), ("DepthToSpace", "CRD", (1, 8, 3, 2)),
                                           ("SpaceToDepth", "DCR", (2, 2, 4, 6)), ("SpaceToDepth", "CRD", (1, 3, 4, 2))])
def test_block_rearrangements(op, mode, shape):
    check(op, rand(*shape), attrs={"blocksize": 2, "mode": mode})


def test_center_crop_pad_reverse_sequence_compress():
    check("CenterCropPad", rand(2, 5, 4), i64(3, 7), attrs={"axes": [1, 2]})  # crop one axis, pad the other
    check("ReverseSequence", rand(4, 3, 2), i64(4, 1, 3), attrs={"time_axis": 0, "batch_axis": 1})
    check("ReverseSequence", rand(3, 5, 2), i64(2, 5, 0), attrs={"time_axis": 1, "batch_axis": 0})
    check("Compress", rand(3, 4), np.array([True, False, True, True]), attrs={"axis": 1})
    check("Compress", rand(3, 4), np.array([0, 1, 1, 0, 1], bool))  # no axis: the flattened input


# ------------------------------------------------------------------------------ Resize, Upsample

NO_ROI = np.zeros(0, np.float32)
COORD_MODES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
               "half_pixel_symmetric"]


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [f32(1, 1, 2, 3), f32(1, 1, 0.5, 0.7)])
def test_resize_opset_10_and_upsample(mode, scales):
    x = rand(2, 2, 4, 5)
    check("Resize", x, scales, attrs={"mode": mode}, opset=10)
    if scales.min() >= 1:  # Upsample only enlarges
        check("Upsample", x, scales, attrs={"mode": mode}, opset=9)
        check("Upsample", x, attrs={"mode": "bilinear" if mode == "linear" else mode, "scales": scales.tolist()},
              opset=7)


@pytest.mark.parametrize("coord", COORD_MODES)
@pytest.mark.parametrize("nearest", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
def test_resize_nearest_modes(coord, nearest):
    x = rand(1, 2, 4, 5)
    attrs = {"mode": "nearest", "coordinate_transformation_mode": coord, "nearest_mode": nearest}
    check("Resize", x, NO_ROI, f32(1, 1, 1.7, 0.6), attrs=attrs, opset=19)


@pytest.mark.parametrize("coord", COORD_MODES)
@pytest.mark.parametrize("sizes", [i64(1, 2, 7, 9), i64(1, 2, 3, 2), i64(1, 2, 1, 5)])
def test_resize_linear_modes(coord, sizes):
    x = rand(1, 2, 4, 5)
    check("Resize", x, NO_ROI, NO_ROI, sizes, attrs={"mode": "linear", "coordinate_transformation_mode": coord},
          opset=19)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_crop_and_resize(mode):
    """Samples outside the roi box take extrapolation_value, which gets no gradient."""
    attrs = {"mode": mode, "coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": 3.0}
    roi = f32(0, 0, -0.3, 0.2, 1, 1, 0.9, 1.4)
    check("Resize", rand(1, 2, 4, 5), roi, NO_ROI, i64(1, 2, 6, 5), attrs=attrs, opset=11)
    check("Resize", rand(1, 2, 4, 5), roi[[2, 3, 6, 7]], None, i64(3, 7), attrs={**attrs, "axes": [2, -1]}, opset=18)


def test_resize_opset_13_to_18_forms():
    x = rand(2, 3, 4, 4)
    check("Resize", x, None, f32(1, 1, 2, 2), attrs={"mode": "nearest"}, opset=13)  # roi omitted
    check("Resize", x, None, f32(1.5, 0.5), attrs={"mode": "linear", "axes": [1, 3]}, opset=18)
    check("Resize", x, None, None, i64(2, 3, 0, 3), attrs={"mode": "linear"}, opset=13)  # an empty output
    for policy in ("not_larger", "not_smaller"):
        check("Resize", x, None, None, i64(7, 5), attrs={"mode": "linear", "axes": [2, 3],
                                                       "keep_aspect_ratio_policy": policy}, opset=18)


def test_resize_linear_matches_a_large_upsample():
    """A YOLO-like 2x upsample: the rule's gradient is the exact adjoint (<g, R x> = <R^T g, x>)."""
    x, g = rand(1, 16, 20, 20), rand(1, 16, 40, 40)
    attrs = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
    inputs = [x, NO_ROI, f32(1, 1, 2, 2)]
    y = KERNELS["Resize"](inputs, attrs, OpContext(13))[0]
    dx = GRADS["Resize"](inputs, y, attrs, g, [True, False, False], 13)[0]
    assert np.sum(g.astype(np.float64) * y) == pytest.approx(np.sum(dx.astype(np.float64) * x), rel=1e-5)


@pytest.mark.parametrize("attrs,opset,message", [
    ({"mode": "cubic"}, 13, "mode 'cubic'"),
    ({"mode": "linear", "antialias": 1}, 18, "antialias"),
])
def test_resize_unsupported(attrs, opset, message):
    inputs = [rand(1, 1, 4, 4), None, f32(1, 1, 0.5, 0.5)]
    y = KERNELS["Resize"](inputs, attrs, OpContext(opset))[0]
    with pytest.raises(DczError, match=message):
        GRADS["Resize"](inputs, y, attrs, rand(*y.shape), [True, False, False], opset)


# ------------------------------------------------------------------------------ in a network


def test_network_through_movement_ops():
    """Conv -> Pad -> Split (one part unused) -> Resize / Slice -> Concat -> Gather -> Gemm, with the
    rules chained by Network.backward, against finite differences of the whole loss."""
    from onnx import TensorProto, helper, numpy_helper

    from deepcompress_cli.onnx_io import from_onnx
    from deepcompress_cli.train.network import Network

    rng = np.random.default_rng(3)
    inits = {"cw": rand(6, 2, 3, 3) * 0.5, "pads": i64(0, 0, 1, 2, 0, 0, 1, 0), "split": i64(2, 3, 1),
             "scales": f32(1, 1, 2, 1), "starts": i64(-1, 5), "ends": i64(-100, 0), "axes": i64(2, 3),
             "steps": i64(-2, -2), "columns": np.r_[np.arange(-118, 118, 7), 3, 3], "fw": rand(36, 3) * 0.3, "fb": rand(3)}
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"]),
             helper.make_node("Pad", ["c", "pads"], ["p"], mode="reflect"),
             helper.make_node("Split", ["p", "split"], ["s0", "s1", "unused"], axis=1),
             helper.make_node("Resize", ["s0", "", "scales"], ["r"], mode="linear"),
             helper.make_node("Slice", ["s1", "starts", "ends", "axes", "steps"], ["sl"]),
             helper.make_node("Flatten", ["r"], ["fr"]),
             helper.make_node("Flatten", ["sl"], ["fs"]),
             helper.make_node("Concat", ["fr", "fs"], ["cat"], axis=1),
             helper.make_node("Gather", ["cat", "columns"], ["picked"], axis=1),
             helper.make_node("Flatten", ["picked"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"])]
    graph = helper.make_graph(nodes, "moves", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    network = Network(from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), None))
    assert set(network.params) == {"cw", "fw", "fb"}
    x = rng.standard_normal((4, 2, 5, 5)).astype(np.float32)
    labels = rng.integers(0, 3, 4)
    entrywise_check(network, {"x": x}, labels, rng, names=["cw"], points=12, atol=1e-4)
