"""TopK, Unique, Einsum, Det, Trilu and the two losses (NegativeLogLikelihoodLoss,
SoftmaxCrossEntropyLoss) of the interpreter against onnxruntime, plus hand-checked edges.

Each case builds a one-node ONNX model at the case's opset, runs it in onnxruntime and compares
every output with the kernel called the way the interpreter calls it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx import helper

from deepcompress_cli.errors import DczError
from deepcompress_cli.interp.ops import KERNELS, OpContext, load_all

ort = pytest.importorskip("onnxruntime")
from one_node import one_node, oracle_run  # noqa: E402
load_all()
RNG = np.random.default_rng(1414)
F32, I64 = np.float32, np.int64


def randn(*shape, dtype=F32):
    return np.asarray(RNG.standard_normal(shape), dtype=dtype)


# ------------------------------------------------------------------------------ harness


def run_ort(op_type, inputs, attrs, opset, n_out):
    model, _, feeds = one_node(op_type, inputs, attrs, opset, n_out)
    return oracle_run(model, feeds)


def kernel(op_type, inputs, attrs=None, opset=18, n_out=1):
    """The kernel's outputs, with attributes as the interpreter passes them (strings as bytes)."""
    node = helper.make_node(op_type, [], [], **(attrs or {}))
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    ctx = OpContext(opset=opset, node_name="n", num_outputs=n_out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return KERNELS[op_type](list(inputs), values, ctx)


def check(op_type, inputs, attrs=None, opset=18, n_out=1, rtol=1e-5):
    want = run_ort(op_type, inputs, attrs or {}, opset, n_out)
    got = kernel(op_type, inputs, attrs, opset, n_out)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, w.dtype, g.shape, w.shape)
        if g.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol / 10)
        else:
            np.testing.assert_array_equal(g, w)


# ------------------------------------------------------------------------------ TopK


@pytest.mark.parametrize("largest", [1, 0])
@pytest.mark.parametrize("axis,k", [(-1, 3), (0, 2), (1, 4), (1, 0)])
def test_top_k(largest, axis, k):
    check("TopK", [randn(3, 4, 5), np.array([k], I64)], {"axis": axis, "largest": largest},
          opset=11, n_out=2)


def test_top_k_ties_integers_and_opset_1():
    x = np.array([[3, 1, 3, 2, 3, 1]], np.int64)
    check("TopK", [x, np.array([4], I64)], opset=11, n_out=2)
    check("TopK", [x, np.array([4], I64)], {"largest": 0}, opset=11, n_out=2)
    many_ties = RNG.integers(0, 3, (2, 300)).astype(F32)  # long enough for unstable sorts to show
    check("TopK", [many_ties, np.array([250], I64)], opset=11, n_out=2)
    check("TopK", [many_ties, np.array([250], I64)], {"largest": 0}, opset=11, n_out=2)
    values, indices = kernel("TopK", [x, np.array([4], I64)], opset=11, n_out=2)
    assert values.tolist() == [[3, 3, 3, 2]] and indices.tolist() == [[0, 2, 4, 3]]
    values, indices = kernel("TopK", [x, np.array([3], I64)], {"largest": 0}, opset=11, n_out=2)
    assert values.tolist() == [[1, 1, 2]] and indices.tolist() == [[1, 5, 3]]
    # uint64 past 2**63 (onnxruntime has no uint64 TopK): no negation, no wrap-around
    u = np.array([[(1 << 63) + 5, 1, (1 << 64) - 1, 7]], np.uint64)
    values, indices = kernel("TopK", [u, np.array([2], I64)], opset=11, n_out=2)
    assert values.tolist() == [[(1 << 64) - 1, (1 << 63) + 5]] and indices.tolist() == [[2, 0]]
    check("TopK", [randn(4, 6)], {"k": 3, "axis": 0}, opset=1, n_out=2)


def test_top_k_rejects_k_past_the_axis():
    with pytest.raises(DczError, match="k=6"):
        kernel("TopK", [randn(2, 5), np.array([6], I64)], opset=11, n_out=2)
    with pytest.raises(DczError, match="k=-1"):
        kernel("TopK", [randn(2, 5), np.array([-1], I64)], opset=11, n_out=2)


# ------------------------------------------------------------------------------ Unique

ROWS = np.array([[1, 0, 2], [3, 1, 1], [1, 0, 2], [0, 5, 1], [3, 1, 1]], np.int64)


