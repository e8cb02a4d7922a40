"""Conv, pool, Gemm/MatMul and normalization kernels against onnxruntime on one-node models."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

from deepcompress_cli.errors import DczError  # noqa: E402
from deepcompress_cli.interp.ops import KERNELS, OpContext  # noqa: E402
from deepcompress_cli.interp.ops import conv, gemm, norm, pool  # noqa: E402,F401  (registration)
from deepcompress_cli.interp.ops.conv import im2col  # noqa: E402

RNG = np.random.default_rng(1234)


def rand(*shape):
    return RNG.standard_normal(shape, dtype=np.float32)


def attrs_of(node) -> dict:
    """Attributes as the interpreter passes them (strings stay bytes, tensors become arrays)."""
    out = {}
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:
            out[attr.name] = numpy_helper.to_array(attr.t)
        else:
            out[attr.name] = helper.get_attribute_value(attr)
    return out


def one_node_model(op_type, inputs, attrs, opset, initializers=()):
    """A model of one node; `inputs` are arrays or None (omitted optional input)."""
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    while names and names[-1] == "":
        names.pop()
    node = helper.make_node(op_type, names, ["y"], **attrs)
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                                  a.shape)
                    for n, a in zip(names, inputs) if n and n not in initializers]
    inits = [numpy_helper.from_array(a, n) for n, a in zip(names, inputs) if n in initializers]
    out_type = helper.np_dtype_to_tensor_dtype(inputs[0].dtype)
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_tensor_value_info("y", out_type, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model, node


def session(model, threads=1):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def check(op_type, inputs, attrs=None, opset=17, tol=1e-4):
    """Run the kernel and onnxruntime on the same one-node model; compare the first output."""
    model, node = one_node_model(op_type, inputs, attrs or {}, opset)
    feeds = {n: a for n, a in zip(node.input, inputs) if n}
    expected = session(model).run(None, feeds)[0]
    before = [None if a is None else a.copy() for a in inputs]
    got = KERNELS[op_type](list(inputs), attrs_of(node), OpContext(opset=opset))[0]
    for a, b in zip(inputs, before):  # inputs may be shared values: never written
        assert a is None or np.array_equal(a, b)
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------- Conv

CONV_CASES = {
    "plain3x3": ((2, 3, 9, 9), (4, 3, 3, 3), {}),
    "pad1": ((1, 4, 8, 8), (5, 4, 3, 3), dict(pads=[1, 1, 1, 1])),
    "1x1": ((2, 8, 7, 7), (6, 8, 1, 1), {}),
    "1x1_stride2": ((1, 8, 7, 7), (6, 8, 1, 1), dict(strides=[2, 2])),
    "stride2": ((1, 3, 11, 11), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "stride3_asym": ((1, 3, 13, 10), (4, 3, 3, 3), dict(strides=[3, 2])),
    "asym_pads": ((1, 3, 8, 9), (4, 3, 3, 3), dict(pads=[0, 2, 1, 0])),
    "non_square": ((1, 3, 10, 12), (4, 3, 2, 5), dict(pads=[1, 2, 0, 2])),
    "dilation2": ((1, 3, 12, 12), (4, 3, 3, 3), dict(dilations=[2, 2], pads=[2, 2, 2, 2])),
    "dilation_mixed": ((1, 3, 12, 12), (4, 3, 3, 2), dict(dilations=[3, 1], strides=[1, 2])),
    "group2": ((1, 6, 9, 9), (8, 3, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "group3_stride2": ((2, 6, 9, 9), (9, 2, 3, 3), dict(group=3, strides=[2, 2])),
    "depthwise": ((2, 5, 9, 9), (5, 1, 3, 3), dict(group=5, pads=[1, 1, 1, 1])),
    "depthwise_mult2": ((1, 4, 9, 9), (8, 1, 3, 3), dict(group=4, strides=[2, 2],
                                                          dilations=[1, 2], pads=[1, 2, 0, 1])),
    "same_upper": ((1, 3, 9, 8), (4, 3, 4, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "same_lower": ((1, 3, 9, 8), (4, 3, 4, 3), dict(auto_pad="SAME_LOWER", strides=[2, 2])),
    "same_upper_s1": ((1, 3, 7, 7), (4, 3, 4, 4), dict(auto_pad="SAME_UPPER")),
    "same_lower_s1": ((1, 3, 8, 7), (4, 3, 3, 2), dict(auto_pad="SAME_LOWER")),
    "valid": ((1, 3, 9, 8), (4, 3, 3, 3), dict(auto_pad="VALID", strides=[2, 1])),
    "alexnet1_like": ((1, 3, 35, 35), (8, 3, 11, 11), dict(strides=[4, 4], pads=[2, 2, 2, 2])),
    "conv1d": ((2, 3, 20), (4, 3, 5), dict(pads=[2, 1], strides=[2])),
    "conv1d_dilated_group": ((1, 4, 20), (6, 2, 3), dict(group=2, dilations=[3])),
    "conv3d": ((1, 2, 6, 7, 5), (3, 2, 3, 2, 3), dict(pads=[1, 0, 1, 1, 1, 0])),
    "conv3d_stride": ((1, 2, 7, 7, 7), (3, 2, 3, 3, 3), dict(strides=[2, 1, 2])),
}


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv(case, with_bias):
    x_shape, w_shape, attrs = CONV_CASES[case]
    inputs = [rand(*x_shape), rand(*w_shape)]
    if with_bias:
        inputs.append(rand(w_shape[0]))
    check("Conv", inputs, dict(attrs, kernel_shape=list(w_shape[2:])))


@pytest.mark.parametrize("case", ["pad1", "stride2", "group3_stride2", "depthwise",
                                  "dilation_mixed", "conv1d", "conv3d"])
def test_conv_tiled(case, monkeypatch):
    """Tiny tiles: several images per tile, then bands of output rows within one image."""
    x_shape, w_shape, attrs = CONV_CASES[case]
    inputs = [rand(3, *x_shape[1:]), rand(*w_shape), rand(w_shape[0])]
    for tile_bytes in (1, 4 * 1024, 64 * 1024):
        monkeypatch.setattr(conv, "_TILE_BYTES", tile_bytes)
        check("Conv", inputs, attrs)


@pytest.mark.parametrize("bounds", [None, (0.0, math.inf), (0.0, 6.0), (-0.5, 0.5)])
@pytest.mark.parametrize("case", ["pad1", "stride2", "depthwise", "group2", "conv1d", "1x1_widening", "1x1"])
@pytest.mark.parametrize("tile_bytes", [None, 2048])
def test_conv_fused_bias_and_clamp(case, bounds, tile_bytes, monkeypatch):
    """The bias in the matmul (a row of ones) and the clamp in the tile's copy give what a
    plain Conv, then + bias, then clip gives: every path, whole and banded tiles."""
    x_shape, w_shape, attrs = {**CONV_CASES, "1x1_widening": ((2, 2, 7, 7), (8, 2, 1, 1), {})}[case]
    x, w, b = rand(*x_shape), rand(*w_shape), rand(w_shape[0])
    if tile_bytes:
        monkeypatch.setattr(conv, "_TILE_BYTES", tile_bytes)
    attrs = dict(attrs, kernel_shape=list(w_shape[2:]))
    expected = conv.conv(x, w, None, attrs) + b.reshape(-1, *(1,) * (x.ndim - 2))
    if bounds is not None:
        expected = np.clip(expected, *bounds)
    np.testing.assert_allclose(conv.conv(x, w, b, attrs, bounds=bounds), expected, rtol=1e-5, atol=1e-5)


def test_conv_wide_path_with_big_padding():
    """Stride 1 with padding wider than the waste threshold takes the exact im2col path."""
    check("Conv", [rand(1, 3, 4, 4), rand(2, 3, 3, 3)], dict(pads=[3, 3, 3, 3]))


def test_conv_same_with_dilation_follows_spec():
    """onnxruntime rejects SAME with dilations; the spec's pads are total = (ceil(in / s) - 1) * s
    + (k - 1) * d + 1 - in, the odd pixel first for SAME_LOWER: here [2, 2] rows, [2, 1] cols."""
    x, w = rand(1, 3, 8, 7), rand(4, 3, 3, 2)
    attrs = dict(dilations=[2, 3], strides=[1, 2])
    model, node = one_node_model("Conv", [x, w], dict(attrs, pads=[2, 2, 2, 1]), 17)
    expected = session(model).run(None, {"in0": x, "in1": w})[0]
    got = KERNELS["Conv"]([x, w], dict(attrs, auto_pad=b"SAME_LOWER"), OpContext(opset=17))[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_conv_bad_group_is_dcz_error():
    with pytest.raises(DczError, match="Conv"):
        KERNELS["Conv"]([rand(1, 6, 5, 5), rand(4, 4, 3, 3)], {"group": 2}, OpContext(opset=17))


def test_im2col_contract():
    """cols [N, C*K, L]: row c*K + k is channel c at kernel offset k; weights @ cols is the conv."""
    x = rand(2, 3, 6, 5)
    cols, out = im2col(x, [2, 3], [1, 2], [1, 0, 0, 1], [1, 1], pad_value=7)
    assert out == (6, 2) and cols.shape == (2, 3 * 6, 12) and cols.flags.c_contiguous
    xp = np.pad(x, [(0, 0), (0, 0), (1, 0), (0, 1)], constant_values=7)
    c, i, j, oy, ox = 2, 1, 2, 4, 1  # channel, kernel offset, output position
    assert cols[1, c * 6 + i * 3 + j, oy * 2 + ox] == xp[1, c, oy * 1 + i, ox * 2 + j]
    assert (cols[:, :, :2] == 7).any()  # the top padding row holds the pad value


# ------------------------------------------------------------------------------ ConvTranspose

CONVT_CASES = {
    "plain": ((1, 3, 5, 5), (3, 4, 3, 3), {}),
    "stride2": ((2, 3, 5, 4), (3, 4, 3, 3), dict(strides=[2, 2])),
    "stride2_pads": ((1, 3, 5, 5), (3, 2, 4, 4), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "output_padding": ((1, 3, 5, 5), (3, 2, 3, 3),
                       dict(strides=[2, 3], pads=[1, 0, 1, 1], output_padding=[1, 2])),
    "group2": ((1, 4, 5, 5), (4, 3, 3, 3), dict(group=2, strides=[2, 2])),
    "dilation": ((1, 2, 5, 5), (2, 3, 3, 2), dict(dilations=[2, 3], strides=[1, 2])),
    "output_shape": ((1, 2, 5, 5), (2, 3, 3, 3), dict(strides=[2, 2], output_shape=[10, 11])),
    "same_upper": ((1, 2, 5, 4), (2, 3, 4, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "same_lower": ((1, 2, 5, 4), (2, 3, 4, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "1d": ((1, 3, 7), (3, 2, 4), dict(strides=[3], pads=[1, 2])),
}


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("case", CONVT_CASES)
def test_conv_transpose(case, with_bias):
    x_shape, w_shape, attrs = CONVT_CASES[case]
    inputs = [rand(*x_shape), rand(*w_shape)]
    if with_bias:
        inputs.append(rand(w_shape[1] * attrs.get("group", 1)))
    check("ConvTranspose", inputs, attrs)


# --------------------------------------------------------------------------------------- Pools

POOL_CASES = {
    "k2s2": ((1, 3, 8, 8), dict(kernel_shape=[2, 2], strides=[2, 2])),
    "k3s2_pad": ((2, 3, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "k3s2_ceil": ((1, 3, 10, 10), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "k3s2_floor": ((1, 3, 10, 10), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=0)),
    "ceil_pads": ((1, 2, 11, 8), dict(kernel_shape=[3, 2], strides=[3, 3], pads=[1, 0, 1, 1],
                                      ceil_mode=1)),
    "ceil_drop_last": ((1, 2, 5, 5), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1],
                                          ceil_mode=1)),
    "asym_pads": ((1, 2, 7, 8), dict(kernel_shape=[3, 3], pads=[0, 2, 2, 1])),
    "non_square": ((1, 2, 9, 10), dict(kernel_shape=[2, 4], strides=[1, 3])),
    "same_upper": ((1, 2, 9, 8), dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER")),
    "same_lower": ((1, 2, 9, 8), dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_LOWER")),
    "valid": ((1, 2, 9, 8), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID")),
    "1d": ((2, 3, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    "3d": ((1, 2, 5, 6, 7), dict(kernel_shape=[2, 3, 2], strides=[2, 2, 1])),
}


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool(case):
    x_shape, attrs = POOL_CASES[case]
    check("MaxPool", [rand(*x_shape)], attrs)


def test_max_pool_dilated():
    check("MaxPool", [rand(1, 2, 11, 11)],
          dict(kernel_shape=[3, 2], dilations=[2, 3], strides=[1, 2], pads=[1, 1, 2, 0]))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_max_pool_8bit(dtype):
    """Opset 12 MaxPool on 8-bit tensors pads with the type's minimum."""
    x = RNG.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, (1, 2, 7, 7)).astype(dtype)
    check("MaxPool", [x], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), opset=12)


