"""Casts to the narrow types, the optional/training outputs of the norm, pool and dropout kernels,
and Resize's cubic and antialias modes, against onnxruntime on one-node models.

Where onnxruntime cannot run a case (float8 *fnuz, float4, float8e8m0 and int2 have no CPU Cast
or no numpy type in its Python API; Dropout's random mask is its own), the comparison is with
onnx.reference.ReferenceEvaluator or with values worked out by hand, as each test says.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from deepcompress_cli.errors import DczError
from deepcompress_cli.interp.graph import Interpreter
from deepcompress_cli.interp.ops import KERNELS, OpContext, load_all
from deepcompress_cli.onnx_io import from_onnx

ort = pytest.importorskip("onnxruntime")
load_all()
RNG = np.random.default_rng(7)
F32 = np.float32


def randn(*shape, dtype=F32):
    return RNG.standard_normal(shape).astype(dtype)


def node_model(op_type, inputs, attrs, opset, n_out=1, out_types=None):
    """A one-node model whose inputs are graph inputs (None: an omitted optional input)."""
    names = [f"x{i}" if a is not None else "" for i, a in enumerate(inputs)]
    node = helper.make_node(op_type, names, [f"y{i}" for i in range(n_out)], **attrs)
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                    for n, a in zip(names, inputs) if a is not None]
    outputs = [helper.make_tensor_value_info(o, t, None) if out_types else helper.make_empty_tensor_value_info(o)
               for o, t in zip(node.output, out_types or [None] * n_out)]
    opset_id = helper.make_opsetid("", opset)
    model = helper.make_model(helper.make_graph([node], "case", graph_inputs, outputs), opset_imports=[opset_id],
                              ir_version=helper.find_min_ir_version_for([opset_id]))
    return model, node, {n: a for n, a in zip(names, inputs) if a is not None}


def kernel(op_type, inputs, node, opset, n_out=1):
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return KERNELS[op_type](list(inputs), attrs, OpContext(opset=opset, node_name="n", num_outputs=n_out))


def oracle(model, feeds, which="ort"):
    if which == "ref":
        from onnx.reference import ReferenceEvaluator

        return [np.asarray(o) for o in ReferenceEvaluator(model).run(None, feeds)]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def check(op_type, inputs, attrs=None, opset=21, n_out=1, which="ort", tol=1e-5):
    """Every output of the kernel equals the oracle's: same dtype and shape, values within tol."""
    model, node, feeds = node_model(op_type, inputs, attrs or {}, opset, n_out)
    want = oracle(model, feeds, which)
    got = kernel(op_type, inputs, node, opset, n_out)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, w.dtype, g.shape, w.shape)
        if g.dtype.kind in "iub":
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=tol, atol=tol)
    return got


# ------------------------------------------------------------------------------ casts

# Ties, values just past the largest finite ones, subnormals, signed zeros and the specials.
SPECIALS = np.array([0.0, -0.0, 1.0, -1.0, 0.3, 2.5, 3.5, 5.0, 17.0, 239.99, 240.0, 248.0, 448.0, 464.0,
                     470.0, 500.0, 57344.0, 61439.0, 61440.0, 70000.0, 1e6, -1e6, 2.0 ** -9, 2.0 ** -10,
                     3 * 2.0 ** -11, 2.0 ** -17, 2.0 ** -18, 1e-7, np.inf, -np.inf, np.nan], F32)
CAST_INPUTS = np.concatenate([SPECIALS, -SPECIALS, randn(64) * 100, randn(64)])


FLOAT8 = [TP.FLOAT8E4M3FN, TP.FLOAT8E4M3FNUZ, TP.FLOAT8E5M2, TP.FLOAT8E5M2FNUZ]


@pytest.mark.parametrize("to", FLOAT8)
@pytest.mark.parametrize("saturate", [0, 1])
@pytest.mark.parametrize("source", [np.float32, np.float16, np.float64])
def test_cast_to_float8_matches_onnxruntime(to, saturate, source):
    # onnxruntime's Python API cannot return most float8 types: the model casts back to float32
    # (exact), and values, NaNs and signs of zero must all agree.
    with np.errstate(over="ignore"):  # 1e6 is Inf in float16
        x = CAST_INPUTS.astype(source)
    model, node, feeds = node_model("Cast", [x], {"to": to, "saturate": saturate}, 21)
    model.graph.node.append(helper.make_node("Cast", ["y0"], ["back"], to=TP.FLOAT))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("back", TP.FLOAT, None))
    want = oracle(model, feeds)[0]
    got = kernel("Cast", [x], node, 21)[0]
    assert got.dtype == helper.tensor_dtype_to_np_dtype(to)
    got = got.astype(F32)
    if to == TP.FLOAT8E5M2 and not saturate:
        # 61440 is halfway between the largest E5M2 (57344) and 2 ** 16: it rounds to even, past
        # the largest, which the spec makes Inf; onnxruntime gives NaN.
        tie = np.abs(x) == 61440
        np.testing.assert_array_equal(got[tie], np.copysign(np.inf, x[tie]))
        got, want = got[~tie], want[~tie]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("to", FLOAT8)