@pytest.mark.parametrize("sorted_", [1, 0])
@pytest.mark.parametrize("axis", [None, 0, 1, -2])
def test_unique(sorted_, axis):
    attrs = {"sorted": sorted_} if axis is None else {"sorted": sorted_, "axis": axis}
    check("Unique", [ROWS], attrs, opset=11, n_out=4)
    check("Unique", [ROWS.astype(F32) / 2], attrs, opset=11, n_out=4)


def test_unique_by_hand():
    x = np.array([2, 1, 1, 3, 4, 3], np.int64)
    y, first, inverse, counts = kernel("Unique", [x], {"sorted": 0}, n_out=4)
    assert y.tolist() == [2, 1, 3, 4] and first.tolist() == [0, 1, 3, 4]
    assert inverse.tolist() == [0, 1, 1, 2, 3, 2] and counts.tolist() == [1, 2, 2, 1]
    y, first, inverse, counts = kernel("Unique", [x], n_out=4)
    assert y.tolist() == [1, 2, 3, 4] and first.tolist() == [1, 0, 3, 4]
    assert inverse.tolist() == [1, 0, 0, 2, 3, 2] and counts.tolist() == [2, 1, 2, 1]
    assert all(a.dtype == I64 for a in (first, inverse, counts))
    empty = kernel("Unique", [np.zeros((0,), F32)], n_out=4)
    assert [a.shape for a in empty] == [(0,)] * 4


# ------------------------------------------------------------------------------ Einsum


@pytest.mark.parametrize("equation,shapes", [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("ij,jk", [(3, 4), (4, 5)]),             # implicit output: the letters used once, sorted
    ("ba", [(3, 4)]),                        # implicit transpose
    ("ij->ji", [(3, 4)]),
    ("ii->i", [(4, 4)]),
    ("bii->bi", [(2, 3, 3)]),
    ("i,i", [(5,), (5,)]),
    ("ij->", [(3, 4)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]),
    ("bij, bjk -> bik", [(2, 3, 4), (2, 4, 5)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),
])
def test_einsum(equation, shapes):
    check("Einsum", [randn(*s) for s in shapes], {"equation": equation}, opset=12)


def test_einsum_ints_half_and_errors():
    a = RNG.integers(-5, 5, (3, 4)).astype(np.int32)
    check("Einsum", [a, a], {"equation": "ij,ij->i"}, opset=12)
    h = randn(3, 4).astype(np.float16)
    got = kernel("Einsum", [h, h], {"equation": "ij,kj->ik"})[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, h.astype(F32) @ h.astype(F32).T, rtol=2e-3, atol=2e-3)
    with pytest.raises(DczError, match="Einsum"):
        kernel("Einsum", [randn(3, 4), randn(5, 6)], {"equation": "ij,jk->ik"})


@pytest.mark.parametrize("equation,shapes", [
    ("ij,jk", [(2, 3), (3, 4)]), ("...ij,...jk->...ik", [(5, 1, 2, 3), (4, 3, 6)]),
    ("b...i,b...i", [(2, 7, 3), (2, 1, 3)]), ("ii->i", [(4, 4)]), ("i,i", [(5,), (5,)]),
    ("ji", [(2, 3)]), ("i...->...", [(2, 3, 4)]), ("ij,kl->ljki", [(2, 3), (4, 5)])])
def test_einsum_output_shape_agrees_with_numpy(equation, shapes):
    from deepcompress_cli.interp.ops.linalg import _einsum_output_shape

    want = np.einsum(equation, *(np.ones(s) for s in shapes)).shape
    assert _einsum_output_shape(equation, shapes) == list(want)


def test_einsum_growth_is_capped():
    v = np.ones(1 << 16, F32)
    for equation in ("i,j->ij", "i,j"):  # 2**32 float32 values: 16 GiB
        with pytest.raises(DczError, match="would create"):
            kernel("Einsum", [v, v], {"equation": equation})
    assert kernel("Einsum", [v, v], {"equation": "i,i"})[0] == 1 << 16


# ------------------------------------------------------------------------------ Det and Trilu


@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 4), (2, 1, 2, 2), (1, 1)])
def test_det(shape):
    check("Det", [randn(*shape)], opset=11)


def test_det_by_hand_and_non_square():
    x = np.array([[[2.0, 1.0], [1.0, 3.0]], [[1.0, 2.0], [2.0, 4.0]]], F32)
    np.testing.assert_allclose(kernel("Det", [x])[0], [5.0, 0.0], atol=1e-6)
    assert kernel("Det", [x.astype(np.float16)])[0].dtype == np.float16
    with pytest.raises(DczError, match="M, M"):
        kernel("Det", [randn(2, 3)])


