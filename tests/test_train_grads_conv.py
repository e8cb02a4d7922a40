"""Backward rules of convolutions, normalizations and batched MatMul against finite differences
of the interpreter's own forward kernels."""

from __future__ import annotations

import numpy as np
import pytest

from deepcompress_cli.interp.ops import KERNELS, OpContext
from deepcompress_cli.train.grads import GRADS
from test_train_grads import check_gradient, rand


@pytest.mark.parametrize("attrs,x_shape,w_shape", [
    ({}, (2, 3, 6, 6), (3, 1, 3, 3)),
    ({"strides": [2, 2], "pads": [1, 1, 1, 1]}, (2, 4, 7, 7), (4, 1, 3, 3)),
    ({"strides": [2, 1], "pads": [2, 0, 1, 2]}, (1, 3, 8, 7), (3, 1, 5, 5)),
    ({"dilations": [2, 2], "pads": [2, 2, 2, 2]}, (1, 2, 6, 6), (2, 1, 3, 3)),
    ({"strides": [2, 2], "dilations": [2, 1]}, (1, 2, 9, 8), (2, 1, 3, 2)),
    ({"pads": [2, 0, 0, 2]}, (1, 2, 5, 5), (2, 1, 2, 2)),  # stride 1, padded beyond the kernel
    ({}, (2, 3, 5, 5), (6, 1, 3, 3)),  # channel multiplier 2
    ({"strides": [2, 2], "pads": [1, 0, 0, 1]}, (1, 2, 6, 6), (6, 1, 3, 3)),  # multiplier 3
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (1, 3, 6, 6), (3, 1, 3, 3)),
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (1, 3, 6, 6), (3, 1, 4, 4)),
    ({"auto_pad": "SAME_UPPER"}, (1, 2, 5, 5), (4, 1, 2, 2)),
    ({"auto_pad": "VALID", "strides": [3, 3]}, (1, 3, 8, 8), (3, 1, 3, 3)),
    ({"pads": [1, 2], "strides": [2]}, (2, 3, 9), (3, 1, 3)),  # 1-D
    ({"pads": [1, 3], "dilations": [2]}, (1, 2, 9), (4, 1, 3)),  # 1-D, stride 1
    ({"pads": [1, 1, 1, 1, 1, 1]}, (1, 2, 3, 4, 3), (2, 1, 3, 3, 2)),  # 3-D, stride 1
    ({"pads": [1, 0, 1, 0, 1, 1], "strides": [1, 2, 1]}, (1, 2, 4, 5, 4), (4, 1, 3, 2, 2)),  # 3-D
])
def test_depthwise_conv(attrs, x_shape, w_shape):
    attrs = {**attrs, "group": x_shape[1]}
    check_gradient("Conv", [rand(*x_shape), rand(*w_shape), rand(w_shape[0])], attrs)


@pytest.mark.parametrize("attrs,x_shape,w_shape", [
    ({"group": 2}, (2, 4, 5, 5), (6, 2, 3, 3)),
    ({"group": 3, "strides": [2, 2], "pads": [1, 1, 0, 0]}, (1, 6, 7, 6), (3, 2, 3, 3)),
    ({"group": 2, "auto_pad": "SAME_LOWER", "dilations": [2, 2]}, (1, 4, 6, 6), (4, 2, 2, 2)),
    ({"group": 2}, (2, 4, 3, 3), (4, 2, 1, 1)),  # pointwise grouped: x is its own im2col
    ({}, (2, 3, 4, 4), (5, 3, 1, 1)),
    ({"strides": [2, 2]}, (1, 3, 5, 5), (2, 3, 1, 1)),  # strided 1x1 goes through im2col
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (1, 2, 6, 6), (3, 2, 4, 4)),
    ({"auto_pad": "VALID"}, (1, 2, 5, 5), (3, 2, 3, 3)),
    ({"group": 2, "pads": [1, 1, 0, 0, 1, 0]}, (1, 4, 3, 4, 3), (2, 2, 2, 2, 2)),  # 3-D
])
def test_grouped_and_dense_conv(attrs, x_shape, w_shape):
    check_gradient("Conv", [rand(*x_shape), rand(*w_shape), rand(w_shape[0])], attrs)


@pytest.mark.parametrize("attrs,w_shape", [({"group": 2, "pads": [1, 0, 0, 1]}, (4, 2, 3, 2)), ({}, (3, 4, 1, 1))])
def test_dense_conv_in_chunks_of_images(monkeypatch, attrs, w_shape):
    """A chunk per image (as for large inputs) gives the gradients of one chunk for all."""
    x = rand(3, 4, 5, 5)
    inputs = [x, rand(*w_shape)]
    y = KERNELS["Conv"](inputs, attrs, OpContext(13))[0]
    g = rand(*y.shape)
    whole = GRADS["Conv"](inputs, y, attrs, g, [True, True], 13)
    monkeypatch.setattr("deepcompress_cli.train.grads.linear._CHUNK_BYTES", 1)
    chunked = GRADS["Conv"](inputs, y, attrs, g, [True, True], 13)
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    check_gradient("Conv", inputs, attrs)