def test_max_pool_all_padding_window_of_negatives():
    """-inf padding: a window over negative inputs and padding still returns the input max."""
    check("MaxPool", [-np.abs(rand(1, 1, 4, 4)) - 1],
          dict(kernel_shape=[3, 3], pads=[2, 2, 2, 2], strides=[2, 2]))


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("case", POOL_CASES)
def test_average_pool(case, count_include_pad):
    x_shape, attrs = POOL_CASES[case]
    check("AveragePool", [rand(*x_shape)], dict(attrs, count_include_pad=count_include_pad))


@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool_dilated(count_include_pad):
    check("AveragePool", [rand(1, 2, 11, 11)],
          dict(kernel_shape=[3, 2], dilations=[2, 2], pads=[1, 1, 1, 1],
               count_include_pad=count_include_pad), opset=19)


@pytest.mark.parametrize("op_type", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 9), (1, 2, 3, 4, 5)])
def test_global_pools(op_type, shape):
    check(op_type, [rand(*shape)])


# ---------------------------------------------------------------------------------- Gemm/MatMul

@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (), (1,), (5,), (4, 1), (1, 5), (4, 5)])
def test_gemm(trans_a, trans_b, c_shape):
    a = rand(*((3, 4) if trans_a else (4, 3)))
    b = rand(*((5, 3) if trans_b else (3, 5)))
    inputs = [a, b] if c_shape is None else [a, b, rand(*c_shape)]
    check("Gemm", inputs, dict(transA=trans_a, transB=trans_b, alpha=0.7, beta=-1.3))


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (2.0, 0.0), (0.5, 1.0)])
def test_gemm_alpha_beta(alpha, beta):
    check("Gemm", [rand(6, 7), rand(8, 7), rand(8)], dict(transB=1, alpha=alpha, beta=beta))


