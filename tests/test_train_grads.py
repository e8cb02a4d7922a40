"""Every backward rule against finite differences of the interpreter's own forward kernel."""

from __future__ import annotations

import numpy as np
import pytest

from deepcompress_cli.interp.ops import KERNELS, OpContext, load_all
from deepcompress_cli.train.grads import ALL_OUTPUTS, GRADS

load_all()


def check_gradient(op, inputs, attrs=None, wrt=None, opset=17, eps=1e-2, points=12, seed=0):
    """Compare the rule's gradient of L = Σ y·r with central differences at random entries."""
    attrs = attrs or {}
    rng = np.random.default_rng(seed)
    inputs = [None if x is None else np.asarray(x, dtype=np.float32) for x in inputs]
    wrt = [i for i, x in enumerate(inputs) if x is not None and x.dtype == np.float32] if wrt is None else wrt

    every = op in ALL_OUTPUTS  # L = Σ over every output of y_k·r_k

    def forward(xs):
        outputs = KERNELS[op](xs, attrs, OpContext(opset))
        return outputs if every else outputs[0]

    def loss(xs):
        ys = forward(xs)
        return sum(np.sum(yk.astype(np.float64) * rk) for yk, rk in zip(ys, r)) if every \
            else np.sum(ys.astype(np.float64) * r)

    y = forward(inputs)
    r = [rng.standard_normal(yk.shape).astype(np.float32) for yk in y] if every \
        else rng.standard_normal(y.shape).astype(np.float32)
    needs = [i in wrt for i in range(len(inputs))]
    grads = GRADS[op](inputs, y, attrs, r, needs, opset)
    for i in wrt:
        assert grads[i] is not None and grads[i].shape == inputs[i].shape, (op, i)
        flat = rng.choice(inputs[i].size, size=min(points, inputs[i].size), replace=False)
        for j in flat:
            plus = [x.copy() if x is not None else None for x in inputs]
            minus = [x.copy() if x is not None else None for x in inputs]
            plus[i].flat[j] += eps
            minus[i].flat[j] -= eps
            numeric = (loss(plus) - loss(minus)) / (2 * eps)
            analytic = float(grads[i].flat[j])
            assert analytic == pytest.approx(numeric, rel=2e-2, abs=2e-2), (op, attrs, i, j)


R = np.random.default_rng(1)


def rand(*shape):
    return R.standard_normal(shape).astype(np.float32)


def away_from_zero(*shape):
    """Values kept away from a kink (Relu, max ties) so finite differences stay smooth."""
    x = rand(*shape)
    return np.where(np.abs(x) < 0.1, x + np.sign(x + 1e-9) * 0.2, x).astype(np.float32)


def distinct(*shape):
    """Distinct values spaced well apart (for MaxPool windows without near-ties)."""
    return (R.permutation(int(np.prod(shape))).reshape(shape) * 0.1).astype(np.float32)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((1,), (2, 3))])
def test_binary_broadcasting(op, shapes):
    a, b = rand(*shapes[0]), rand(*shapes[1])
    if op == "Div":
        b = np.abs(b) + 1
    check_gradient(op, [a, b])


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("LeakyRelu", {"alpha": 0.2}),
                                      ("Dropout", {}), ("Identity", {})])
def test_unary(op, attrs):
    check_gradient(op, [away_from_zero(2, 3, 5)], attrs)


@pytest.mark.parametrize("opset,axis,shape", [(13, -1, (3, 5)), (13, 1, (2, 4, 3)), (11, 1, (2, 3, 4)), (11, 2, (2, 3, 4))])
def test_softmax(opset, axis, shape):
    check_gradient("Softmax", [rand(*shape)], {"axis": axis}, opset=opset)


@pytest.mark.parametrize("attrs", [{}, {"transA": 1}, {"transB": 1}, {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}])
@pytest.mark.parametrize("bias_shape", [(5,), (1, 5), (3, 5), None])
def test_gemm(attrs, bias_shape):
    a = rand(4, 3) if attrs.get("transA") else rand(3, 4)
    b = rand(5, 4) if attrs.get("transB") else rand(4, 5)
    inputs = [a, b] + ([rand(*bias_shape)] if bias_shape else [])
    check_gradient("Gemm", inputs, attrs)