def test_conv_without_input_gradient():
    """Only the weights train (the first layer): no dx computed, dw still right."""
    x, w = rand(2, 3, 5, 5), rand(3, 1, 3, 3)
    for group in (1, 3):
        w_g = rand(6, 3 // group, 3, 3)
        y = KERNELS["Conv"]([x, w_g], {"group": group}, OpContext(13))[0]
        dx, dw = GRADS["Conv"]([x, w_g], y, {"group": group}, np.ones_like(y), [False, True], 13)
        assert dx is None and dw.shape == w_g.shape
    check_gradient("Conv", [x, w], {"group": 3}, wrt=[1])


@pytest.mark.parametrize("attrs,x_shape,w_shape", [
    ({}, (2, 3, 4, 4), (3, 2, 3, 3)),
    ({"strides": [2, 2]}, (1, 2, 3, 4), (2, 3, 3, 3)),
    ({"strides": [2, 2], "pads": [1, 0, 1, 1], "output_padding": [1, 1]}, (1, 2, 3, 3), (2, 2, 3, 3)),
    ({"dilations": [2, 1], "strides": [1, 2]}, (1, 2, 3, 3), (2, 2, 2, 3)),
    ({"group": 2, "strides": [2, 2]}, (2, 4, 3, 3), (4, 3, 2, 2)),
    ({"strides": [2, 2], "output_shape": [7, 8]}, (1, 2, 3, 3), (2, 2, 3, 3)),
    ({"strides": [2, 2], "output_shape": [5, 5]}, (1, 2, 3, 3), (2, 2, 3, 3)),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (1, 2, 3, 3), (2, 2, 3, 3)),
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (1, 2, 3, 3), (2, 2, 2, 2)),
    ({"auto_pad": "VALID", "strides": [3, 3]}, (1, 2, 2, 3), (2, 1, 2, 2)),
    ({"strides": [2], "pads": [1, 2]}, (2, 3, 5), (3, 2, 4)),  # 1-D
    ({"strides": [1, 2, 1]}, (1, 2, 2, 3, 2), (2, 2, 2, 2, 2)),  # 3-D
])
def test_conv_transpose(attrs, x_shape, w_shape):
    m = w_shape[1] * attrs.get("group", 1)
    check_gradient("ConvTranspose", [rand(*x_shape), rand(*w_shape), rand(m)], attrs)


def test_conv_transpose_without_bias():
    check_gradient("ConvTranspose", [rand(1, 2, 3, 3), rand(2, 3, 3, 3)], {"strides": [2, 2]})


@pytest.mark.parametrize("axis,shape,param_shape", [
    (-1, (2, 3, 5), (5,)),
    (1, (2, 3, 4), (3, 4)),
    (-2, (2, 3, 4), (3, 4)),
    (0, (2, 3), (2, 3)),
    (2, (2, 3, 2, 4), (1, 4)),  # scale broadcasts over the normalized axes
])
def test_layer_normalization(axis, shape, param_shape):
    inputs = [rand(*shape) * 3 + 1, rand(*param_shape), rand(*param_shape)]
    check_gradient("LayerNormalization", inputs, {"axis": axis, "epsilon": 1e-3}, opset=17)


def test_layer_normalization_without_bias_or_scale():
    check_gradient("LayerNormalization", [rand(2, 6), rand(6)], {}, opset=17)
    check_gradient("LayerNormalization", [rand(3, 4)], {"axis": 1, "stash_type": 11}, opset=17)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (2, 3, 5), (1, 2, 2, 3, 3)])
def test_instance_normalization(shape):
    c = shape[1]
    check_gradient("InstanceNormalization", [rand(*shape), rand(c), rand(c)], {"epsilon": 1e-3})


@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize("groups,shape", [(2, (2, 4, 3, 3)), (1, (2, 3, 4)), (3, (1, 3, 5))])
def test_group_normalization(opset, groups, shape):
    params = groups if opset < 21 else shape[1]
    inputs = [rand(*shape), rand(params), rand(params)]
    check_gradient("GroupNormalization", inputs, {"num_groups": groups, "epsilon": 1e-3}, opset=opset)


@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (5, 2, 3), (6, 3)])
def test_batch_normalization_training(shape):
    c = shape[1]
    inputs = [rand(*shape), rand(c), rand(c), rand(c), np.abs(rand(c)) + 0.5]
    check_gradient("BatchNormalization", inputs, {"epsilon": 1e-3, "training_mode": 1}, wrt=[0, 1, 2], opset=15)


def test_batch_normalization_frozen_parameters():
    """Inference mode: scale, bias and the statistics too (x's gradient is in test_train_grads)."""
    c = 3
    inputs = [rand(2, c, 4, 4), rand(c), rand(c), rand(c), np.abs(rand(c)) + 0.5]
    check_gradient("BatchNormalization", inputs, {"epsilon": 1e-3})
    shape = (3, 2, 2)  # opset < 9, spatial=0: statistics per [C, H, W] element
    inputs = [rand(2, *shape), rand(*shape), rand(*shape), rand(*shape), np.abs(rand(*shape)) + 0.5]
    check_gradient("BatchNormalization", inputs, {"epsilon": 1e-3, "spatial": 0}, opset=7)


@pytest.mark.parametrize("shapes", [
    ((4,), (2, 3, 4, 5)), ((2, 3, 4, 5), (5,)), ((3, 1, 2, 4), (1, 5, 4, 3)), ((5, 2, 4), (4, 3)),
    ((2, 4), (3, 4, 2)), ((1, 2, 3), (4, 3, 2)), ((4,), (4, 1)), ((1, 4), (4,)),
])
def test_batched_matmul(shapes):
    check_gradient("MatMul", [rand(*shapes[0]), rand(*shapes[1])])