def test_gemm_old_opset_broadcast_attr_is_ignored():
    """onnxruntime has no Gemm-6 kernel: compare with numpy directly."""
    a, b, c = rand(2, 3), rand(3, 4), rand(4)
    got = KERNELS["Gemm"]([a, b, c], {"broadcast": 1, "beta": 2.0}, OpContext(opset=6))[0]
    np.testing.assert_allclose(got, a @ b + 2 * c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("a_shape,b_shape", [
    ((4,), (4, 3)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4, 5)), ((4, 5), (2, 5, 3)),
    ((2, 1, 3, 4), (5, 4, 2)), ((1, 6), (6, 1)), ((7,), (2, 7, 3)),
])
def test_matmul(a_shape, b_shape):
    check("MatMul", [rand(*a_shape), rand(*b_shape)])


# ------------------------------------------------------------------------------- Normalization

@pytest.mark.parametrize("opset", [7, 9, 15])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 3), (1, 3, 7)])
def test_batch_normalization(opset, shape):
    c = shape[1]
    inputs = [rand(*shape), rand(c), rand(c), rand(c), np.abs(rand(c)) + 0.1]
    check("BatchNormalization", inputs, dict(epsilon=1e-3), opset=opset)


@pytest.mark.parametrize("size", [3, 5])
def test_lrn(size):
    x = rand(2, 7, 4, 5) * 3
    check("LRN", [x], dict(size=size, alpha=1e-2, beta=0.75, bias=2.0))


