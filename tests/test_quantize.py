"""quantize: the seed's rounding (zero exact, no drift), per-channel axes, QDQ export, chaining."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLES, mnist_accuracy, ort_outputs, shared_path
from deepcompress_cli.codecs import linear
from deepcompress_cli.errors import DczError
from deepcompress_cli.files import read_model, write_dcz, write_onnx
from deepcompress_cli.graphs import output_channel_axis
from deepcompress_cli.stages.quantize import QuantizeConfig, quantize
from deepcompress_cli.tensors import Slot

RNG = np.random.default_rng(0)


def dequantize(values, **kw):
    codes, scales, zero_points = linear.quantize(values, **kw)
    params = {"bits": kw.get("bits", 8), "channels": kw.get("channels", 1), "inner": kw.get("inner", 1),
              "symmetric": kw.get("symmetric", False)}
    return linear.decode(params, Slot("float32", len(values)),
                         {"codes": codes, "scales": scales, "zero_points": zero_points}), scales


@pytest.mark.parametrize("symmetric", [False, True])
def test_rounding_has_no_bias_and_keeps_zero_exact(symmetric):
    values = (RNG.standard_normal(1_000_000) * 0.05 + 0.013).astype(np.float32)
    values[::97] = 0.0
    out, scales = dequantize(values, bits=8, symmetric=symmetric)
    error = out.astype(np.float64) - values
    assert np.all(out[::97] == 0.0)  # zero is exactly representable
    assert abs(error.mean()) < 0.005 * scales[0]  # no drift in one direction
    assert np.abs(error).max() <= 0.5 * scales[0] * (1 + 1e-6)  # round to nearest
    if not symmetric:  # rounding after subtracting the float min drifts by the min's fraction
        low, high = min(values.min(), 0), max(values.max(), 0)
        scale = (high - low) / 255
        naive = (np.round((values - low) / scale) - np.round(-low / scale)) * scale
        assert abs((naive - values).mean()) > 0.05 * scale


def test_range_always_includes_zero():
    values = RNG.uniform(2.0, 3.0, 1000).astype(np.float32)  # all positive: the range is [0, 3]
    out, scales = dequantize(values, bits=8)
    assert scales[0] == pytest.approx(values.max() / 255, rel=1e-6)
    assert np.abs(out - values).max() <= scales[0] / 2 + 1e-7


@pytest.mark.parametrize("bits", [2, 4, 8, 12, 16])
def test_codes_use_the_full_range(bits):
    values = RNG.standard_normal(10000).astype(np.float32)
    codes, scales, zps = linear.quantize(values, bits)
    assert codes.min() == 0 and codes.max() == (1 << bits) - 1


def test_output_channel_axis_by_op():
    assert output_channel_axis("Conv", {}, 1, 4) == 0
    assert output_channel_axis("ConvTranspose", {}, 1, 4) == 1
    assert output_channel_axis("Gemm", {"transB": 1}, 1, 2) == 0
    assert output_channel_axis("Gemm", {"transB": 0}, 1, 2) == 1
    assert output_channel_axis("Gemm", {}, 0, 2) is None  # the weight as input A: per tensor
    assert output_channel_axis("MatMul", {}, 1, 3) == 2
    assert output_channel_axis("Relu", {}, 0, 2) is None


def layer_model(op: str, **attrs) -> tuple[onnx.ModelProto, dict]:
    """One weighted layer + a bias, with a random input."""
    if op == "Conv":
        w, x_shape, y_shape = RNG.standard_normal((8, 3, 3, 3)), [2, 3, 6, 6], [2, 8, 4, 4]
        node = helper.make_node("Conv", ["x", "w"], ["y"])
    elif op == "ConvTranspose":
        w, x_shape, y_shape = RNG.standard_normal((3, 5, 3, 3)), [2, 3, 4, 4], [2, 5, 6, 6]
        node = helper.make_node("ConvTranspose", ["x", "w"], ["y"])
    elif op == "Gemm":
        trans_b = attrs.get("transB", 0)
        w = RNG.standard_normal((12, 7) if trans_b else (7, 12))
        x_shape, y_shape = [4, 7], [4, 12]
        node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=trans_b)
    else:  # batched MatMul
        w, x_shape, y_shape = RNG.standard_normal((7, 12)), [2, 4, 7], [2, 4, 12]
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
    w = (w * np.linspace(0.1, 2, w.shape[0]).reshape(-1, *[1] * (w.ndim - 1))).astype(np.float32)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return model, {"x": RNG.standard_normal(x_shape).astype(np.float32)}


@pytest.mark.parametrize("case", [("Conv", {}), ("ConvTranspose", {}), ("Gemm", {"transB": 0}),
                                  ("Gemm", {"transB": 1}), ("MatMul", {})], ids=lambda c: f"{c[0]}{c[1]}")
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
def test_qdq_export_matches_dequantized_weights_in_onnxruntime(tmp_path, case, per_channel, symmetric):
    model, feeds = layer_model(case[0], **case[1])
    onnx.save(model, str(tmp_path / "m.onnx"))
    package = read_model(str(tmp_path / "m.onnx"))
    rows = quantize(package, QuantizeConfig(8, per_channel, symmetric))
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    expected_axis = output_channel_axis(case[0], case[1], 1, w.ndim) if per_channel else None
    assert rows[0]["axis"] == expected_axis
    assert rows[0]["channels"] == (w.shape[expected_axis] if per_channel else 1)
    write_dcz(package, str(tmp_path / "q.dcz"))
    package = read_model(str(tmp_path / "q.dcz"))
    write_onnx(package, str(tmp_path / "qdq.onnx"), qdq=True)
    write_onnx(package, str(tmp_path / "float.onnx"))
    qdq = onnx.load(str(tmp_path / "qdq.onnx"))
    onnx.checker.check_model(qdq, full_check=True)
    assert qdq.graph.node[0].op_type == "DequantizeLinear"
    assert qdq.graph.initializer[0].data_type == (TensorProto.INT8 if symmetric else TensorProto.UINT8)
    a = ort_outputs(qdq.SerializeToString(), feeds, optimize=False)[0]
    b = ort_outputs((tmp_path / "float.onnx").read_bytes(), feeds)[0]
    assert np.allclose(a, b, rtol=1e-5, atol=1e-5)
    # with its optimizations on, onnxruntime may also quantize activations: close, not equal
    c = ort_outputs(qdq.SerializeToString(), feeds)[0]
    assert np.abs(c - b).max() <= 0.05 * np.abs(b).max()
    # and the float export carries exactly the weights the codec decodes
    decoded = package.tensor("w").decode()
    assert onnx.numpy_helper.to_array(onnx.load(str(tmp_path / "float.onnx")).graph.initializer[0]).tobytes() \
        == decoded.tobytes()


def test_quantize_then_huffman_is_smaller_and_bit_exact(cli, tmp_path):
    q, h = tmp_path / "q.dcz", tmp_path / "h.dcz"
    assert cli("quantize", SAMPLES / "lenet300.onnx", "-o", q).exit_code == 0
    assert cli("huffman", q, "-o", h).exit_code == 0
    assert h.stat().st_size < q.stat().st_size
    before, after = read_model(str(q)), read_model(str(h))
    assert all(a.decode().tobytes() == b.decode().tobytes() for a, b in zip(before.tensors, after.tensors))
    info = json.loads(cli("info", h, "--json").stdout)
    assert info["tensors"][0]["chain"] == "linear8+huffman"


def test_prune_then_quantize_keeps_zeros_and_exports_qdq(cli, tmp_path):
    p, q, out = tmp_path / "p.dcz", tmp_path / "q.dcz", tmp_path / "q.onnx"
    assert cli("prune", SAMPLES / "lenet5.onnx", "-o", p, "--sparsity", "0.5").exit_code == 0
    assert cli("quantize", p, "-o", q, "--per-channel").exit_code == 0  # sparse: per tensor
    pruned, quantized = read_model(str(p)), read_model(str(q))
    for a, b in zip(pruned.tensors, quantized.tensors):
        assert np.array_equal(a.decode() == 0, b.decode() == 0)
    assert cli("export", q, "-o", out, "--qdq").exit_code == 0
    x = {"input": np.load(SAMPLES / "digits_test.npz")["input"][:16]}
    assert cli("export", q, "-o", tmp_path / "f.onnx").exit_code == 0
    assert np.allclose(ort_outputs(out.read_bytes(), x)[0], ort_outputs((tmp_path / "f.onnx").read_bytes(), x)[0],
                       atol=1e-5)


def test_hostile_scales_and_zero_points():
    params = {"bits": 8, "channels": 1, "inner": 1, "symmetric": False}
    codes = np.array([1, 2, 3], np.uint8)
    for scale in (np.nan, np.inf, 0.0, -1.0):
        with pytest.raises(DczError, match="scale"):
            linear.decode(params, Slot("float32", 3), {"codes": codes, "scales": np.array([scale], np.float32),
                                                       "zero_points": np.zeros(1, np.uint8)})
    with pytest.raises(DczError, match="over 4 bits"):
        linear.decode({**params, "bits": 4}, Slot("float32", 3),
                      {"codes": codes, "scales": np.ones(1, np.float32), "zero_points": np.array([16], np.uint8)})
    with pytest.raises(DczError, match="divide"):
        linear.check({**params, "channels": 2}, Slot("float32", 3),
                     {"codes": Slot("uint8", 3), "scales": Slot("float32", 2), "zero_points": Slot("uint8", 2)})


def test_mnist_cnn_quantized_accuracy(cli, tmp_path):
    """Issue 4: >= 3.9x smaller weights, top-1 within 0.3 points, per-channel no worse."""
    source = shared_path("models", "mnist_cnn.onnx")
    baseline = mnist_accuracy(source.read_bytes())
    accuracy = {}
    for mode in ("tensor", "channel"):
        dcz, out = tmp_path / f"{mode}.dcz", tmp_path / f"{mode}.onnx"
        extra = ["--per-channel"] if mode == "channel" else []
        data = json.loads(cli("--json", "quantize", source, "-o", dcz, *extra).stdout)
        weights = [r for r in data["layers"]]
        ratio = sum(r["bytes_before"] for r in weights) / sum(r["bytes_after"] for r in weights)
        assert ratio >= 3.9
        assert cli("export", dcz, "-o", out, "--qdq").exit_code == 0
        accuracy[mode] = mnist_accuracy(out.read_bytes())
        print(f"mnist_cnn quantize per-{mode}: weights {ratio:.2f}x smaller, top-1 {accuracy[mode]:.4f} "
              f"(float {baseline:.4f})")
        assert accuracy[mode] >= baseline - 0.003
    assert accuracy["channel"] >= accuracy["tensor"]


@pytest.mark.parametrize("ir_version", [3, 8])
def test_qdq_export_of_weights_listed_as_graph_inputs(tmp_path, ir_version):
    """Initializers may also be graph inputs (required below IR 4, allowed after): the
    DequantizeLinear output must not be a graph input as well."""
    model, feeds = layer_model("Gemm", transB=1)
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [12, 7]))
    model.ir_version = ir_version
    onnx.save(model, str(tmp_path / "m.onnx"))
    package = read_model(str(tmp_path / "m.onnx"))
    quantize(package, QuantizeConfig(8, False, False))
    write_onnx(package, str(tmp_path / "qdq.onnx"), qdq=True)
    qdq = onnx.load(str(tmp_path / "qdq.onnx"))
    onnx.checker.check_model(qdq, full_check=True)
    inputs = [i.name for i in qdq.graph.input]
    assert "w" not in inputs
    assert ("w_quantized" in inputs) == (ir_version < 4)
    expected = feeds["x"] @ package.tensor("w").decode().T
    assert np.allclose(ort_outputs(qdq.SerializeToString(), feeds, optimize=False)[0], expected, atol=1e-4)