def test_cast_to_float8_saturate_by_the_spec_table(to):
    # The spec's tables, by hand: Inf and values past the largest finite one saturate to +-max
    # (or become NaN, and Inf for E5M2, without saturate); the fnuz types have no -0.
    dtype = helper.tensor_dtype_to_np_dtype(to)
    top = float(ml_dtypes.finfo(dtype).max)
    x = np.array([np.inf, -np.inf, 1e6, -1e6, np.nan, -0.0, 1.0], F32)
    y = kernel("Cast", [x], helper.make_node("Cast", ["x"], ["y"], to=to), 21)[0].astype(F32)
    np.testing.assert_array_equal(y[:4], [top, -top, top, -top])
    assert np.isnan(y[4]) and y[5] == 0 and y[6] == 1
    assert np.signbit(y[5]) == (to in (TP.FLOAT8E4M3FN, TP.FLOAT8E5M2))
    y = kernel("Cast", [x], helper.make_node("Cast", ["x"], ["y"], to=to, saturate=0), 21)[0].astype(F32)
    if to == TP.FLOAT8E5M2:
        np.testing.assert_array_equal(y[:4], [np.inf, -np.inf, np.inf, -np.inf])
    else:
        assert np.isnan(y[:4]).all()


@pytest.mark.parametrize("to", [TP.FLOAT4E2M1, TP.UINT4, TP.INT2, TP.UINT2])
def test_cast_to_narrow_types_matches_the_reference(to):
    x = np.concatenate([CAST_INPUTS[np.isfinite(CAST_INPUTS)], np.arange(-9, 17, dtype=F32)])
    if to in (TP.UINT4, TP.INT2, TP.UINT2):  # float -> integer is undefined out of range
        x = np.arange(-9, 17, dtype=F32)
    check("Cast", [x], {"to": to}, opset=25, which="ref")


def test_cast_int4_matches_onnxruntime():
    # onnxruntime's Python API has no int4: the model casts back to int8.
    x = np.arange(-8, 8, dtype=F32)
    model, node, feeds = node_model("Cast", [x], {"to": TP.INT4}, 21)
    model.graph.node.append(helper.make_node("Cast", ["y0"], ["back"], to=TP.INT8))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("back", TP.INT8, None))
    got = kernel("Cast", [x], node, 21)[0]
    assert got.dtype == ml_dtypes.int4
    np.testing.assert_array_equal(got.astype(np.int8), oracle(model, feeds)[0])


def test_cast_from_narrow_types():
    x = CAST_INPUTS.astype(ml_dtypes.float8_e4m3fn)
    check("Cast", [x], {"to": TP.FLOAT}, opset=21, which="ref", tol=0)
    check("Cast", [x], {"to": TP.FLOAT16}, opset=21, which="ref", tol=0)
    check("Cast", [x], {"to": TP.FLOAT8E5M2}, opset=21, which="ref", tol=0)  # float8 -> float8
    check("Cast", [np.arange(-8, 8, dtype=np.int8).astype(ml_dtypes.int4)], {"to": TP.INT8}, opset=21, which="ref")
    check("Cast", [randn(9).astype(ml_dtypes.bfloat16)], {"to": TP.DOUBLE}, opset=21, which="ref", tol=0)


E8M0_INPUTS = np.array([1.0, 1.4, 1.5, 1.6, 3.0, 0.124, 2.0 ** -126, 2.0 ** -127, 2.0 ** -130, 0.0, 1e38, 3e38,
                        np.inf, np.nan])


