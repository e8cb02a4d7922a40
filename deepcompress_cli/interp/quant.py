"""The seed's 8-bit inference (TensorFlow's scheme) on top of the float interpreter.

- Weights of Conv/Gemm/MatMul are 8-bit: the codes `quantize` stored, or quantized on the fly.
- Activations are uint8 with a range from calibration data, or measured on the tensor itself.
- Conv/Gemm/MatMul multiply the integer values (code - zero point) and accumulate exactly in
  32 bits, then requantize the result to the range actually used (QuantizeDownAndShrinkRange).
- Relu, MaxPool and pure data-movement ops work on the uint8 codes directly, so a chain of them
  never goes back to float; any other op dequantizes its inputs and runs in float.

The integer GEMM runs through float BLAS: integer-valued float32 products are exact while every
partial sum stays below 2^24, so K is cut into chunks that guarantee it; chunk results are
added in float64, which is exact far beyond int32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..codecs import linear
from ..encoding import Quantized, dense_codes, quantized_form
from ..errors import DczError
from ..graphs import output_channel_axis, table_names
from ..tensors import Package
from .graph import Interpreter
from .ops import KERNELS, MAX_VALUE_BYTES, kernel_name
from .ops.conv import FUSED_RELU

EXACT_FLOAT32 = 1 << 24


@dataclass
class QTensor:
    """uint8 codes with `value = (q - zero_point) * scale`."""

    q: np.ndarray
    scale: float
    zero_point: int

    def dequantize(self) -> np.ndarray:
        return (self.q.astype(np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)

    def centered(self) -> np.ndarray:
        """q - zero_point as integer-valued float32 (padding with 0 then means a real 0.0)."""
        return self.q.astype(np.float32) - np.float32(self.zero_point)


def quantize_activation(x: np.ndarray, low: float | None = None, high: float | None = None,
                        name: str = "activation") -> QTensor:
    """uint8 over [low, high] (measured from `x` when not given), widened to include 0.

    NaN and Inf have no 8-bit code (they would become arbitrary codes): a one-line error instead.
    """
    if x.size:
        x_low, x_high = float(x.min()), float(x.max())  # NaN anywhere makes both NaN
        low = min(x_low if low is None else low, 0.0)
        high = max(x_high if high is None else high, 0.0)
        if not (math.isfinite(x_low) and math.isfinite(x_high) and math.isfinite(low) and math.isfinite(high)):
            raise DczError(f"int8: {name!r} holds NaN or Inf (range {x_low}..{x_high}), which 8-bit codes "
                           "cannot represent; the fp32 mode propagates them")
    else:
        low = high = 0.0
    scale = (high - low) / 255 or 1.0
    zero_point = int(np.clip(round(-low / scale), 0, 255))
    q = np.clip(np.rint(x / np.float32(scale)) + zero_point, 0, 255).astype(np.uint8)
    return QTensor(q, scale, zero_point)


@dataclass
class QWeight:
    """A weight prepared for the integer GEMM: its (code - zero point) matrix and scales."""

    matrix: np.ndarray  # integer-valued float32: [K, N] for Gemm/MatMul (x @ W), [M, C*k] for Conv (W @ cols)
    scales: np.ndarray  # [output channels] float64
    magnitude: int  # max |code - zero point|
    shape: tuple = ()  # the weight's own shape


def exact_matmul(a: np.ndarray, b: np.ndarray, bound: int) -> np.ndarray:
    """`a @ b` of integer-valued float32 arrays, exactly (as float64 values).

    float32 holds integers exactly up to 2^24, so the shared axis is cut into chunks short enough
    that no partial sum can pass it (`bound` = max|a| * max|b|); chunk results add up in float64.
    """
    k = a.shape[-1]
    step = max(1, EXACT_FLOAT32 // max(1, bound))
    if step >= k:
        return (a @ b).astype(np.float64)
    total = None
    for start in range(0, k, step):
        part = (a[..., start:start + step] @ b[..., start:start + step, :]).astype(np.float64)
        total = part if total is None else total + part
    return total


# Weights quantized on the fly go through linear.quantize (float64 inside) this many elements at
# a time: its temporaries are several times the weight, which on VGG-19's fc6 meant gigabytes.
QUANTIZE_BLOCK = 1 << 22


def prepare_weight(values: np.ndarray, stored: Quantized | None, out_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(code - zero point per element as int16, scale per output channel) of a weight.

    The codes `quantize` stored are used as they are when their ranges are per tensor or per
    output channel; otherwise (float, shared or other-axis weights) the weight is quantized now,
    symmetric int8 per output channel (a block of channels at a time: each channel's codes
    depend only on its own values, so the result is the same).
    """
    n_out = values.shape[out_axis]
    channels, inner = linear.channel_layout(values.shape, out_axis)
    usable = stored is not None and stored.bits <= 8 and (
        stored.channels == 1 or (stored.channels, stored.inner) == (channels, inner))
    if usable:
        centered = stored.codes.astype(np.int16).reshape(-1, stored.channels, stored.inner)
        centered -= stored.zero_points.astype(np.int16)[None, :, None]
        scales = stored.scales
    else:
        grouped = values.reshape(-1, channels, inner)
        centered = np.empty(grouped.shape, dtype=np.int16)
        scales = np.empty(channels, dtype=np.float32)
        step = max(1, QUANTIZE_BLOCK // max(1, grouped.shape[0] * inner))
        for start in range(0, channels, step):
            block = grouped[:, start:start + step, :]
            codes, scales[start:start + step], zero_points = linear.quantize(
                block.reshape(-1), 8, block.shape[1], inner, symmetric=True)
            np.subtract(codes.reshape(block.shape), zero_points.astype(np.int16)[None, :, None],
                        out=centered[:, start:start + step, :], dtype=np.int16)
    per_channel = np.broadcast_to(scales.astype(np.float64), (n_out,)) if len(scales) == 1 else scales.astype(np.float64)
    return centered.reshape(values.shape), per_channel


# Ops that work on uint8 codes unchanged: they only move, select or drop values (Relu and MaxPool
# commute with the monotonic code -> value map), so a QTensor goes through with its scale.
CODE_OPS = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "MaxPool", "Relu"}
INT8_LAYERS = {"Conv", "Gemm", "MatMul"}


