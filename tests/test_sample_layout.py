"""The sample layout of data files (issue 13, item 7): inputs whose samples are not on axis 0 (a
recurrent state [2, N, 4]), scalar inputs (a sample rate) and inputs shared by every sample."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_one_line_error
from deepcompress_cli.data import InputSpec, declared_layout, pick, sample_count, sample_layout, take
from deepcompress_cli.errors import DczError

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3)).astype(np.float32)


def save(tmp_path, name, nodes, inputs, initializers=()) -> str:
    graph = helper.make_graph(nodes, name, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(W, "w"), *initializers])
    path = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return str(path)


def vad_like(tmp_path, batch: str | None = "batch") -> str:
    """silero-vad's inputs: `input` [N, 4], `state` [2, N, 4], `sr` int64 scalar;
    y = ((input + state[0] - state[1]) * sr) @ w. `batch` None: the dims carry no names."""
    n = batch or ""
    nodes = [helper.make_node("Gather", ["state", "zero"], ["s0"], axis=0),
             helper.make_node("Gather", ["state", "one"], ["s1"], axis=0),
             helper.make_node("Add", ["input", "s0"], ["a"]), helper.make_node("Sub", ["a", "s1"], ["b"]),
             helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["b", "srf"], ["c"]), helper.make_node("MatMul", ["c", "w"], ["y"])]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [n, 4]),
              helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, n, 4]),
              helper.make_tensor_value_info("sr", TensorProto.INT64, [])]
    consts = [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(1, np.int64), "one")]
    return save(tmp_path, "vad" if batch else "vad_unnamed", nodes, inputs, consts)


def vad_data(n: int = 5) -> dict[str, np.ndarray]:
    return {"input": RNG.standard_normal((n, 4)).astype(np.float32),
            "state": RNG.standard_normal((2, n, 4)).astype(np.float32), "sr": np.array(3, np.int64)}


def vad_expected(d) -> np.ndarray:
    return ((d["input"] + d["state"][0] - d["state"][1]) * np.float32(d["sr"])) @ W


def shared_table(tmp_path) -> str:
    """`x` [N, 3] @ `table` [3, 4] (an input with no symbolic dim: the same for every sample) @ w."""
    nodes = [helper.make_node("MatMul", ["x", "table"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
              helper.make_tensor_value_info("table", TensorProto.FLOAT, [3, 4])]
    return save(tmp_path, "table", nodes, inputs)


def specs_of(path) -> list[InputSpec]:
    from deepcompress_cli.data import input_specs

    return input_specs(onnx.load(path).graph)


def run(path, data, batch=2) -> np.ndarray:
    from deepcompress_cli.benchmarking import make_inputs, run_batched
    from deepcompress_cli.files import read_model
    from deepcompress_cli.interp.graph import Interpreter

    interp = Interpreter(read_model(path))
    return run_batched(interp, make_inputs(interp, data, 0, 0), batch)


def bench(cli, model, data, *options):
    return cli("bench", model, "--runs", 1, "--warmup", 0, "--no-int8", "--data", data, *options)


# ------------------------------------------------------------------------------ the rule

@pytest.mark.parametrize("batch", ["batch", None])
def test_state_on_axis_1_and_a_scalar_are_batched_right(tmp_path, batch):
    """By the dim's name, and without names by the axis whose size is the sample count."""
    model, data = vad_like(tmp_path, batch), vad_data(5)
    assert sample_layout(specs_of(model), data) == {"input": 0, "state": 1, "sr": None}
    np.testing.assert_allclose(run(model, data, batch=2), vad_expected(data), rtol=1e-5, atol=1e-5)


def test_a_fixed_shape_input_is_shared_by_every_sample(tmp_path):
    model = shared_table(tmp_path)
    data = {"x": RNG.standard_normal((5, 3)).astype(np.float32), "table": RNG.standard_normal((3, 4)).astype(np.float32)}
    assert sample_layout(specs_of(model), data) == {"x": 0, "table": None}
    np.testing.assert_allclose(run(model, data, batch=2), data["x"] @ data["table"] @ W, rtol=1e-5, atol=1e-5)
    # three samples of x beside a table of exactly its shape: still shared, not "3 samples of table"
    data["x"] = data["x"][:3]
    assert sample_layout(specs_of(model), data)["table"] is None


