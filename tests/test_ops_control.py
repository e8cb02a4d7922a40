"""Loop, Scan, SequenceMap, sequence and optional ops: small graphs against onnxruntime, plus the
subgraph scoping rules (outer names visible, a subgraph's own names shadowing them) and the
observe hook seeing sequences."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from deepcompress_cli.errors import DczError
from deepcompress_cli.interp.graph import Interpreter
from deepcompress_cli.onnx_io import from_onnx

F, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
make_node, info = helper.make_node, helper.make_tensor_value_info


def seq_info(name):
    return helper.make_tensor_sequence_value_info(name, F, None)


def model(nodes, inputs, outputs, opset=17, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def both(m, feeds):
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    return Interpreter(from_onnx(m, None)).run(feeds), ref


def assert_same(got, ref):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        if isinstance(r, list):
            assert isinstance(g, list) and len(g) == len(r)
            assert_same(g, r)
        else:
            assert g.shape == r.shape and g.dtype == r.dtype, (g.shape, r.shape, g.dtype, r.dtype)
            np.testing.assert_allclose(g, r, rtol=1e-6)


def constant(name, value):
    return make_node("Constant", [], [name], value=helper.make_tensor(name, F if isinstance(value, float) else I64,
                                                                       [], [value]))


def loop_model(with_trips, with_cond):
    """acc += x * i (x from the outer scope) while sum(acc) < 20, up to M times; scan output acc*2."""
    body = helper.make_graph(
        [make_node("Cast", ["i"], ["i_f"], to=F), make_node("Mul", ["x", "i_f"], ["step"]),
         make_node("Add", ["acc", "step"], ["acc_out"]), make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0),
         constant("limit", 20.0), make_node("Less", ["total", "limit"], ["cond_out"]),
         constant("two", 2.0), make_node("Mul", ["acc_out", "two"], ["scan"])],
        "body", [info("i", I64, []), info("c", BOOL, []), info("acc", F, [2])],
        [info("cond_out", BOOL, []), info("acc_out", F, [2]), info("scan", F, [2])])
    loop = make_node("Loop", ["M" if with_trips else "", "cond" if with_cond else "", "acc0"], ["acc", "scans"],
                     body=body)
    inputs = [info("x", F, [2]), info("acc0", F, [2])]
    inputs += [info("M", I64, [])] * with_trips + [info("cond", BOOL, [])] * with_cond
    return model([loop], inputs, [info("acc", F, None), info("scans", F, None)])


@pytest.mark.parametrize("trips,cond,start", [(3, True, True), (100, True, True), (None, True, True),
                                             (0, True, True), (5, False, False)])
def test_loop(trips, cond, start):
    feeds = {"x": np.array([1.5, 0.5], np.float32), "acc0": np.array([0.25, -1], np.float32)}
    if trips is not None:
        feeds["M"] = np.array(trips, np.int64)
    if cond is not None:
        feeds["cond"] = np.array(start)
    got, ref = both(loop_model(trips is not None, cond is not None), feeds)
    assert_same(got, ref)


def test_loop_without_cond_input_ignores_the_body_cond():
    """The spec's `input (trip_count, "")`: `cond = ...; // ignored`, so all 7 trips run (onnxruntime
    and onnx.reference stop once the body's cond is false, after 6)."""
    feeds = {"x": np.array([1.5, 0.5], np.float32), "acc0": np.array([0.25, -1], np.float32),
             "M": np.array(7, np.int64)}
    acc, scans = Interpreter(from_onnx(loop_model(True, False), None)).run(feeds)
    assert acc.tolist() == [0.25 + 1.5 * 21, -1 + 0.5 * 21] and scans.shape == (7, 2)
    assert scans[-1].tolist() == (2 * acc).tolist()


def test_loop_without_trip_count_or_cond_is_refused():
    with pytest.raises(DczError, match="would never end"):
        Interpreter(from_onnx(loop_model(False, False), None)).run({"x": np.ones(2, np.float32),
                                                                    "acc0": np.zeros(2, np.float32)})


def test_loop_without_iterations_types_its_scan_output_from_the_body():
    feeds = {"x": np.ones(2, np.float32), "acc0": np.zeros(2, np.float32), "M": np.array(0, np.int64),
             "cond": np.array(True)}
    got = Interpreter(from_onnx(loop_model(True, True), None)).run(feeds)
    assert got[1].shape == (0, 2) and got[1].dtype == np.float32


