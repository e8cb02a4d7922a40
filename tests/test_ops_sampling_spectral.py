"""Sampling (GridSample, AffineGrid, RoiAlign, MaxRoiPool, DeformConv), NonMaxSuppression and spectral kernels
against onnxruntime, on one-node models run by both (onnx.reference where `oracle="ref"`).
"""

from __future__ import annotations

import numpy as np
import pytest

from deepcompress_cli.errors import DczError
from deepcompress_cli.interp.ops import KERNELS, OpContext
from deepcompress_cli.interp.ops import deform_conv, detection, sampling, spectral  # noqa: F401  (registration)

ort = pytest.importorskip("onnxruntime")
from one_node import check, oracle_and_kernel, run  # noqa: E402
RNG = np.random.default_rng(7)
F32, I64 = np.float32, np.int64


def randn(*shape):
    return RNG.standard_normal(shape).astype(F32)




# ------------------------------------------------------------------------------ GridSample


@pytest.mark.parametrize("align_corners", [0, 1])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode,opset", [("bilinear", 16), ("nearest", 16), ("bicubic", 16),
                                        ("linear", 20), ("nearest", 20), ("cubic", 20)])
def test_grid_sample_2d(mode, opset, padding, align_corners):
    x = randn(2, 3, 5, 6)
    grid = RNG.uniform(-1.6, 1.6, (2, 4, 7, 2)).astype(F32)  # some points fall outside
    check("GridSample", [x, grid], dict(mode=mode, padding_mode=padding, align_corners=align_corners),
          opset=opset, tol=1e-4)


@pytest.mark.parametrize("align_corners", [0, 1])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_grid_sample_3d(mode, padding, align_corners):
    x = randn(1, 2, 4, 5, 3)
    grid = RNG.uniform(-1.4, 1.4, (1, 3, 2, 4, 3)).astype(F32)
    check("GridSample", [x, grid], dict(mode=mode, padding_mode=padding, align_corners=align_corners),
          opset=22, tol=1e-4)