@pytest.mark.parametrize("upper", [1, 0])
@pytest.mark.parametrize("k", [None, 0, 1, -1, 2, -4, 7])
@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4), (5, 2)])
def test_trilu(upper, k, shape):
    inputs = [randn(*shape)] + ([] if k is None else [np.array(k, I64)])
    check("Trilu", inputs, {"upper": upper}, opset=14)


def test_trilu_by_hand():
    x = np.arange(1, 10, dtype=I64).reshape(3, 3)
    assert kernel("Trilu", [x])[0].tolist() == [[1, 2, 3], [0, 5, 6], [0, 0, 9]]
    assert kernel("Trilu", [x, np.array(-1, I64)], {"upper": 0})[0].tolist() == \
        [[0, 0, 0], [4, 0, 0], [7, 8, 0]]
    with pytest.raises(DczError, match="rank"):
        kernel("Trilu", [np.arange(3)])


# ------------------------------------------------------------------------------ losses

LOSS_SHAPES = [((4, 3), (4,)), ((2, 3, 5), (2, 5)), ((2, 4, 3, 2), (2, 3, 2))]


def targets(shape, classes, ignore=None):
    t = RNG.integers(0, classes, shape).astype(I64)
    if ignore is not None:
        t.reshape(-1)[::3] = ignore
    return t


@pytest.mark.parametrize("op_type", ["NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("shapes", range(len(LOSS_SHAPES)))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [None, 1, -1])
def test_losses(op_type, reduction, shapes, weighted, ignore_index):
    x_shape, t_shape = LOSS_SHAPES[shapes]
    classes = x_shape[1]
    x = randn(*x_shape)
    inputs = [x, targets(t_shape, classes, ignore_index)]
    if weighted:
        inputs.append(np.abs(randn(classes)) + F32(0.1))
    attrs = {"reduction": reduction}
    if ignore_index is not None:
        attrs["ignore_index"] = ignore_index
    n_out = 2 if op_type == "SoftmaxCrossEntropyLoss" else 1
    check(op_type, inputs, attrs, opset=13, n_out=n_out)


def test_losses_by_hand():
    log_prob = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]], F32))
    target = np.array([0, 1], I64)
    weight = np.array([2.0, 1.0, 1.0], F32)
    nll = "NegativeLogLikelihoodLoss"
    expected = [-2 * np.log(0.5), -np.log(0.8)]
    np.testing.assert_allclose(kernel(nll, [log_prob, target, weight], {"reduction": "none"})[0],
                               expected, rtol=1e-6)
    np.testing.assert_allclose(kernel(nll, [log_prob, target, weight])[0], sum(expected) / 3,
                               rtol=1e-6)  # mean divides by the summed weights, 2 + 1
    # ignore_index may lie outside [0, C); ignored targets count in neither sum
    got = kernel(nll, [log_prob, np.array([7, 1], I64), weight], {"ignore_index": 7})[0]
    np.testing.assert_allclose(got, -np.log(0.8), rtol=1e-6)
    with pytest.raises(DczError, match="outside"):
        kernel(nll, [log_prob, np.array([3, 1], I64)])
    with pytest.raises(DczError, match="does not fit"):
        kernel(nll, [log_prob, np.array([0, 1, 1], I64)])
    # SoftmaxCrossEntropyLoss: its second output is log_softmax(scores); huge scores stay finite
    scores = np.array([[1000.0, 0.0, -1000.0]], F32)
    loss, log_sm = kernel("SoftmaxCrossEntropyLoss", [scores, np.array([1], I64)], n_out=2)
    np.testing.assert_allclose(log_sm, [[0.0, -1000.0, -2000.0]])
    np.testing.assert_allclose(loss, 1000.0)
    assert len(kernel("SoftmaxCrossEntropyLoss", [scores, np.array([1], I64)], n_out=1)) == 1


def test_losses_keep_half_and_double_dtypes():
    x, t = randn(3, 4, 2), targets((3, 2), 4)
    for dtype in (np.float16, np.float64):
        got = kernel("SoftmaxCrossEntropyLoss", [x.astype(dtype), t], n_out=2)
        want = run_ort("SoftmaxCrossEntropyLoss", [x, t], {}, 13, 2)
        for g, w in zip(got, want):
            assert g.dtype == dtype
            np.testing.assert_allclose(g.astype(F32), w, rtol=2e-3, atol=2e-3)