@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((4,), (4, 5)),
                                    ((3, 4), (4,)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4,))])
def test_matmul(shapes):
    check_gradient("MatMul", [rand(*shapes[0]), rand(*shapes[1])])


@pytest.mark.parametrize("attrs,x_shape,w_shape", [
    ({}, (2, 3, 6, 6), (4, 3, 3, 3)),
    ({"pads": [1, 1, 1, 1]}, (2, 3, 5, 5), (4, 3, 3, 3)),
    ({"strides": [2, 2], "pads": [1, 0, 1, 0]}, (1, 2, 7, 6), (3, 2, 3, 2)),
    ({"dilations": [2, 2]}, (1, 2, 7, 7), (2, 2, 2, 2)),
    ({"group": 2}, (2, 4, 5, 5), (6, 2, 3, 3)),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (1, 2, 5, 5), (3, 2, 3, 3)),
    ({"pads": [1, 2]}, (2, 3, 8), (4, 3, 3)),  # 1-D
])
@pytest.mark.parametrize("bias", [False, True])
def test_conv(attrs, x_shape, w_shape, bias):
    inputs = [rand(*x_shape), rand(*w_shape)] + ([rand(w_shape[0])] if bias else [])
    check_gradient("Conv", inputs, attrs)


@pytest.mark.parametrize("attrs,shape", [
    ({"kernel_shape": [2, 2], "strides": [2, 2]}, (2, 3, 6, 6)),
    ({"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}, (1, 2, 5, 5)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, (1, 2, 6, 6)),
    ({"kernel_shape": [2, 2], "dilations": [2, 2]}, (1, 1, 6, 6)),
    ({"kernel_shape": [3], "strides": [2]}, (2, 2, 9)),
])
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pools(op, attrs, shape):
    if op == "AveragePool" and "dilations" in attrs:
        attrs = {k: v for k, v in attrs.items() if k != "dilations"}
    check_gradient(op, [distinct(*shape)], attrs, eps=1e-3)


@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool_padding(count_include_pad):
    check_gradient("AveragePool", [rand(1, 2, 5, 5)], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                       "pads": [1, 1, 1, 1], "count_include_pad": count_include_pad})


def test_global_average_pool():
    check_gradient("GlobalAveragePool", [rand(2, 3, 4, 5)])


def test_batch_normalization_frozen():
    c = 3
    inputs = [rand(2, c, 4, 4), rand(c), rand(c), rand(c), np.abs(rand(c)) + 0.5]
    check_gradient("BatchNormalization", inputs, {"epsilon": 1e-3}, wrt=[0])


def test_batch_normalization_not_spatial():
    """Opset < 9, spatial=0: statistics per [C, H, W] element."""
    shape = (3, 2, 2)
    inputs = [rand(2, *shape), rand(*shape), rand(*shape), rand(*shape), np.abs(rand(*shape)) + 0.5]
    check_gradient("BatchNormalization", inputs, {"epsilon": 1e-3, "spatial": 0}, wrt=[0], opset=7)


@pytest.mark.parametrize("size", [3, 4, 5])
def test_lrn(size):
    check_gradient("LRN", [rand(2, 6, 3, 3)], {"size": size, "alpha": 0.5, "beta": 0.75, "bias": 2.0})


def test_shapes():
    x = rand(2, 3, 4)
    check_gradient("Reshape", [x, np.array([6, 4], np.int64)], wrt=[0])
    check_gradient("Flatten", [x], {"axis": 1})
    check_gradient("Transpose", [x], {"perm": [2, 0, 1]})
    check_gradient("Transpose", [x])
    check_gradient("Squeeze", [rand(2, 1, 3), np.array([1], np.int64)], wrt=[0])
    check_gradient("Unsqueeze", [rand(2, 3), np.array([0], np.int64)], wrt=[0])
    check_gradient("Concat", [rand(2, 3), rand(2, 1), rand(2, 2)], {"axis": 1})
    check_gradient("Concat", [rand(2, 3), rand(1, 3)], {"axis": -2})