def test_grid_sample_by_hand():
    x = np.arange(4, dtype=F32).reshape(1, 1, 1, 4)  # one row: 0 1 2 3
    grid = np.array([[[[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [-2.0, 0.0]]]], F32)
    got = run("GridSample", [x, grid], {"align_corners": 1, "mode": b"linear"}, opset=20)
    np.testing.assert_allclose(got[0, 0, 0], [0, 3, 1.5, 0])  # x = -2 is outside: zeros padding
    got = run("GridSample", [x, grid], {"align_corners": 1, "padding_mode": b"reflection"}, opset=20)
    np.testing.assert_allclose(got[0, 0, 0], [0, 3, 1.5, 1.5])  # -2 is pixel -1.5: mirrored at 0 to 1.5
    with pytest.raises(DczError, match="does not fit"):
        run("GridSample", [x, grid[..., :1]], opset=20)


@pytest.mark.parametrize("align_corners", [0, 1])
@pytest.mark.parametrize("size", [[2, 3, 4, 5], [2, 3, 3, 4, 2], [2, 1, 2, 3]])
def test_affine_grid(size, align_corners):
    r = len(size) - 2
    check("AffineGrid", [randn(2, r, r + 1), np.array(size, I64)], dict(align_corners=align_corners), opset=20)


def test_affine_grid_single_pixel_axis_with_align_corners_is_centered():
    # -1 and 1 are both the centre of a lone pixel: 0, as PyTorch's affine_grid (onnxruntime says
    # 1, onnx.reference -1)
    identity = np.array([[[1, 0, 0], [0, 1, 0]]], F32)
    got = run("AffineGrid", [identity, np.array([1, 1, 1, 3], I64)], {"align_corners": 1}, opset=20)
    np.testing.assert_allclose(got[0, 0], [[-1, 0], [0, 0], [1, 0]])


# ------------------------------------------------------------------------------ RoI pooling

ROIS = np.array([[0.5, 1.0, 5.5, 6.0], [2.0, 0.0, 3.0, 1.0], [-2.0, -1.0, 9.5, 8.5], [1.2, 3.3, 6.7, 4.1]], F32)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("opset,attrs", [
    (10, dict(output_height=3, output_width=2)),
    (10, dict(output_height=2, output_width=3, sampling_ratio=2, spatial_scale=0.5)),
    (16, dict(output_height=3, output_width=2)),
    (16, dict(output_height=4, output_width=4, sampling_ratio=1, coordinate_transformation_mode="output_half_pixel")),
])
def test_roi_align(opset, attrs, mode):
    check("RoiAlign", [randn(2, 3, 8, 7), ROIS, np.array([0, 1, 1, 0], I64)], dict(attrs, mode=mode),
          opset=opset, tol=1e-4)


@pytest.mark.parametrize("pooled,scale", [([2, 2], 1.0), ([3, 2], 0.5), ([4, 5], 1.0)])
def test_max_roi_pool(pooled, scale):
    rois = np.concatenate([np.array([[0], [1], [1], [0]], F32), np.abs(ROIS)], axis=1)
    check("MaxRoiPool", [randn(2, 3, 8, 7), rois], dict(pooled_shape=pooled, spatial_scale=scale), opset=16)


# ------------------------------------------------------------------------------ DeformConv


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("x_shape,w_shape,attrs", [
    ((1, 2, 5, 5), (3, 2, 3, 3), {}),
    ((2, 4, 6, 5), (4, 2, 3, 2), dict(group=2, offset_group=2, pads=[1, 0, 1, 1], strides=[2, 1])),
    ((1, 2, 7, 6), (2, 2, 2, 2), dict(dilations=[2, 3], pads=[1, 1, 0, 2])),
])
def test_deform_conv(x_shape, w_shape, attrs, with_mask, with_bias):
    d = len(x_shape) - 2
    strides, dilations = attrs.get("strides", [1] * d), attrs.get("dilations", [1] * d)
    pads = attrs.get("pads", [0] * 2 * d)
    out = [(s + pads[i] + pads[i + d] - dl * (k - 1) - 1) // st + 1
           for i, (s, k, st, dl) in enumerate(zip(x_shape[2:], w_shape[2:], strides, dilations))]
    taps = attrs.get("offset_group", 1) * int(np.prod(w_shape[2:]))
    offset = (randn(x_shape[0], taps * d, *out) * 1.5).astype(F32)  # some taps leave the image
    inputs = [randn(*x_shape), randn(*w_shape), offset, randn(w_shape[0]) if with_bias else None,
              RNG.random((x_shape[0], taps, *out)).astype(F32) if with_mask else None]
    check("DeformConv", inputs, attrs, opset=19, tol=1e-4)


def test_deform_conv_1d_is_2d_with_one_row():
    # onnxruntime and onnx.reference are 2-D only: a 1-D case is a 2-D one of height 1, y offsets 0
    x, w, offset = randn(2, 3, 9), randn(2, 3, 3), randn(2, 3 * 3, 5) * 2
    attrs = {"strides": [2], "pads": [1, 1], "offset_group": 3}
    got = run("DeformConv", [x, w, offset], attrs, opset=19)
    offset_2d = np.stack([np.zeros_like(offset), offset], axis=2).reshape(2, 18, 1, 5)
    _, want = oracle_and_kernel("DeformConv", [x[:, :, None], w[:, :, None], offset_2d],
                                dict(strides=[1, 2], pads=[0, 1, 0, 1], offset_group=3), 19, "ort")
    np.testing.assert_allclose(got, want[:, :, 0], rtol=1e-4, atol=1e-4)


def test_deform_conv_zero_offsets_is_conv():
    x, w = randn(1, 2, 5, 6), randn(3, 2, 3, 3)
    got = run("DeformConv", [x, w, np.zeros((1, 18, 3, 4), F32)], {}, opset=19)
    want = np.einsum("cij,ocij->o", np.lib.stride_tricks.sliding_window_view(x[0], (3, 3), axis=(1, 2))[:, 1, 2], w)
    np.testing.assert_allclose(got[0, :, 1, 2], want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ NonMaxSuppression


def nms_check(boxes, scores, *limits, center_point_box=0):
    check("NonMaxSuppression", [boxes, scores, *limits], dict(center_point_box=center_point_box), opset=11)


@pytest.mark.parametrize("center_point_box", [0, 1])
@pytest.mark.parametrize("limits", [
    (np.array([3], I64),),
    (np.array([10], I64), np.array([0.3], F32)),
    (np.array([10], I64), np.array([0.5], F32), np.array([0.2], F32)),
    (np.array([2], I64), np.array([0.0], F32), np.array([0.6], F32)),
    (np.array([0], I64), np.array([0.5], F32)),
    (),
])
def test_non_max_suppression(limits, center_point_box):
    corners = RNG.uniform(0, 10, (2, 12, 2, 2)).astype(F32)
    boxes = corners.reshape(2, 12, 4)  # corners in any order: y1 > y2 is allowed
    if center_point_box:
        boxes = np.concatenate([corners[:, :, 0], np.abs(corners[:, :, 1]) / 2], axis=-1)
    scores = RNG.permutation(2 * 3 * 12).reshape(2, 3, 12).astype(F32) / 72  # no ties
    nms_check(boxes, scores, *limits, center_point_box=center_point_box)


def test_non_max_suppression_by_hand():
    boxes = np.array([[[0, 0, 1, 1], [0, 0.5, 1, 1.5], [0, 0.1, 1, 1.1], [5, 5, 6, 6]]], F32)
    scores = np.array([[[0.9, 0.8, 0.7, 0.6]]], F32)
    got = run("NonMaxSuppression", [boxes, scores, np.array([5], I64), np.array([1 / 3], F32)])
    # box 1 overlaps box 0 by IoU exactly 1/3: kept (only IoU > threshold suppresses); box 2 goes
    np.testing.assert_array_equal(got, [[0, 0, 0], [0, 0, 1], [0, 0, 3]])
    got = run("NonMaxSuppression", [boxes, scores, np.array([5], I64), np.array([0.9], F32), np.array([0.7], F32)])
    np.testing.assert_array_equal(got, [[0, 0, 0], [0, 0, 1], [0, 0, 2]])  # score 0.7 == threshold stays
    assert run("NonMaxSuppression", [boxes, scores]).shape == (0, 3)  # max_output_boxes_per_class 0


# ------------------------------------------------------------------------------ spectral


def signal(*shape, complex_=False):
    return randn(*shape, 2 if complex_ else 1)


@pytest.mark.parametrize("attrs,complex_,length", [
    ({}, False, None), ({}, True, None), (dict(inverse=1), True, None), (dict(onesided=1), False, None),
    ({}, False, 12), (dict(inverse=1), True, 5), (dict(onesided=1), False, 7),
])
@pytest.mark.parametrize("axis", [1, 2])
def test_dft_opset17(axis, attrs, complex_, length):
    x = signal(2, 8, 6, complex_=complex_)
    check("DFT", [x, None if length is None else np.array(length, I64)], dict(attrs, axis=axis), opset=17, tol=1e-4)


@pytest.mark.parametrize("attrs,complex_", [({}, False), (dict(inverse=1), True), (dict(onesided=1), False),
                                            ({}, True)])
@pytest.mark.parametrize("axis", [None, 1, -2, -3])
def test_dft_opset20(axis, attrs, complex_):
    x = signal(2, 8, 6, complex_=complex_)
    check("DFT", [x, None, None if axis is None else np.array(axis, I64)], attrs, opset=20, tol=1e-4)


def test_irfft():
    spectrum = np.fft.rfft(RNG.standard_normal((3, 10)), axis=1)
    x = np.stack([spectrum.real, spectrum.imag], axis=-1).astype(F32)  # [3, 6, 2]: 6 bins of 10 samples
    got = run("DFT", [x, None, np.array(1, I64)], {"inverse": 1, "onesided": 1}, opset=20)
    np.testing.assert_allclose(got[..., 0], np.fft.irfft(spectrum, axis=1), rtol=1e-5, atol=1e-5)
    got = run("DFT", [x, np.array(9, I64), np.array(1, I64)], {"inverse": 1, "onesided": 1}, opset=20)
    assert got.shape == (3, 9, 1)


@pytest.mark.parametrize("with_window,frame_length,onesided", [(False, 16, 1), (True, None, 1), (True, 16, 0)])
def test_stft(with_window, frame_length, onesided):
    window = np.hanning(16).astype(F32) if with_window else None
    check("STFT", [signal(2, 64), np.array(6, I64), window, None if frame_length is None else np.array(16, I64)],
          dict(onesided=onesided), opset=17, tol=1e-3)


def test_stft_default_frame_is_the_whole_signal():
    x = signal(2, 20)  # onnxruntime fails without window and frame_length
    got = run("STFT", [x, np.array(3, I64)], {}, opset=17)
    spectrum = np.fft.rfft(x[..., 0].astype(np.float64), axis=1)
    np.testing.assert_allclose(got[:, 0], np.stack([spectrum.real, spectrum.imag], -1), rtol=1e-5, atol=1e-5)
    assert got.shape == (2, 1, 11, 2)


@pytest.mark.parametrize("bins,dft_length,rate,low,high", [(8, 16, 8192, 0.0, 4096.0), (5, 64, 16000, 100.0, 7000.0),
                                                           (20, 512, 22050, 20.0, 11025.0)])
def test_mel_weight_matrix(bins, dft_length, rate, low, high):
    inputs = [np.array(bins, I64), np.array(dft_length, I64), np.array(rate, I64), np.array(low, F32), np.array(high, F32)]
    check("MelWeightMatrix", inputs, opset=17)


# ------------------------------------------------------------------------------ sizes from values


def test_value_sized_outputs_are_refused_before_allocation():
    small = OpContext(opset=20, node_name="n", max_bytes=1 << 20)
    with pytest.raises(DczError, match="limit"):
        KERNELS["DFT"]([signal(1, 4), np.array(1 << 40, I64)], {}, small)
    huge_roi = np.array([[0, 0, 1e7, 1e7]], F32)  # the adaptive sampling grid grows with the RoI
    with pytest.raises(DczError, match="limit"):
        KERNELS["RoiAlign"]([randn(1, 1, 4, 4), huge_roi, np.array([0], I64)], {}, small)
    with pytest.raises(DczError, match="limit"):
        KERNELS["MelWeightMatrix"]([np.array(v) for v in (1 << 20, 1 << 20, 16000, 0.0, 8000.0)], {}, small)
    with pytest.raises(DczError, match="limit"):
        KERNELS["AffineGrid"]([randn(1, 2, 3), np.array([1, 1, 1 << 20, 1 << 20], I64)], {}, small)
