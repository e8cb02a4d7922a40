"""Math kernels of the interpreter against onnxruntime: trigonometric, IsInf/IsNaN, activations
with attributes, Hardmax, bitwise ops, Mod, signal windows, CumSum/CumProd, ReduceLogSum,
LpNormalization and LpPool.

Each case builds a one-node ONNX model at the case's opset, runs it in onnxruntime and compares
with the kernel called the way the interpreter calls it.  Edge cases whose answer the spec fixes
(IEEE special values, ties, empty inputs) are also written out by hand.
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
RNG = np.random.default_rng(14)
F32, F16, I64 = np.float32, np.float16, np.int64


def randn(*shape, dtype=F32):
    return np.asarray(RNG.standard_normal(shape), dtype=dtype)


# ------------------------------------------------------------------------------ harness


def kernel(op_type, inputs, attrs=None, opset=18, n_out=1):
    """The kernel's outputs, with attributes as the interpreter passes them (strings as bytes)."""
    node = helper.make_node(op_type, [], [], **(attrs or {}))
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    ctx = OpContext(opset=opset, node_name="n", num_outputs=n_out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN/inf results come without numpy warnings
        return KERNELS[op_type](list(inputs), values, ctx)


def run_ort(op_type, inputs, attrs=None, opset=18, n_out=1, oracle="ort"):
    model, _, feeds = one_node(op_type, inputs, attrs or {}, opset, n_out)
    return oracle_run(model, feeds, oracle)


def check(op_type, inputs, attrs=None, opset=18, n_out=1, rtol=1e-5, oracle="ort"):
    want = run_ort(op_type, inputs, attrs, opset, n_out, oracle)
    got = kernel(op_type, inputs, attrs, opset, n_out)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_same(g, w, rtol)


def assert_same(got, want, rtol=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    if got.dtype.kind == "f":
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol,
                                   atol=rtol / 10)
    else:
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------ trigonometric

UNIT = np.clip(randn(3, 4), -0.95, 0.95).astype(F32)


@pytest.mark.parametrize("op_type,x", [
    ("Sin", randn(3, 4) * 4), ("Cos", randn(3, 4) * 4), ("Tan", UNIT),
    ("Asin", UNIT), ("Acos", UNIT), ("Atan", randn(3, 4) * 3),
    ("Sinh", randn(3, 4)), ("Cosh", randn(3, 4)), ("Asinh", randn(3, 4) * 3),
    ("Acosh", 1 + np.abs(randn(3, 4))), ("Atanh", UNIT),
])
def test_trigonometric(op_type, x):
    check(op_type, [x.astype(F32)], opset=9)
    check(op_type, [x.astype(F32)], opset=22)


def test_trigonometric_float16_and_domain_edges():
    check("Sin", [randn(5, dtype=F16)], opset=7, rtol=1e-3)
    out = [kernel(name, [np.array(v, F32)])[0] for name, v in
           [("Asin", 2.0), ("Acosh", 0.5), ("Atanh", 1.0), ("Atanh", -1.0), ("Cosh", 1000.0)]]
    assert np.isnan(out[0]) and np.isnan(out[1]) and out[0].dtype == F32
    assert out[2] == np.inf and out[3] == -np.inf and out[4] == np.inf


# ------------------------------------------------------------------------------ IsInf / IsNaN

SPECIAL = np.array([np.inf, -np.inf, np.nan, 1.0, -0.0, 3e38], F32)


@pytest.mark.parametrize("positive,negative", [(1, 1), (1, 0), (0, 1), (0, 0)])
def test_isinf(positive, negative):
    check("IsInf", [SPECIAL], {"detect_positive": positive, "detect_negative": negative}, opset=10)
    expected = [bool(positive), bool(negative), False, False, False, False]
    np.testing.assert_array_equal(
        kernel("IsInf", [SPECIAL], {"detect_positive": positive, "detect_negative": negative})[0],
        expected)


def test_isnan():
    check("IsNaN", [SPECIAL], opset=13)
    check("IsNaN", [np.array([np.inf, np.nan, -0.0, 6e4], F16)], opset=13)


# ------------------------------------------------------------------------------ activations

X = randn(3, 5) * 3


@pytest.mark.parametrize("op_type,attrs,opset", [
    ("Selu", {}, 6), ("Selu", {"alpha": 2.0, "gamma": 0.5}, 6),
    ("Celu", {}, 12), ("Celu", {"alpha": 2.5}, 12),
    ("ThresholdedRelu", {}, 10), ("ThresholdedRelu", {"alpha": -0.5}, 10),
    ("Shrink", {}, 9), ("Shrink", {"bias": 1.5, "lambd": 2.0}, 9),
    ("Softsign", {}, 1), ("Mish", {}, 18), ("Swish", {}, 24), ("Swish", {"alpha": 0.3}, 24),
])
def test_activations(op_type, attrs, opset):
    check(op_type, [X], attrs, opset=opset)


def test_activations_keep_float16_and_extremes():
    x16 = randn(4, 6, dtype=F16)
    for op_type in ["Selu", "Celu", "Softsign", "Mish", "Swish", "Shrink"]:
        # onnxruntime has no float16 kernels for these: its float32 result, rounded
        want = run_ort(op_type, [x16.astype(F32)], opset=24)[0].astype(F16)
        assert_same(kernel(op_type, [x16], opset=24)[0], want, rtol=2e-3)
    big = np.array([-1000.0, 1000.0], F32)  # no overflow, no warning
    np.testing.assert_allclose(kernel("Swish", [big])[0], [0, 1000])
    np.testing.assert_allclose(kernel("Mish", [big])[0], [0, 1000])
    np.testing.assert_allclose(kernel("Selu", [big])[0], [-1.7580993, 1050.701], rtol=1e-6)


def test_shrink_integers():
    x = np.array([-5, -2, -1, 0, 1, 2, 5], np.int32)
    check("Shrink", [x], {"bias": 1.0, "lambd": 1.5}, opset=9)
    assert kernel("Shrink", [x], {"bias": 1.0, "lambd": 1.5})[0].tolist() == [-4, -1, 0, 0, 0, 1, 4]


@pytest.mark.parametrize("attrs,opset", [({}, 11), ({"axis": 2}, 11), ({"axis": 0}, 11),
                                         ({}, 13), ({"axis": 1}, 13), ({"axis": -3}, 13)])
def test_hardmax(attrs, opset):
    check("Hardmax", [randn(2, 3, 4)], attrs, opset=opset)


def test_hardmax_ties_take_the_first_and_empty_is_empty():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], F32)
    assert kernel("Hardmax", [x], opset=13)[0].tolist() == [[0, 1, 0], [1, 0, 0]]
    # opset 11: one one-hot over the trailing axes seen as one row
    assert kernel("Hardmax", [x], {"axis": 0}, opset=11)[0].tolist() == [[0, 1, 0], [0, 0, 0]]
    assert kernel("Hardmax", [np.zeros((0, 3), F32)], opset=13)[0].shape == (0, 3)