def scan_body():
    """state += a + b; outputs the running state and a * b."""
    return helper.make_graph(
        [make_node("Add", ["a", "b"], ["ab"]), make_node("Add", ["s", "ab"], ["s_out"]),
         make_node("Mul", ["a", "b"], ["prod"]), make_node("Identity", ["s_out"], ["running"])],
        "body", [info("s", F, [3]), info("a", F, [3]), info("b", F, [3])],
        [info("s_out", F, [3]), info("running", F, [3]), info("prod", F, [3])])


@pytest.mark.parametrize("attrs", [
    {},
    {"scan_input_axes": [1, 0], "scan_input_directions": [1, 0]},
    {"scan_input_axes": [-1, 0], "scan_output_axes": [1, -1], "scan_output_directions": [1, 0]},
])
def test_scan_opset9(attrs):
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    b = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    if attrs.get("scan_input_axes", [0])[0] != 0:
        a = np.ascontiguousarray(a.T)  # scanned on its last axis
    node = make_node("Scan", ["s0", "a", "b"], ["s", "running", "prod"], body=scan_body(), num_scan_inputs=2, **attrs)
    m = model([node], [info("s0", F, [3]), info("a", F, None), info("b", F, None)],
              [info(n, F, None) for n in ("s", "running", "prod")], opset=16)
    got, ref = both(m, {"s0": np.array([1, 2, 3], np.float32), "a": a, "b": b})
    assert_same(got, ref)


@pytest.mark.parametrize("lens", [None, [4, 2]])
def test_scan_opset8_batches_and_sequence_lens(lens):
    body = helper.make_graph(
        [make_node("Add", ["s", "a"], ["s_out"]), make_node("Identity", ["s_out"], ["running"])], "body",
        [info("s", F, [3]), info("a", F, [3])], [info("s_out", F, [3]), info("running", F, [3])])
    node = make_node("Scan", ["lens" if lens else "", "s0", "a"], ["s", "running"], body=body, num_scan_inputs=1,
                     directions=[1])
    inputs = [info("s0", F, [2, 3]), info("a", F, [2, 4, 3])] + [info("lens", I64, [2])] * bool(lens)
    m = model([node], inputs, [info("s", F, None), info("running", F, None)], opset=8)
    feeds = {"s0": np.ones((2, 3), np.float32), "a": np.arange(24, dtype=np.float32).reshape(2, 4, 3)}
    if lens:
        feeds["lens"] = np.array(lens, np.int64)
    got, ref = both(m, feeds)
    assert_same(got, ref)
    if lens:
        assert not got[1][1, 2:].any()  # past the second entry's length: zeros


def test_sequence_ops():
    nodes = [
        make_node("SplitToSequence", ["x"], ["pieces"], axis=1),  # 3 pieces [2, 1, 4]
        make_node("SplitToSequence", ["x", "sizes"], ["uneven"], axis=2),  # [2, 3, 1], [2, 3, 3]
        make_node("SplitToSequence", ["x"], ["squeezed"], axis=0, keepdims=0),
        make_node("SequenceAt", ["pieces", "minus_one"], ["last"]),
        make_node("SequenceInsert", ["pieces", "last", "zero"], ["inserted"]),  # last piece first too
        make_node("SequenceInsert", ["inserted", "last"], ["appended"]),
        make_node("SequenceErase", ["appended", "one"], ["erased"]),
        make_node("SequenceErase", ["erased"], ["erased_end"]),
        make_node("SequenceLength", ["erased_end"], ["length"]),
        make_node("ConcatFromSequence", ["erased_end"], ["joined"], axis=1),
        make_node("ConcatFromSequence", ["squeezed"], ["stacked"], axis=-1, new_axis=1),
        make_node("SequenceEmpty", [], ["empty"]),
        make_node("SequenceInsert", ["empty", "last"], ["single"]),
        make_node("SequenceConstruct", ["x", "last"], ["pair"]),
    ]
    inputs = [info("x", F, [2, 3, 4])]
    inits = [helper.make_tensor("sizes", I64, [], [3]), helper.make_tensor("minus_one", I64, [], [-1]),
             helper.make_tensor("zero", I64, [], [0]), helper.make_tensor("one", I64, [], [1])]
    outputs = [seq_info("uneven"), seq_info("squeezed"), info("length", I64, None), info("joined", F, None),
               info("stacked", F, None), seq_info("single"), seq_info("pair")]
    got, ref = both(model(nodes, inputs, outputs, initializers=inits),
                    {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)})
    assert_same(got, ref)
    assert [p.shape for p in got[0]] == [(2, 3, 3), (2, 3, 1)] and int(got[2]) == 3


