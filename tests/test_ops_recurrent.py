"""LSTM, GRU and RNN kernels against onnxruntime on small random inputs.

Every direction x layout x with/without sequence_lens x with/without initial states (and
peepholes for LSTM).  onnxruntime refuses layout 1, so a layout-1 case runs onnxruntime on the
time-major transposes of its inputs and compares with the transposed outputs.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from deepcompress_cli.errors import DczError
from deepcompress_cli.interp.graph import Interpreter
from deepcompress_cli.interp.quant import Int8Interpreter
from deepcompress_cli.onnx_io import from_onnx

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
SLOTS = ["X", "W", "R", "B", "lens", "h0", "c0", "P"]
T, BATCH, IN, HID = 5, 3, 4, 6


def model(op, attrs, feeds, opset=14):
    slots = SLOTS[:8 if op == "LSTM" else 6]
    names = [n if n in feeds else "" for n in slots]
    while not names[-1]:
        names.pop()
    outs = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    graph = helper.make_graph(
        [helper.make_node(op, names, outs, **attrs)], "g",
        [helper.make_tensor_value_info(n, TensorProto.INT32 if n == "lens" else TensorProto.FLOAT, None)
         for n in feeds],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def random_feeds(op, dirs, seed, lens=None, initial=False, peepholes=False, bias=True):
    rng = np.random.default_rng(seed)
    g = GATES[op]
    feeds = {"X": rng.standard_normal((T, BATCH, IN)), "W": rng.standard_normal((dirs, g * HID, IN)) * 0.5,
             "R": rng.standard_normal((dirs, g * HID, HID)) * 0.5}
    if bias:
        feeds["B"] = rng.standard_normal((dirs, 2 * g * HID))
    if lens is not None:
        feeds["lens"] = np.array(lens)
    if initial:
        feeds["h0"] = rng.standard_normal((dirs, BATCH, HID))
        if op == "LSTM":
            feeds["c0"] = rng.standard_normal((dirs, BATCH, HID))
    if peepholes:
        feeds["P"] = rng.standard_normal((dirs, 3 * HID))
    return {k: v.astype(np.int32 if k == "lens" else np.float32) for k, v in feeds.items()}


def ours(op, attrs, feeds):
    return Interpreter(from_onnx(model(op, attrs, feeds), None)).run(feeds)


def onnxruntime(op, attrs, feeds):
    m = model(op, attrs, feeds)
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_close(got, ref):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


CASES = [(op, direction, layout, lens, initial, peep)
         for op in GATES
         for direction, layout, lens, initial in itertools.product(
             ["forward", "reverse", "bidirectional"], [0, 1], [None, [5, 2, 4]], [False, True])
         for peep in ([False, True] if op == "LSTM" else [False])]


@pytest.mark.parametrize("op,direction,layout,lens,initial,peep", CASES)
def test_matches_onnxruntime(op, direction, layout, lens, initial, peep):
    dirs = 2 if direction == "bidirectional" else 1
    feeds = random_feeds(op, dirs, seed=len(CASES), lens=lens, initial=initial, peepholes=peep)
    attrs = {"hidden_size": HID, "direction": direction}
    ref = onnxruntime(op, attrs, feeds)
    if layout:  # the same case batch-major: [batch, seq, ...] inputs, [batch, seq, dirs, hidden] Y
        feeds = {k: v.transpose(1, 0, 2) if k in ("X", "h0", "c0") else v for k, v in feeds.items()}
        ref = [ref[0].transpose(2, 0, 1, 3), *(s.transpose(1, 0, 2) for s in ref[1:])]
    got = ours(op, {**attrs, "layout": layout}, feeds)
    assert_close(got, ref)
    if lens is not None:  # past a sequence's end: zeros
        y = got[0] if layout == 0 else got[0].transpose(1, 2, 0, 3)
        assert not y[2:, :, 1].any() and y[1, :, 1].all()


@pytest.mark.parametrize("op", list(GATES))
def test_clip_and_empty_sequences(op):
    feeds = random_feeds(op, 2, seed=1, lens=[5, 0, 3], initial=True)
    attrs = {"hidden_size": HID, "direction": "bidirectional", "clip": 0.3}
    got = ours(op, attrs, feeds)
    assert_close(got, onnxruntime(op, attrs, feeds))
    assert not got[1][:, 1].any()  # a sequence of length 0 ends with zero states, as onnxruntime


def test_lstm_input_forget_and_gru_linear_before_reset():
    feeds = random_feeds("LSTM", 1, seed=2, initial=True, peepholes=True)
    attrs = {"hidden_size": HID, "input_forget": 1}
    assert_close(ours("LSTM", attrs, feeds), onnxruntime("LSTM", attrs, feeds))
    feeds = random_feeds("GRU", 2, seed=3, lens=[4, 5, 1], initial=True)
    attrs = {"hidden_size": HID, "direction": "bidirectional", "linear_before_reset": 1}
    assert_close(ours("GRU", attrs, feeds), onnxruntime("GRU", attrs, feeds))


# Functions taking alpha/beta consume activation_alpha/beta in order; others take none.
ACTIVATIONS = ["Relu", "Tanh", "Sigmoid", "Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh",
               "HardSigmoid", "Elu", "Softsign", "Softplus"]


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations(name):
    for op, acts in [("RNN", [name, "Tanh"]), ("GRU", [name, "Tanh", "Sigmoid", name]),
                     ("LSTM", ["Sigmoid", name, "Tanh", "Sigmoid", "Tanh", name])]:
        feeds = random_feeds(op, 2, seed=4)
        attrs = {"hidden_size": HID, "direction": "bidirectional", "activations": acts,
                 "activation_alpha": [0.7, 0.4], "activation_beta": [0.3, 0.2]}
        ref = onnxruntime(op, attrs, feeds)
        for g, r in zip(ours(op, attrs, feeds), ref):  # unbounded gates grow: relative error
            np.testing.assert_allclose(g, r, rtol=2e-5, atol=1e-5 * np.abs(r).max())


def test_bad_shapes_are_one_line_errors():
    feeds = random_feeds("LSTM", 1, seed=5)
    feeds["R"] = feeds["R"][:, :, :-1]
    with pytest.raises(DczError, match="LSTM"):
        ours("LSTM", {"hidden_size": HID}, feeds)
    feeds = random_feeds("GRU", 1, seed=5, lens=[9, 1, 1])
    with pytest.raises(DczError, match="sequence_lens"):
        ours("GRU", {"hidden_size": HID}, feeds)


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_quantize_lstm_from_quantize_dynamic(tmp_path, per_channel):
    """onnxruntime.quantization turns an LSTM into com.microsoft.DynamicQuantizeLSTM: ours runs it on
    the dequantized weights, so it stays within weight rounding of the float LSTM, and close to
    onnxruntime, which also rounds X and h to 8 bits.  reduce_range (7-bit weights): with 8-bit
    weights onnxruntime's u8s8 products saturate on CPUs without VNNI (0.15 off on this machine)."""
    from onnx import load, numpy_helper
    from onnxruntime.quantization import quantize_dynamic

    feeds = random_feeds("LSTM", 2, seed=6)
    weights = [numpy_helper.from_array(feeds.pop(k), k) for k in ("W", "R", "B")]
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y", "Y_h", "Y_c"], hidden_size=HID,
                          direction="bidirectional")], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, BATCH, IN])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("Y", "Y_h", "Y_c")], initializer=weights)
    float_path, quant_path = tmp_path / "float.onnx", tmp_path / "quant.onnx"
    float_path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]).SerializeToString())
    quantize_dynamic(str(float_path), str(quant_path), per_channel=per_channel, reduce_range=True)
    quantized = load(str(quant_path))
    assert [(n.domain, n.op_type) for n in quantized.graph.node] == [("com.microsoft", "DynamicQuantizeLSTM")]
    got = Interpreter(from_onnx(quantized, None)).run(feeds)
    for g, q in zip(got, Int8Interpreter(from_onnx(load(str(quant_path)), None)).run(feeds)):  # no int8 layer
        np.testing.assert_array_equal(g, q)
    for path, tolerance in [(float_path, 0.06), (quant_path, 0.02)]:
        ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, atol=tolerance)


def test_kernels_outside_the_default_domain_are_looked_up_by_domain():
    from deepcompress_cli.interp.graph import unsupported_ops

    feeds = random_feeds("LSTM", 1, seed=7)
    m = model("LSTM", {"hidden_size": HID}, feeds)
    assert not unsupported_ops(m)
    m.graph.node[0].domain = "com.microsoft"  # no LSTM in that domain: not mistaken for ai.onnx's
    assert unsupported_ops(m) == {"com.microsoft.LSTM"}