# ------------------------------------------------------------------------------ bitwise

def ints(dtype, *shape):
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("op_type", ["BitwiseAnd", "BitwiseOr", "BitwiseXor"])
@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint8, np.uint64])
def test_bitwise_binary(op_type, dtype):
    check(op_type, [ints(dtype, 2, 3, 4), ints(dtype, 3, 1)], opset=18)


@pytest.mark.parametrize("dtype", [np.int16, np.uint32, np.int64])
def test_bitwise_not(dtype):
    check("BitwiseNot", [ints(dtype, 3, 4)], opset=18)


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_bit_shift(direction, dtype):
    bits = np.iinfo(dtype).bits
    x = ints(dtype, 3, 4)
    shift = RNG.integers(0, bits, (4,)).astype(dtype)
    check("BitShift", [x, shift], {"direction": direction}, opset=11)


def test_bitwise_rejects_floats_and_bad_direction():
    with pytest.raises(DczError, match="integer"):
        kernel("BitwiseAnd", [X, X])
    with pytest.raises(DczError, match="direction"):
        kernel("BitShift", [np.ones(2, np.uint8), np.ones(2, np.uint8)], {"direction": "UP"})


def test_broadcast_growth_is_capped():
    a, b = np.ones((1 << 16, 1), np.int64), np.ones((1, 1 << 16), np.int64)
    with pytest.raises(DczError, match="would create"):
        kernel("BitwiseOr", [a, b])
    with pytest.raises(DczError, match="would create"):
        kernel("Mod", [a, b])


