"""Backward rules of elementwise math, activations and reductions against finite differences of
the interpreter's own forward kernels; and a transformer-like block's gradients through Network."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from deepcompress_cli.interp.ops import KERNELS, OpContext
from deepcompress_cli.onnx_io import from_onnx
from deepcompress_cli.train.grads import GRADS
from deepcompress_cli.train.network import Network
from test_network_gradients import entrywise_check
from test_train_grads import check_gradient

R = np.random.default_rng(7)


def rand(*shape):
    return R.standard_normal(shape).astype(np.float32)


def away_from(kinks, *shape, margin=0.1):
    """Random values at least `margin` from each kink, so central differences stay on one side."""
    x = rand(*shape) * 2
    for k in kinks:
        near = np.abs(x - k) < margin
        x = np.where(near, k + np.where(x >= k, margin, -margin) * 2, x)
    return x.astype(np.float32)


def positive(*shape):
    return (np.abs(rand(*shape)) + 0.5).astype(np.float32)


def distinct(*shape):
    return (R.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 1).astype(np.float32)


def check(op, inputs, attrs=None, wrt=None, opset=17, **kwargs):
    """check_gradient, then every entry of the gradients against float64 central differences to
    1e-5 (its 2e-2 absolute slack would let a 10% error through on, say, a mean of 8 elements)."""
    check_gradient(op, inputs, attrs, wrt=wrt, opset=opset, **kwargs)
    attrs = attrs or {}
    inputs = [x if x is None or np.asarray(x).dtype.kind != "f" else np.asarray(x, np.float64) for x in inputs]
    wrt = [i for i, x in enumerate(inputs) if x is not None and x.dtype == np.float64] if wrt is None else wrt

    def forward(xs):
        return KERNELS[op](xs, attrs, OpContext(opset))[0]

    y = forward(inputs)
    r = np.random.default_rng(0).standard_normal(y.shape)
    grads = GRADS[op](inputs, y, attrs, r, [i in wrt for i in range(len(inputs))], opset)
    for i in wrt:
        numeric = np.empty(inputs[i].shape)
        for j in range(inputs[i].size):
            plus, minus = list(inputs), list(inputs)
            plus[i], minus[i] = inputs[i].copy(), inputs[i].copy()
            plus[i].flat[j] += 1e-6
            minus[i].flat[j] -= 1e-6
            numeric.flat[j] = np.sum((forward(plus) - forward(minus)) * r) / 2e-6
        np.testing.assert_allclose(grads[i], numeric, rtol=1e-5, atol=1e-6, err_msg=f"{op} {attrs} input {i}")


# ------------------------------------------------------------------------------ activations


@pytest.mark.parametrize("opset,attrs,bounds", [
    (6, {"min": -0.5, "max": 0.7}, []),
    (6, {}, []),  # default bounds: the float range, everything passes
    (11, {}, [-0.5, 0.7]),
    (11, {}, [0.0, 6.0]),  # ReLU6 as EfficientNet-Lite has it
    (11, {}, [-0.5]),  # min only
    (11, {}, [None, 0.7]),  # max only, min omitted
    (11, {}, [0.5, -0.5]),  # lo > hi: constant hi, no gradient anywhere
])
def test_clip(opset, attrs, bounds):
    x = away_from([-0.5, 0.7, 0.0, 6.0, 0.5], 3, 8) * 2
    inputs = [x] + [None if b is None else np.float32(b) for b in bounds]
    check("Clip", inputs, attrs, wrt=[0], opset=opset, eps=1e-3)
    dx = GRADS["Clip"](inputs, x, attrs, np.ones_like(x), [True] + [False] * len(bounds), opset)
    assert all(d is None for d in dx[1:])


def test_clip_bounds_get_no_gradient_and_mask_is_right():
    x = np.array([-2.0, -0.2, 0.3, 5.0], np.float32)
    dx = GRADS["Clip"]([x, np.float32(-1), np.float32(1)], x, {}, np.ones(4, np.float32), [True, True, True], 13)
    assert dx[0].tolist() == [0, 1, 1, 0] and dx[1] is None and dx[2] is None


@pytest.mark.parametrize("op,attrs,kinks", [
    ("HardSigmoid", {}, [-2.5, 2.5]),
    ("HardSigmoid", {"alpha": 0.5, "beta": 0.3}, [-0.6, 1.4]),
    ("HardSwish", {}, [-3.0, 3.0]),
    ("Elu", {}, [0.0]),
    ("Elu", {"alpha": 0.4}, [0.0]),
    ("Selu", {}, [0.0]),
    ("Selu", {"alpha": 1.2, "gamma": 0.8}, [0.0]),
    ("Celu", {}, [0.0]),
    ("Celu", {"alpha": 2.0}, [0.0]),
    ("Softplus", {}, []),
    ("Mish", {}, []),
    ("Swish", {"alpha": 1.5}, []),
    ("Gelu", {}, []),
    ("Gelu", {"approximate": "tanh"}, []),
    ("Gelu", {"approximate": b"none"}, []),
    ("Abs", {}, [0.0]),
    ("Erf", {}, []),
    ("Exp", {}, []),
    ("Neg", {}, []),
])
def test_unary(op, attrs, kinks):
    check(op, [away_from(kinks, 3, 8) * 2], attrs, opset=20, eps=1e-3)


@pytest.mark.parametrize("op", ["Sqrt", "Log", "Reciprocal"])
def test_unary_positive(op):
    check(op, [positive(3, 8)], eps=1e-3)


def test_reciprocal_negative():
    check("Reciprocal", [-positive(2, 5)], eps=1e-3)


@pytest.mark.parametrize("x_shape,slope_shape", [((2, 3, 4, 4), (3, 1, 1)), ((2, 3, 4), (4,)), ((3, 5), (1,)),
                                                 ((2, 3), (2, 3))])
def test_prelu(x_shape, slope_shape):
    check("PRelu", [away_from([0.0], *x_shape), rand(*slope_shape)], eps=1e-3, points=20)


# ------------------------------------------------------------------------------ Pow, Cast, variadic, Where


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3), ())])
def test_pow(shapes):
    check("Pow", [positive(*shapes[0]), rand(*shapes[1])], eps=1e-3)


def test_pow_negative_base_integer_exponent():
    """x² of negative x: the base's gradient is 2x; the exponent's is taken as 0 (no real log)."""
    x = -positive(2, 3)
    check("Pow", [x, np.float32(2)], wrt=[0], eps=1e-3)
    _, db = GRADS["Pow"]([x, np.float32(2)], x * x, {}, np.ones_like(x), [True, True], 13)
    assert np.all(db == 0)
    da, db = GRADS["Pow"]([x, np.int64(3)], x ** 3, {}, np.ones_like(x), [True, True], 13)
    assert db is None and np.allclose(da, 3 * x * x)


def test_cast():
    x = rand(2, 3)
    check("Cast", [x], {"to": TensorProto.DOUBLE})
    check_gradient("Cast", [x], {"to": TensorProto.FLOAT16}, eps=1e-1)  # too coarse for the sharp check
    assert GRADS["Cast"]([x], x.astype(np.int64), {"to": TensorProto.INT64}, np.ones((2, 3)), [True], 13) == [None]
    i = np.arange(6).reshape(2, 3)
    assert GRADS["Cast"]([i], i.astype(np.float32), {"to": TensorProto.FLOAT}, np.ones((2, 3)), [True], 13) == [None]


@pytest.mark.parametrize("op", ["Sum", "Mean"])
@pytest.mark.parametrize("shapes", [[(3, 4)], [(3, 4), (3, 4)], [(2, 3, 4), (4,), (3, 1)], [(1,), (2, 3), (2, 1)]])
def test_sum_mean(op, shapes):
    check(op, [rand(*s) for s in shapes])


@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("shapes", [[(3, 4)], [(3, 4), (3, 4)], [(2, 3, 4), (4,), (3, 1)], [(2, 1), (1, 3)]])
def test_max_min(op, shapes):
    values = distinct(sum(int(np.prod(s)) for s in shapes))  # no ties between operands
    inputs, start = [], 0
    for s in shapes:
        n = int(np.prod(s))
        inputs.append(values[start:start + n].reshape(s))
        start += n
    check(op, inputs, eps=1e-3, points=24)


def test_max_tie_goes_to_the_first_operand():
    a = np.array([1.0, 2.0], np.float32)
    ga, gb = GRADS["Max"]([a, a.copy()], a, {}, np.ones(2, np.float32), [True, True], 13)
    assert ga.tolist() == [1, 1] and gb.tolist() == [0, 0]


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4), (3, 4)), ((3, 4), (4,), (3, 1)), ((1, 4), (3, 1), ()),
                                    ((2, 1, 4), (3, 4), (2, 3, 1))])
def test_where(shapes):
    cond = R.random(shapes[0]) > 0.5
    inputs = [cond, rand(*shapes[1]), rand(*shapes[2])]
    check("Where", inputs, wrt=[1, 2], points=20)
    assert GRADS["Where"](inputs, np.where(*inputs), {}, np.ones(np.broadcast(*inputs).shape), [False, True, True],
                          13)[0] is None


# ------------------------------------------------------------------------------ softmax


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis,shape", [(13, None, (3, 5)), (13, 1, (2, 4, 3)), (13, 0, (3, 4)),
                                              (13, -2, (2, 3, 4)), (11, None, (2, 3, 4)), (11, 2, (2, 3, 4)),
                                              (11, 0, (2, 3)), (11, -1, (2, 3, 4))])
def test_softmax(op, opset, axis, shape):
    check(op, [rand(*shape)], {} if axis is None else {"axis": axis}, opset=opset, eps=1e-3)


# ------------------------------------------------------------------------------ reductions

REDUCTIONS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"]
AXES_INPUT_SINCE = {"ReduceSum": 13}


@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize("form", ["attribute", "input"])
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([1], 0), ([-1, 0], 1), ([-1, 0], 0), (None, 1), (None, 0)])
def test_reductions(op, form, axes, keepdims):
    since = AXES_INPUT_SINCE.get(op, 18)
    opset = since - 1 if form == "attribute" else since
    x = distinct(2, 3, 4)
    attrs = {"keepdims": keepdims}
    inputs = [x]
    if axes is not None:
        if form == "attribute":
            attrs["axes"] = axes
        else:
            inputs.append(np.array(axes, np.int64))
    check(op, inputs, attrs, wrt=[0], opset=opset, eps=1e-3, points=24)



@pytest.mark.parametrize("op", REDUCTIONS)
def test_reduction_noop_with_empty_axes(op):
    opset = AXES_INPUT_SINCE.get(op, 18)
    check(op, [distinct(2, 3)], {"noop_with_empty_axes": 1}, opset=opset, eps=1e-3)
    check(op, [distinct(2, 3), np.zeros(0, np.int64)], {"noop_with_empty_axes": 0}, wrt=[0],
                   opset=opset, eps=1e-3)


def test_reduce_max_ties_share_the_gradient():
    x = np.array([[1.0, 3.0, 3.0], [0.0, -1.0, 2.0]], np.float32)
    dx = GRADS["ReduceMax"]([x], np.array([3.0, 2.0], np.float32), {"axes": [1], "keepdims": 0},
                            np.ones(2, np.float32), [True], 13)[0]
    assert dx.tolist() == [[0, 0.5, 0.5], [0, 0, 1]]


def test_global_max_pool():
    check("GlobalMaxPool", [distinct(2, 3, 4, 5)], eps=1e-3)
    check("GlobalMaxPool", [distinct(2, 3, 7)], eps=1e-3)


# ------------------------------------------------------------------------------ a whole network


def transformer_block(opset: int):
    """MatMul -> Add -> LayerNorm written out (ReduceMean, Sub, Pow, Sqrt, Div, Mul, Add) -> Gelu
    written with Erf -> Softmax over the features -> MatMul -> logits."""
    rng = np.random.default_rng(0)
    w = lambda *s: numpy_helper.from_array((rng.standard_normal(s) * 0.5).astype(np.float32), None)  # noqa: E731
    f = lambda v: numpy_helper.from_array(np.array(v, np.float32), None)  # noqa: E731
    inits = {"w1": w(4, 6), "b1": w(6), "two": f(2.0), "eps": f(1e-5), "gamma": w(6), "beta": w(6),
             "rsqrt2": f(1 / np.sqrt(2)), "one": f(1.0), "half": f(0.5), "w2": w(6, 3), "b2": w(3)}
    if opset >= 18:
        inits["axes"] = numpy_helper.from_array(np.array([-1], np.int64), None)
    for name, t in inits.items():
        t.name = name
    mean_inputs, mean_attrs = (["axes"], {}) if opset >= 18 else ([], {"axes": [-1]})
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w1"], ["h"]), n("Add", ["h", "b1"], ["hb"]),
             n("ReduceMean", ["hb", *mean_inputs], ["mu"], **mean_attrs), n("Sub", ["hb", "mu"], ["d"]),
             n("Pow", ["d", "two"], ["d2"]), n("ReduceMean", ["d2", *mean_inputs], ["var"], **mean_attrs),
             n("Add", ["var", "eps"], ["ve"]), n("Sqrt", ["ve"], ["sd"]), n("Div", ["d", "sd"], ["z"]),
             n("Mul", ["z", "gamma"], ["zg"]), n("Add", ["zg", "beta"], ["ln"]),
             n("Mul", ["ln", "rsqrt2"], ["u"]), n("Erf", ["u"], ["e"]), n("Add", ["e", "one"], ["e1"]),
             n("Mul", ["ln", "e1"], ["ge"]), n("Mul", ["ge", "half"], ["gelu"]),
             n("Softmax", ["gelu"], ["attn"], axis=-1), n("MatMul", ["attn", "w2"], ["m"]),
             n("Add", ["m", "b2"], ["logits"])]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              initializer=list(inits.values()))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [17, 18])
def test_transformer_block_gradients_match_finite_differences(opset):
    network = Network(from_onnx(transformer_block(opset), None))
    assert set(network.params) == {"w1", "b1", "w2", "b2"}
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 5)
    entrywise_check(network, {"x": x}, labels, rng, names=sorted(network.params))
