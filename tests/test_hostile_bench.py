"""`bench` on tiny hostile models: bounded memory, fast one-line errors, strings and NaN handled."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_one_line_error
from deepcompress_cli.benchmarking import make_inputs
from deepcompress_cli.errors import DczError
from deepcompress_cli.files import read_model
from deepcompress_cli.interp.graph import Interpreter
from deepcompress_cli.interp.quant import quantize_activation

F = TensorProto.FLOAT
BIG = 1 << 40


def save(path, nodes, inputs, outputs, inits=(), opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def value(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def ints(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


x_n1 = value("x", ["N", 1])
# Ops whose output size comes from a tensor's values, each asked for far more than memory holds.
HOSTILE = {
    "ConstantOfShape": ([helper.make_node("ConstantOfShape", ["s"], ["c"], name="n"),
                         helper.make_node("Add", ["x", "c"], ["y"])], [ints("s", [400_000_000])]),
    "Expand": ([helper.make_node("Expand", ["x", "s"], ["y"], name="n")], [ints("s", [1, BIG])]),
    "Tile": ([helper.make_node("Tile", ["x", "s"], ["y"], name="n")], [ints("s", [1, BIG])]),
    "Range": ([helper.make_node("Range", ["a", "b", "d"], ["r"], name="n"),
               helper.make_node("Cast", ["r"], ["f"], to=F), helper.make_node("Add", ["x", "f"], ["y"])],
              [ints("a", 0), ints("b", BIG), ints("d", 1)]),
    "Pad": ([helper.make_node("Pad", ["x", "p"], ["y"], name="n")], [ints("p", [0, 0, 0, BIG])]),
    "Resize": ([helper.make_node("Resize", ["x", "", "sc"], ["y"], name="n")],
               [numpy_helper.from_array(np.array([1, 1e9], np.float32), "sc")]),
}


@pytest.mark.parametrize("op", sorted(HOSTILE))
def test_value_sized_ops_refuse_huge_outputs_fast_and_small(cli, tmp_path, op):
    nodes, inits = HOSTILE[op]
    path = save(tmp_path / "m.onnx", nodes, [x_n1], [value("y", None)], inits)
    assert path.stat().st_size < 300
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = cli("bench", "--no-int8", "--runs", 1, "--warmup", 0, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_one_line_error(result)
    assert f"{op} node 'n' would create" in result.stderr and "byte" in result.stderr
    assert peak < 64 << 20, peak  # numpy reports its arrays to tracemalloc
    assert time.perf_counter() - start < 20


def test_broadcast_growing_past_both_inputs_is_bounded(tmp_path):
    path = save(tmp_path / "m.onnx", [helper.make_node("Add", ["x", "z"], ["y"], name="add")],
                [value("x", [20000, 1]), value("z", [1, 20000])], [value("y", None)])
    interp = Interpreter(read_model(str(path)), max_bytes=1 << 20)
    with pytest.raises(DczError, match="Add node 'add' would create a 1,600,000,000-byte array"):
        interp.run({"x": np.ones((20000, 1), np.float32), "z": np.ones((1, 20000), np.float32)})
    small = {"x": np.ones((100, 1), np.float32), "z": np.ones((1, 100), np.float32)}
    assert interp.run(small)[0].shape == (100, 100)  # 40 KB: fine
    bias = {"x": np.ones((600, 600), np.float32), "z": np.ones((1, 600), np.float32)}
    assert interp.run(bias)[0].shape == (600, 600)  # no bigger than an input: not capped


def test_the_cap_is_a_parameter(tmp_path):
    nodes, inits = HOSTILE["ConstantOfShape"]
    inits = [ints("s", [1000])]
    path = save(tmp_path / "m.onnx", nodes, [x_n1], [value("y", None)], inits)
    package = read_model(str(path))
    x = np.zeros((1, 1), np.float32)
    assert Interpreter(package).run({"x": x})[0].shape == (1, 1000)
    with pytest.raises(DczError, match="limit is 3,999 bytes"):
        Interpreter(package, max_bytes=3999).run({"x": x})


def test_random_inputs_are_bounded_by_bytes_not_by_declared_shapes(cli, tmp_path):
    path = save(tmp_path / "m.onnx", [helper.make_node("Relu", ["x"], ["y"])], [value("x", ["N", 2000, 4000])],
                [value("y", None)])
    assert path.stat().st_size < 100
    interp = Interpreter(read_model(str(path)))
    feeds = make_inputs(interp, None, 64, 0, max_bytes=100 << 20)  # 64 samples would be 2 GB
    assert feeds["x"].shape == (3, 2000, 4000) and feeds["x"].dtype == np.float32
    with pytest.raises(DczError, match="one sample takes 32,000,000 bytes"):
        make_inputs(interp, None, 64, 0, max_bytes=1 << 20)
    huge = save(tmp_path / "huge.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                [value("x", ["N", 200000, 400000])], [value("y", None)])
    result = cli("bench", huge)
    assert_one_line_error(result)
    assert "random inputs" in result.stderr and "give --data" in result.stderr


def string_model(tmp_path, string_first: bool):
    labels = numpy_helper.from_array(np.array([b"cat", b"dog"], dtype=object), "labels")
    outputs = [value("names", [2], TensorProto.STRING), value("y", ["N", 4])]
    return save(tmp_path / "s.onnx", [helper.make_node("Identity", ["labels"], ["names"]),
                                      helper.make_node("Relu", ["x"], ["y"])],
                [value("x", ["N", 4])], outputs if string_first else outputs[::-1], [labels])


@pytest.mark.parametrize("string_first", [True, False])
def test_string_initializers_pass_through(cli, tmp_path, string_first):
    path = string_model(tmp_path, string_first)
    result = cli("bench", "--runs", 1, "--warmup", 0, path)
    assert result.exit_code == 0, result.stderr
    assert "cos 1.00000" in result.stdout
    names = Interpreter(read_model(str(path))).run({"x": np.ones((1, 4), np.float32)})[0 if string_first else 1]
    assert names.tolist() == ["cat", "dog"]


def test_models_bench_cannot_compare_are_one_line_errors(cli, tmp_path):
    only_strings = save(tmp_path / "s.onnx", [helper.make_node("Identity", ["labels"], ["names"])],
                        [value("x", ["N", 4])], [value("names", [2], TensorProto.STRING)],
                        [numpy_helper.from_array(np.array([b"a", b"b"], dtype=object), "labels")])
    result = cli("bench", only_strings)
    assert_one_line_error(result)
    assert "no numeric output" in result.stderr
    text_input = save(tmp_path / "t.onnx", [helper.make_node("Identity", ["x"], ["y"])],
                      [value("x", ["N", 2], TensorProto.STRING)], [value("y", None, TensorProto.STRING)])
    result = cli("bench", text_input)
    assert_one_line_error(result)
    assert "'x' is not numeric" in result.stderr


def nan_model(tmp_path):
    """x * inf -> Gemm: the Gemm's input holds Inf (and NaN where x is 0)."""
    inits = [numpy_helper.from_array(np.ones((4, 3), np.float32), "w"),
             numpy_helper.from_array(np.array([np.inf], np.float32), "inf")]
    return save(tmp_path / "nan.onnx", [helper.make_node("Mul", ["x", "inf"], ["m"]),
                                        helper.make_node("Gemm", ["m", "w"], ["y"])],
                [value("x", ["N", 4])], [value("y", ["N", 3])], inits)