def test_sequence_map_with_a_sequence_and_a_tensor():
    body = helper.make_graph([make_node("Add", ["e", "t"], ["sum"]), make_node("Shape", ["e"], ["shape"])], "body",
                             [info("e", F, None), info("t", F, None)], [info("sum", F, None), info("shape", I64, None)])
    nodes = [make_node("SplitToSequence", ["x", "sizes"], ["seq"], axis=0),
             make_node("SequenceMap", ["seq", "t"], ["sums", "shapes"], body=body)]
    m = model(nodes, [info("x", F, [5, 2]), info("t", F, [2])],
              [seq_info("sums"), helper.make_tensor_sequence_value_info("shapes", I64, None)],
              initializers=[helper.make_tensor("sizes", I64, [2], [2, 3])])
    got, ref = both(m, {"x": np.arange(10, dtype=np.float32).reshape(5, 2), "t": np.array([10, 20], np.float32)})
    assert_same(got, ref)


def test_optionals():
    opt_type = helper.make_optional_type_proto(helper.make_tensor_type_proto(F, None))
    nodes = [make_node("Optional", [], ["none"], type=helper.make_tensor_type_proto(F, None)),
             make_node("Optional", ["x"], ["some"]),
             make_node("OptionalHasElement", ["none"], ["has_none"]),
             make_node("OptionalHasElement", ["some"], ["has_some"]),
             make_node("OptionalGetElement", ["some"], ["value"])]
    m = model(nodes, [info("x", F, [2])], [info("has_none", BOOL, []), info("has_some", BOOL, []),
                                          info("value", F, [2])], opset=18)
    got, ref = both(m, {"x": np.array([1, 2], np.float32)})
    assert_same(got, ref)
    assert got[0] == np.array(False) and got[1] == np.array(True)
    m = model([make_node("OptionalGetElement", ["x"], ["y"])],
              [helper.make_value_info("x", opt_type)], [info("y", F, None)], opset=18)
    with pytest.raises(DczError, match="optional is empty"):
        Interpreter(from_onnx(m, None)).run({"x": None})


def test_a_body_sees_outer_names_and_its_own_names_shadow_them():
    """The body reads outer `x`, and its own initializer `k` hides the outer `k`."""
    body = helper.make_graph([make_node("Add", ["acc", "x"], ["a1"]), make_node("Mul", ["a1", "k"], ["acc_out"]),
                              make_node("Identity", ["c"], ["c_out"])], "body",
                             [info("i", I64, []), info("c", BOOL, []), info("acc", F, [1])],
                             [info("c_out", BOOL, []), info("acc_out", F, [1])],
                             initializer=[helper.make_tensor("k", F, [1], [2.0])])
    nodes = [make_node("Loop", ["M", "", "acc0"], ["acc"], body=body), make_node("Add", ["acc", "k"], ["y"])]
    m = model(nodes, [info("x", F, [1]), info("acc0", F, [1]), info("M", I64, [])], [info("y", F, None)],
              initializers=[helper.make_tensor("k", F, [1], [100.0])])
    feeds = {"x": np.array([1], np.float32), "acc0": np.array([0], np.float32), "M": np.array(3, np.int64)}
    got = Interpreter(from_onnx(m, None)).run(feeds)
    assert got[0].tolist() == [((0 + 1) * 2 + 1) * 2 * 2 + 2 + 100]  # 14 + 100


def test_observe_sees_sequences_and_positions_are_checked():
    nodes = [make_node("SplitToSequence", ["x"], ["seq"]), make_node("SequenceAt", ["seq", "p"], ["y"])]
    m = model(nodes, [info("x", F, [3]), info("p", I64, [])], [info("y", F, None)])
    interp = Interpreter(from_onnx(m, None))
    seen = {}
    interp.observe = seen.__setitem__
    assert interp.run({"x": np.arange(3, dtype=np.float32), "p": np.array(-3, np.int64)})[0].tolist() == [0]
    assert isinstance(seen["seq"], list) and len(seen["seq"]) == 3
    with pytest.raises(DczError, match="position 3 is outside"):
        interp.run({"x": np.arange(3, dtype=np.float32), "p": np.array(3, np.int64)})


def test_bench_compares_a_tensor_output_past_sequences_and_empty_optionals():
    from deepcompress_cli.benchmarking import first_numeric

    ragged = [np.zeros(2, np.float32), np.zeros(3, np.float32)]
    assert first_numeric([ragged, None, np.arange(3.0)]).tolist() == [0, 1, 2]


