"""pack -> export is lossless: bit-identical weights, the same graph, identical onnxruntime outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from conftest import SAMPLE_MODELS, SHARED_MODELS, onnx_weights, ort_outputs, random_feeds, shared_path
from deepcompress_cli import zoo
from deepcompress_cli.graphs import DATA_FIELDS as _DATA_FIELDS
from deepcompress_cli.onnx_io import _tensor_sites


def without_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every tensor's payload cleared: what must survive a round trip unchanged."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for t, _, _ in _tensor_sites(copy):
        for field in (*_DATA_FIELDS, "external_data", "data_location"):
            t.ClearField(field)
    return copy


def assert_lossless(original: onnx.ModelProto, exported: onnx.ModelProto) -> None:
    assert without_data(exported) == without_data(original)
    before, after = onnx_weights(original), onnx_weights(exported)
    assert before.keys() == after.keys()
    for name, array in before.items():
        assert after[name].dtype == array.dtype and after[name].shape == array.shape, name
        assert after[name].tobytes() == array.tobytes(), name  # bit-identical, NaN payloads included
    original_bytes, exported_bytes = original.SerializeToString(), exported.SerializeToString()
    feeds = random_feeds(original_bytes)
    for a, b in zip(ort_outputs(original_bytes, feeds), ort_outputs(exported_bytes, feeds)):
        assert np.array_equal(a, b)


def roundtrip_cli(cli, source, tmp_path) -> onnx.ModelProto:
    dcz, out = tmp_path / "model.dcz", tmp_path / "model.onnx"
    assert cli("pack", source, "-o", dcz).exit_code == 0
    assert cli("export", dcz, "-o", out).exit_code == 0
    return onnx.load(str(out))


@pytest.mark.parametrize("path", SAMPLE_MODELS, ids=lambda p: p.name)
def test_sample_models_round_trip(cli, tmp_path, path):
    assert_lossless(onnx.load(str(path)), roundtrip_cli(cli, path, tmp_path))


@pytest.mark.parametrize("name", SHARED_MODELS)
def test_shared_models_round_trip(cli, tmp_path, name):
    path = shared_path("models", name)
    assert_lossless(onnx.load(str(path)), roundtrip_cli(cli, path, tmp_path))


@pytest.mark.parametrize("name", sorted(zoo.light_models()))
def test_light_architectures_round_trip(cli, tmp_path, name):
    """AlexNet (244 MB), VGG-19 (575 MB), ResNet-50 ... with random weights."""
    model = zoo.materialize(name)
    source = tmp_path / f"{name}.onnx"
    source.write_bytes(model.SerializeToString())
    assert_lossless(model, roundtrip_cli(cli, source, tmp_path))