def test_nan_and_inf_activations(cli, tmp_path):
    path = nan_model(tmp_path)
    result = cli("bench", "--runs", 1, "--warmup", 0, path)
    assert_one_line_error(result)  # no traceback, no numpy warnings either
    assert "int8: 'm' holds NaN or Inf" in result.stderr
    result = cli("bench", "--no-int8", "--runs", 1, "--warmup", 0, path)
    assert result.exit_code == 0 and result.stderr == "", result.stderr  # fp32 propagates them, quietly
    y = Interpreter(read_model(str(path))).run({"x": np.array([[1, 0, 1, 1]], np.float32)})[0]
    assert np.isnan(y).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_activation_refuses_non_finite_values(bad):
    x = np.array([0.5, bad, -1], np.float32)
    with pytest.raises(DczError, match="'v' holds NaN or Inf"):
        quantize_activation(x, name="v")
    with pytest.raises(DczError, match="NaN or Inf"):
        quantize_activation(x, -1.0, 1.0, name="v")  # a calibrated range does not hide them
    with pytest.raises(DczError, match="NaN or Inf"):
        quantize_activation(np.ones(3, np.float32), bad, bad)  # nor does a broken range


def test_compared_output_is_the_first_float_one():
    """A sentence encoder echoes its int64 token ids first: comparing those would score 1.0."""
    from deepcompress_cli.benchmarking import first_numeric

    ids, embedding = np.arange(6, dtype=np.int64).reshape(2, 3), np.ones((2, 4), np.float32)
    assert first_numeric([np.array(["a", "b"]), ids, embedding]) is embedding
    assert first_numeric([np.array(["a", "b"]), ids]) is ids  # no float output: the first numeric one
