"""QuantizeLinear/DequantizeLinear, DynamicQuantizeLinear and the integer layers (MatMulInteger,
ConvInteger, QLinearMatMul, QLinearConv) against onnxruntime on one-node models, plus hand-checked
rounding, saturation and exactness cases."""

from __future__ import annotations

import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from deepcompress_cli.errors import DczError  # noqa: E402
from deepcompress_cli.interp.ops import KERNELS, OpContext, load_all  # noqa: E402

load_all()
RNG = np.random.default_rng(11)
F = TensorProto.FLOAT


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def codes(dtype, *shape):
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, shape).astype(dtype)


def tensor_type(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def ort_run(nodes, inputs: dict, outputs: dict, opset):
    """Run a graph of `nodes` in onnxruntime; `outputs` maps names to element types."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, tensor_type(a.dtype), a.shape) for n, a in inputs.items()],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)


def ours(op_type, inputs, attrs=None, opset=21, outputs=1):
    return KERNELS[op_type](list(inputs), attrs or {}, OpContext(opset=opset, num_outputs=outputs))


def check(op_type, inputs, attrs=None, opset=21, out_types=None, exact=True):
    """Our kernel against onnxruntime on one node; outputs of the first input's type unless given."""
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    out_types = out_types or [tensor_type(inputs[0].dtype)]
    outs = [f"out{i}" for i in range(len(out_types))]
    node = helper.make_node(op_type, names, outs, **(attrs or {}))
    expected = ort_run([node], {n: a for n, a in zip(names, inputs) if n}, dict(zip(outs, out_types)), opset)
    node_attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    got = ours(op_type, inputs, node_attrs, opset, len(outs))
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, e.shape, g.dtype, e.dtype)
        if exact:
            np.testing.assert_array_equal(g, e)
        else:
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)
    return got


# ------------------------------------------------------------------- QuantizeLinear / Dequantize

@pytest.mark.parametrize("opset", [10, 13, 19, 21])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_quantize_dequantize_per_tensor(opset, dtype):
    x = rand(3, 5) * 40
    scale, zp = np.array(0.37, np.float32), np.array(3, dtype)
    q = check("QuantizeLinear", [x, scale, zp], opset=opset, out_types=[tensor_type(dtype)])[0]
    check("DequantizeLinear", [q, scale, zp], opset=opset, out_types=[F], exact=False)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_quantize_dequantize_per_axis(axis):
    x = rand(2, 3, 4) * 10
    n = x.shape[axis]
    scale = (RNG.random(n) + 0.1).astype(np.float32)
    zp = RNG.integers(-5, 5, n).astype(np.int8)
    q = check("QuantizeLinear", [x, scale, zp], dict(axis=axis), opset=13, out_types=[TensorProto.INT8])[0]
    check("DequantizeLinear", [q, scale, zp], dict(axis=axis), opset=13, out_types=[F], exact=False)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8])
def test_quantize_blocked(dtype):
    x = rand(3, 7, 2) * 1000
    scale = (RNG.random((3, 3, 2)) + 0.5).astype(np.float32)
    zp = codes(dtype, 3, 3, 2)
    attrs = dict(axis=1, block_size=3)
    q = check("QuantizeLinear", [x, scale, zp], attrs, out_types=[tensor_type(dtype)])[0]
    check("DequantizeLinear", [q, scale, zp], attrs, out_types=[F], exact=False)


def test_quantize_output_dtype_without_zero_point():
    x = rand(8) * 300
    check("QuantizeLinear", [x, np.array(1.5, np.float32)], dict(output_dtype=TensorProto.INT8),
          out_types=[TensorProto.INT8])
    assert ours("QuantizeLinear", [x, np.array(1.5, np.float32)])[0].dtype == np.uint8  # the default


def test_quantize_rounds_half_to_even_and_saturates():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 300, -300, 127.5], np.float32)
    y = ours("QuantizeLinear", [x, np.array(1, np.float32), np.array(0, np.int8)])[0]
    np.testing.assert_array_equal(y, [0, 2, 2, 0, -2, 127, -128, 127])


