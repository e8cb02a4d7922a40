"""Shapes of `bench`'s random inputs: `--shape NAME=D0,D1,...`, and the default rule for symbolic
dims (data.random_shapes) that bench and the default `compress` share."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_one_line_error
from deepcompress_cli.benchmarking import make_inputs
from deepcompress_cli.data import SPATIAL, TIME, TOKENS, InputSpec, declared_layout, dim_kind, random_shapes
from deepcompress_cli.errors import DczError
from deepcompress_cli.files import read_model
from deepcompress_cli.graphs import window_reach
from deepcompress_cli.interp.graph import Interpreter

rng = np.random.default_rng(0)


def save(path, nodes, inputs, outputs, inits=(), opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def value(name, dims, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def weight(name, *shape):
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)


def spec(name, dims, dtype=np.float32):
    return InputSpec(name, tuple(d if isinstance(d, int) else None for d in dims), np.dtype(dtype),
                     tuple(d if isinstance(d, str) else None for d in dims))


@pytest.mark.parametrize("symbol, kind", [("batch", "batch"), ("batch_size", "batch"), ("N", "batch"),
                                          ("sequence_length", "time"), ("seqLen", "time"), ("num_frames", "time"),
                                          ("T", "time"), ("height", "spatial"), ("image_width", "spatial"),
                                          ("W", "spatial"), ("unk__214", None), ("p2o.DynamicDimension.1", None),
                                          (None, None)])
def test_dim_kind_reads_the_name(symbol, kind):
    assert dim_kind(symbol) == kind


def test_default_rule_by_name_position_and_windows():
    specs = [spec("input_ids", ["batch", "sequence_length"], np.int64),
             spec("attention_mask", ["batch", "sequence_length"], np.int64),
             spec("audio", ["batch", "time"]),
             spec("image", ["batch", 3, "height", "width"]),
             spec("crops", ["batch", 3, "d1", "d2"]),  # unnamed dims of a 4-D float: spatial
             spec("state", [2, "batch", 128]),  # batch on axis 1: the sample axis
             spec("frames", ["batch", "d3", 40]),  # an unnamed dim of a 3-D input: sequence-like
             spec("pixels", ["batch", "d4", "d5", 3], np.uint8)]  # unnamed dims of a 4-D one: spatial
    layout = declared_layout(specs)
    shapes = random_shapes(specs, layout, 5)
    assert shapes == {"input_ids": [5, TOKENS], "attention_mask": [5, TOKENS], "audio": [5, TIME],
                      "image": [5, 3, SPATIAL, SPATIAL], "crops": [5, 3, SPATIAL, SPATIAL], "state": [2, 5, 128],
                      "frames": [5, TIME, 40], "pixels": [5, SPATIAL, SPATIAL, 3]}
    # windows that reach 300 samples with a total stride of 64: 320 for time, 256 for images
    shapes = random_shapes(specs, layout, 1, stride=64, reach=300)
    assert shapes["audio"] == [1, 320] and shapes["image"] == [1, 3, 320, 320] and shapes["input_ids"] == [1, TOKENS]
    assert random_shapes(specs, layout, 1, stride=64, reach=100)["image"] == [1, 3, 256, 256]
    # a given shape fixes its dim names for every input that carries them; the sample axis stays the samples'
    shapes = random_shapes(specs, layout, 3, {"input_ids": (1, 40), "image": (1, 3, 64, 96)})
    assert shapes["attention_mask"] == [3, 40] and shapes["input_ids"] == [3, 40] and shapes["image"] == [3, 3, 64, 96]


def conv1d_model(tmp_path):
    """An audio front end: a 128-tap Conv over [N, 1, time] (time 1 fails: the kernel is longer)."""
    return save(tmp_path / "audio.onnx", [helper.make_node("Conv", ["x", "w"], ["c"], strides=[64]),
                                          helper.make_node("ReduceMean", ["c"], ["y"], axes=[2], keepdims=0)],
                [value("x", ["batch", 1, "time"])], [value("y", ["batch", 4])], [weight("w", 4, 1, 128)])


def detector_model(tmp_path):
    """Two stride-2 convs, an upsample x2, then a Concat with the stride-2 branch: sizes that are not
    a multiple of 4 (1 among them) make the two branches disagree."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["b"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["b", "", "scales"], ["u"], mode="nearest"),
             helper.make_node("Concat", ["a", "u"], ["y"], axis=1)]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    return save(tmp_path / "det.onnx", nodes, [value("x", ["batch", 3, "height", "width"])],
                [value("y", ["batch", 8, None, None])], [weight("w1", 4, 3, 3, 3), weight("w2", 4, 4, 3, 3), scales])