def test_take_pick_and_count():
    layout = {"input": 0, "state": 1, "sr": None}
    data = {**vad_data(6), "labels": np.arange(6)}
    assert sample_count(data, layout) == 6
    part = take(data, layout, 2, 5)
    assert part["input"].shape == (3, 4) and part["state"].shape == (2, 3, 4) and part["sr"] is data["sr"]
    np.testing.assert_array_equal(part["labels"], [2, 3, 4])
    np.testing.assert_array_equal(part["state"], data["state"][:, 2:5])
    chosen = pick(data, layout, np.array([5, 0]))
    np.testing.assert_array_equal(chosen["state"], data["state"][:, [5, 0]])
    np.testing.assert_array_equal(chosen["labels"], [5, 0])
    assert sample_count({"sr": data["sr"]}, {"sr": None}) == 1


def test_a_fixed_batch_model_keeps_its_samples_on_axis_0():
    spec = InputSpec("x", (1, 3), np.dtype(np.float32))
    assert sample_layout([spec], {"x": np.zeros((7, 3), np.float32)}) == {"x": 0}
    assert sample_layout([spec], {"x": np.zeros((1, 3), np.float32)}) == {"x": 0}
    assert declared_layout([spec]) == {"x": 0}


def test_declared_layout_for_random_inputs(tmp_path):
    assert declared_layout(specs_of(vad_like(tmp_path))) == {"input": 0, "state": 1, "sr": None}
    assert declared_layout(specs_of(shared_table(tmp_path))) == {"x": 0, "table": None}


def test_ambiguous_axes_are_one_line_naming_them():
    specs = [InputSpec("input", (None, 4), np.dtype(np.float32)),
             InputSpec("state", (2, None, None), np.dtype(np.float32))]
    with pytest.raises(DczError, match=r"which axis of 'state'.*axes 1, 2"):
        sample_layout(specs, {"input": np.zeros((3, 4), np.float32), "state": np.zeros((2, 3, 3), np.float32)})
    with pytest.raises(DczError, match="no symbolic axis has the 3 samples"):
        sample_layout(specs, {"input": np.zeros((3, 4), np.float32), "state": np.zeros((2, 5, 6), np.float32)})
    # one axis of the sample count: found
    layout = sample_layout(specs, {"input": np.zeros((3, 4), np.float32), "state": np.zeros((2, 5, 3), np.float32)})
    assert layout["state"] == 2


# ------------------------------------------------------------------------------ through the CLI

def test_bench_runs_a_state_and_a_scalar_from_an_npz(cli, tmp_path):
    model = vad_like(tmp_path)
    np.savez(tmp_path / "d.npz", **vad_data(6), labels=np.arange(6) % 3)
    result = bench(cli, model, tmp_path / "d.npz", "--batch-size", 4)
    assert result.exit_code == 0, result.stderr
    report = json.loads(bench(cli, model, tmp_path / "d.npz", "--batch-size", 4, "--json").stdout)
    assert report["models"][0]["modes"]["fp32"]["fidelity"]["top1_agreement"] == 1.0
    assert "accuracy" in report["models"][0]["modes"]["fp32"]


def test_bench_int8_and_a_shared_table(cli, tmp_path):
    model = shared_table(tmp_path)
    np.savez(tmp_path / "d.npz", x=RNG.standard_normal((6, 3)), table=RNG.standard_normal((3, 4)))  # float64: cast
    result = cli("bench", model, "--runs", 1, "--warmup", 0, "--data", tmp_path / "d.npz", "--calibrate",
                 tmp_path / "d.npz", "--batch-size", 4)
    assert result.exit_code == 0, result.stderr