@pytest.mark.parametrize("dtype", ["int4", "uint4", "int2", "uint2"])
def test_quantize_sub_byte_types(dtype):
    """onnxruntime has no numpy type for int4 outputs: Q then DQ in one graph, which it runs."""
    code = getattr(ml_dtypes, dtype)
    info = ml_dtypes.iinfo(code)
    x = rand(3, 4) * 6
    scale = (RNG.random(3) + 0.3).astype(np.float32)
    zp_value = np.zeros(3, code)
    q = ours("QuantizeLinear", [x, scale, zp_value], {"axis": 0})[0]
    assert q.dtype == code
    expected = np.clip(np.rint(x / scale[:, None]), info.min, info.max)
    np.testing.assert_array_equal(q.astype(np.int64), expected)
    back = ours("DequantizeLinear", [q, scale, zp_value], {"axis": 0})[0]
    np.testing.assert_allclose(back, expected * scale[:, None], rtol=1e-6)
    if dtype in ("int4", "uint4"):
        zp = helper.make_tensor("zp", tensor_type(code), [3], zp_value.astype(np.int64).tolist())
        nodes = [helper.make_node("Constant", [], ["zp"], value=zp),
                 helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], axis=0),
                 helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], axis=0)]
        np.testing.assert_allclose(back, ort_run(nodes, {"x": x, "s": scale}, {"y": F}, 21)[0], rtol=1e-6)


@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2"])
def test_quantize_float8(dtype, saturate):
    """float8e4m3fn outputs come back from onnxruntime as raw bytes: compare the bits (it has no
    numpy type for float8e5m2: ml_dtypes' rounding there, clamped when saturating)."""
    code = np.dtype(getattr(ml_dtypes, dtype))
    x = np.concatenate([rand(20) * 100, [1e6, -1e6, np.inf, -np.inf, 0.0]]).astype(np.float32)
    scale = np.array(0.5, np.float32)
    node = helper.make_node("QuantizeLinear", ["x", "s"], ["y"], saturate=saturate,
                            output_dtype=tensor_type(code))
    got = ours("QuantizeLinear", [x, scale], {"saturate": saturate, "output_dtype": tensor_type(code)})[0]
    assert got.dtype == code
    if dtype == "float8_e4m3fn":
        expected = ort_run([node], {"x": x, "s": scale}, {"y": tensor_type(code)}, 21)[0]
    else:
        limit = float(ml_dtypes.finfo(code).max)
        expected = (np.clip(x / scale, -limit, limit) if saturate else x / scale).astype(code)
        assert saturate or np.isinf(got[-3:-1].astype(np.float32)).all()
    np.testing.assert_array_equal(got.view(np.uint8), np.asarray(expected).view(np.uint8))
    back = ours("DequantizeLinear", [got, scale])[0]
    np.testing.assert_allclose(back[:20], x[:20], rtol=0.07 if dtype.endswith("e4m3fn") else 0.13)


def test_dequantize_int32_and_output_dtype():
    x = codes(np.int32, 6)
    check("DequantizeLinear", [x, np.array(1e-6, np.float32)], out_types=[F], exact=False)
    y = ours("DequantizeLinear", [codes(np.uint8, 4), np.array(0.5, np.float32), np.array(7, np.uint8)],
             {"output_dtype": TensorProto.FLOAT16}, opset=23)[0]
    assert y.dtype == np.float16


def test_quantize_precision_attribute():
    """opset 23: x / scale is computed in `precision` (here float16, where 2049 rounds to 2048)."""
    x = np.array([2049.0], np.float32)
    one = np.array(1.0, np.float32)
    assert ours("QuantizeLinear", [x, one, np.array(0, np.int16)], opset=23)[0][0] == 2049
    y = ours("QuantizeLinear", [x, one, np.array(0, np.int16)], {"precision": TensorProto.FLOAT16}, opset=23)[0]
    assert y[0] == 2048


