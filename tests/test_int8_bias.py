"""int8 Conv bias correction: rounding to 8 bits is a systematic offset on some channels (a
cluster of values under one step, weights just under half a step), which pooling exposes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deepcompress_cli.files import read_model
from deepcompress_cli.interp.graph import Interpreter
from deepcompress_cli.interp.quant import Int8Interpreter


def pooled_conv(tmp_path, w: np.ndarray, pads=(0, 0, 0, 0), strides=(1, 1)):
    """Conv (weight w, no bias) -> GlobalAveragePool, as a loaded package."""
    m, c, kh, kw = w.shape
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=list(pads), strides=list(strides)),
         helper.make_node("GlobalAveragePool", ["y"], ["p"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 12, 12])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", m, 1, 1])],
        [numpy_helper.from_array(w.astype(np.float32), "w")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return read_model(str(path))


def pooled_error(package, x: np.ndarray) -> float:
    """Largest |int8 - fp32| of the pooled output, relative to the largest |fp32| value."""
    ref = Interpreter(package).run({"x": x})[0]
    got = Int8Interpreter(package).run({"x": x})[0]
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])  # a 1x1 Conv's output mean; the weight sums
def test_inputs_clustered_under_one_step_keep_their_mean(tmp_path, strides):
    # Channel 0 spans 0..30 and sets the per-image grid (step 0.12); channels 1-7 sit near 0.04,
    # which all rounds to code 0: without the correction the pooled output loses them (-60 %).
    rng = np.random.default_rng(0)
    x = np.empty((2, 8, 12, 12), np.float32)
    x[:, 0] = rng.uniform(0, 30, (2, 12, 12))
    x[:, 1:] = 0.04 + rng.uniform(-0.01, 0.01, (2, 7, 12, 12))
    w = np.ones((4, 8, 1, 1), np.float32)
    w[:, 0] = 0.01
    assert pooled_error(pooled_conv(tmp_path, w, strides=strides), x) < 0.01


def test_weights_under_half_a_step_keep_their_sum(tmp_path):
    # Each weight row: one 1.0 (step 1/127) and 15 weights of 0.0035 that round to 0; on inputs
    # near 10 those carry a third of the output, lost without the correction.
    rng = np.random.default_rng(1)
    x = rng.uniform(9, 11, (2, 16, 12, 12)).astype(np.float32)
    w = np.full((4, 16, 3, 3), 0.0035, np.float32)
    w[:, 0, 1, 1] = 1.0
    assert pooled_error(pooled_conv(tmp_path, w), x) < 0.01  # unpadded: at zero-padded borders it is approximate


def test_correction_leaves_unbiased_rounding_accurate(tmp_path):
    # Random weights and inputs: rounding is unbiased there, the correction must not add error.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 16, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    package = pooled_conv(tmp_path, w, pads=(1, 1, 1, 1))
    ref = Interpreter(package).run({"x": x})[0]
    got = Int8Interpreter(package).run({"x": x})[0]
    assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max()