def test_lrn_even_size_follows_spec():
    """onnxruntime rejects an even size; the spec window is floor((size-1)/2) channels before and
    ceil((size-1)/2) after."""
    x = rand(1, 6, 2, 3)
    got = KERNELS["LRN"]([x], {"size": 4, "alpha": 0.1, "beta": 0.5, "bias": 1.5},
                         OpContext(opset=17))[0]
    square = np.pad(x.astype(np.float64) ** 2, [(0, 0), (1, 2), (0, 0), (0, 0)])
    window = sum(square[:, i:i + 6] for i in range(4))
    np.testing.assert_allclose(got, x / (1.5 + 0.1 / 4 * window) ** 0.5, rtol=1e-5, atol=1e-6)


def test_lrn_defaults_alexnet():
    check("LRN", [rand(1, 16, 6, 6) * 10], dict(size=5))


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis", [(11, None), (11, 1), (11, 2), (11, -1), (13, None),
                                        (13, 1), (13, -2), (13, 0)])
def test_softmax(op_type, opset, axis):
    x = rand(2, 3, 4, 5) * 20  # large logits: needs the max subtraction
    check(op_type, [x], {} if axis is None else dict(axis=axis), opset=opset)


@pytest.mark.parametrize("axis", [None, -1, 1, -2])
@pytest.mark.parametrize("with_bias", [False, True])
def test_layer_normalization(axis, with_bias):
    x = rand(2, 3, 4, 5) * 3 + 1
    a = axis if axis is not None else -1
    norm_shape = x.shape[a % 4:]
    inputs = [x, rand(*norm_shape)] + ([rand(*norm_shape)] if with_bias else [])
    check("LayerNormalization", inputs, {} if axis is None else dict(axis=axis), opset=17)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 4, 9)])