def test_loop_scan_outputs_that_change_shape_are_one_line_errors():
    body = helper.make_graph(
        [constant("one", 1), make_node("Add", ["i", "one"], ["n"]), constant("axis", 0),
         make_node("Unsqueeze", ["n", "axis"], ["shape"]), make_node("ConstantOfShape", ["shape"], ["scan"]),
         make_node("Identity", ["c"], ["c_out"])],
        "body", [info("i", I64, []), info("c", BOOL, [])], [info("c_out", BOOL, []), info("scan", F, None)])
    m = model([make_node("Loop", ["M", ""], ["scans"], body=body)], [info("M", I64, [])], [info("scans", F, None)])
    with pytest.raises(DczError, match=r"scan outputs change shape between iterations \(\[1\] then \[2\]\)"):
        Interpreter(from_onnx(m, None)).run({"M": np.array(3, np.int64)})


def test_loop_stacks_numpy_scalars():
    """A scan output passed through from a numpy-scalar feed (as Range's function body does)."""
    body = helper.make_graph(
        [make_node("Identity", ["c"], ["c_out"]), make_node("Add", ["prev", "delta"], ["next"]),
         make_node("Identity", ["prev"], ["out"])], "body",
        [info("i", I64, []), info("c", BOOL, []), info("prev", F, [])],
        [info("c_out", BOOL, []), info("next", F, []), info("out", F, [])])
    m = model([make_node("Loop", ["M", "", "start"], ["last", "range"], body=body)],
              [info("M", I64, []), info("start", F, []), info("delta", F, [])],
              [info("last", F, None), info("range", F, None)])
    got = Interpreter(from_onnx(m, None)).run({"M": np.array(3, np.int64), "start": np.float32(1), "delta": np.float32(2)})
    assert got[1].tolist() == [1, 3, 5] and got[1].dtype == np.float32


@pytest.mark.parametrize("int8", [False, True])
def test_a_loop_input_shadows_an_outer_weight_of_its_name(int8):
    """The body's carried `W` (the identity) is what its MatMul multiplies by, not the outer
    initializer `W` (100 I): in plans made at load, in fp32 and in int8."""
    from onnx import numpy_helper

    body = helper.make_graph(
        [make_node("Identity", ["cond"], ["cond_out"]), make_node("MatMul", ["x", "W"], ["y"]),
         make_node("Identity", ["W"], ["W_out"])], "body",
        [info("i", I64, []), info("cond", BOOL, []), info("W", F, [2, 2])],
        [info("cond_out", BOOL, []), info("W_out", F, [2, 2]), info("y", F, [1, 2])])
    nodes = [make_node("Loop", ["trips", "", "W0"], ["W_last", "ys"], body=body)]
    inits = [numpy_helper.from_array(np.array(1, np.int64), "trips"),
             numpy_helper.from_array(100 * np.eye(2, dtype=np.float32), "W"),
             numpy_helper.from_array(np.eye(2, dtype=np.float32), "W0")]
    m = model(nodes, [info("x", F, [1, 2])], [info("W_last", F, [2, 2]), info("ys", F, [1, 1, 2])], initializers=inits)
    x = np.array([[1.0, 2.0]], np.float32)
    if int8:
        from deepcompress_cli.interp.quant import Int8Interpreter

        got = Int8Interpreter(from_onnx(m, None), {}).run({"x": x})[1]
        np.testing.assert_allclose(got.reshape(-1), [1, 2], rtol=0.02)
    else:
        got, ref = both(m, {"x": x})
        assert_same(got, ref)


def test_fusions_keep_a_value_a_branch_reads():
    """MatMul -> Add fuses only when nothing else reads the product: an If branch reading it counts."""
    from onnx import numpy_helper

    then = helper.make_graph([make_node("Identity", ["p"], ["t"])], "then", [], [info("t", F, [1, 2])])
    other = helper.make_graph([make_node("Neg", ["p"], ["e"])], "else", [], [info("e", F, [1, 2])])
    nodes = [make_node("MatMul", ["a", "B"], ["p"]), make_node("Add", ["p", "bias"], ["q"]),
             make_node("If", ["flag"], ["r"], then_branch=then, else_branch=other)]
    inits = [numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(2, 2), "B"),
             numpy_helper.from_array(np.ones(2, np.float32), "bias")]
    m = model(nodes, [info("a", F, [1, 2]), info("flag", BOOL, [])], [info("q", F, [1, 2]), info("r", F, [1, 2])],
              initializers=inits)
    got, ref = both(m, {"a": np.array([[1.0, 2.0]], np.float32), "flag": np.array(True)})
    assert_same(got, ref)