class Int8Interpreter(Interpreter):
    """The interpreter with 8-bit Conv/Gemm/MatMul and uint8 activations between them."""

    def __init__(self, package: Package, ranges: dict[str, tuple[float, float]] | None = None,
                 max_bytes: int = MAX_VALUE_BYTES):
        super().__init__(package, max_bytes)
        self.ranges = ranges or {}  # calibrated activation ranges; otherwise measured per run
        stored = {}
        for t in package.tensors:
            form = quantized_form(t)
            if form is not None:
                stored[t.name] = Quantized(dense_codes(form), *(getattr(form.values, f) for f in
                                           ("scales", "zero_points", "bits", "channels", "inner", "symmetric")))
        names = table_names(package.graph.graph)  # graph value -> table name, for stored codes
        self.layers: dict[int, QWeight] = {}  # id(node) -> prepared weight, cached per model
        for node, attrs in zip(self.plan.nodes, self.plan.attrs):
            prepared = self._prepare(node, attrs, stored, names)
            if prepared is not None:
                self.layers[id(node)] = prepared

    def _prepare(self, node, attrs, stored, names) -> QWeight | None:
        if node.op_type not in INT8_LAYERS or len(node.input) < 2 or node.input[1] not in self.plan.constants:
            return None
        values = self.plan.constants[node.input[1]]
        if node.op_type == "Conv" and (attrs.get("group", 1) != 1 or values.ndim != 4):
            return None  # grouped and 1-D/3-D convolutions run in float
        if node.op_type in ("Gemm", "MatMul") and values.ndim != 2:
            return None
        out_axis = output_channel_axis(node.op_type, attrs, 1, values.ndim)
        centered, scales = prepare_weight(values, stored.get(names.get(node.input[1])), out_axis)
        if node.op_type == "Conv":
            matrix = centered.reshape(centered.shape[0], -1)
        else:
            matrix = centered.T if out_axis == 0 else centered  # Gemm transB: [N, K] -> [K, N]
        return QWeight(np.ascontiguousarray(matrix, dtype=np.float32), scales,
                       int(np.abs(centered).max(initial=0)), values.shape)

    # ------------------------------------------------------------------------------ dispatch

    def kernel_for(self, node):
        if id(node) in self.layers:
            return lambda inputs, attrs, ctx: self._layer(node, inputs, attrs)
        kernel = KERNELS[kernel_name(node)]
        if node.op_type in CODE_OPS:
            def on_codes(inputs, attrs, ctx):
                x = inputs[0]
                if not isinstance(x, QTensor):
                    return kernel(_floats(inputs), attrs, ctx)
                if node.op_type == "Relu":  # max(value, 0) is max(code, zero point)
                    return [QTensor(np.maximum(x.q, np.uint8(x.zero_point)), x.scale, x.zero_point)]
                data = x.q.astype(np.float32) if node.op_type == "MaxPool" else x.q  # pooling pads with -inf
                out = kernel([data, *_floats(inputs[1:])], attrs, ctx)
                return [QTensor(out[0].astype(np.uint8, copy=False), x.scale, x.zero_point), *out[1:]]
            return on_codes
        return lambda inputs, attrs, ctx: kernel(_floats(inputs), attrs, ctx)

    def run(self, feeds):
        return [v.dequantize() if isinstance(v, QTensor) else v for v in super().run(feeds)]

    def _activation(self, value, name: str) -> QTensor:
        if isinstance(value, QTensor):
            return value
        return quantize_activation(value, *self.ranges.get(name, (None, None)), name=name)

    def _requantize(self, y: np.ndarray, name: str) -> QTensor:
        """QuantizeDownAndShrinkRange: 8 bits over the range the output actually uses."""
        return quantize_activation(y.astype(np.float32), *self.ranges.get(name, (None, None)), name=name)

    def _layer(self, node, inputs, attrs) -> list:
        weight = self.layers[id(node)]
        x = self._activation(inputs[0], node.input[0])
        bias = _floats(inputs[2:3])[0] if len(inputs) > 2 and inputs[2] is not None else None
        if node.op_type == "Conv":
            acc, out_shape = int8_conv_acc(x, weight, attrs)  # [N, M, L]
            y = acc * (x.scale * weight.scales)[:, None]
            if bias is not None:
                y += bias[:, None]
            y = y.reshape(out_shape)
            if attrs.get(FUSED_RELU):
                np.maximum(y, 0, out=y)
        else:
            a = x.centered()
            if node.op_type == "Gemm" and attrs.get("transA", 0):
                a = a.T
            acc = exact_matmul(a, weight.matrix, 255 * weight.magnitude)
            y = acc * (x.scale * weight.scales)
            if node.op_type == "Gemm":
                y *= attrs.get("alpha", 1.0)
                if bias is not None:
                    y += attrs.get("beta", 1.0) * bias
        return [self._requantize(y, node.output[0])]


def _floats(values: list) -> list:
    return [v.dequantize() if isinstance(v, QTensor) else v for v in values]


def int8_conv_acc(x: QTensor, weight: QWeight, attrs: dict) -> tuple[np.ndarray, tuple]:
    """Exact int32 accumulators of a convolution as [N, M, L] (float64 values), and the output shape."""
    from .ops.conv import conv_attrs, im2col

    kernel_shape, strides, pads, dilations, _ = conv_attrs(attrs, x.q.shape, weight.shape)
    cols, out_spatial = im2col(x.centered(), kernel_shape, strides, pads, dilations)  # pads: real 0.0
    acc = exact_matmul(weight.matrix, cols, 255 * weight.magnitude)
    return acc, (x.q.shape[0], weight.shape[0], *out_spatial)