# ------------------------------------------------------------------------------ Mod

MIXED = np.array([-7, -6, -1, 0, 1, 5, 7, 100], np.int64)
DIVISORS = np.array([[3], [-3], [7]], np.int64)


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64])
def test_mod_signed(fmod, dtype):
    check("Mod", [MIXED.astype(dtype), DIVISORS.astype(dtype)], {"fmod": fmod}, opset=13)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_mod_unsigned(dtype):
    a, b = ints(dtype, 3, 4), 1 + ints(np.uint8, 4).astype(dtype)
    check("Mod", [a, b], opset=13)
    check("Mod", [a, b], {"fmod": 1}, opset=13)


def test_mod_sign_rules():
    a, b = np.array([-7, 7, -7, 7], np.int32), np.array([3, -3, -3, 3], np.int32)
    assert kernel("Mod", [a, b])[0].tolist() == [2, -2, -1, 1]  # sign of the divisor
    assert kernel("Mod", [a, b], {"fmod": 1})[0].tolist() == [-1, 1, -1, 1]  # of the dividend
    assert kernel("Mod", [a, np.zeros(4, np.int32)])[0].tolist() == [0, 0, 0, 0]  # no warning


@pytest.mark.parametrize("dtype", [F32, np.float64, F16])
def test_mod_float_fmod(dtype):
    a = (randn(3, 4) * 10).astype(dtype)
    b = (randn(4) * 3).astype(dtype)
    check("Mod", [a, b], {"fmod": 1}, opset=13, rtol=1e-3 if dtype == F16 else 1e-5)


def test_mod_float_floor_mod_opset_28():
    a = (randn(3, 4) * 10).astype(F32)
    b = (randn(4) * 3).astype(F32)
    check("Mod", [a, b], opset=28)
    inf, nan = np.inf, np.nan
    a = np.array([-0.0, 0.0, -1.0, 1.0, 1.0, -1.0, inf, 1.0, nan, 5.5], F32)
    b = np.array([2.0, -2.0, inf, inf, -inf, -inf, 2.0, 0.0, 1.0, -2.0], F32)
    got = kernel("Mod", [a, b], opset=28)[0]
    np.testing.assert_array_equal(got, [0, -0.0, inf, 1, -inf, -1, nan, nan, nan, -0.5])
    assert np.signbit(got[:2]).tolist() == [False, True]  # +-0 take the divisor's sign
    with pytest.raises(DczError, match="fmod must be 1"):
        kernel("Mod", [a, b], opset=13)


# ------------------------------------------------------------------------------ windows