def test_instance_normalization(shape):
    c = shape[1]
    check("InstanceNormalization", [rand(*shape) * 2 + 1, rand(c), rand(c)],
          dict(epsilon=1e-4), opset=17)


# ------------------------------------------------------------------------------------- Speed

SPEED_CASES = {
    "AlexNet conv2": ((1, 96, 27, 27), (256, 48, 5, 5), dict(group=2, pads=[2, 2, 2, 2])),
    "ResNet-50 3x3": ((1, 64, 56, 56), (64, 64, 3, 3), dict(pads=[1, 1, 1, 1])),
}


def _best_ms(fn, repeat=15):
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


@pytest.mark.parametrize("case", SPEED_CASES)
def test_conv_speed_vs_onnxruntime(case):
    """Not an assertion: prints our Conv time vs onnxruntime's on 2 threads (pytest -s)."""
    x_shape, w_shape, attrs = SPEED_CASES[case]
    x, w = rand(*x_shape), rand(*w_shape)
    model, node = one_node_model("Conv", [x, w], attrs, 17, initializers={"in1"})
    node_attrs, ctx = attrs_of(node), OpContext(opset=17)
    # Ours first: onnxruntime's worker threads spin after a run and would steal the BLAS cores.
    ours = _best_ms(lambda: KERNELS["Conv"]([x, w], node_attrs, ctx), repeat=30)
    theirs = _best_ms(lambda run=session(model, threads=2).run: run(None, {"in0": x}), repeat=30)
    print(f"\n{case}: numpy {ours:.3f} ms, onnxruntime {theirs:.3f} ms, ratio {ours / theirs:.2f}x")