def test_window_reach_and_stride_make_models_run(cli, tmp_path):
    for path, want in ((conv1d_model(tmp_path), (64, 128)), (detector_model(tmp_path), (4, 6))):
        package = read_model(str(path))
        assert window_reach(package.graph) == want
        feeds = make_inputs(Interpreter(package), None, 2, 0)
        size = next(iter(feeds.values())).shape[-1]
        assert size >= want[1] and size % want[0] == 0
        result = cli("bench", "--no-int8", "--runs", 1, "--warmup", 0, path)
        assert result.exit_code == 0, result.stderr
    with pytest.raises(DczError, match="smaller than|failed"):  # what the old fill with 1 ran into
        Interpreter(read_model(str(conv1d_model(tmp_path)))).run({"x": np.ones((1, 1, 33), np.float32)})


def test_shape_option_sets_shapes_and_batch(cli, tmp_path):
    path = detector_model(tmp_path)
    result = cli("--json", "bench", "--no-int8", "--runs", 1, "--warmup", 0, "--shape", "x=2,3,32,48", path)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["models"][0]["batch"] == 2
    feeds = make_inputs(Interpreter(read_model(str(path))), None, 3, 0, shapes={"x": (2, 3, 32, 48)})
    assert feeds["x"].shape == (3, 3, 32, 48)


@pytest.mark.parametrize("options, message", [
    (["--shape", "y=1,3,8,8"], "--shape y: the model has no such input (its inputs: 'x')"),
    (["--shape", "x=1,3,8"], "--shape x=1,3,8: rank 3, but the model's input takes float32 [batch, 3, height, "
                             "width] (rank 4)"),
    (["--shape", "x=1,4,8,8"], "--shape x=1,4,8,8: dim 1 is fixed at 3"),
    (["--shape", "x=1,3,8,a"], "--shape x: sizes are integers"),
    (["--shape", "x=1,3,0,8"], "--shape x: sizes are at least 1"),
    (["--shape", "x"], "expected NAME=D0,D1,..."),
    (["--shape", "x=1,3,8,8", "--shape", "x=1,3,8,8"], "--shape x: given twice"),
    (["--shape", "x=2,3,8,8", "--batch-size", "4"], "--shape sets a batch of 2"),
    (["--shape", "x=1,3,8,8", "--data", "DATA"], "--shape sizes random inputs"),
])
def test_wrong_shapes_are_one_line_errors(cli, tmp_path, options, message):
    path = detector_model(tmp_path)
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 8, 8), np.float32))
    options = [str(tmp_path / "d.npz") if o == "DATA" else o for o in options]
    result = cli("bench", "--no-int8", "--runs", 1, path, *options)
    assert_one_line_error(result)
    assert message in result.stderr


def test_integer_inputs_index_their_table_and_masks_are_ones(tmp_path):
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axes"], ["m3"]),
             helper.make_node("Mul", ["e", "m3"], ["y"])]
    inits = [weight("table", 50, 4), numpy_helper.from_array(np.array([2], np.int64), "axes")]
    path = save(tmp_path / "emb.onnx", nodes, [value("ids", ["batch", "seq"], TensorProto.INT64),
                                               value("mask", ["batch", "seq"], TensorProto.INT64)],
                [value("y", ["batch", "seq", 4])], inits)
    feeds = make_inputs(Interpreter(read_model(str(path))), None, 64, 0)
    assert feeds["ids"].shape == feeds["mask"].shape == (64, TOKENS)
    assert feeds["ids"].min() >= 0 and feeds["ids"].max() < 50 and len(np.unique(feeds["ids"])) > 25
    assert (feeds["mask"] == 1).all()


def test_nan_and_inf_in_float_data_propagate(cli, tmp_path):
    path = detector_model(tmp_path)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    x[0, 0, 0, 0], x[1] = np.nan, np.inf
    x[2, 1] = -np.inf
    np.savez(tmp_path / "d.npz", x=x)
    result = cli("--json", "bench", "--no-int8", "--runs", 1, "--warmup", 0, "--data", tmp_path / "d.npz", path, path)
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    assert json.loads(result.stdout)["models"][0]["modes"]["fp32"]["fidelity"]["cosine"] is None  # NaN: no number
    y = Interpreter(read_model(str(path))).run({"x": x[:2]})[0]
    assert np.isnan(y[0]).any() and np.isfinite(y[0]).any() and not np.isfinite(y[1]).all()
