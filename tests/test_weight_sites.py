"""Weights where real models keep them besides initializers: `Constant` nodes (PaddleOCR's exports
have no initializer at all) and the branches of `If` (silero-vad). Each is a table weight of its
consumer's kind, compressed by every command, run by `bench`, and exported back to an ONNX model
that onnxruntime runs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ort_outputs
from deepcompress_cli.files import read_model
from deepcompress_cli.interp.graph import Interpreter

rng = np.random.default_rng(0)


def constant(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def conv_gemm(tag: str, as_constants: bool) -> tuple[list, list]:
    """Conv (8x3x3x3) -> Relu -> Flatten -> Gemm (10x512, transB): nodes and initializers."""
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    fw = (rng.standard_normal((10, 512)) * 0.05).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", f"w{tag}", f"b{tag}"], [f"c{tag}"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", [f"c{tag}"], [f"r{tag}"]),
             helper.make_node("Flatten", [f"r{tag}"], [f"f{tag}"]),
             helper.make_node("Gemm", [f"f{tag}", f"fw{tag}"], [f"y{tag}"], transB=1)]
    arrays = {f"w{tag}": w, f"b{tag}": b, f"fw{tag}": fw}
    if as_constants:
        return [constant(name, a) for name, a in arrays.items()] + nodes, []
    return nodes, [numpy_helper.from_array(a, name) for name, a in arrays.items()]


def model(nodes, inits=()) -> bytes:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(m, full_check=True)
    return m.SerializeToString()


def constants_model() -> bytes:
    """Every weight a Constant node (no initializer), plus a small int64 Constant that stays a node."""
    nodes, _ = conv_gemm("", as_constants=True)
    nodes[-1].output[0] = "g"
    nodes += [constant("two", np.array([2], np.int64)), helper.make_node("Cast", ["two"], ["twof"], to=1),
              helper.make_node("Mul", ["g", "twof"], ["y"])]
    return model(nodes)


def if_model() -> bytes:
    """sum(x) > 0 picks a branch; the then branch holds its weights as initializers, the else branch
    as Constant nodes; both read `x` from the main graph."""
    def branch(tag, as_constants):
        nodes, inits = conv_gemm(tag, as_constants)
        return helper.make_graph(nodes, f"branch{tag}", [], [helper.make_tensor_value_info(f"y{tag}",
                                                                                           TensorProto.FLOAT, None)],
                                 inits)
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             constant("zero", np.array(0, np.float32)),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch("t", False), else_branch=branch("e", True))]
    return model(nodes)


MODELS = {"constants": constants_model, "if": if_model}
WEIGHTS = {"constants": {"w": "conv", "fw": "fc"}, "if": {"wt": "conv", "fwt": "fc", "we": "conv", "fwe": "fc"}}


def samples(n: int = 8) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((n, 3, 8, 8)).astype(np.float32)
    x[::2] = np.abs(x[::2])  # both If branches are taken
    x[1::2] = -np.abs(x[1::2])
    return x


def run_ort(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    return np.concatenate([ort_outputs(model_bytes, {"x": x[i:i + 1]})[0] for i in range(len(x))])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_weights_are_table_entries_of_their_consumer_kind(cli, tmp_path, name):
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(MODELS[name]())
    result = cli("--json", "info", path)
    assert result.exit_code == 0, result.stderr
    kinds = {t["name"]: t["kind"] for t in json.loads(result.stdout)["tensors"]}
    assert {n: kinds.get(n) for n in WEIGHTS[name]} == WEIGHTS[name]
    assert "two" not in kinds  # small constants stay nodes
    x = samples()
    ours = np.concatenate([Interpreter(read_model(str(path))).run({"x": x[i:i + 1]})[0] for i in range(len(x))])
    np.testing.assert_allclose(ours, run_ort(path.read_bytes(), x), rtol=1e-5, atol=1e-5)


# Each command after the ones it needs (Huffman codes the indices that sharing makes).
COMMANDS = {"prune": [("prune", "--sparsity", "0.5")], "quantize": [("quantize", "--bits", "8")],
            "share": [("share", "--bits", "6")], "huffman": [("share", "--bits", "6"), ("huffman",)],
            "compress": [("compress",)]}
# Lowest cosine to the original's output that each command keeps on these small random layers.
MIN_COSINE = {"prune": 0.6, "quantize": 0.999, "share": 0.99, "huffman": 0.99, "compress": 0.99}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_commands_compress_bench_and_export_them(cli, tmp_path, name, command):
    original = tmp_path / f"{name}.onnx"
    original.write_bytes(MODELS[name]())
    source = original
    for i, (step, *options) in enumerate(COMMANDS[command]):
        stored = tmp_path / f"{name}.{i}.dcz"
        result = cli("-q", step, source, "-o", stored, *options)
        assert result.exit_code == 0, result.stderr
        source = stored
    package = read_model(str(stored))
    chains = {t.name: t.chain_label for t in package.tensors}
    encoded = [w for w in WEIGHTS[name] if chains[w] != "raw"]
    if command == "compress":  # the planner may leave a layer raw when that is smallest for its fidelity
        assert encoded, chains
    else:
        assert encoded == list(WEIGHTS[name]), chains

    x = samples()
    np.savez(tmp_path / "data.npz", x=x)
    result = cli("--json", "bench", "--runs", 1, "--warmup", 0, "--data", tmp_path / "data.npz", original, stored)
    assert result.exit_code == 0, result.stderr
    modes = json.loads(result.stdout)["models"][1]["modes"]
    assert set(modes) == {"fp32", "int8"}
    assert modes["fp32"]["fidelity"]["cosine"] >= MIN_COSINE[command]

    exported = tmp_path / f"{name}.exported.onnx"
    result = cli("-q", "export", stored, "-o", exported)
    assert result.exit_code == 0, result.stderr
    onnx.checker.check_model(onnx.load(str(exported)), full_check=True)
    theirs = run_ort(exported.read_bytes(), x)  # onnxruntime on the export ...
    ours = np.concatenate([Interpreter(package).run({"x": x[i:i + 1]})[0] for i in range(len(x))])
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)  # ... is what bench ran
    reference = run_ort(original.read_bytes(), x)  # ... and close to onnxruntime on the original
    cosine = float((theirs * reference).sum() / np.linalg.norm(theirs) / np.linalg.norm(reference))
    assert cosine >= MIN_COSINE[command] - 1e-6, cosine
    if command == "huffman":  # lossless: the same weights as after sharing
        shared = read_model(str(tmp_path / f"{name}.0.dcz"))
        for t in package.tensors:
            np.testing.assert_array_equal(t.decode(), shared.tensor(t.name).decode())


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_qdq_export_dequantizes_constant_and_subgraph_weights(cli, tmp_path, name, per_channel):
    from deepcompress_cli.graphs import all_graphs

    original = tmp_path / f"{name}.onnx"
    original.write_bytes(MODELS[name]())
    stored, exported = tmp_path / "q.dcz", tmp_path / "qdq.onnx"
    assert cli("-q", "quantize", original, "-o", stored, "--bits", "8", *["--per-channel"] * per_channel).exit_code == 0
    result = cli("-q", "export", stored, "-o", exported, "--qdq")
    assert result.exit_code == 0, result.stderr
    qdq = onnx.load(str(exported))
    onnx.checker.check_model(qdq, full_check=True)
    dequantized = {n.output[0] for g in all_graphs(qdq.graph) for n in g.node if n.op_type == "DequantizeLinear"}
    assert dequantized == set(WEIGHTS[name])
    float_weights = {n.output[0] for g in all_graphs(qdq.graph) for n in g.node
                     if n.op_type == "Constant" and n.attribute[0].t.data_type == TensorProto.FLOAT}
    assert not float_weights & dequantized
    x = samples()
    package = read_model(str(stored))
    ours = np.concatenate([Interpreter(package).run({"x": x[i:i + 1]})[0] for i in range(len(x))])
    np.testing.assert_allclose(run_ort(exported.read_bytes(), x), ours, rtol=1e-4, atol=1e-4)


def test_loop_body_weights_are_compressed_and_exported(cli, tmp_path):
    """A Loop body's Gemm weight (a Constant node) is an `fc` weight like any other; the exported
    model runs in onnxruntime like the original."""
    w = (rng.standard_normal((16, 16)) * 0.2).astype(np.float32)
    info = helper.make_tensor_value_info
    body = helper.make_graph(
        [constant("lw", w), helper.make_node("Gemm", ["h", "lw"], ["g"]), helper.make_node("Tanh", ["g"], ["h2"]),
         helper.make_node("Identity", ["cond"], ["cond2"])], "body",
        [info("i", TensorProto.INT64, []), info("cond", TensorProto.BOOL, []), info("h", TensorProto.FLOAT, None)],
        [info("cond2", TensorProto.BOOL, []), info("h2", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [constant("trips", np.array(3, np.int64)), constant("go", np.array(True)),
         helper.make_node("Loop", ["trips", "go", "x"], ["y"], body=body)], "g",
        [info("x", TensorProto.FLOAT, ["N", 16])], [info("y", TensorProto.FLOAT, ["N", 16])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(m, full_check=True)
    original, stored, exported = tmp_path / "loop.onnx", tmp_path / "loop.dcz", tmp_path / "loop.exported.onnx"
    onnx.save(m, str(original))
    assert cli("-q", "quantize", original, "-o", stored, "--bits", "8").exit_code == 0
    (entry,) = read_model(str(stored)).tensors
    assert (entry.name, entry.kind, entry.op) == ("lw", "fc", "Gemm") and entry.chain_label != "raw"
    assert cli("-q", "export", stored, "-o", exported).exit_code == 0
    x = rng.standard_normal((4, 16)).astype(np.float32)
    y, reference = ort_outputs(exported.read_bytes(), {"x": x})[0], ort_outputs(original.read_bytes(), {"x": x})[0]
    assert 0 < np.abs(y - reference).max() < 0.05
