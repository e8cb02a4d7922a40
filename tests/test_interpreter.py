"""The interpreter: whole models against onnxruntime, bench (the int8 mode: test_int8.py)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLES, SHARED_MODELS, assert_one_line_error, ort_outputs, shared_path
from deepcompress_cli import zoo
from deepcompress_cli.errors import DczError
from deepcompress_cli.files import read_model
from deepcompress_cli.interp.graph import Interpreter
from deepcompress_cli.interp.ops import conv as conv_ops

RNG = np.random.default_rng(0)


def load(tmp_path, model: onnx.ModelProto):
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return read_model(str(path))


def assert_matches_ort(model_bytes: bytes, package, feeds, rtol=1e-4):
    expected = ort_outputs(model_bytes, feeds)
    got = Interpreter(package).run(feeds)
    for a, b in zip(got, expected):
        scale = max(float(np.abs(b).max()), 1e-6)
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= rtol * scale, np.abs(a - b).max() / scale


@pytest.mark.parametrize("path", [SAMPLES / "lenet300.onnx", SAMPLES / "lenet5.onnx"], ids=lambda p: p.name)
def test_sample_models_match_onnxruntime(path):
    x = {"input": np.load(SAMPLES / "digits_test.npz")["input"][:32]}
    assert_matches_ort(path.read_bytes(), read_model(str(path)), x)


@pytest.mark.parametrize("name", SHARED_MODELS)
def test_shared_models_match_onnxruntime(name):
    path = shared_path("models", name)
    package = read_model(str(path))
    interp = Interpreter(package)
    feeds = {}
    for i in interp.model.graph.input:
        if i.name in interp.plan.constants:
            continue
        dims = [d.dim_value or 4 for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = RNG.standard_normal(dims).astype(np.float32)
    assert_matches_ort(path.read_bytes(), package, feeds)


@pytest.mark.parametrize("name", ["bvlc_alexnet", "resnet50", "squeezenet", "densenet121", "inception_v1",
                                  "inception_v2", "shufflenet", "zfnet512", "vgg19"])
def test_light_architectures_match_onnxruntime(tmp_path, name):
    model = zoo.materialize(name)
    package = load(tmp_path, model)
    weights = {t.name for t in model.graph.initializer}
    data = next(i.name for i in model.graph.input if i.name not in weights)  # IR 3 lists weights too
    x = {data: RNG.random((1, 3, 224, 224), dtype=np.float32)}
    assert_matches_ort(model.SerializeToString(), package, x)


def test_subgraph_if_and_freeing(tmp_path):
    then_graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y_then"])], "then", [],
                                   [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [2])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y_else"])], "else", [],
                                   [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [2])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                              initializer=[numpy_helper.from_array(np.float32(0), "zero"),
                                           numpy_helper.from_array(np.ones(2, np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    package = load(tmp_path, model)
    for x in (np.array([1, 2], np.float32), np.array([-1, -2], np.float32)):
        assert_matches_ort(model.SerializeToString(), package, {"x": x})
    interp = Interpreter(package)
    assert "s" in interp.plan.dead_after[1]  # freed right after its last reader


@pytest.mark.parametrize("opset", [7, 13])  # Clip bounds as attributes before opset 11
def test_conv_clip_and_matmul_bias_are_fused_and_match_onnxruntime(tmp_path, opset):
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    clip = (helper.make_node("Clip", ["c"], ["r"], min=0.0, max=0.5) if opset < 11 else
            helper.make_node("Clip", ["c", "lo", "hi"], ["r"]))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), clip,
             helper.make_node("Reshape", ["r", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "m"], ["mm"]), helper.make_node("Add", ["bias", "mm"], ["y"])]
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (w, "w"), (RNG.standard_normal(4).astype(np.float32), "b"), (np.float32(0), "lo"), (np.float32(0.5), "hi"),
        (np.array([2, 4 * 36], np.int64), "shape"), (RNG.standard_normal((144, 5)).astype(np.float32), "m"),
        (RNG.standard_normal(5).astype(np.float32), "bias"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    package = load(tmp_path, model)
    assert [n.op_type for n in Interpreter(package).plan.nodes] == ["Conv", "Reshape", "MatMul"]
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert_matches_ort(model.SerializeToString(), package, {"x": x})


@pytest.mark.parametrize("tile_bytes", [None, 256])  # whole images, or bands of output rows
@pytest.mark.parametrize("kernel", [1, 3])
def test_conv_residual_adds_are_fused_and_match_onnxruntime(tmp_path, kernel, tile_bytes, monkeypatch):
    """Conv -> Add -> Relu (a shortcut made after the Conv, in either operand order, and as a
    Sum), an Add of a broadcast constant, and a Conv whose output has a second reader."""
    if tile_bytes:
        monkeypatch.setattr(conv_ops, "_TILE_BYTES", tile_bytes)
    def weight(m, c):
        return RNG.standard_normal((m, c, kernel, kernel)).astype(np.float32)
    pads = [kernel // 2] * 4
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=pads),
             helper.make_node("Conv", ["x", "w2"], ["shortcut"], pads=pads),  # after c1: the Add waits for it
             helper.make_node("Add", ["shortcut", "c1"], ["s1"]), helper.make_node("Relu", ["s1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w3", "b3"], ["c3"], pads=pads),
             helper.make_node("Sum", ["c3", "r1"], ["s3"]),
             helper.make_node("Conv", ["s3", "w4"], ["c4"], pads=pads),
             helper.make_node("Add", ["c4", "row"], ["s4"]),  # [4, 1, 1]: broadcasts
             helper.make_node("Conv", ["s4", "w5"], ["c5"], pads=pads),
             helper.make_node("Add", ["c5", "s4"], ["s5"]), helper.make_node("Neg", ["c5"], ["n5"]),  # two readers
             helper.make_node("Add", ["s5", "n5"], ["y"])]
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (weight(4, 3), "w1"), (RNG.standard_normal(4).astype(np.float32), "b1"), (weight(4, 3), "w2"),
        (weight(4, 4), "w3"), (RNG.standard_normal(4).astype(np.float32), "b3"), (weight(4, 4), "w4"),
        (RNG.standard_normal((4, 1, 1)).astype(np.float32), "row"), (weight(4, 4), "w5"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    package = load(tmp_path, model)
    assert [n.op_type for n in Interpreter(package).plan.nodes] == ["Conv", "Conv", "Conv", "Conv", "Conv", "Add",
                                                                   "Neg", "Add"]
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert_matches_ort(model.SerializeToString(), package, {"x": x})


@pytest.mark.parametrize("batch", [1, 2])
def test_convs_write_into_their_concat_and_match_onnxruntime(tmp_path, batch):
    """A fire module (1x1 and 3x3 Convs with Relu, concatenated on axis -3), a grouped Conv part,
    and a Concat with a part that is not a Conv (copied as usual)."""
    def weight(m, c, k):
        return RNG.standard_normal((m, c, k, k)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["x", "w3"], ["c3"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c3"], ["r3"]),
             helper.make_node("Conv", ["x", "wg"], ["cg"], group=3),
             helper.make_node("Concat", ["r1", "r3", "cg"], ["cat"], axis=-3),
             helper.make_node("Conv", ["cat", "w4"], ["c4"]), helper.make_node("Neg", ["cat"], ["n"]),
             helper.make_node("Concat", ["c4", "n"], ["y"], axis=1)]
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (weight(4, 3, 1), "w1"), (RNG.standard_normal(4).astype(np.float32), "b1"), (weight(5, 3, 3), "w3"),
        (weight(6, 1, 1), "wg"), (weight(2, 15, 1), "w4"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    package = load(tmp_path, model)
    fused = [any(a.name == "_fused_parts" for a in n.attribute) for n in Interpreter(package).plan.nodes
             if n.op_type == "Concat"]
    assert fused == [True, False]
    x = RNG.standard_normal((batch, 3, 6, 6)).astype(np.float32)
    assert_matches_ort(model.SerializeToString(), package, {"x": x})


def test_concat_of_slices_copies_unless_they_are_in_order():
    from deepcompress_cli.interp.ops import KERNELS, OpContext
    x = RNG.standard_normal((2, 6, 3)).astype(np.float32)
    parts = [x[:, :2], x[:, 2:5], x[:, 5:]]
    ctx = OpContext(opset=13)
    same = KERNELS["Concat"](parts, {"axis": 1, "_fused_parts": b"k"}, ctx)[0]
    assert same is x
    swapped = KERNELS["Concat"]([parts[1], parts[0], parts[2]], {"axis": 1, "_fused_parts": b"k"}, ctx)[0]
    np.testing.assert_array_equal(swapped, np.concatenate([parts[1], parts[0], parts[2]], axis=1))
    gap = KERNELS["Concat"]([parts[0], parts[2]], {"axis": 1, "_fused_parts": b"k"}, ctx)[0]
    np.testing.assert_array_equal(gap, np.concatenate([parts[0], parts[2]], axis=1))


@pytest.mark.parametrize("spatial", [(9,), (4, 5, 6)])
def test_conv_residual_and_concat_fusions_in_1d_and_3d(tmp_path, spatial):
    """Conv -> Add -> Relu and two Convs into a Concat, on 1-D and 3-D inputs."""
    k = [3] * len(spatial)
    pads = [1] * (2 * len(spatial))
    def weight(name, m, c):
        return numpy_helper.from_array(RNG.standard_normal((m, c, *k)).astype(np.float32), name)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=pads), helper.make_node("Add", ["x", "c1"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["a"], pads=pads), helper.make_node("Conv", ["r", "w3"], ["b"], pads=pads),
             helper.make_node("Concat", ["a", "b"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, *spatial])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [weight("w1", 3, 3), weight("w2", 2, 3), weight("w3", 4, 3)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    package = load(tmp_path, model)
    assert [n.op_type for n in Interpreter(package).plan.nodes] == ["Conv", "Conv", "Conv", "Concat"]
    x = RNG.standard_normal((2, 3, *spatial)).astype(np.float32)
    assert_matches_ort(model.SerializeToString(), package, {"x": x})


def test_concat_fusion_inside_a_loop_body(tmp_path):
    """Each iteration of a Loop body runs its fused Convs and Concat afresh (the shared buffer
    belongs to that run), with the weights from the enclosing graph."""
    w1 = numpy_helper.from_array(RNG.standard_normal((2, 3, 1, 1)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(RNG.standard_normal((1, 3, 3, 3)).astype(np.float32), "w2")
    body = helper.make_graph(
        [helper.make_node("Conv", ["v_in", "w1"], ["a"]), helper.make_node("Conv", ["v_in", "w2"], ["b"], pads=[1] * 4),
         helper.make_node("Concat", ["a", "b"], ["v_out"], axis=1), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 3, 4, 4])])
    trips = numpy_helper.from_array(np.array(3, np.int64), "trips")
    cond = numpy_helper.from_array(np.array(True), "cond")
    graph = helper.make_graph([helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [w1, w2, trips, cond])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    package = load(tmp_path, model)
    interp = Interpreter(package)
    body_nodes = next(p for p in interp._subplans.values()).nodes
    assert any(a.name == "_fused_parts" for n in body_nodes for a in n.attribute)
    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    assert_matches_ort(model.SerializeToString(), package, {"x": x})


def test_plan_marks_a_model_sets_itself_are_ignored(tmp_path):
    """Attributes named like the plan's fusion marks are dropped from the model's nodes: two
    Convs claiming the same Concat slice must not write into each other's outputs."""
    w = numpy_helper.from_array(RNG.standard_normal((3, 2, 1, 1)).astype(np.float32), "w")
    marks = dict(_fused_into="k", _fused_slice=[0, 3])
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], **marks), helper.make_node("Neg", ["x"], ["nx"]),
             helper.make_node("Conv", ["nx", "w"], ["b"], **marks),
             helper.make_node("Concat", ["a", "b", "a"], ["y"], axis=1, _fused_parts="k"),
             helper.make_node("Conv", ["x", "w", "", "x"], ["z"], _fused_residual=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "a", "z")],
                              [w])
    package = load(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    x = RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)
    y, a, z = Interpreter(package).run({"x": x})
    expected = np.einsum("mc,nchw->nmhw", numpy_helper.to_array(w)[:, :, 0, 0], x)
    np.testing.assert_allclose(a, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, np.concatenate([expected, -expected, expected], axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)  # a fourth Conv input is not an addend


def test_unsorted_graph_is_sorted_and_cycles_refused(tmp_path):
    nodes = [helper.make_node("Relu", ["a"], ["y"]), helper.make_node("Neg", ["x"], ["a"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.array([1, -2, 3], np.float32)
    assert np.array_equal(Interpreter(load(tmp_path, model)).run({"x": x})[0], np.maximum(-x, 0))
    model.graph.node[1].input[0] = "y"  # a -> y -> a
    with pytest.raises(DczError, match="cycle"):
        Interpreter(load(tmp_path, model))


def test_unsupported_op_is_named(tmp_path, cli):
    # an op of a custom domain: no kernel will ever exist for it
    graph = helper.make_graph([helper.make_node("Frobnicate", ["x", "s"], ["y"], domain="com.example")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4]),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [1, 3])])
    path = tmp_path / "frobnicate.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                      helper.make_opsetid("com.example", 1)]), str(path))
    result = cli("bench", path)
    assert_one_line_error(result)
    assert "Frobnicate" in result.stderr
    result = cli("bench", "--check", path)
    assert result.exit_code == 2 and "Frobnicate" in result.stdout


# ------------------------------------------------------------------------------------ bench

def test_bench_json_and_gates(cli, tmp_path):
    source = SAMPLES / "lenet300.onnx"
    small = tmp_path / "small.dcz"
    assert cli("compress", source, "-o", small, "--sparsity", "0.5").exit_code == 0
    data = SAMPLES / "digits_test.npz"
    result = cli("--json", "bench", source, small, "--data", data, "--runs", 2)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    base, other = report["models"]
    assert base["modes"]["fp32"]["accuracy"] > 0.95 and other["ratio_file"] > 5
    assert set(other["modes"]) == {"fp32", "int8"}
    assert other["modes"]["int8"]["latency"]["median_ms"] > 0
    ok = cli("bench", source, small, "--data", data, "--runs", 1, "--min-ratio", 5, "--max-accuracy-drop", 5)
    assert ok.exit_code == 0, ok.stderr
    failed = cli("bench", source, small, "--data", data, "--runs", 1, "--min-ratio", 1000)
    assert failed.exit_code == 1 and "min-ratio" in failed.stderr
    cosine = cli("bench", source, small, "--runs", 1, "--min-cosine", 0.999999999)
    assert cosine.exit_code == 1 and "min-cosine" in cosine.stderr


def test_bench_gates_that_cannot_be_evaluated_are_usage_errors(cli, tmp_path):
    source, data = SAMPLES / "lenet300.onnx", SAMPLES / "digits_test.npz"
    assert_one_line_error(cli("bench", source, "--runs", 1, "--min-ratio", 2))  # nothing to compare
    assert_one_line_error(cli("bench", source, source, "--runs", 1, "--max-accuracy-drop", 1))  # no labels
    assert_one_line_error(cli("bench", source, "--no-int8", "--runs", 1, "--min-cosine", 0.9))
    # a single model: its int8 run is gated against its own fp32 run
    single = cli("--json", "bench", source, "--runs", 1, "--data", data, "--max-accuracy-drop", 1)
    assert single.exit_code == 0, single.stderr
    gates = json.loads(single.stdout)["gates"]
    assert [(g["gate"], g["mode"]) for g in gates] == [("max-accuracy-drop", "int8")]


@pytest.mark.parametrize("labels", [np.zeros((3, 2), np.int64), np.zeros(5, np.float32), np.zeros(7, np.int64)])
def test_bench_rejects_bad_labels(cli, tmp_path, labels):
    x = np.load(SAMPLES / "digits_test.npz")["input"][:5]
    np.savez(tmp_path / "d.npz", input=x, labels=labels)
    assert_one_line_error(cli("bench", SAMPLES / "lenet300.onnx", "--runs", 1, "--data", tmp_path / "d.npz"))


def test_bench_and_info_read_models_from_stdin(cli):
    source = SAMPLES / "lenet300.onnx"
    size = source.stat().st_size
    report = json.loads(cli("--json", "bench", "-", "--runs", 1, "--no-int8", input=source.read_bytes()).stdout)
    assert report["models"][0]["file_bytes"] == size
    assert json.loads(cli("--json", "info", "-", input=source.read_bytes()).stdout)["file_bytes"] == size