@pytest.mark.parametrize("op_type", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic", [0, 1])
@pytest.mark.parametrize("output_datatype", [1, 11])
def test_windows(op_type, periodic, output_datatype):
    check(op_type, [np.array(10, np.int64)],
          {"periodic": periodic, "output_datatype": output_datatype}, opset=17)
    check(op_type, [np.array(7, np.int32)], {"periodic": periodic}, opset=17)


def test_window_edges():
    np.testing.assert_allclose(kernel("HannWindow", [np.array(5, I64)], {"periodic": 0})[0],
                               [0, 0.5, 1, 0.5, 0], atol=1e-7)
    assert kernel("HannWindow", [np.array(1, I64)], {"periodic": 0})[0].tolist() == [1.0]
    assert kernel("BlackmanWindow", [np.array(0, I64)])[0].shape == (0,)
    with pytest.raises(DczError):
        kernel("HammingWindow", [np.array(-3, I64)])
    with pytest.raises(DczError, match="would create"):
        kernel("HannWindow", [np.array(1 << 40, I64)])


# ------------------------------------------------------------------------------ CumSum / CumProd


@pytest.mark.parametrize("op_type,opset", [("CumSum", 14), ("CumProd", 26)])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumulative(op_type, opset, axis, exclusive, reverse):
    x = randn(3, 4)
    check(op_type, [x, np.array(axis, I64)], {"exclusive": exclusive, "reverse": reverse},
          opset=opset)


@pytest.mark.parametrize("op_type,opset", [("CumSum", 14), ("CumProd", 26)])
def test_cumulative_int32_keeps_its_dtype(op_type, opset):
    x = RNG.integers(-3, 4, (2, 5)).astype(np.int32)
    check(op_type, [x, np.array([1], np.int32)], {"exclusive": 1}, opset=opset)


def test_cumulative_by_hand():
    x = np.array([2.0, 0.0, 3.0, 4.0], F32)
    axis = np.array(0, I64)
    assert kernel("CumProd", [x, axis], {"exclusive": 1})[0].tolist() == [1, 2, 0, 0]
    assert kernel("CumProd", [x, axis], {"exclusive": 1, "reverse": 1})[0].tolist() == [0, 12, 4, 1]
    assert kernel("CumSum", [x, axis], {"reverse": 1})[0].tolist() == [9, 7, 7, 4]
    assert kernel("CumSum", [np.zeros((2, 0), F32), np.array(1, I64)])[0].shape == (2, 0)
    with pytest.raises(DczError, match="axis"):
        kernel("CumSum", [x, np.array([0, 1], I64)])


# ------------------------------------------------------------------------------ ReduceLogSum


@pytest.mark.parametrize("axes,keepdims", [(None, 1), ([1], 0), ([0, -1], 1), ([2, 0], 0)])
def test_reduce_log_sum(axes, keepdims):
    x = np.abs(randn(2, 3, 4)) + F32(0.1)
    check("ReduceLogSum", [x, None if axes is None else np.array(axes, I64)],
          {"keepdims": keepdims}, opset=18)
    attrs = {"keepdims": keepdims} if axes is None else {"keepdims": keepdims, "axes": axes}
    check("ReduceLogSum", [x], attrs, opset=13)


def test_reduce_log_sum_empty_and_noop():
    got = kernel("ReduceLogSum", [np.zeros((2, 0, 3), F32), np.array([1], I64)])[0]
    assert got.shape == (2, 1, 3) and np.all(got == -np.inf)
    x = randn(2, 3)
    assert kernel("ReduceLogSum", [x, np.zeros(0, I64)], {"noop_with_empty_axes": 1})[0] is x


# ------------------------------------------------------------------------------ Lp norms


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_lp_normalization(p, axis):
    check("LpNormalization", [randn(3, 4, 5)], {"p": p, "axis": axis}, opset=1)


def test_lp_normalization_zero_vector_stays_zero():
    x = np.array([[0.0, 0.0], [3.0, 4.0]], F32)
    np.testing.assert_allclose(kernel("LpNormalization", [x])[0], [[0, 0], [0.6, 0.8]])
    np.testing.assert_allclose(kernel("LpNormalization", [x], {"p": 1, "axis": 0})[0],
                               [[0, 0], [1, 1]])
    with pytest.raises(DczError, match="p must be"):
        kernel("LpNormalization", [x], {"p": 3})


@pytest.mark.parametrize("attrs,opset", [
    ({"kernel_shape": [3, 3]}, 18),
    ({"kernel_shape": [2, 3], "p": 1, "strides": [2, 1], "pads": [1, 0, 0, 2]}, 18),
    ({"kernel_shape": [3, 2], "p": 3, "dilations": [2, 1]}, 18),
    ({"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, 18),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}, 18),
    ({"kernel_shape": [3, 2], "auto_pad": "SAME_UPPER"}, 11),
    ({"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"}, 11),
])
def test_lp_pool_2d(attrs, opset):
    check("LpPool", [randn(2, 3, 7, 6)], attrs, opset=opset)


def test_lp_pool_1d_3d_and_float_p_of_opset_1():
    check("LpPool", [randn(1, 2, 9)], {"kernel_shape": [4], "strides": [2]}, opset=18)
    check("LpPool", [randn(1, 2, 4, 5, 3)], {"kernel_shape": [2, 3, 2]}, opset=18)
    x = randn(1, 1, 3, 3)
    want = np.sqrt(np.sum(x ** 2))
    np.testing.assert_allclose(kernel("LpPool", [x], {"kernel_shape": [3, 3], "p": 2.0},
                                      opset=1)[0].reshape(-1), [want], rtol=1e-6)


# ------------------------------------------------------------------------------ DFT, STFT, mel


@pytest.mark.parametrize("attrs,channels", [
    ({}, 1), ({}, 2), ({"inverse": 1}, 1), ({"inverse": 1}, 2), ({"onesided": 1}, 1),
    ({"axis": 2}, 1), ({"axis": 2}, 2), ({"axis": -2, "inverse": 1}, 2)])
def test_dft_opset_17(attrs, channels):
    check("DFT", [randn(2, 6, 5, channels)], attrs, opset=17, rtol=1e-4)  # onnxruntime: float32 FFT


@pytest.mark.parametrize("axis", [None, 1, -3, 0])
@pytest.mark.parametrize("dft_length", [None, 4, 9])
@pytest.mark.parametrize("inverse,onesided,channels", [(0, 0, 1), (0, 0, 2), (1, 0, 2),
                                                       (0, 1, 1), (1, 1, 2)])
def test_dft_opset_20(axis, dft_length, inverse, onesided, channels):
    x = randn(3, 6, 5, channels)
    inputs = [x, None if dft_length is None else np.array(dft_length, I64),
              None if axis is None else np.array(axis, I64)]
    # An inverse one-sided DFT of dft_length n reads the first n // 2 + 1 bins as half of a
    # Hermitian spectrum (numpy's irfft, onnx's reference); onnxruntime departs from that unless
    # n is the default 2 * (bins - 1).
    oracle = "ref" if inverse and onesided and dft_length is not None else "ort"
    check("DFT", inputs, {"inverse": inverse, "onesided": onesided}, opset=20, rtol=1e-4,
          oracle=oracle)


def test_dft_round_trip_and_errors():
    x = randn(1, 8, 1)
    spectrum = kernel("DFT", [x, None, np.array(1, I64)], {"onesided": 1}, opset=20)[0]
    back = kernel("DFT", [spectrum, None, np.array(1, I64)], {"onesided": 1, "inverse": 1},
                  opset=20)[0]
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-6)  # default length 2 * (5 - 1)
    with pytest.raises(DczError, match="axis"):
        kernel("DFT", [x, None, np.array(-1, I64)], opset=20)  # the pair axis
    with pytest.raises(DczError, match="last axis"):
        kernel("DFT", [randn(2, 8, 3)], opset=20)
    with pytest.raises(DczError, match="would create"):
        kernel("DFT", [x, np.array(1 << 40, I64)], opset=20)


@pytest.mark.parametrize("windowed", [False, True])
@pytest.mark.parametrize("onesided", [1, 0])
@pytest.mark.parametrize("step,length", [(8, 16), (3, 10), (5, 32)])
def test_stft(windowed, onesided, step, length):
    signal = randn(2, 32, 1)
    window = np.hanning(length + 1)[:-1].astype(F32) if windowed else None
    inputs = [signal, np.array(step, I64), window, np.array(length, I64)]
    check("STFT", inputs, {"onesided": onesided}, opset=17, rtol=1e-4)
    if windowed:  # frame_length from the window's length
        check("STFT", inputs[:3], {"onesided": onesided}, opset=17, rtol=1e-4)


def test_stft_complex_signal_and_errors():
    check("STFT", [randn(1, 20, 2), np.array(4, I64), None, np.array(8, I64)], {"onesided": 0},
          opset=17, rtol=1e-4)
    with pytest.raises(DczError, match="window"):
        kernel("STFT", [randn(1, 20, 1), np.array(4, I64), np.ones(6, F32), np.array(8, I64)])
    with pytest.raises(DczError, match="frame"):
        kernel("STFT", [randn(1, 20, 1), np.array(4, I64), None, np.array(30, I64)])


@pytest.mark.parametrize("mel_bins,dft_length,rate,lower,upper", [
    (8, 16, 8192, 0.0, 4096.0), (10, 64, 16000, 20.0, 8000.0), (4, 512, 44100, 100.0, 3000.0),
    (13, 400, 16000, 0.0, 7600.0)])
def test_mel_weight_matrix(mel_bins, dft_length, rate, lower, upper):
    inputs = [np.array(mel_bins, np.int32), np.array(dft_length, np.int32),
              np.array(rate, np.int32), np.array(lower, F32), np.array(upper, F32)]
    check("MelWeightMatrix", inputs, opset=17)
    check("MelWeightMatrix", inputs, {"output_datatype": 11}, opset=17)


# ------------------------------------------------------------------------------ AffineGrid, GridSample


@pytest.mark.parametrize("align,size", [(0, [2, 3, 4, 5]), (1, [2, 3, 4, 5]), (0, [2, 1, 3, 4, 5]),
                                        (1, [2, 1, 3, 4, 5]), (0, [2, 3, 1, 6])])
def test_affine_grid(align, size):
    r = len(size) - 2
    theta = randn(2, r, r + 1)
    check("AffineGrid", [theta, np.array(size, I64)], {"align_corners": align}, opset=20)


def test_affine_grid_single_pixel_axis_with_align_corners_is_centred():
    # One pixel whose centre is both -1 and 1: PyTorch puts it at 0 (onnxruntime at 1, onnx's
    # reference at -1; the spec does not say).
    identity = np.array([[[1, 0, 0], [0, 1, 0]]], F32)
    got = kernel("AffineGrid", [identity, np.array([1, 1, 1, 3], I64)], {"align_corners": 1},
                 opset=20)[0]
    np.testing.assert_allclose(got, [[[[-1, 0], [0, 0], [1, 0]]]])


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample_2d(mode, padding, align):
    x = randn(2, 3, 5, 6)
    grid = RNG.uniform(-1.6, 1.6, (2, 4, 7, 2)).astype(F32)  # a third falls outside the image
    attrs = {"mode": mode, "padding_mode": padding, "align_corners": align}
    check("GridSample", [x, grid], attrs, opset=16, rtol=1e-4)
    attrs["mode"] = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    check("GridSample", [x, grid], attrs, opset=20, rtol=1e-4)


@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_grid_sample_3d(mode, padding):
    x = randn(1, 2, 3, 4, 5)
    grid = RNG.uniform(-1.4, 1.4, (1, 2, 3, 4, 3)).astype(F32)
    check("GridSample", [x, grid], {"mode": mode, "padding_mode": padding}, opset=20, rtol=1e-4)


def test_grid_sample_by_hand():
    x = np.arange(6, dtype=F32).reshape(1, 1, 2, 3)  # [[0 1 2] [3 4 5]]
    corners = np.array([[[[-1, -1], [1, 1], [0, 0], [-3, 0]]]], F32)  # (x, y) pairs
    got = kernel("GridSample", [x, corners], {"align_corners": 1}, opset=20)[0]
    np.testing.assert_allclose(got.reshape(-1), [0, 5, 2.5, 0])  # zeros padding far outside
    got = kernel("GridSample", [x, corners], {"align_corners": 1, "padding_mode": "border"})[0]
    np.testing.assert_allclose(got.reshape(-1), [0, 5, 2.5, 1.5])
    halves = np.array([[[[-0.5, -1], [0.5, -1]]]], F32)  # x at pixel 0.5 and 1.5: halves to even
    got = kernel("GridSample", [x, halves], {"mode": "nearest", "align_corners": 1})[0]
    assert got.reshape(-1).tolist() == [0, 2]
    check("GridSample", [x, halves], {"mode": "nearest", "align_corners": 1}, opset=20)
    nan = np.array([[[[np.nan, 0.0]]]], F32)  # a NaN position reads nothing, never crashes
    with np.errstate(all="ignore"):  # as Interpreter.run calls kernels
        assert kernel("GridSample", [x, nan], {"mode": "nearest"})[0].shape == (1, 1, 1, 1)
    with pytest.raises(DczError, match="does not fit"):
        kernel("GridSample", [x, np.zeros((1, 2, 2, 3), F32)])