def test_quantize_bad_scale_shape_is_dcz_error():
    with pytest.raises(DczError, match="scale"):
        ours("QuantizeLinear", [rand(4, 6), np.ones((4, 4), np.float32)], {"axis": 1, "block_size": 2})
    with pytest.raises(DczError, match="scales for axis"):
        ours("QuantizeLinear", [rand(4, 6), np.ones(5, np.float32)], {"axis": 1})


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_dynamic_quantize_linear(scale):
    for x in (rand(4, 5) * scale, np.abs(rand(7)) * scale, -np.abs(rand(7))):
        check("DynamicQuantizeLinear", [x], opset=11, out_types=[TensorProto.UINT8, F, TensorProto.UINT8])


def test_dynamic_quantize_linear_all_zeros():
    y, s, zp = ours("DynamicQuantizeLinear", [np.zeros(5, np.float32)], opset=11, outputs=3)
    assert s == 0 and zp == 0 and not y.any()


# ---------------------------------------------------------------------------- integer layers

@pytest.mark.parametrize("a_dtype, b_dtype", [(np.uint8, np.uint8), (np.uint8, np.int8), (np.int8, np.int8)])
def test_matmul_integer(a_dtype, b_dtype):
    """Against int64 numpy (onnxruntime's uint8 x int8 kernel saturates pair sums to int16, and it
    has no per-row/per-column zero points); onnxruntime too where it is exact."""
    a, b = codes(a_dtype, 2, 5, 7), codes(b_dtype, 7, 4)
    a_zp, b_zp = codes(a_dtype, 1), codes(b_dtype, 1)
    got = ours("MatMulInteger", [a, b, a_zp, b_zp], opset=10)[0]
    np.testing.assert_array_equal(got, (a.astype(np.int64) - a_zp) @ (b.astype(np.int64) - b_zp))
    if a_dtype == b_dtype:
        check("MatMulInteger", [a, b, a_zp, b_zp], opset=10, out_types=[TensorProto.INT32])
    a_zp, b_zp = codes(a_dtype, 5), codes(b_dtype, 4)  # per row of a, per column of b
    got = ours("MatMulInteger", [a[0], b, a_zp, b_zp], opset=10)[0]
    np.testing.assert_array_equal(got, (a[0].astype(np.int64) - a_zp[:, None]) @ (b.astype(np.int64) - b_zp))


def test_matmul_integer_is_exact_past_float32():
    """K = 4096 extreme products sum far past 2^24: still exact."""
    a = np.full((2, 4096), 255, np.uint8)
    b = np.full((4096, 3), -128, np.int8)
    a[0, ::3] = 0
    got = ours("MatMulInteger", [a, b], opset=10)[0]
    np.testing.assert_array_equal(got, a.astype(np.int64) @ b.astype(np.int64))
    assert got.dtype == np.int32


CONV_CASES = {
    "plain": ((1, 3, 6, 6), (4, 3, 3, 3), {}),
    "pads_strides": ((2, 4, 7, 5), (6, 4, 3, 2), dict(pads=[1, 0, 1, 1], strides=[2, 1])),
    "group": ((1, 4, 5, 5), (6, 2, 3, 3), dict(group=2, dilations=[2, 1])),
    "depthwise": ((1, 3, 5, 5), (3, 1, 3, 3), dict(group=3, auto_pad="SAME_UPPER")),
}


