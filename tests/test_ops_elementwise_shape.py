"""Elementwise, shape and resize kernels of the interpreter against onnxruntime.

Each case builds a one-node ONNX model (at the case's opset, old attribute forms included), runs it
in onnxruntime and compares with the kernel called directly, the way the interpreter calls it.
Where onnxruntime rejects a case or departs from the ONNX spec, the comparison is with
onnx.reference.ReferenceEvaluator instead (`oracle="ref"`), with the reason in a comment; where
neither can run a case, the expected values are written out by hand.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from deepcompress_cli.errors import DczError
from deepcompress_cli.interp.ops import KERNELS, OpContext
# Importing the kernel modules registers their ops in KERNELS.
from deepcompress_cli.interp.ops import cast, elementwise, resize, shape as shape_ops  # noqa: F401

RNG = np.random.default_rng(0)
F32, I64 = np.float32, np.int64
TP = onnx.TensorProto


def randn(*shape, dtype=F32):
    return np.asarray(RNG.standard_normal(shape), dtype=dtype)


def ints64(*values):
    return np.array(values, dtype=I64)


# ------------------------------------------------------------------------------ harness


def attr_values(node) -> dict:
    """A NodeProto's attributes as Python values, as the interpreter passes them to kernels
    (strings stay the bytes protobuf gives; test_string_attributes_as_str covers str)."""
    def value(attr):
        v = helper.get_attribute_value(attr)
        return numpy_helper.to_array(v) if attr.type == onnx.AttributeProto.TENSOR else v
    return {a.name: value(a) for a in node.attribute}


def one_node_model(op_type, inputs, attrs, opset, n_out):
    names = [f"x{i}" if a is not None else "" for i, a in enumerate(inputs)]
    node = helper.make_node(op_type, names, [f"y{i}" for i in range(n_out)], **attrs)
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                    for n, a in zip(names, inputs) if a is not None]
    outputs = [helper.make_empty_tensor_value_info(o) for o in node.output]
    graph = helper.make_graph([node], "case", graph_inputs, outputs)
    opset_id = helper.make_opsetid("", opset)
    model = helper.make_model(graph, opset_imports=[opset_id],
                              ir_version=helper.find_min_ir_version_for([opset_id]))
    feeds = {n: a for n, a in zip(names, inputs) if a is not None}
    return model, node, feeds


def run_oracle(model, feeds, oracle):
    if oracle == "ref":
        from onnx.reference import ReferenceEvaluator

        return [np.asarray(o) for o in ReferenceEvaluator(model).run(None, feeds)]
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_same(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    if got.dtype.kind in "fc":
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, want)


def check(op_type, inputs, attrs=None, opset=17, n_out=1, oracle="ort", ctx_extra=None):
    """Run one node in the oracle and through KERNELS; compare every output."""
    model, node, feeds = one_node_model(op_type, inputs, attrs or {}, opset, n_out)
    want = run_oracle(model, feeds, oracle)
    ctx = OpContext(opset=opset, node_name=op_type)
    for key, val in (ctx_extra or {}).items():
        setattr(ctx, key, val)
    got = KERNELS[op_type](list(inputs), attr_values(node), ctx)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_same(g, w)


def case(op_type, inputs, attrs=None, opset=17, id=None, **kw):
    return pytest.param(op_type, inputs, attrs, opset, kw, id=id or f"{op_type}-{opset}")


def run_case(op_type, inputs, attrs, opset, kw):
    check(op_type, inputs, attrs, opset, **kw)


# ------------------------------------------------------------------------------ elementwise

POS = np.abs(randn(3, 4)) + F32(0.1)
X34 = randn(3, 4)
# Broadcasting corner cases: same shape, scalar/0-d, size-1 dims, different ranks, empty.
BROADCAST = [
    (randn(3, 4), randn(3, 4)),
    (randn(3, 4), np.array(2.5, dtype=F32)),
    (np.array(-1.5, dtype=F32), randn(2, 3)),
    (np.array(3.0, dtype=F32), np.array(-2.0, dtype=F32)),
    (randn(2, 1, 4), randn(3, 1)),
    (randn(4), randn(2, 3, 4)),
    (randn(1, 1), randn(5, 1, 1, 2)),
    (randn(0, 3), randn(1, 3)),
]


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("pair", range(len(BROADCAST)))
def test_arithmetic_broadcast(op_type, pair):
    check(op_type, list(BROADCAST[pair]), opset=14)


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
def test_integer_arithmetic(op_type, dtype):
    # Div truncates toward zero: -7 / 2 = -3, 7 / -2 = -3.
    a = np.array([[7, -7, 7, -7, 0, 9, -9, 100]], dtype=dtype)
    b = np.array([[2], [-2], [3]], dtype=dtype)
    check(op_type, [a, b], opset=13)


@pytest.mark.parametrize("opset", [7, 13])
def test_integer_div_and_float_div_old_opset(opset):
    check("Div", [np.array([-5, 5, -6], dtype=np.int32), np.array(4, dtype=np.int32)], opset=opset)
    check("Div", [randn(2, 3), POS[:2, :3]], opset=opset)


def test_integer_pow():
    check("Pow", [ints64(2, 3, -2, 0), ints64(3, 2, 3, 4)], opset=13)
    check("Pow", [ints64(2, 3, -2, 4), np.array([0.5, 2, 3, 0.5], F32)], opset=13)


@pytest.mark.parametrize("exponent", [np.array(2.0, dtype=F32), randn(3, 4), np.array([3], dtype=I64),
                                      np.array(0.5, dtype=np.float64)])
def test_pow(exponent):
    base = POS if exponent.dtype != I64 else X34
    check("Pow", [base, exponent], opset=15)


UNARY_CASES = [
    case("Sqrt", [POS]), case("Exp", [X34]), case("Log", [POS]), case("Neg", [X34]),
    case("Abs", [X34]), case("Reciprocal", [POS]), case("Relu", [X34]), case("Tanh", [X34]),
    case("Sigmoid", [np.array([-1000, -20, -1, 0, 1, 20, 1000, 3.5], dtype=F32)]),
    case("Erf", [np.linspace(-5, 5, 101, dtype=F32)]),
    case("Floor", [X34 * 3]), case("Ceil", [X34 * 3]),
    case("Round", [np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4, 2.6, -2.6], dtype=F32)], opset=11),
    case("Sign", [np.array([-3.0, 0.0, 2.0], dtype=F32)], opset=13),
    case("Sign", [np.array([-3, 0, 2], dtype=I64)], opset=13, id="Sign-int"),
    case("Softplus", [np.array([-100, -5, 0, 5, 100], dtype=F32) + X34[0, 0]]),
    case("Not", [np.array([True, False])]),
    case("Abs", [np.array([-3, 4], dtype=np.int32)], id="Abs-int"),
    case("Neg", [np.array([-3, 4], dtype=np.int64)], id="Neg-int"),
    case("Relu", [np.array(-2.0, dtype=F32)], id="Relu-0d", opset=7),
    case("Exp", [np.zeros((0, 3), dtype=F32)], id="Exp-empty"),
    case("Tanh", [randn(2, 3).astype(np.float64)], id="Tanh-f64"),
    case("Identity", [X34]), case("Identity", [ints64(1, 2)], id="Identity-int"),
    case("Dropout", [X34], opset=7), case("Dropout", [X34], opset=13, id="Dropout-13"),
    case("Dropout", [X34, np.array(0.5, F32), np.array(False)], opset=13, id="Dropout-13-inputs"),
    case("LeakyRelu", [X34]), case("LeakyRelu", [X34], {"alpha": 0.3}, opset=7, id="LeakyRelu-alpha"),
    case("PRelu", [randn(2, 3, 4), randn(3, 1)], opset=16),
    case("Elu", [X34]), case("Elu", [X34], {"alpha": 0.5}, id="Elu-alpha"),
    case("HardSigmoid", [X34 * 4]), case("HardSigmoid", [X34], {"alpha": 0.5, "beta": 0.1}, id="HS-attrs"),
    case("HardSwish", [X34 * 4], opset=14),
    case("Gelu", [X34 * 3], opset=20),
    case("Gelu", [X34 * 3], {"approximate": "tanh"}, opset=20, id="Gelu-tanh"),
]


@pytest.mark.parametrize("op_type,inputs,attrs,opset,kw", UNARY_CASES)
def test_unary(op_type, inputs, attrs, opset, kw):
    run_case(op_type, inputs, attrs, opset, kw)


def test_unary_keeps_float32_and_0d():
    y = KERNELS["Sigmoid"]([np.array(0.5, dtype=F32)], {}, OpContext(opset=13))[0]
    assert isinstance(y, np.ndarray) and y.dtype == F32 and y.shape == ()
    y = KERNELS["Gelu"]([np.array([1.0], dtype=F32)], {}, OpContext(opset=20))[0]
    assert y.dtype == F32


def test_erf_matches_math_erf():
    x = np.concatenate([np.linspace(-6, 6, 20001), np.logspace(-12, 1, 500), [0.0, np.inf, -np.inf]])
    got = elementwise._erf(x)
    want = np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert elementwise._erf(np.array(1e-20)) == pytest.approx(2 / math.sqrt(math.pi) * 1e-20, rel=1e-7)


CLIP_X = np.linspace(-3, 3, 13, dtype=F32).reshape(13, 1)
COMPARE_A = np.array([[1.0, 2.0, np.nan, -1.0]], dtype=F32)
COMPARE_B = np.array([[1.0], [3.0]], dtype=F32)
BOOLS = np.array([[True, False, True, False]]), np.array([[True], [False]])
MISC_CASES = [
    # Clip: attributes before opset 11, optional inputs from 11.
    case("Clip", [CLIP_X], {"min": -1.0, "max": 2.0}, opset=7, id="Clip-6"),
    case("Clip", [CLIP_X], {"max": 0.5}, opset=10, id="Clip-6-max-only"),
    case("Clip", [CLIP_X], {}, opset=7, id="Clip-6-none"),
    case("Clip", [CLIP_X, np.array(-1, F32), np.array(2, F32)], opset=11),
    case("Clip", [CLIP_X, None, np.array(0.5, F32)], opset=12, id="Clip-12-max-only"),
    case("Clip", [CLIP_X, np.array(0.5, F32)], opset=13, id="Clip-13-min-only"),
    case("Clip", [CLIP_X], opset=13, id="Clip-13-none"),
    case("Clip", [CLIP_X, np.array(2, F32), np.array(1, F32)], opset=13, id="Clip-min-gt-max"),
    case("Clip", [ints64(-5, 0, 5, 9), ints64(0), ints64(6)], opset=13, id="Clip-int"),
    # Comparisons and logic broadcast too.
    case("Equal", [COMPARE_A, COMPARE_B], opset=11), case("Greater", [COMPARE_A, COMPARE_B], opset=9),
    case("Less", [COMPARE_A, COMPARE_B], opset=9),
    case("GreaterOrEqual", [COMPARE_A, COMPARE_B], opset=16),
    case("LessOrEqual", [COMPARE_A, COMPARE_B], opset=16),
    case("Equal", [ints64(1, 2, 3), np.array(2, I64)], opset=13, id="Equal-int"),
    case("And", list(BOOLS), opset=7), case("Or", list(BOOLS), opset=7), case("Xor", list(BOOLS), opset=7),
    case("Where", [np.array([[True], [False]]), randn(2, 3), np.array(0.0, F32)], opset=16),
    case("Where", [np.array(True), ints64(1, 2), ints64(3, 4)], opset=9, id="Where-int"),
    # Variadic, with broadcasting among the inputs.
    case("Max", [randn(2, 3), randn(3), np.array(0.1, F32)], opset=13),
    case("Min", [randn(2, 3), randn(1, 3)], opset=8),
    case("Max", [randn(2, 3)], opset=13, id="Max-one-input"),
    case("Sum", [randn(2, 3), randn(3), randn(2, 1)], opset=13),
    case("Mean", [randn(2, 3), randn(3), randn(2, 1)], opset=13),
    case("Max", [ints64(1, 5), ints64(3, 2)], opset=13, id="Max-int"),
    # Cast and CastLike.
    case("Cast", [np.array([-2.7, -0.5, 0.0, 0.5, 2.7, 300.0], F32)], {"to": TP.INT32}, opset=13),
    case("Cast", [np.array([0.5, 2.7, 255.0], F32)], {"to": TP.UINT8}, opset=13, id="Cast-uint8"),
    case("Cast", [ints64(-1, 300)], {"to": TP.INT8}, opset=13, id="Cast-int-wraps"),
    case("Cast", [np.array([-2.7, 0.0, 2.7], F32)], {"to": TP.BOOL}, opset=13, id="Cast-bool"),
    case("Cast", [ints64(1, -2, 3)], {"to": TP.FLOAT}, opset=7, id="Cast-6-float"),
    case("Cast", [X34], {"to": TP.FLOAT16}, opset=19, id="Cast-fp16"),
    case("Cast", [X34], {"to": TP.DOUBLE}, opset=21, id="Cast-double"),
    case("Cast", [np.array([True, False])], {"to": TP.INT64}, opset=13, id="Cast-bool-int"),
    case("CastLike", [X34, np.array([1], np.int64)], opset=15),
]


@pytest.mark.parametrize("op_type,inputs,attrs,opset,kw", MISC_CASES)
def test_elementwise_misc(op_type, inputs, attrs, opset, kw):
    run_case(op_type, inputs, attrs, opset, kw)


def test_cast_unsupported_target_is_dcz_error():
    with pytest.raises(DczError, match="Cast"):
        KERNELS["Cast"]([X34], {"to": TP.STRING}, OpContext(opset=13))


# ------------------------------------------------------------------------------ shape ops

X234 = randn(2, 3, 4)
X2345 = randn(2, 3, 4, 5)
SHAPE_CASES = [
    case("Reshape", [X234, ints64(4, -1)], opset=13),
    case("Reshape", [X234, ints64(0, 0, 2, 2)], opset=13, id="Reshape-copy-zero"),
    case("Reshape", [X234, ints64(0, -1)], opset=14, id="Reshape-zero-minus-one"),
    case("Reshape", [np.zeros((0, 3), F32), ints64(3, 0)], {"allowzero": 1}, opset=14,
         id="Reshape-allowzero"),
    case("Reshape", [np.array(5.0, F32), ints64(1, 1)], opset=13, id="Reshape-from-0d"),
    case("Reshape", [np.ones((1, 1), F32), np.zeros(0, I64)], opset=13, id="Reshape-to-0d"),
    case("Flatten", [X2345], opset=13), case("Flatten", [X2345], {"axis": 0}, opset=9, id="Flatten-0"),
    case("Flatten", [X2345], {"axis": -2}, opset=13, id="Flatten-neg"),
    case("Flatten", [X2345], {"axis": 4}, opset=13, id="Flatten-rank"),
    case("Transpose", [X234]), case("Transpose", [X2345], {"perm": [0, 2, 3, 1]}, id="Transpose-perm"),
    case("Squeeze", [randn(1, 3, 1, 2)], {"axes": [0, -2]}, opset=11, id="Squeeze-11-attr"),
    case("Squeeze", [randn(1, 3, 1, 2)], opset=11, id="Squeeze-11-all"),
    case("Squeeze", [randn(1, 3, 1, 2), ints64(-2)], opset=13, id="Squeeze-13-input"),
    case("Squeeze", [randn(1, 3, 1, 2)], opset=13, id="Squeeze-13-all"),
    case("Squeeze", [np.ones((1,), F32), ints64(0)], opset=13, id="Squeeze-to-0d"),
    case("Squeeze", [randn(1, 3, 1), np.zeros(0, I64)], opset=13, id="Squeeze-13-empty-axes"),
    case("Unsqueeze", [X234], {"axes": [0, 4]}, opset=11, id="Unsqueeze-11-attr"),
    case("Unsqueeze", [X234, ints64(-1, 1)], opset=13, id="Unsqueeze-13-neg"),
    case("Unsqueeze", [np.array(2.0, F32), ints64(0)], opset=13, id="Unsqueeze-0d"),
    case("Unsqueeze", [X234], {"axes": [-5, -1]}, opset=11, id="Unsqueeze-11-neg"),
    case("Concat", [randn(2, 3), randn(2, 1), randn(2, 0)], {"axis": -1}, opset=13),
    case("Concat", [randn(2, 3), randn(4, 3)], {"axis": 0}, opset=7, id="Concat-7"),
    case("Concat", [ints64(1, 2), ints64(3)], {"axis": 0}, opset=13, id="Concat-int"),
    case("Split", [randn(6, 4)], {"axis": 0, "split": [1, 2, 3]}, opset=11, n_out=3, id="Split-11-attr"),
    case("Split", [randn(4, 6), ints64(4, 2)], {"axis": -1}, opset=13, n_out=2, id="Split-13-input"),
    case("Split", [randn(7, 2)], {"num_outputs": 3}, opset=18, n_out=3, id="Split-18-uneven"),
    case("Split", [randn(6, 2)], {"num_outputs": 2}, opset=18, n_out=2, id="Split-18-even"),
    case("Split", [randn(6, 2), ints64(0, 6)], opset=13, n_out=2, id="Split-empty-part"),
    case("Split", [randn(2, 6)], {"axis": 1}, opset=11, n_out=3, ctx_extra={"num_outputs": 3},
         id="Split-11-equal"),
    case("Split", [randn(2, 6)], {"axis": 1}, opset=13, n_out=2, ctx_extra={"num_outputs": 2},
         id="Split-13-equal"),
    case("Gather", [X234, ints64(2, 0, -1)], {"axis": 1}, opset=13),
    case("Gather", [randn(0, 3), np.zeros((2, 0), I64)], opset=13, id="Gather-empty"),
    case("Flatten", [randn(2, 0, 3)], opset=13, id="Flatten-empty"),
    case("Concat", [np.zeros((0, 3), F32), randn(2, 3)], {"axis": 0}, opset=13, id="Concat-empty"),
    case("Gather", [X234, np.array(-1, I64)], opset=11, id="Gather-0d-index"),
    case("Gather", [X234, np.array([[0, 1], [-1, -2]], np.int32)], {"axis": -1}, opset=13,
         id="Gather-2d-neg"),
    case("GatherElements", [X234, np.array([[[0, 2, -1, 1]]], I64)], {"axis": 1}, opset=13),
    case("Shape", [X2345], opset=13),
    case("Shape", [X2345], {"start": 1}, opset=15, id="Shape-start"),
    case("Shape", [X2345], {"start": -3, "end": -1}, opset=15, id="Shape-neg"),
    case("Shape", [X2345], {"start": -10, "end": 10}, opset=19, id="Shape-clamped"),
    case("Shape", [np.array(1.0, F32)], opset=13, id="Shape-0d"),
    case("Size", [X2345], opset=13), case("Size", [np.zeros((0, 3), F32)], opset=13, id="Size-empty"),
    case("Expand", [randn(3, 1), ints64(2, 1, 4)], opset=13),
    case("Expand", [randn(2, 3), ints64(1, 1)], opset=13, id="Expand-smaller-shape"),
    case("Expand", [np.array(7, I64), ints64(2, 2)], opset=8, id="Expand-0d"),
    case("Tile", [randn(2, 3), ints64(2, 1)], opset=13),
    case("Tile", [ints64(1, 2), ints64(0)], opset=7, id="Tile-zero"),
    case("Range", [np.array(1, I64), np.array(10, I64), np.array(3, I64)], opset=11),
    case("Range", [np.array(10, I64), np.array(1, I64), np.array(-3, I64)], opset=11, id="Range-neg"),
    case("Range", [np.array(0.5, F32), np.array(3.1, F32), np.array(0.3, F32)], opset=11, id="Range-float"),
    case("Range", [np.array(1, F32), np.array(-2, F32), np.array(-0.1, F32)], opset=11, id="Range-float-neg"),
    case("Range", [np.array(5, np.int32), np.array(1, np.int32), np.array(1, np.int32)], opset=11,
         id="Range-empty"),
    case("ArgMax", [np.array([[1, 3, 3, 0], [2, 2, 1, 2]], F32)], {"axis": 1}, opset=13),
    case("ArgMax", [np.array([[1, 3, 3, 0], [2, 2, 1, 2]], F32)],
         {"axis": -1, "keepdims": 0, "select_last_index": 1}, opset=13, id="ArgMax-last"),
    case("ArgMax", [X234], {"keepdims": 0}, opset=11, id="ArgMax-axis0"),
    case("ArgMin", [np.array([[1, 0, 0, 3]], I64)], {"axis": 1, "select_last_index": 1}, opset=12),
    case("ArgMin", [X234], {"axis": -2}, opset=13, id="ArgMin-neg"),
]


@pytest.mark.parametrize("op_type,inputs,attrs,opset,kw", SHAPE_CASES)
def test_shape_ops(op_type, inputs, attrs, opset, kw):
    run_case(op_type, inputs, attrs, opset, kw)


def test_split_equal_uses_the_output_count():
    halves = KERNELS["Split"]([np.arange(4.0)], {}, OpContext(opset=13, num_outputs=2))
    assert [h.tolist() for h in halves] == [[0.0, 1.0], [2.0, 3.0]]


INT_MAX, INT_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min
X567 = randn(5, 6, 7)
SLICES = [  # (starts, ends, axes, steps)
    ([1, 0], [4, 3], [0, 1], [1, 1]),
    ([-1], [INT_MIN], [1], [-1]),                 # reverse an axis
    ([0], [INT_MAX], [-1], [2]),                  # to the end by 2, negative axis
    ([-100, 2], [100, -1], [0, 2], [1, 1]),       # clamped
    ([4, 5], [-100, 0], [0, 1], [-2, -3]),        # negative steps clamp at -1
    ([10], [20], [2], [1]),                       # empty
    ([3], [1], [0], [1]),                         # start > end: empty
    ([-2], [-1], [2], [-1]),                      # negative step, start < end: empty
    ([2, 1, 0], [3, 5, 7], None, None),           # axes and steps omitted
    ([5], [-7], [0], [-1]),                       # start clamps to dim - 1
    ([INT_MAX, 1], [INT_MIN, INT_MAX], [-3, 1], [-1, INT_MAX]),  # sentinels everywhere
    # An INT_MAX end stepping backward runs through index 0 (numpy's None), as onnxruntime reads
    # it; the reference evaluator clamps it to dim - 1 and returns nothing.
    ([3, -1], [INT_MAX, 2**31 - 1], [0, 2], [-1, -2]),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
def test_slice_inputs(starts, ends, axes, steps):
    inputs = [X567, ints64(*starts), ints64(*ends)]
    if axes is not None:
        inputs.append(ints64(*axes))
    if steps is not None:
        inputs.append(ints64(*steps))
    check("Slice", inputs, opset=13)


@pytest.mark.parametrize("starts,ends,axes", [([1], [-1], [1]), ([0, -3], [2, INT_MAX], None),
                                              ([-100], [100], [2])])
def test_slice_attributes_opset_9(starts, ends, axes):
    attrs = {"starts": starts, "ends": ends} | ({"axes": axes} if axes else {})
    check("Slice", [X567], attrs, opset=9)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_slice_fuzz(data):
    shape = data.draw(st.lists(st.integers(0, 5), min_size=1, max_size=3))
    k = data.draw(st.integers(1, len(shape)))
    axes = data.draw(st.permutations(range(len(shape))))[:k]
    axes = [a - len(shape) if data.draw(st.booleans()) else a for a in axes]
    bound = st.sampled_from([INT_MIN, -7, -3, -1, 0, 1, 2, 4, 7, 2**31 - 1, INT_MAX])
    starts = data.draw(st.lists(bound, min_size=k, max_size=k))
    ends = data.draw(st.lists(bound, min_size=k, max_size=k))
    steps = data.draw(st.lists(st.sampled_from([-3, -2, -1, 1, 2, 3, INT_MAX]), min_size=k, max_size=k))
    x = np.arange(math.prod(shape), dtype=F32).reshape(shape)
    check("Slice", [x, ints64(*starts), ints64(*ends), ints64(*axes), ints64(*steps)], opset=13)


def test_slice_empty_input():
    empty = np.zeros((0, 3), F32)
    check("Slice", [empty, ints64(0, 2), ints64(5, 0), ints64(0, 1), ints64(-1, -1)], opset=13)


def test_slice_int32_indices_and_opset_10():
    check("Slice", [X567, np.array([1], np.int32), np.array([-1], np.int32), np.array([0], np.int32),
                    np.array([2], np.int32)], opset=10)


def test_slice_zero_step_is_dcz_error():
    with pytest.raises(DczError, match="Slice"):
        KERNELS["Slice"]([X567, ints64(0), ints64(2), ints64(0), ints64(0)], {}, OpContext(opset=13))


CONSTANT_CASES = [
    case("Constant", [], {"value": numpy_helper.from_array(randn(2, 3))}, opset=9),
    case("Constant", [], {"value": numpy_helper.from_array(ints64(1, 2))}, opset=13, id="Constant-int"),
    case("Constant", [], {"value_float": 2.5}, opset=13, id="Constant-float"),
    case("Constant", [], {"value_floats": [1.0, 2.0]}, opset=13, id="Constant-floats"),
    case("Constant", [], {"value_int": 7}, opset=13, id="Constant-int-attr"),
    case("Constant", [], {"value_ints": [7, 8]}, opset=13, id="Constant-ints"),
    case("Constant", [], {"value_strings": ["a", "bc"]}, opset=13, id="Constant-strings"),
    case("Constant", [], {"value_string": "hi"}, opset=13, id="Constant-string"),
    case("ConstantOfShape", [ints64(2, 3)], opset=9),
    case("ConstantOfShape", [ints64(2, 3)], {"value": numpy_helper.from_array(np.array([5], I64))},
         opset=13, id="ConstantOfShape-int"),
    case("ConstantOfShape", [ints64(0, 3)],
         {"value": numpy_helper.from_array(np.array([1.5], F32))}, opset=13, id="ConstantOfShape-empty"),
    case("ConstantOfShape", [np.zeros(0, I64)],
         {"value": numpy_helper.from_array(np.array([1.5], F32))}, opset=13, id="ConstantOfShape-scalar"),
]


@pytest.mark.parametrize("op_type,inputs,attrs,opset,kw", CONSTANT_CASES)
def test_constants(op_type, inputs, attrs, opset, kw):
    run_case(op_type, inputs, attrs, opset, kw)


def test_constant_empty_list_and_sparse():
    # onnx.helper cannot build an empty FLOATS attribute from a list; the kernel is called directly.
    y = KERNELS["Constant"]([], {"value_floats": []}, OpContext(opset=13))[0]
    assert y.dtype == F32 and y.shape == (0,)
    with pytest.raises(DczError, match="Constant"):
        KERNELS["Constant"]([], {"sparse_value": object()}, OpContext(opset=13))


# ------------------------------------------------------------------------------ Pad

X45 = randn(4, 5)
PAD_CASES = [
    case("Pad", [X45], {"pads": [1, 2, 0, 1]}, opset=7, id="Pad-2-constant"),
    case("Pad", [X45], {"pads": [1, 2, 0, 1], "value": 1.5}, opset=10, id="Pad-2-value"),
    case("Pad", [X45], {"pads": [1, 2, 2, 1], "mode": "reflect"}, opset=7, id="Pad-2-reflect"),
    case("Pad", [X45], {"pads": [0, 3, 2, 0], "mode": "edge"}, opset=10, id="Pad-2-edge"),
    case("Pad", [X45, ints64(1, 2, 0, 1)], opset=11),
    case("Pad", [X45, ints64(1, 2, 0, 1), np.array(-2.0, F32)], opset=13, id="Pad-13-value"),
    case("Pad", [X45, ints64(2, 1, 1, 3)], {"mode": "reflect"}, opset=13, id="Pad-13-reflect"),
    case("Pad", [X45, ints64(2, 1, 1, 3)], {"mode": "edge"}, opset=13, id="Pad-13-edge"),
    case("Pad", [X45, ints64(-1, 2, 0, -2)], opset=13, id="Pad-negative"),
    case("Pad", [X234, ints64(1, 2), np.array(3.0, F32), ints64(-1)], opset=18, id="Pad-18-axes"),
    case("Pad", [X234, ints64(1, 0, 1, 3), None, ints64(0, 2)], {"mode": "reflect"}, opset=18,
         id="Pad-18-axes-reflect"),
    case("Pad", [X45, ints64(2, 1, 1, 3)], {"mode": "wrap"}, opset=19, id="Pad-19-wrap"),
    case("Pad", [ints64(1, 2, 3), ints64(1, 1), np.array(9, I64)], opset=13, id="Pad-int"),
]


@pytest.mark.parametrize("op_type,inputs,attrs,opset,kw", PAD_CASES)
def test_pad(op_type, inputs, attrs, opset, kw):
    run_case(op_type, inputs, attrs, opset, kw)


def test_string_attributes_as_str():
    ctx = OpContext(opset=13)
    pads = ints64(1, 2, 2, 1)
    for mode in ("reflect", "edge"):
        want = KERNELS["Pad"]([X45, pads], {"mode": mode.encode()}, ctx)[0]
        np.testing.assert_array_equal(KERNELS["Pad"]([X45, pads], {"mode": mode}, ctx)[0], want)
    attrs = {"mode": "linear", "coordinate_transformation_mode": "align_corners"}
    want = KERNELS["Resize"]([IMG, None, SCALES_UP], {k: v.encode() for k, v in attrs.items()}, ctx)[0]
    np.testing.assert_array_equal(KERNELS["Resize"]([IMG, None, SCALES_UP], attrs, ctx)[0], want)
    y = KERNELS["Constant"]([], {"value_strings": ["a", "bc"]}, ctx)[0]
    assert y.tolist() == ["a", "bc"]


def test_pad_unknown_mode_is_dcz_error():
    with pytest.raises(DczError, match="Pad"):
        KERNELS["Pad"]([X45, ints64(1, 1, 1, 1)], {"mode": "mirror"}, OpContext(opset=13))


# ------------------------------------------------------------------------------ reductions

REDUCE_OPS = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSumExp"]
INPUT_SINCE = {"ReduceSum": 13}


def reduce_case(op_type, axes, keepdims, opset, noop=None):
    attrs = {"keepdims": keepdims} if keepdims is not None else {}
    inputs = [X234]
    if opset >= INPUT_SINCE.get(op_type, 18):
        if axes is not None:
            inputs.append(ints64(*axes))
        if noop is not None:
            attrs["noop_with_empty_axes"] = noop
    elif axes is not None:
        attrs["axes"] = axes
    return inputs, attrs


@pytest.mark.parametrize("op_type", REDUCE_OPS)
@pytest.mark.parametrize("axes,keepdims,opset", [
    ([1], None, 13), ([0, -1], 0, 11), (None, 1, 13), (None, 0, 11),
    ([-2], 0, 18), ([0, 2], None, 18), (None, 0, 18),
])
def test_reductions(op_type, axes, keepdims, opset):
    inputs, attrs = reduce_case(op_type, axes, keepdims, opset)
    check(op_type, inputs, attrs, opset=opset)


@pytest.mark.parametrize("op_type,opset", [("ReduceSum", 13), ("ReduceMean", 18), ("ReduceMax", 18)])
def test_reductions_noop_with_empty_axes(op_type, opset):
    check(op_type, [X234, np.zeros(0, I64)], {"noop_with_empty_axes": 1}, opset=opset)
    check(op_type, [X234, np.zeros(0, I64)], {"noop_with_empty_axes": 0, "keepdims": 0}, opset=opset)


@pytest.mark.parametrize("op_type", REDUCE_OPS)
def test_reductions_over_empty_axis(op_type):
    # Opset 18 defines empty reductions as the identity element (-inf for Max, 1 for Prod, ...).
    check(op_type, [np.zeros((0, 3), F32), ints64(0)], opset=18)


def test_reduce_int_keeps_dtype():
    check("ReduceSum", [np.arange(12, dtype=np.int32).reshape(3, 4)], {"axes": [1]}, opset=11)
    check("ReduceMax", [np.arange(12, dtype=I64).reshape(3, 4)], {"keepdims": 0}, opset=13)


# ------------------------------------------------------------------------------ Resize / Upsample

IMG = randn(1, 2, 4, 5)
SMALL = randn(2, 1, 3, 3)
SCALES_UP = np.array([1, 1, 2, 1.5], F32)
SCALES_DOWN = np.array([1, 1, 0.5, 0.7], F32)
SCALES_ODD = np.array([1, 1, 1.7, 2.3], F32)
SIZES = ints64(1, 2, 7, 3)
EMPTY_F = np.zeros(0, F32)
COORDS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
          "half_pixel_symmetric"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


def resize_inputs(opset, scales=None, sizes=None, x=IMG):
    if opset < 13:  # opset 11-12: roi and scales are required inputs; empty tensors mean "absent"
        scales = EMPTY_F if scales is None else scales
        return [x, EMPTY_F, scales] + ([sizes] if sizes is not None else [])
    return [x, None, scales] + ([sizes] if sizes is not None else [])


@pytest.mark.parametrize("target", ["up", "down", "odd", "sizes"])
@pytest.mark.parametrize("mode,coord", [("nearest", c) for c in COORDS] +
                         [("linear", c) for c in COORDS if c != "tf_half_pixel_for_nn"])
def test_resize_modes(mode, coord, target):
    opset = 19 if coord == "half_pixel_symmetric" else 13
    scales = {"up": SCALES_UP, "down": SCALES_DOWN, "odd": SCALES_ODD}.get(target)
    inputs = resize_inputs(opset, scales, SIZES if target == "sizes" else None)
    # align_corners divides by in * scale - 1 (the spec's length_resized, unrounded: the reference
    # and the node tests); onnxruntime by the rounded output length - 1.
    oracle = "ref" if coord == "align_corners" and target != "sizes" else "ort"
    check("Resize", inputs, {"mode": mode, "coordinate_transformation_mode": coord}, opset=opset, oracle=oracle)


@pytest.mark.parametrize("nearest_mode", NEAREST)
@pytest.mark.parametrize("coord", ["half_pixel", "asymmetric", "align_corners"])
@pytest.mark.parametrize("opset", [11, 18])
def test_resize_nearest_modes(nearest_mode, coord, opset):
    attrs = {"mode": "nearest", "coordinate_transformation_mode": coord, "nearest_mode": nearest_mode}
    # align_corners with a fractional in * scale: see test_resize_modes.
    check("Resize", resize_inputs(opset, SCALES_ODD), attrs, opset=opset,
          oracle="ref" if coord == "align_corners" else "ort")
    check("Resize", resize_inputs(opset, None, ints64(1, 2, 3, 9)), attrs, opset=opset)


@pytest.mark.parametrize("n_in,n_out,coord,nearest_mode", [
    (7, 2, "asymmetric", "round_prefer_ceil"),     # 1 / (2/7)f = 3.4999998: a tie in exact math
    (7, 38, "asymmetric", "round_prefer_floor"),
    (20, 6, "half_pixel", "round_prefer_ceil"),    # 14.5 (onnxruntime issue 28291)
    (14, 19, "pytorch_half_pixel", "round_prefer_floor"),
    (9, 3, "half_pixel_symmetric", "floor"),
    (3, 11, "half_pixel_symmetric", "floor"),
])
def test_resize_nearest_ties_from_sizes(n_in, n_out, coord, nearest_mode):
    x = np.arange(n_in, dtype=F32).reshape(1, n_in)
    attrs = {"coordinate_transformation_mode": coord, "nearest_mode": nearest_mode}
    check("Resize", [x, None, None, ints64(1, n_out)], attrs, opset=19)


@pytest.mark.parametrize("nearest_mode", ["ceil", "round_prefer_ceil", "floor"])
def test_resize_tf_half_pixel_for_nn(nearest_mode):
    # 2-D, every axis resized: onnxruntime skips the coordinate transform on unscaled axes, where
    # the spec's (x + 0.5) / 1 would round up to the next row under the ceil modes.
    attrs = {"coordinate_transformation_mode": "tf_half_pixel_for_nn", "nearest_mode": nearest_mode}
    check("Resize", [randn(5, 7), EMPTY_F, np.array([1.6, 0.6], F32)], attrs, opset=11)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_same_shape_follows_the_spec(mode):
    # 3x3 * 1.1 is still 3x3: onnxruntime copies the input, the spec (and the reference
    # evaluator) still samples at x / 1.1.
    x = randn(1, 1, 3, 3)
    check("Resize", resize_inputs(13, np.array([1, 1, 1.2, 1.3], F32), x=x),
          {"mode": mode, "coordinate_transformation_mode": "asymmetric"}, opset=13, oracle="ref")


def test_upsample_same_shape_by_hand():
    # The reference evaluator has no Resize-10 / fractional Upsample: x / 1.1 floored is [0, 0, 1].
    x = np.arange(3, dtype=F32).reshape(1, 3)
    y = KERNELS["Upsample"]([x, np.array([1, 1.1], F32)], {"mode": "nearest"}, OpContext(opset=9))[0]
    np.testing.assert_array_equal(y, [[0, 0, 1]])
    y = KERNELS["Resize"]([x, np.array([1, 1.1], F32)], {"mode": "linear"}, OpContext(opset=10))[0]
    np.testing.assert_allclose(y, [[0, 1 / 1.1, 2 / 1.1]], rtol=1e-6)


def test_resize_tf_crop_and_resize_on_an_unresized_axis():
    # The roi crops an axis whose size does not change: onnxruntime ignores the roi there (it
    # skips axes of scale 1); the spec and the reference evaluator crop.
    roi = np.array([0, 0, 0.25, 0.1, 1, 1, 0.75, 0.8], F32)
    attrs = {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"}
    check("Resize", [IMG, roi, None, ints64(1, 2, 4, 7)], attrs, opset=13, oracle="ref")


def test_resize_defaults_and_float32_size_product():
    # 10 * 0.7f rounds to 7 in float32 (6 in float64): onnxruntime gives 7 rows.
    x = randn(1, 1, 10, 10)
    check("Resize", resize_inputs(13, np.array([1, 1, 0.7, 0.7], F32), x=x), opset=13)
    check("Resize", resize_inputs(13, np.array([1, 1, 0.7, 0.7], F32), x=x), {"mode": "linear"}, opset=13)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_opset_10(mode):
    check("Resize", [IMG, SCALES_UP], {"mode": mode}, opset=10)
    check("Resize", [IMG, np.array([1, 1, 0.5, 0.5], F32)], {"mode": mode}, opset=10)


def test_resize_3d_and_1d_outer_scaled_nearest():
    # Nearest may scale any axis, outer ones included.
    check("Resize", resize_inputs(13, np.array([2, 1, 1.5], F32), x=randn(2, 3, 4)), opset=13)
    check("Resize", resize_inputs(13, None, ints64(2, 2, 3, 4), x=SMALL), opset=13)


def test_resize_trilinear_5d():
    x = randn(1, 1, 3, 4, 2)
    check("Resize", resize_inputs(13, np.array([1, 1, 2, 0.5, 1.5], F32), x=x), {"mode": "linear"}, opset=13)


def test_resize_linear_outer_axes_against_reference():
    # onnxruntime only runs 'linear' on 2-D inputs or with the outer two scales 1; the spec (and
    # the reference evaluator) interpolate every axis.
    check("Resize", resize_inputs(13, np.array([2, 1.5, 0.5], F32), x=randn(2, 3, 4)),
          {"mode": "linear"}, opset=13, oracle="ref")


@pytest.mark.parametrize("coord", ["pytorch_half_pixel", "align_corners", "half_pixel"])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_to_length_one(coord, mode):
    # Output length 1: pytorch_half_pixel and align_corners sample index 0.
    attrs = {"mode": mode, "coordinate_transformation_mode": coord}
    check("Resize", resize_inputs(13, None, ints64(1, 2, 1, 3)), attrs, opset=13)


def test_resize_int_input_nearest():
    x = np.arange(20, dtype=np.uint8).reshape(1, 1, 4, 5)
    check("Resize", resize_inputs(13, SCALES_ODD, x=x), opset=13)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_tf_crop_and_resize(mode):
    roi = np.array([0, 0, 0.2, -0.1, 1, 1, 0.9, 1.3], F32)
    attrs = {"mode": mode, "coordinate_transformation_mode": "tf_crop_and_resize",
             "extrapolation_value": -7.0}
    check("Resize", [IMG, roi, None, ints64(1, 2, 5, 6)], attrs, opset=13)


@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_18_axes_and_aspect_policy(policy, mode):
    attrs = {"mode": mode, "axes": [2, 3], "keep_aspect_ratio_policy": policy}
    check("Resize", [IMG, None, None, ints64(8, 6)], attrs, opset=18)
    check("Resize", [IMG, None, np.array([1.5, 0.6], F32)], {"mode": mode, "axes": [-1, -2]}, opset=18)


def test_resize_unsupported_is_dcz_error():
    with pytest.raises(DczError, match="bicubic"):
        KERNELS["Resize"](resize_inputs(13, SCALES_UP), {"mode": "bicubic"}, OpContext(opset=13))
    with pytest.raises(DczError, match="cubic"):  # Resize-10 and Upsample: nearest and linear only
        KERNELS["Resize"]([IMG, SCALES_UP], {"mode": "cubic"}, OpContext(opset=10))


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 2, 3], [1, 1, 1.5, 2.5]])
def test_upsample(mode, scales):
    check("Upsample", [IMG, np.array(scales, F32)], {"mode": mode}, opset=9)
    check("Upsample", [IMG], {"mode": mode, "scales": [float(s) for s in scales]}, opset=7)
    check("Upsample", [SMALL], {"mode": mode, "scales": [float(s) for s in scales]}, opset=8)


def test_resize_10_downscale_nearest_ceils():
    # Resize-10 (and onnxruntime's Upsample, which rejects scales < 1) ceils when downscaling.
    check("Resize", [randn(1, 1, 7, 9), np.array([1, 1, 0.6, 0.7], F32)], {"mode": "nearest"}, opset=10)