@pytest.mark.parametrize("round_mode,saturate,exponents", [
    # E8M0 holds 2 ** e for e in [-127, 127]; NaN marks values it cannot hold without saturate.
    ("up", 1, [0, 1, 1, 1, 2, -3, -126, -127, -127, -127, 127, 127, 127, None]),
    ("down", 1, [0, 0, 0, 0, 1, -4, -126, -127, -127, -127, 126, 127, 127, None]),
    ("nearest", 1, [0, 0, 1, 1, 2, -3, -126, -127, -127, -127, 126, 127, 127, None]),  # ties up
    ("nearest", 0, [0, 0, 1, 1, 2, -3, -126, -127, None, None, 126, None, None, None]),
])
def test_cast_to_float8e8m0_by_hand(round_mode, saturate, exponents):
    want = [np.nan if e is None else 2.0 ** e for e in exponents]
    for source in (np.float32, np.float64):
        node = helper.make_node("Cast", ["x"], ["y"], to=TP.FLOAT8E8M0, saturate=saturate, round_mode=round_mode)
        y = kernel("Cast", [E8M0_INPUTS.astype(source)], node, 24)[0]
        assert y.dtype == ml_dtypes.float8_e8m0fnu
        np.testing.assert_array_equal(y.astype(np.float64), want)


@pytest.mark.parametrize("saturate", [0, 1])
def test_castlike_takes_the_dtype_and_saturate(saturate):
    like = np.zeros(0, ml_dtypes.float8_e4m3fn)
    got = check("CastLike", [CAST_INPUTS, like], {"saturate": saturate}, opset=21, which="ref", tol=0)[0]
    nans = np.isnan(got.astype(F32)).sum()
    assert nans == 2 if saturate else nans > 2  # the NaN inputs; without saturate the overflows too


def test_cast_from_strings():
    x = np.array(["1.5", "-1e-5", "INF", "-inf", "NaN", "1000"], dtype=object)
    check("Cast", [x], {"to": TP.FLOAT}, opset=21, which="ref")
    got = kernel("Cast", [x], helper.make_node("Cast", ["x"], ["y"], to=TP.FLOAT8E4M3FN), 21)[0]
    np.testing.assert_array_equal(got.astype(F32), [1.5, -0.0, 448, -448, np.nan, 448])


def test_cast_unsupported_is_dcz_error():
    with pytest.raises(DczError, match="round_mode"):
        kernel("Cast", [SPECIALS], helper.make_node("Cast", ["x"], ["y"], to=TP.FLOAT8E8M0, round_mode="odd"), 24)
    with pytest.raises(DczError, match="Cast"):
        kernel("Cast", [SPECIALS], helper.make_node("Cast", ["x"], ["y"], to=TP.STRING), 21)


@pytest.mark.parametrize("x,to", [
    (CAST_INPUTS, TP.INT32), (np.arange(-3, 3, dtype=np.int32), TP.FLOAT), (randn(2, 3).astype(np.float64), TP.INT64),
    (np.array(1.5, F32), TP.UINT32), (np.array([True, False]), TP.UINT8), (randn(4).astype(np.float16), TP.BFLOAT16),
])
def test_bitcast(x, to):
    # onnxruntime has no BitCast: the same bytes, the new type, the same shape.
    y = kernel("BitCast", [x], helper.make_node("BitCast", ["x"], ["y"], to=to), 26)[0]
    assert y.dtype == helper.tensor_dtype_to_np_dtype(to) and y.shape == x.shape
    assert y.tobytes() == x.tobytes()
    if x.shape == ():
        assert y == 0x3FC00000  # 1.5f


def test_bitcast_width_mismatch_is_dcz_error():
    with pytest.raises(DczError, match="width"):
        kernel("BitCast", [SPECIALS], helper.make_node("BitCast", ["x"], ["y"], to=TP.INT64), 26)


def test_float8_initializer_and_constant_load():
    """float8/int4 tensors stay in the graph (the tensor table holds the usual types) and load as
    ml_dtypes arrays, so Cast can read them."""
    weights = np.array([0.5, -448, 3], F32).astype(ml_dtypes.float8_e4m3fn)
    nibbles = np.array([-8, 7, 1], np.int8).astype(ml_dtypes.int4)
    init = numpy_helper.from_array(weights, "w")
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(nibbles, "c"))
    nodes = [const, helper.make_node("Cast", ["w"], ["wf"], to=TP.FLOAT), helper.make_node("Cast", ["c"], ["cf"], to=TP.FLOAT),
             helper.make_node("Add", ["wf", "cf"], ["y"])]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("y", TP.FLOAT, [3])], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    np.testing.assert_array_equal(Interpreter(from_onnx(model, None)).run({})[0], [-7.5, -441, 4])


# ------------------------------------------------------------------------------ optional and training outputs


@pytest.mark.parametrize("axis", [0, 1, -1, -2])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_layer_normalization_mean_and_inv_std_dev(axis, dtype):
    x = randn(2, 3, 4, dtype=dtype)
    shape = x.shape[axis % 3:]
    check("LayerNormalization", [x, randn(*shape, dtype=dtype), randn(*shape, dtype=dtype)],
          {"axis": axis, "epsilon": 1e-3}, opset=17, n_out=3, tol=2e-3 if dtype == np.float16 else 1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 3)])
