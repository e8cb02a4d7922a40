"""graphs.py: the graph helpers every module shares, the node order, and the one execution loop."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ROOT, ort_outputs
from deepcompress_cli import graphs
from deepcompress_cli.errors import DczError
from deepcompress_cli.files import read_model
from deepcompress_cli.interp.graph import Interpreter, run_nodes
from deepcompress_cli.interp.ops import KERNELS, OpContext, load_all
from deepcompress_cli.interp.quant import Int8Interpreter
from deepcompress_cli.train.network import Network

F = TensorProto.FLOAT


def test_no_module_imports_another_modules_private_names():
    found = []
    for path in sorted((ROOT / "deepcompress_cli").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                found += [f"{path.name}: {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert found == []


def chain(n: int, reverse: bool) -> onnx.GraphProto:
    """x -> Neg -> Neg -> ... (n nodes) -> y, stored in order or in reverse."""
    names = ["x"] + [f"v{i}" for i in range(1, n)] + ["y"]
    nodes = [helper.make_node("Neg", [names[i]], [names[i + 1]], name=f"n{i}") for i in range(n)]
    return helper.make_graph(nodes[::-1] if reverse else nodes, "chain", [helper.make_tensor_value_info("x", F, [2])],
                             [helper.make_tensor_value_info("y", F, [2])])


def sort_seconds(graph) -> tuple[list, float]:
    start = time.perf_counter()
    order = graphs.topological_order(graph)
    return order, time.perf_counter() - start


def test_reversed_20000_node_chain_sorts_in_well_under_a_second():
    # The quadratic sort took minutes here.  Linear time is checked against sorting the same chain
    # stored in order (the same protobuf reads), so a loaded machine does not make it flaky; the
    # absolute bound is loose for the same reason (~0.05 s on an idle machine).
    order, reversed_time = sort_seconds(chain(20_000, reverse=True))
    assert [n.name for n in order] == [f"n{i}" for i in range(20_000)]
    _, in_order_time = sort_seconds(chain(20_000, reverse=False))
    assert reversed_time < 4 * in_order_time + 0.05, (reversed_time, in_order_time)
    assert reversed_time < 2, reversed_time


def test_reversed_chain_runs_in_the_interpreter(tmp_path):
    path = tmp_path / "chain.onnx"
    onnx.save(helper.make_model(chain(5_000, reverse=True), opset_imports=[helper.make_opsetid("", 13)]), str(path))
    start = time.perf_counter()
    x = np.array([1.5, -2], np.float32)
    assert np.array_equal(Interpreter(read_model(str(path))).run({"x": x})[0], x)  # an even count of Neg
    assert time.perf_counter() - start < 5


def test_order_is_stable_kahn():
    # a and c are ready at once, b only after a: the stored order decides among ready nodes
    nodes = [helper.make_node("Neg", ["a"], ["b"], name="B"), helper.make_node("Neg", ["x"], ["c"], name="C"),
             helper.make_node("Neg", ["x"], ["a"], name="A"), helper.make_node("Add", ["b", "c"], ["y"], name="D")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1])],
                              [helper.make_tensor_value_info("y", F, [1])])
    assert [n.name for n in graphs.topological_order(graph)] == ["C", "A", "B", "D"]
    in_order = helper.make_graph([nodes[2], nodes[0], nodes[1], nodes[3]], "g", graph.input, graph.output)
    assert [n.name for n in graphs.topological_order(in_order)] == ["A", "B", "C", "D"]  # kept as stored


def test_order_counts_what_subgraphs_read_from_outside():
    branch = helper.make_graph([helper.make_node("Identity", ["late"], ["out"])], "b", [],
                               [helper.make_tensor_value_info("out", F, [1])])
    nodes = [helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch, else_branch=branch),
             helper.make_node("Neg", ["x"], ["late"], name="producer")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", F, [1])])
    assert [n.name for n in graphs.topological_order(graph)] == ["producer", "if"]
    graph.node[1].input[0] = "y"  # producer now needs the If's output: a cycle through the subgraph
    with pytest.raises(DczError, match="cycle"):
        graphs.topological_order(graph)


def constant_node_gemm(tmp_path) -> tuple[bytes, str]:
    """A Gemm whose weight is a Constant node (as exporters write it), stored as a table tensor."""
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "w")),
             helper.make_node("Gemm", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2, 4])],
                              [helper.make_tensor_value_info("y", F, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "const.onnx"
    onnx.save(model, str(path))
    return model.SerializeToString(), str(path)


def test_constant_node_weights_are_constants_everywhere(tmp_path, monkeypatch):
    model_bytes, path = constant_node_gemm(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / graphs.PLACEHOLDER_LOCATION).write_bytes(b"\0" * 48)  # a placeholder never reads files
    package = read_model(path)
    assert graphs.table_names(package.graph.graph) == {"w": "w"}
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    expected = ort_outputs(model_bytes, {"x": x})[0]
    interp = Interpreter(package)
    assert "w" in interp.plan.constants and [n.op_type for n in interp.plan.nodes] == ["Gemm"]
    assert np.allclose(interp.run({"x": x})[0], expected, atol=1e-5)
    network = Network(package)
    assert set(network.params) == {"w"}
    assert np.allclose(network.forward({"x": x})[0], expected, atol=1e-5)
    int8 = Int8Interpreter(package)
    assert len(int8.layers) == 1  # the Constant node's weight runs as an 8-bit layer too
    assert np.allclose(int8.run({"x": x})[0], expected, atol=0.1)


def test_run_nodes_frees_observes_and_stops():
    load_all()
    nodes = [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Neg", ["b"], ["c"])]
    seen = []
    values = {"x": np.ones(2, np.float32)}
    run_nodes(nodes, [{}] * 3, values, OpContext(13), lambda n: KERNELS[n.op_type], {1: ["a"]},
              lambda name, v: seen.append(name))
    assert seen == ["a", "b", "c"] and "a" not in values and np.array_equal(values["c"], -np.ones(2))
    values = {"x": np.ones(2, np.float32)}
    run_nodes(nodes, [{}] * 3, values, OpContext(13), lambda n: KERNELS[n.op_type], stop_at="b")
    assert set(values) == {"x", "a", "b"}
    broken = [helper.make_node("Reshape", ["x", "s"], ["y"], name="r")]
    with pytest.raises(DczError, match="Reshape node 'r' failed"):
        run_nodes(broken, [{}], {"x": np.ones(3), "s": np.array([2], np.int64)}, OpContext(13),
                  lambda n: KERNELS[n.op_type])


def test_opset_version():
    model = helper.make_model(helper.make_graph([], "g", [], []),
                              opset_imports=[helper.make_opsetid("com.x", 3), helper.make_opsetid("", 11)])
    assert graphs.opset_version(model) == 11
    del model.opset_import[:]
    assert graphs.opset_version(model) == 1


def test_helpers_are_one_definition(tmp_path):
    # onnx_io and the stages use graphs.py's functions, not copies of their own
    from deepcompress_cli import onnx_io
    from deepcompress_cli.stages import svd

    assert onnx_io._placeholder_name is graphs.placeholder_name
    assert svd.placeholder_name is graphs.placeholder_name and svd.consumers is graphs.consumers
    source = Path(graphs.__file__).parent
    defining = [p.name for p in source.rglob("*.py") if "def output_channel_axis" in p.read_text()]
    assert defining == ["graphs.py"]