def test_training_data_with_a_state_axis(tmp_path):
    """Retraining batches the state on its axis 1 too (a shuffled minibatch of each input)."""
    from deepcompress_cli.files import read_model
    from deepcompress_cli.train.network import Network
    from deepcompress_cli.train.retrain import Trainer, TrainConfig, logits_of

    model = vad_like(tmp_path)
    data = vad_data(12)
    np.savez(tmp_path / "t.npz", **data, labels=np.arange(12) % 3)
    network = Network(read_model(model))
    np.testing.assert_allclose(logits_of(network, data, batch=5), vad_expected(data), rtol=1e-5, atol=1e-5)
    trainer = Trainer(network, TrainConfig(str(tmp_path / "t.npz"), epochs=1, batch_size=4))
    assert trainer.fit()["steps"] == 3


BAD = {  # case -> (arrays, words the message must have)
    "state_dims": ({"state": np.zeros((2, 6, 5), np.float32)}, ["'state'", "[2, batch, 4]"]),
    "state_count": ({"state": np.zeros((2, 5, 4), np.float32)}, ["different sample counts", "'state' 5"]),
    "state_rank": ({"state": np.zeros((6, 4), np.float32)}, ["'state'", "rank 3"]),
    "sr_array": ({"sr": np.full(6, 16000, np.int64)}, ["'sr'", "scalar int64", "0-d"]),
    "sr_float": ({"sr": np.array(16000.0)}, ["'sr'", "int64"]),
    "input_scalar": ({"input": np.float32(1)}, ["'input'", "not a scalar"]),
    "missing_sr": ({"sr": None}, ["'sr'"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_layouts_are_one_line_naming_the_input(cli, tmp_path, case):
    change, words = BAD[case]
    data = {**vad_data(6), **change}
    np.savez(tmp_path / "d.npz", **{k: v for k, v in data.items() if v is not None})
    result = bench(cli, vad_like(tmp_path), tmp_path / "d.npz")
    assert_one_line_error(result)
    for word in words:
        assert word in result.stderr, result.stderr


def test_a_shared_table_of_the_wrong_shape_is_one_line(cli, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((6, 3), np.float32), table=np.zeros((3, 5), np.float32))
    result = bench(cli, shared_table(tmp_path), tmp_path / "d.npz")
    assert_one_line_error(result)
    assert "'table'" in result.stderr and "[3, 4]" in result.stderr


def test_random_inputs_cannot_make_up_a_scalar_setting(cli, tmp_path):
    result = cli("bench", vad_like(tmp_path), "--runs", 1, "--no-int8")
    assert_one_line_error(result)
    assert "'sr'" in result.stderr and "--data" in result.stderr


def test_random_inputs_lay_out_a_state_and_a_shared_table(cli, tmp_path):
    from deepcompress_cli.benchmarking import make_inputs
    from deepcompress_cli.files import read_model
    from deepcompress_cli.interp.graph import Interpreter

    feeds = make_inputs(Interpreter(read_model(shared_table(tmp_path))), None, 8, 0)
    assert feeds["x"].shape == (8, 3) and feeds["table"].shape == (3, 4)
    assert cli("bench", shared_table(tmp_path), "--runs", 1, "--no-int8").exit_code == 0


def test_a_fixed_batch_model_with_a_shared_fixed_input():
    """All dims fixed: axis 0 holds samples, unless counts then differ and an array has exactly
    its declared shape (an image-size input [1, 2] beside images [1, 3, 4, 4] given as [6, 3, 4, 4])."""
    specs = [InputSpec("images", (1, 3, 4, 4), np.dtype(np.float32)), InputSpec("size", (1, 2), np.dtype(np.float32))]
    data = {"images": np.zeros((6, 3, 4, 4), np.float32), "size": np.zeros((1, 2), np.float32)}
    assert sample_layout(specs, data) == {"images": 0, "size": None}
    data["size"] = np.zeros((6, 2), np.float32)
    assert sample_layout(specs, data) == {"images": 0, "size": 0}
    data["size"] = np.zeros((5, 2), np.float32)
    with pytest.raises(DczError, match="different sample counts"):
        sample_layout(specs, data)