def test_batch_normalization_training_mode(shape):
    c = shape[1]
    inputs = [randn(*shape), randn(c), randn(c), randn(c), np.abs(randn(c)) + 0.1]
    check("BatchNormalization", inputs, {"training_mode": 1, "momentum": 0.8}, opset=15, n_out=3)


MAXPOOL_INDEX_CASES = [
    ((1, 2, 5, 5), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ((2, 3, 6, 7), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    ((1, 2, 7, 8), dict(kernel_shape=[3, 2], strides=[2, 3], pads=[1, 0, 2, 1], ceil_mode=1)),
    ((1, 1, 9, 9), dict(kernel_shape=[3, 3], dilations=[2, 2], strides=[2, 1])),
    ((2, 2, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    ((1, 2, 4, 5, 6), dict(kernel_shape=[2, 3, 2], strides=[1, 2, 2])),
]


@pytest.mark.parametrize("storage_order", [0, 1])
@pytest.mark.parametrize("shape,attrs", MAXPOOL_INDEX_CASES)
def test_max_pool_indices(shape, attrs, storage_order):
    if storage_order and len(shape) != 4:
        pytest.skip("onnxruntime supports storage_order=1 on 2-D pools only")
    x = randn(*shape)
    x[..., 0] = x.max()  # ties: the first window position wins
    check("MaxPool", [x], {**attrs, "storage_order": storage_order}, opset=12, n_out=2)


def dropout_node(n_out, **attrs):
    return helper.make_node("Dropout", ["x", "r", "t"][:3], ["y", "mask"][:n_out], **attrs)


def test_dropout_inference_mask_is_all_true():
    x = randn(3, 4)
    for opset, inputs in ((13, [x, np.array(0.3, F32), np.array(False)]), (13, [x]), (10, [x]), (7, [x])):
        y, mask = kernel("Dropout", inputs, dropout_node(2), opset, n_out=2)
        assert y is x and mask.all() and mask.shape == x.shape
        assert mask.dtype == (bool if opset >= 10 else x.dtype)  # Dropout-7's mask has x's type


def test_dropout_training_mode():
    x = randn(40, 50) + 10  # never 0, so the mask shows in y
    inputs = [x, np.array(0.3, F32), np.array(True)]
    y, mask = kernel("Dropout", inputs, dropout_node(2, seed=5), 13, n_out=2)
    assert 0.25 < 1 - mask.mean() < 0.35
    np.testing.assert_allclose(y, np.where(mask, x / 0.7, 0), rtol=1e-6)
    again, mask_again = kernel("Dropout", inputs, dropout_node(2, seed=5), 13, n_out=2)
    np.testing.assert_array_equal(mask, mask_again)  # a seed makes it reproducible
    other = kernel("Dropout", inputs, dropout_node(2, seed=6), 13, n_out=2)[1]
    assert (other != mask).any()
    y, mask = kernel("Dropout", [x, np.array(0.0, F32), np.array(True)], dropout_node(2), 13, n_out=2)
    assert y is x and mask.all()
    with pytest.raises(DczError, match="ratio"):
        kernel("Dropout", [x, np.array(1.0, F32), np.array(True)], dropout_node(1), 13)


# ------------------------------------------------------------------------------ Resize cubic / antialias

IMG = randn(1, 2, 6, 7)
COORDS = ["half_pixel", "pytorch_half_pixel", "asymmetric", "half_pixel_symmetric"]


@pytest.mark.parametrize("scales", [[1, 1, 2, 1.5], [1, 1, 0.5, 0.7], [1, 1, 1.7, 0.4]])
@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("a,exclude_outside", [(-0.75, 0), (-0.5, 1)])
def test_resize_cubic(scales, coord, a, exclude_outside):
    attrs = {"mode": "cubic", "coordinate_transformation_mode": coord, "cubic_coeff_a": a,
             "exclude_outside": exclude_outside}
    check("Resize", [IMG, None, np.array(scales, F32)], attrs, opset=19, tol=1e-4)


@pytest.mark.parametrize("sizes", [[1, 2, 9, 4], [1, 2, 3, 12]])
def test_resize_cubic_sizes_align_corners(sizes):
    # From sizes, in * scale is the integer size: onnxruntime and the reference agree.
    attrs = {"mode": "cubic", "coordinate_transformation_mode": "align_corners"}
    check("Resize", [IMG, None, None, np.array(sizes, np.int64)], attrs, opset=19, tol=1e-4)


def test_resize_align_corners_fractional_length_follows_the_reference():
    # 4 * 0.6 = 2.4: the second sample is at 1 * 3 / (2.4 - 1), not 1 * 3 / (2 - 1) (onnxruntime).
    x = np.arange(1, 9, dtype=F32).reshape(1, 1, 2, 4)
    for mode in ("linear", "cubic"):
        check("Resize", [x, None, np.array([1, 1, 0.6, 0.6], F32)],
              {"mode": mode, "coordinate_transformation_mode": "align_corners"}, opset=19, which="ref", tol=1e-5)
    y = KERNELS["Resize"]([x, None, np.array([1, 1, 0.6, 0.6], F32)],
                          {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, OpContext(opset=19))[0]
    np.testing.assert_allclose(y.reshape(-1), [1, 1 + 3 / 1.4], rtol=1e-6)


@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil"])
def test_resize_align_corners_from_sizes_keeps_ties(nearest_mode):
    # 100 -> 105 samples output 52 at 52 * 99 / 104 = 49.5, a tie.  The divisor is the size asked
    # for, not 100 * (105 / 100)f - 1, whose rounding would move the tie by 4e-6.
    attrs = {"coordinate_transformation_mode": "align_corners", "nearest_mode": nearest_mode}
    check("Resize", [np.arange(100, dtype=F32).reshape(1, 100), None, None, np.array([1, 105], np.int64)],
          attrs, opset=19, tol=0)


def test_resize_cubic_tf_crop_and_resize_and_int_input():
    roi = np.array([0, 0, 0.2, -0.1, 1, 1, 0.9, 1.3], F32)
    attrs = {"mode": "cubic", "coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": -3.0}
    check("Resize", [IMG, roi, None, np.array([1, 2, 5, 6], np.int64)], attrs, opset=13, tol=1e-4)
    x = (np.arange(42).reshape(1, 1, 6, 7) * 6).astype(np.uint8)
    check("Resize", [x, None, np.array([1, 1, 1.5, 1.5], F32)], {"mode": "cubic"}, opset=19, which="ref")


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("target", [dict(scales=[1, 1, 0.5, 0.7]), dict(scales=[1, 1, 0.3, 1.5]),
                                    dict(sizes=[1, 2, 4, 2]), dict(sizes=[1, 2, 2, 3])])
@pytest.mark.parametrize("coord", ["half_pixel", "pytorch_half_pixel", "asymmetric"])
def test_resize_antialias(mode, target, coord):
    scales = np.array(target["scales"], F32) if "scales" in target else None
    sizes = np.array(target["sizes"], np.int64) if "sizes" in target else None
    inputs = [IMG, None, scales] + ([sizes] if sizes is not None else [])
    attrs = {"mode": mode, "antialias": 1, "coordinate_transformation_mode": coord}
    check("Resize", inputs, attrs, opset=18, tol=1e-4)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_antialias_kernel_longer_than_the_axis(mode):
    # At scale 0.1 the cubic kernel spans 40 samples of a 20-sample axis (the matrix path).
    check("Resize", [randn(1, 2, 20, 30), None, np.array([1, 1, 0.1, 0.15], F32)],
          {"mode": mode, "antialias": 1}, opset=18, tol=1e-4)


@pytest.mark.parametrize("exclude_outside", [0, 1])
def test_resize_antialias_cubic_exclude_outside_against_reference(exclude_outside):
    attrs = {"mode": "cubic", "antialias": 1, "exclude_outside": exclude_outside, "cubic_coeff_a": -0.5}
    check("Resize", [IMG, None, np.array([1, 1, 0.4, 0.6], F32)], attrs, opset=18, which="ref", tol=1e-4)


def test_resize_antialias_is_ignored_when_upscaling_and_before_opset_18():
    scales = np.array([1, 1, 2, 1.5], F32)
    plain = KERNELS["Resize"]([IMG, None, scales], {"mode": "linear"}, OpContext(opset=18))[0]
    np.testing.assert_array_equal(
        KERNELS["Resize"]([IMG, None, scales], {"mode": "linear", "antialias": 1}, OpContext(opset=18))[0], plain)
    down = np.array([1, 1, 0.5, 0.5], F32)
    np.testing.assert_array_equal(
        KERNELS["Resize"]([IMG, None, down], {"mode": "linear", "antialias": 1}, OpContext(opset=13))[0],
        KERNELS["Resize"]([IMG, None, down], {"mode": "linear"}, OpContext(opset=13))[0])
