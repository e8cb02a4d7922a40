"""Weights wherever real models keep them, and external data that must not escape its folder."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_one_line_error, onnx_weights, ort_outputs
from deepcompress_cli import onnx_io
from deepcompress_cli.errors import DczError
from deepcompress_cli.files import read_model, write_dcz, write_onnx

RNG = np.random.default_rng(0)


def mlp_with_constants() -> onnx.ModelProto:
    """PaddlePaddle style: the weights live in Constant nodes, not initializers."""
    w1 = RNG.standard_normal((16, 64), dtype=np.float32)
    w2 = RNG.standard_normal((64, 10), dtype=np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1)),
        helper.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(w2, "w2_value")),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([-1, 16], np.int64))),
        helper.make_node("Reshape", ["x", "shape"], ["x2"]),
        helper.make_node("MatMul", ["x2", "w1"], ["h"], doc_string="first layer"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "constants", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 10])], doc_string="doc")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test")
    helper.set_model_props(model, {"author": "deepcompress tests"})
    return model


def model_with_subgraphs() -> onnx.ModelProto:
    """An If whose branches hold their own initializer and Constant weights."""
    def branch(name, scale):
        w = (RNG.standard_normal((8, 40), dtype=np.float32) * scale)
        big = RNG.standard_normal((40, 40), dtype=np.float32)
        nodes = [helper.make_node("Constant", [], [f"{name}_c"], value=numpy_helper.from_array(big)),
                 helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_h"]),
                 helper.make_node("MatMul", [f"{name}_h", f"{name}_c"], [f"{name}_y"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1, 40])],
                                 initializer=[numpy_helper.from_array(w, f"{name}_w")])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", 1.0), else_branch=branch("else", -1.0))]
    graph = helper.make_graph(nodes, "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
                                            helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 40])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def roundtrip(model: onnx.ModelProto, tmp_path, **select) -> tuple[onnx.ModelProto, object]:
    src = tmp_path / "in.onnx"
    onnx.save(model, str(src))
    write_dcz(read_model(str(src), **select), str(tmp_path / "m.dcz"))
    package = read_model(str(tmp_path / "m.dcz"))
    write_onnx(package, str(tmp_path / "out.onnx"))
    return onnx.load(str(tmp_path / "out.onnx")), package


def assert_same_weights(a, b):
    wa, wb = onnx_weights(a), onnx_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].tobytes() == wb[name].tobytes() and wa[name].dtype == wb[name].dtype


def test_constant_node_weights_are_extracted(tmp_path):
    model = mlp_with_constants()
    out, package = roundtrip(model, tmp_path)
    kinds = {t.name: (t.kind, t.op) for t in package.tensors}
    assert kinds == {"w1": ("fc", "MatMul"), "w2": ("fc", "MatMul")}  # the int64 shape stays inline
    assert_same_weights(model, out)
    assert out.graph.node[4].doc_string == "first layer" and out.graph.doc_string == "doc"
    assert out.metadata_props == model.metadata_props and out.producer_name == "test"
    x = {"x": RNG.standard_normal((2, 16), dtype=np.float32)}
    assert np.array_equal(ort_outputs(model.SerializeToString(), x)[0], ort_outputs(out.SerializeToString(), x)[0])


def test_subgraph_weights_are_extracted(tmp_path):
    model = model_with_subgraphs()
    out, package = roundtrip(model, tmp_path)
    assert {t.name for t in package.tensors} == {"then_w", "then_c", "else_w", "else_c"}
    assert all(t.kind == "fc" for t in package.tensors)
    assert_same_weights(model, out)
    for cond in (True, False):
        feeds = {"x": RNG.standard_normal((1, 8), dtype=np.float32), "cond": np.array(cond)}
        assert np.array_equal(ort_outputs(model.SerializeToString(), feeds)[0],
                              ort_outputs(out.SerializeToString(), feeds)[0])


def test_non_float_and_small_tensors_pass_through_as_other(tmp_path):
    model = mlp_with_constants()
    model.graph.initializer.append(numpy_helper.from_array(np.arange(5, dtype=np.int64), "ids"))
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float16), "small"))
    model.graph.initializer.append(numpy_helper.from_array(np.ones((32, 64), np.float32), "big_unused"))
    model.graph.initializer.append(numpy_helper.from_array(np.ones(4096, np.float32), "big_bias"))
    _, package = roundtrip(model, tmp_path)
    kinds = {t.name: t.kind for t in package.tensors}
    assert kinds["ids"] == "other" and kinds["small"] == "other" and kinds["big_unused"] == "fc"
    assert kinds["big_bias"] == "other"  # 1-D: a bias or norm scale, never pruned by default
    assert package.tensor("small").dtype == "float16"


def test_include_and_exclude_override_the_selection(tmp_path):
    model = mlp_with_constants()
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "bias"))
    _, package = roundtrip(model, tmp_path, include=["bias"], exclude=["w2"])
    kinds = {t.name: t.kind for t in package.tensors}
    # an excluded Constant is not a weight, so like any small Constant it stays inside the graph
    assert kinds == {"bias": "fc", "w1": "fc"}


def test_duplicate_tensor_names_get_unique_table_names(tmp_path):
    model = model_with_subgraphs()
    for node in model.graph.node:  # give both branches' initializers the same name
        for attr in node.attribute:
            attr.g.initializer[0].name = "w"
            attr.g.node[1].input[1] = "w"
    out, package = roundtrip(model, tmp_path)
    assert sorted(t.name for t in package.tensors) == ["else_c", "then_c", "w", "w#2"]
    assert_same_weights(model, out)


def save_external(model, folder, location="weights.bin"):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.onnx")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # saving with external data rewrites the proto in place
    onnx.save_model(copy, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def test_external_data_is_read_from_the_model_folder(tmp_path, cli):
    model = mlp_with_constants()
    # Constant values cannot be external; move the weights to initializers first.
    for node in list(model.graph.node)[:2]:
        model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t), node.output[0]))
        model.graph.node.remove(node)
    path = save_external(model, tmp_path / "m")
    assert cli("pack", path, "-o", tmp_path / "m.dcz").exit_code == 0
    assert cli("export", tmp_path / "m.dcz", "-o", tmp_path / "out.onnx").exit_code == 0
    assert_same_weights(model, onnx.load(str(tmp_path / "out.onnx")))
    with open(path, "rb") as f:  # no folder to resolve against when the model comes on stdin
        assert_one_line_error(cli("pack", "-", "-o", tmp_path / "x.dcz", input=f.read()))


def external_model(tmp_path, location):
    model = mlp_with_constants()
    tensor = model.graph.node[0].attribute[0].t
    model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(tensor), "w1"))
    model.graph.node.remove(model.graph.node[0])
    init = model.graph.initializer[0]
    init.ClearField("raw_data")
    init.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(16 * 64 * 4))):
        e = init.external_data.add()
        e.key, e.value = k, v
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


@pytest.mark.parametrize("location", ["/etc/passwd", "../secret.bin", "a/../../secret.bin", "C:\\secret.bin",
                                      "..\\secret.bin", "missing.bin", ""])
def test_external_data_outside_the_folder_is_refused(tmp_path, cli, location):
    (tmp_path / "secret.bin").write_bytes(bytes(8192))
    folder = external_model(tmp_path, location)
    result = cli("pack", folder / "model.onnx", "-o", tmp_path / "out.dcz")
    assert_one_line_error(result)
    assert not (tmp_path / "out.dcz").exists()


def test_external_data_through_symlinks_is_refused(tmp_path, cli):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(bytes(8192))
    folder = external_model(tmp_path, "link/w.bin")
    os.symlink(outside, folder / "link")
    assert_one_line_error(cli("pack", folder / "model.onnx", "-o", tmp_path / "a.dcz"))
    folder = external_model(tmp_path, "w.bin")
    os.symlink(outside / "w.bin", folder / "w.bin")
    assert_one_line_error(cli("pack", folder / "model.onnx", "-o", tmp_path / "b.dcz"))


def test_external_data_range_must_fit_the_file(tmp_path, cli):
    folder = external_model(tmp_path, "w.bin")
    (folder / "w.bin").write_bytes(bytes(100))  # far shorter than the 4 KiB tensor
    assert_one_line_error(cli("pack", folder / "model.onnx", "-o", tmp_path / "a.dcz"))


def test_large_models_export_with_external_data(tmp_path, monkeypatch):
    """Above the threshold (1 GiB; lowered here) export writes OUT.data beside OUT."""
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 1000)
    model = mlp_with_constants()
    out, _ = roundtrip(model, tmp_path)
    assert (tmp_path / "out.onnx.data").exists()
    stored = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t, _, _ in onnx_io._tensor_sites(stored))
    assert_same_weights(model, out)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    x = {"x": RNG.standard_normal((2, 16), dtype=np.float32)}
    assert np.array_equal(session.run(None, x)[0], ort_outputs(model.SerializeToString(), x)[0])


def test_external_data_export_replaces_both_files_or_neither(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 1000)
    roundtrip(mlp_with_constants(), tmp_path)
    package = read_model(str(tmp_path / "m.dcz"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("out.")}
    assert set(before) == {"out.onnx", "out.onnx.data"}

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", fail)  # after the data is written
    with pytest.raises(DczError, match="No space"):
        write_onnx(package, str(tmp_path / "out.onnx"))
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(("out.", ".out."))}
    assert after == before  # old pair intact, no temp files left


@pytest.mark.parametrize("content", [b"\x00" * 100, b"hello world, not a model", bytes(range(256)) * 4,
                                     b"\x08\x07"])
def test_not_an_onnx_file(tmp_path, cli, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    assert_one_line_error(cli("pack", path, "-o", tmp_path / "out.dcz"))
    assert_one_line_error(cli("info", path))


def test_tensors_left_in_the_graph_do_not_keep_external_data(tmp_path, cli):
    """A bfloat16 initializer and a small int64 Constant stay in the graph (not extracted): their
    external bytes must move into the .dcz, or it would point to a file it does not carry."""
    model = mlp_with_constants()
    original = model.SerializeToString()
    model.graph.initializer.append(helper.make_tensor("unused_bf16", TensorProto.BFLOAT16, [4],
                                                      np.array([0x3F80, 0x4000, 0xC040, 0x3F00], np.uint16).tobytes(),
                                                      raw=True))
    folder = tmp_path / "m"
    folder.mkdir()
    blob = bytearray()
    for t in (model.graph.initializer[0], model.graph.node[2].attribute[0].t):  # bf16, int64 shape
        offset, data = len(blob), t.raw_data
        blob += data
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(len(data)))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
    (folder / "weights.bin").write_bytes(bytes(blob))
    onnx.save(model, str(folder / "model.onnx"))
    assert cli("pack", folder / "model.onnx", "-o", tmp_path / "m.dcz").exit_code == 0
    os.remove(folder / "weights.bin")  # the .dcz must not need it
    assert cli("export", tmp_path / "m.dcz", "-o", tmp_path / "out.onnx").exit_code == 0
    out = onnx.load(str(tmp_path / "out.onnx"))
    onnx.checker.check_model(out, full_check=True)
    assert out.graph.initializer[0].raw_data == np.array([0x3F80, 0x4000, 0xC040, 0x3F00], np.uint16).tobytes()
    x = {"x": RNG.standard_normal((2, 16), dtype=np.float32)}
    expected = ort_outputs(original, x)[0]
    assert np.allclose(ort_outputs(out.SerializeToString(), x)[0], expected)
