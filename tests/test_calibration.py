"""calibration.collect: each layer's H = mean x xᵀ over its input columns, checked by brute force."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from deepcompress_cli import calibration
from deepcompress_cli.onnx_io import from_onnx

RNG = np.random.default_rng(0)


def package_of(nodes, inputs, outputs, weights):
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return from_onnx(model, None)


def conv_package(x_shape, w_shape, bias=True, **attrs):
    w = RNG.standard_normal(w_shape)
    weights = {"w": w, **({"b": RNG.standard_normal(w_shape[0])} if bias else {})}
    node = helper.make_node("Conv", ["x", "w", "b"] if bias else ["x", "w"], ["y"], **attrs)
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape[1:]])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return package_of([node], [inp], [out], weights), w


def brute_conv(x, w_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1):
    """(G, K, K) mean of x xᵀ and (G, K) mean over every im2col column, one position at a time."""
    _, cg, kh, kw = w_shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (xp.shape[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    cols = [[] for _ in range(group)]
    for n in range(x.shape[0]):
        for i in range(oh):
            for j in range(ow):
                rows = i * strides[0] + dilations[0] * np.arange(kh)
                columns = j * strides[1] + dilations[1] * np.arange(kw)
                patch = xp[n][:, rows][:, :, columns]  # [C, kh, kw]
                for g in range(group):
                    cols[g].append(patch[g * cg:(g + 1) * cg].reshape(-1))
    cols = np.array(cols)  # (G, S, K)
    return np.einsum("gsk,gsl->gkl", cols, cols) / cols.shape[1], cols.mean(1), cols.shape[1]


@pytest.mark.parametrize("x_shape,w_shape,attrs", [
    ((3, 4, 9, 8), (6, 4, 3, 3), {}),
    ((2, 4, 9, 8), (6, 4, 3, 3), {"pads": [1, 2, 0, 1], "strides": [2, 1]}),
    ((2, 3, 11, 10), (4, 3, 3, 2), {"dilations": [2, 3], "pads": [1, 1, 1, 1]}),
    ((2, 6, 7, 7), (4, 3, 3, 3), {"group": 2, "strides": [2, 2]}),
    ((2, 5, 8, 8), (5, 1, 3, 3), {"group": 5, "pads": [1, 1, 1, 1]}),  # depthwise
    ((2, 4, 6, 6), (8, 1, 5, 5), {"group": 4, "pads": [2, 2, 2, 2]}),  # depthwise, multiplier 2
    ((3, 7, 5, 4), (3, 7, 1, 1), {}),  # 1x1
])
def test_conv_hessian_is_brute_force_im2col(x_shape, w_shape, attrs):
    package, w = conv_package(x_shape, w_shape, **attrs)
    x = RNG.standard_normal(x_shape).astype(np.float32)
    stats = calibration.collect(package, {"x": x}, batch=2, max_columns=10 ** 6)["w"]
    h, mean, count = brute_conv(x, w_shape, attrs.get("strides", (1, 1)), attrs.get("pads", (0, 0, 0, 0)),
                                attrs.get("dilations", (1, 1)), attrs.get("group", 1))
    group = attrs.get("group", 1)
    assert (stats.op, stats.axis, stats.groups, stats.count, stats.bias) == ("Conv", 0, group, count, "b")
    np.testing.assert_allclose(stats.hessian, h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-5, atol=1e-6)
    wm = calibration.to_matrix(w, stats)
    assert wm.shape == (stats.groups, w_shape[0] // stats.groups, np.prod(w_shape[1:]))
    np.testing.assert_array_equal(calibration.from_matrix(wm, w.shape, stats), w)
    # output energy = mean squared output of the bias-free layer over the columns
    assert stats.output_energy == pytest.approx(np.einsum("grk,gkl,grl->", wm, h, wm), rel=1e-5)
    np.testing.assert_allclose(stats.covariance(), h - mean[:, :, None] * mean[:, None, :], rtol=1e-4, atol=1e-5)


def test_sampled_columns_are_deterministic_and_converge():
    package, _ = conv_package((8, 4, 16, 16), (6, 4, 3, 3), pads=[1, 1, 1, 1])
    x = RNG.standard_normal((8, 4, 16, 16)).astype(np.float32)
    a = calibration.collect(package, {"x": x}, batch=4, max_columns=300)["w"]
    b = calibration.collect(package, {"x": x}, batch=4, max_columns=300)["w"]
    full = calibration.collect(package, {"x": x}, batch=4, max_columns=10 ** 6)["w"]
    np.testing.assert_array_equal(a.hessian, b.hessian)
    assert a.count == 2 * 300 and full.count == 8 * 256
    assert np.abs(a.hessian - full.hessian).max() < 0.25 * np.abs(full.hessian).max()


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_hessian(trans_b):
    w = RNG.standard_normal((5, 7) if trans_b else (7, 5))
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=trans_b)
    package = package_of([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 7])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                         {"w": w, "b": RNG.standard_normal(5)})
    x = RNG.standard_normal((10, 7)).astype(np.float32)
    stats = calibration.collect(package, {"x": x}, batch=3)["w"]
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(stats.hessian[0], x64.T @ x64 / 10, rtol=1e-5, atol=1e-6)
    assert (stats.axis, stats.count, stats.bias) == (0 if trans_b else 1, 10, "b")
    wm = calibration.to_matrix(w, stats)
    np.testing.assert_allclose(wm[0] @ x64.T, (x64 @ (w.T if trans_b else w)).T)  # rows are outputs
    np.testing.assert_array_equal(calibration.from_matrix(wm, w.shape, stats), w)


def test_matmul_hessian_both_sides_and_add_bias():
    w1, w0 = RNG.standard_normal((6, 4)), RNG.standard_normal((3, 5))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"]),
             helper.make_node("MatMul", ["w0", "z"], ["u"])]
    package = package_of(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6]),
                                 helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 5, 2])],
                         [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "u")],
                         {"w1": w1, "w0": w0, "b": RNG.standard_normal(4)})
    x = RNG.standard_normal((4, 2, 6)).astype(np.float32)
    z = RNG.standard_normal((4, 5, 2)).astype(np.float32)
    stats = calibration.collect(package, {"x": x, "z": z}, batch=3)
    cols_x = x.reshape(-1, 6).astype(np.float64)
    cols_z = z.transpose(0, 2, 1).reshape(-1, 5).astype(np.float64)
    np.testing.assert_allclose(stats["w1"].hessian[0], cols_x.T @ cols_x / 8, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["w0"].hessian[0], cols_z.T @ cols_z / 8, rtol=1e-5, atol=1e-6)
    assert (stats["w1"].axis, stats["w1"].bias, stats["w0"].axis, stats["w0"].bias) == (1, "b", 0, None)
    assert calibration.to_matrix(w0, stats["w0"]).shape == (1, 3, 5)
    assert calibration.to_matrix(w1, stats["w1"]).shape == (1, 4, 6)


def test_shared_weight_accumulates_every_use_and_odd_uses_are_skipped():
    w = RNG.standard_normal((3, 2, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w"], ["y1"]), helper.make_node("Conv", ["y1", "v"], ["y2"]),
             helper.make_node("Conv", ["x2", "w"], ["y3"]), helper.make_node("Conv", ["x2", "s"], ["y5"]),
             helper.make_node("Mul", ["y5", "s"], ["y4"])]
    package = package_of(nodes, [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", c, 6, 6])
                                 for n, c in (("x", 2), ("x2", 2))],
                         [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y2", "y3", "y4")],
                         {"w": w, "v": RNG.standard_normal((4, 3, 1, 1)), "s": RNG.standard_normal((2, 2, 1, 1))})
    x, x2 = (RNG.standard_normal((2, 2, 6, 6)).astype(np.float32) for _ in range(2))
    stats = calibration.collect(package, {"x": x, "x2": x2})
    assert set(stats) == {"w", "v"}  # s is also a Mul operand: no H for it
    h, _, count = brute_conv(np.concatenate([x, x2]), w.shape)
    assert stats["w"].count == count
    np.testing.assert_allclose(stats["w"].hessian, h, rtol=1e-5, atol=1e-5)
    assert set(calibration.collect(package, {"x": x, "x2": x2}, names={"v"})) == {"v"}


def test_layers_too_wide_for_their_hessian_are_left_out(monkeypatch):
    package, _ = conv_package((2, 4, 5, 5), (3, 4, 3, 3))
    monkeypatch.setattr(calibration, "MAX_INPUTS", 35)
    assert calibration.collect(package, {"x": RNG.standard_normal((2, 4, 5, 5)).astype(np.float32)}) == {}


def test_batch_norm_folded_by_the_interpreter_gives_row_scale():
    w = RNG.standard_normal((3, 2, 3, 3))
    gamma, var = np.array([2.0, -1.0, 0.5]), np.array([1.0, 3.0, 0.25])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "g", "beta", "m", "v"], ["y"], epsilon=0.0)]
    package = package_of(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                         {"w": w, "g": gamma, "beta": np.zeros(3), "m": np.zeros(3), "v": var})
    stats = calibration.collect(package, {"x": RNG.standard_normal((2, 2, 5, 5)).astype(np.float32)})["w"]
    np.testing.assert_allclose(stats.row_scale, (gamma / np.sqrt(var))[None], rtol=1e-6)
    assert stats.bias is None  # the conv has none: the folded one is the interpreter's, not stored


def test_inputs_batched_on_axis_1_are_sliced_there():
    w = RNG.standard_normal((4, 3))
    package = package_of([helper.make_node("MatMul", ["h", "w"], ["y"])],
                         [helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, "N", 4])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"w": w})
    h = RNG.standard_normal((2, 7, 4)).astype(np.float32)
    stats = calibration.collect(package, {"h": h}, batch=3)["w"]
    cols = h.reshape(-1, 4).astype(np.float64)
    assert stats.count == 14
    np.testing.assert_allclose(stats.hessian[0], cols.T @ cols / 14, rtol=1e-5, atol=1e-6)


def test_means_only():
    package, _ = conv_package((2, 3, 6, 6), (4, 3, 3, 3), pads=[1, 1, 1, 1])
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    full = calibration.collect(package, {"x": x})["w"]
    means = calibration.collect(package, {"x": x}, hessians=False)["w"]
    assert means.hessian is None and means.count == full.count
    np.testing.assert_allclose(means.mean, full.mean)


def test_damping_grows_as_columns_get_few():
    def stats(k, count):
        return calibration.LayerStats("w", "Gemm", 0, 1, np.eye(k)[None], np.zeros((1, k)), count, None)

    assert calibration.damping(stats(9, 28672)) == calibration.MIN_DAMPING  # many columns: GPTQ's 1 %
    assert calibration.damping(stats(1152, 5488)) == pytest.approx(1152 / (2 * 5488))
    assert calibration.damping(stats(1280, 112)) == 1.0  # fewer columns than inputs: capped
    means_only = calibration.LayerStats("w", "Gemm", 0, 1, None, np.zeros((1, 4)), 10, None)
    assert calibration.damping(means_only) == calibration.MIN_DAMPING