def reference_conv(x: np.ndarray, w: np.ndarray, attrs: dict) -> np.ndarray:
    """onnxruntime's float Conv of integer-valued arrays: exact while sums stay below 2^24 (these do)."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    return ort_run([node], {"x": x.astype(np.float32), "w": w.astype(np.float32)}, {"y": F}, 11)[0]


@pytest.mark.parametrize("case", CONV_CASES, ids=list(CONV_CASES))
def test_conv_integer(case):
    x_shape, w_shape, attrs = CONV_CASES[case]
    x, w = codes(np.uint8, *x_shape), codes(np.uint8, *w_shape)
    x_zp, w_zp = np.array(17, np.uint8), codes(np.uint8, w_shape[0])
    check("ConvInteger", [x, w, x_zp, w_zp[:1]], attrs, opset=10, out_types=[TensorProto.INT32])
    got = ours("ConvInteger", [x, w, x_zp, w_zp], attrs, opset=10)[0]  # per output channel: not in onnxruntime
    expected = reference_conv(x - np.float32(x_zp), w - w_zp.astype(np.float32).reshape(-1, 1, 1, 1), attrs)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_integer_is_exact_past_float32(group):
    """128 input channels of extreme codes under a 3x3 kernel sum far past 2^24 (float32 chunks for
    group 1, float64 for deep groups): equal to int64 arithmetic."""
    x = RNG.choice(np.array([0, 255], np.uint8), (1, 128, 5, 5), p=[0.05, 0.95])
    w = np.full((4, 128 // group, 3, 3), 255, np.uint8)
    got = ours("ConvInteger", [x, w], {"group": group}, opset=10)[0]
    windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.int64), (3, 3), axis=(2, 3))
    windows = windows.reshape(1, group, 128 // group, 3, 3, 3, 3)
    expected = np.einsum("ngchwij,gmcij->ngmhw", windows, w.astype(np.int64).reshape(group, 4 // group, -1, 3, 3))
    np.testing.assert_array_equal(got, expected.reshape(1, 4, 3, 3))
    assert got.max() > 1 << 24


@pytest.mark.parametrize("case", CONV_CASES, ids=list(CONV_CASES))
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinear_conv(case, dtype):
    """Against requantized exact convolutions (onnxruntime's uint8 x int8 path saturates)."""
    x_shape, w_shape, attrs = CONV_CASES[case]
    m = w_shape[0]
    x, w = codes(dtype, *x_shape), codes(np.int8, *w_shape)
    w_scale = (RNG.random(m) * 0.01 + 0.001).astype(np.float32)
    bias = RNG.integers(-5000, 5000, m).astype(np.int32)
    x_zp, y_zp = np.array(3, dtype), np.array(-4 if dtype == np.int8 else 120, dtype)
    inputs = [x, np.array(0.05, np.float32), x_zp, w, w_scale, np.zeros(m, np.int8),
              np.array(0.2, np.float32), y_zp, bias]
    got = ours("QLinearConv", inputs, attrs, opset=10)[0]
    acc = reference_conv(x - np.float32(x_zp), w, attrs).astype(np.float64) + bias.reshape(-1, 1, 1)
    multiplier = (np.float32(0.05) * w_scale / np.float32(0.2)).reshape(-1, 1, 1)
    info = np.iinfo(dtype)
    np.testing.assert_array_equal(got, np.clip(np.rint(acc * multiplier) + y_zp, info.min, info.max))
    if dtype == np.int8:  # int8 x int8 is exact in onnxruntime
        check("QLinearConv", inputs, attrs, opset=10)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("opset", [10, 21])
def test_qlinear_matmul(dtype, opset):
    a, b = codes(dtype, 2, 3, 16), codes(dtype, 2, 16, 5)
    scales = [np.array(s, np.float32) for s in (0.02, 0.03, 0.1)]
    zps = [np.array(z, dtype) for z in (5, -3 if dtype == np.int8 else 130, 2)]
    check("QLinearMatMul", [a, scales[0], zps[0], b, scales[1], zps[1], scales[2], zps[2]], opset=opset)


def test_qlinear_matmul_per_column_b():
    a, b = codes(np.uint8, 4, 8), codes(np.int8, 8, 3)
    b_scale = np.array([0.01, 0.02, 0.05], np.float32)
    got = ours("QLinearMatMul", [a, np.array(0.1, np.float32), np.array(128, np.uint8), b, b_scale,
                                 np.zeros(3, np.int8), np.array(0.5, np.float32), np.array(10, np.uint8)], opset=10)[0]
    real = (a.astype(np.float64) - 128) * 0.1 @ (b.astype(np.float64) * b_scale)
    np.testing.assert_array_equal(got, np.clip(np.rint(real / 0.5) + 10, 0, 255))


# --------------------------------------------------------------- already-quantized whole models

def small_cnn(path) -> None:
    """Conv -> Relu -> MaxPool -> Flatten -> MatMul, float weights, saved to `path`."""
    from onnx import numpy_helper

    weights = {"cw": rand(8, 3, 3, 3) * 0.3, "cb": rand(8) * 0.3, "fw": rand(8 * 6 * 6, 10) * 0.3}
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "fw"], ["y"])]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", F, [2, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", F, [2, 10])],
                              [numpy_helper.from_array(w, n) for n, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.mark.parametrize("variant", ["qdq", "qdq_per_channel_s8", "qoperator", "dynamic"])
def test_onnxruntime_quantized_models_run_exactly(variant, tmp_path):
    """Models quantized by onnxruntime.quantization (QDQ, QOperator = QLinearConv/QLinearMatMul,
    dynamic = DynamicQuantizeLinear/ConvInteger/MatMulInteger) give onnxruntime's outputs bit for
    bit (its graph optimizations off: they fuse QDQ pairs into kernels that round differently).
    Dynamic weights are uint8: onnxruntime's uint8 x int8 MatMulInteger saturates pair sums to
    int16 on AVX2 machines (off by thousands where test_matmul_integer's int64 reference is not)."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    from deepcompress_cli.interp.graph import Interpreter
    from deepcompress_cli.onnx_io import from_onnx

    source, target = str(tmp_path / "float.onnx"), str(tmp_path / "quantized.onnx")
    small_cnn(source)
    calibration = [{"x": rand(2, 3, 12, 12)} for _ in range(3)]

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            return next(self.batches, None)

    Q = quantization.QuantType
    if variant == "dynamic":
        quantization.quantize_dynamic(source, target, weight_type=Q.QUInt8)
    else:
        fmt = quantization.QuantFormat.QOperator if variant == "qoperator" else quantization.QuantFormat.QDQ
        extra = dict(per_channel=True, activation_type=Q.QInt8, weight_type=Q.QInt8) if "s8" in variant else {}
        quantization.quantize_static(source, target, Reader(), quant_format=fmt, **extra)
    model = onnx.load(target)
    assert any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in model.graph.node)
    x = rand(2, 3, 12, 12)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    expected = ort.InferenceSession(target, options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(Interpreter(from_onnx(model, None)).run({"x": x})[0], expected)


@pytest.mark.parametrize("dtype", ["int4", "uint4", "float8_e4m3fn"])
def test_blocked_low_bit_weights_in_a_model(dtype):
    """A weight stored as int4/uint4/float8 with blocked scales (as LLM exports store them) is
    decoded from the file and dequantized by the interpreter."""
    from onnx import numpy_helper

    from deepcompress_cli.interp.graph import Interpreter
    from deepcompress_cli.onnx_io import from_onnx

    code = np.dtype(getattr(ml_dtypes, dtype))
    weight = np.arange(-8, 8, dtype=np.float32).reshape(4, 4) + (8 if dtype == "uint4" else 0)
    scales = (RNG.random((4, 2)) + 0.5).astype(np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["wq", "s"], ["w"], axis=1, block_size=2),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2, 4])],
                              [helper.make_tensor_value_info("y", F, [2, 4])],
                              [numpy_helper.from_array(weight.astype(code), "wq"), numpy_helper.from_array(scales, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    x = rand(2, 4)
    y = Interpreter(from_onnx(model, None)).run({"x": x})[0]
    np.testing.assert_allclose(y, x @ (weight * np.repeat(scales, 2, axis=1)), rtol=1e-5)
