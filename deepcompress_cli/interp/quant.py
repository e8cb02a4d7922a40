"""The seed's 8-bit inference (TensorFlow's scheme) on top of the float interpreter.

- Weights of Conv/Gemm/MatMul are 8-bit with one scale per output channel: the codes `quantize`
  stored, or quantized on the fly (symmetric).  Found wherever the graph holds them: initializers,
  Constant nodes and the scopes around `If` branches.
- Each such layer quantizes its input to uint8 (value = (code - zero point) * scale) with a range
  per row for Gemm/MatMul (a token of a transformer, a sample of an MLP) and per image for Conv,
  from calibration data when given, else measured on the tensor itself.
- The integer products accumulate exactly (int32 semantics), then are rescaled to float with the
  bias, a bias correction (Conv) and any fused activation.  The correction: rounding weights and
  inputs to 8 bits is unbiased only on average; on one image's channel (a narrow cluster of
  values under one step, a HardSwish tail) and one weight row it is a systematic offset, which
  a squeeze-excitation pooling or the next normalisation-free layer then amplifies (PP-OCRv4
  det: cosine 0.983, 0.998 corrected).  Conv output channel m of image n gets
  sum_c (W_sum[m, c] * mean(x[n, c]) - Wq_sum[m, c] * mean(xq[n, c])), the kernel-summed float
  and 8-bit weights (precomputed at load) on the channel means of the input and of its 8-bit
  values, measured on the tensor like the ranges: two reductions and one small GEMM per layer
  (an unstrided, unpadded 1x1 Conv may take its 8-bit half as its output's spatial mean
  instead, when that reads less); about 5 % of ResNet-50's int8 time at batch 1 (the weight
  sums are read like a second copy of the weights).  Zero padding makes it approximate at the
  borders.
- A Conv input's range, codes, channel means and (when the exactness bound needs them) code
  magnitudes are taken a chunk of images at a time, each chunk read from memory once; an input
  several int8 layers read the same way (a ResNet block input, a LayerNorm output feeding Q, K
  and V) is quantized once per run.
- The requantization of TensorFlow's scheme happens at the next int8 layer's input, with the
  range the producing Conv measured on its fresh output (the QuantizeDownAndShrinkRange range),
  carried through Relu, MaxPool and pure data movement, which commute with the code <-> value map.
- Ops without a sound 8-bit form (Softmax, LayerNorm, residual sums, attention products) run in
  float on float inputs, so no Quantize/Dequantize pair is left around them.

The integer GEMM runs through float BLAS on integer-valued float32 (codes minus zero point):
products and sums are exact while every partial sum stays below 2^24.  The bound is taken per
output channel from the weights' absolute sums (precomputed at load) and, when the worst case
could pass 2^24, from the input's actual code magnitudes; only then is K cut into chunks whose
results add up in float64.  NaN or Inf in a tensor an int8 layer reads is a one-line error (an
8-bit code cannot hold them); the fp32 mode propagates them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..codecs import linear
from ..encoding import Quantized, dense_codes, quantized_form
from ..errors import DczError
from ..graphs import all_graphs, output_channel_axis, table_names
from ..tensors import Package
from .graph import Interpreter
from .ops import KERNELS, MAX_VALUE_BYTES, kernel_name
from .ops.conv import FUSED_CLAMP, FUSED_RESIDUAL, clamp, conv, conv_output_spatial
from .ops.gemm import FUSED_BIAS

EXACT_FLOAT32 = 1 << 24
GEMM_GROUP = 64  # rows of a Gemm weight summed together for the exactness bound


def quantization_grid(low: np.ndarray, high: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) float64 arrays of uint8 grids over [low, high], widened to include 0.

    254 steps and a zero point rounded up put every value of [low, high] on a code in 0..254
    after rounding to nearest, so a measured range needs no clipping pass.  NaN and Inf have no
    8-bit code (they would become arbitrary codes): a one-line error instead.
    """
    low, high = np.minimum(low, 0), np.maximum(high, 0)
    width = high - low  # NaN or Inf anywhere makes it non-finite
    if not np.isfinite(width).all():
        raise DczError(f"int8: {name!r} holds NaN or Inf (range {np.min(low)}..{np.max(high)}), which 8-bit codes "
                       "cannot represent; the fp32 mode propagates them")
    scale = np.maximum(width / 254, np.finfo(np.float32).tiny)  # an all-zero slice: any scale, codes 0
    return scale, np.minimum(np.ceil(-low / scale), 254)


def centered_codes(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, clip: bool = True,
                   out: np.ndarray | None = None) -> np.ndarray:
    """code - zero point of x as integer-valued float32 (in [-zp, 255 - zp]); scale and zero
    point broadcast against x.  Padding these with 0 pads with a real 0.0.  `clip=False` when
    x lies in the grid's range (measured on x): no code can fall outside then.  Written to `out`
    when given (float32, x's shape)."""
    c = np.multiply(x, (1 / scale).astype(np.float32), out=out, dtype=np.float32)
    np.rint(c, out=c)
    if clip:
        np.clip(c, (-zero_point).astype(np.float32), (255 - zero_point).astype(np.float32), out=c)
    return c


def activation_range(x: np.ndarray, axes: tuple, calibrated: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) float64 of x per slice left after reducing `axes` (kept as 1s): the calibrated
    range when given (x is still checked: an 8-bit grid cannot hide NaN or Inf), else measured."""
    keep = [1 if a in axes else s for a, s in enumerate(x.shape)]
    if not x.size:
        return np.zeros(keep), np.zeros(keep)
    if calibrated is not None:
        if not np.isfinite(x.min() + x.max()):
            return np.full(keep, np.nan), np.full(keep, np.nan)
        return np.full(keep, calibrated[0], np.float64), np.full(keep, calibrated[1], np.float64)
    return x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)


def quantize_activation(x: np.ndarray, low: float | None = None, high: float | None = None,
                        name: str = "activation") -> tuple[np.ndarray, float]:
    """(centered codes, scale) of x on one uint8 grid over [low, high] (measured when not given)."""
    calibrated = None if low is None or high is None else (low, high)
    scale, zero_point = quantization_grid(*activation_range(x, tuple(range(x.ndim)), calibrated), name)
    return centered_codes(x, scale, zero_point), float(scale.reshape(-1)[0])


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


@dataclass
class QWeight:
    """A weight prepared at load for the integer GEMM.

    matrix: the (code - zero point) values as integer-valued float32: the Conv weight's own shape
    [M, C, *k], or [K, N] for Gemm/MatMul (x @ W).  scales: float32 per output channel.
    abs_sums: float64 [input groups, outputs], the sum of |code - zero point| over each group of
    the shared axis (an input channel of a Conv, GEMM_GROUP rows of a Gemm): the exactness bound.
    """

    matrix: np.ndarray
    scales: np.ndarray
    abs_sums: np.ndarray
    worst_bound: float  # the largest partial sum any uint8 input could make (all |code - zero point| 255)
    group_max: np.ndarray  # abs_sums' largest entry per input group: a quick, looser bound
    sums: np.ndarray | None = None  # Conv: float32 [2C, M], sums over the kernel of the float then the 8-bit weight
    pointwise: bool = False  # a 1x1 Conv, unstrided and unpadded: its output's mean can stand for the 8-bit half

    def fits_once(self, magnitudes: np.ndarray) -> bool:
        """Whether inputs of these per-group magnitudes are exact in one float32 BLAS call."""
        return self.worst_bound < EXACT_FLOAT32 or float(magnitudes @ self.group_max) < EXACT_FLOAT32


def qweight(centered: np.ndarray, scales: np.ndarray, kind: str) -> QWeight:
    """QWeight of an int16 centered weight: `kind` "conv" ([M, C, *k]) or "gemm" ([K, N])."""
    magnitude = np.abs(centered.astype(np.float64))
    if kind == "conv":
        abs_sums = magnitude.reshape(*magnitude.shape[:2], -1).sum(2).T  # [C, M]
    else:
        k = magnitude.shape[0]
        padded = np.zeros((-(-k // GEMM_GROUP) * GEMM_GROUP, magnitude.shape[1]))
        padded[:k] = magnitude
        abs_sums = padded.reshape(-1, GEMM_GROUP, magnitude.shape[1]).sum(1)
    return QWeight(np.ascontiguousarray(centered, dtype=np.float32), scales.astype(np.float32), abs_sums,
                   255 * float(abs_sums.sum(0).max(initial=0)), abs_sums.max(1, initial=0))


def exact_chunks(abs_sums: np.ndarray, magnitudes: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive input groups [g0, g1) whose partial sums stay below 2^24 for every output.

    `magnitudes[g]` bounds |code - zero point| of the input in group g; a group alone always
    fits (at most 255 * 127 * group size).
    """
    if float((magnitudes @ abs_sums).max(initial=0)) < EXACT_FLOAT32:  # the usual case: one chunk
        return [(0, len(abs_sums))]
    weighted = abs_sums * magnitudes[:, None]
    cumulative = np.vstack([np.zeros((1, weighted.shape[1])), np.cumsum(weighted, axis=0)])
    chunks, start = [], 0
    while start < len(weighted):
        reach = (cumulative[start + 1:] - cumulative[start]).max(1)  # non-decreasing
        stop = start + max(1, int(np.searchsorted(reach, EXACT_FLOAT32, side="left")))
        chunks.append((start, stop))
        start = stop
    return chunks


def exact_matmul(c: np.ndarray, weight: QWeight) -> np.ndarray:
    """c @ weight.matrix for centered codes c [rows, K], exactly: float32 when one BLAS call is
    exact, else float64 sums of K-chunks (views: BLAS reads them in place)."""
    if weight.worst_bound < EXACT_FLOAT32:
        return c @ weight.matrix
    k = c.shape[1]
    per_k = np.maximum(c.max(0), -c.min(0)) if len(c) else np.zeros(k, np.float32)
    padded = np.zeros(len(weight.abs_sums) * GEMM_GROUP, np.float32)
    padded[:k] = per_k
    magnitudes = padded.reshape(-1, GEMM_GROUP).max(1).astype(np.float64)
    chunks = [(0, len(magnitudes))] if weight.fits_once(magnitudes) else exact_chunks(weight.abs_sums, magnitudes)
    if len(chunks) == 1:
        return c @ weight.matrix
    total = None
    for g0, g1 in chunks:
        a, b = g0 * GEMM_GROUP, min(k, g1 * GEMM_GROUP)
        part = (c[:, a:b] @ weight.matrix[a:b]).astype(np.float64)
        total = part if total is None else total + part
    return total


def _keeps_images(node, attrs: dict, x, y) -> bool:
    """Whether slice i of y's first axis holds (some of) the values of slice i of x's."""
    if np.ndim(x) == 0 or np.ndim(y) == 0 or y.shape[0] != x.shape[0]:
        return False
    if node.op_type == "Transpose":
        return list(attrs.get("perm", range(np.ndim(x) - 1, -1, -1)))[0] == 0
    return True  # C-order reshapes with the same first dimension keep each slice's block


def code_magnitudes(c: np.ndarray) -> np.ndarray:
    """float64 [C]: the largest |code - zero point| per input channel of c [N, C, ...]."""
    if not c.size:
        return np.zeros(c.shape[1])
    per_image = c.reshape(len(c), c.shape[1], -1)
    return np.maximum(per_image.max(2), -per_image.min(2)).max(0).astype(np.float64)


def integer_conv(c: np.ndarray, weight: QWeight, attrs: dict, epilogue=None, magnitude: np.ndarray | None = None
                 ) -> np.ndarray:
    """The Conv of centered codes c [N, C, ...] with weight.matrix, exactly: the float Conv
    (tiles, im2col, BLAS) on integer-valued float32, in one pass when no partial sum can reach
    2^24, else over chunks of input channels summed in float64 (`magnitude`: c's code_magnitudes,
    when known).  `epilogue(block, n0, n1, band, source)` then rescales as in `conv` (float32
    output); without one, the raw sums are returned."""
    chunks = [(0, c.shape[1])]
    if weight.worst_bound >= EXACT_FLOAT32:
        if magnitude is None:
            magnitude = code_magnitudes(c)
        if not weight.fits_once(magnitude):
            chunks = exact_chunks(weight.abs_sums, magnitude)
    if len(chunks) == 1:
        return conv(c, weight.matrix, None, attrs, epilogue)
    total = None
    for c0, c1 in chunks:
        part = conv(c[:, c0:c1], weight.matrix[:, c0:c1], None, attrs).astype(np.float64)
        total = part if total is None else total + part
    if epilogue is None:
        return total
    y = total.astype(np.float32)
    epilogue(y, 0, len(y), slice(None), None)
    return y


@dataclass
class InputCodes:
    """An int8 layer's input on its 8-bit grid: per-slice (image or row) scale and zero point
    (float64, reduced axes kept as 1s) and the centered codes; for a Conv also `means` [N, 2, C]
    float32, per image and channel the mean of x and -scale * the mean of the codes (the 8-bit
    values' mean, negated), which its bias correction reads."""

    scale: np.ndarray
    zero_point: np.ndarray
    codes: np.ndarray
    means: np.ndarray | None = None
    magnitude: np.ndarray | None = None  # code_magnitudes(codes), when a Conv's exactness bound needs it
    code_means: bool = False  # whether means[:, 1] is filled in (a Conv reading its output's mean does not need it)


def fill_code_means(codes: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
    """out [N, C] float32 = -scale * the mean of the codes per image and channel (a GEMV: exact)."""
    n, channels = codes.shape[:2]
    area = codes[0, 0].size
    np.multiply((codes.reshape(-1, area) @ np.ones(area, np.float32)).reshape(n, channels),
                (-scale.reshape(-1, 1) / area).astype(np.float32), out=out)


# Images a Conv quantizes together: the chunk and its codes stay in cache (L3) meanwhile, so a
# large batch's input is read from memory once instead of four times (range, codes, two means).
CHUNK_BYTES = 4 << 20


def quantize_images(x: np.ndarray, name: str, grid: tuple | None = None, clip: bool = False,
                    magnitude: bool = False, code_means: bool = True, out: np.ndarray | None = None,
                    non_negative: bool = False) -> InputCodes:
    """InputCodes of a Conv input x [N, C, ...] with its channel means (the codes' too if
    `code_means`) and, if asked, its code magnitudes, a chunk of whole images at a time; `grid`
    (scale, zero point per image) when known, else measured per image here.  The means are
    GEMVs (2-5x faster than np.add.reduce; on the codes exact), one per chunk: each row is summed
    alone, as in one GEMV over all images (OpenBLAS: the same bits whenever a chunk starts at a
    multiple of 4 rows, which whole images of 4k channels, or 4k images, do).  The codes go to
    `out` when given (float32, x's shape).  `non_negative`: x is a Relu's output, its grids start
    at 0 whatever its minimum (a measured range then needs only the maximum, which keeps NaN)."""
    n, channels = x.shape[:2]
    area = x[0, 0].size
    axes = tuple(range(1, x.ndim))
    if grid is None:
        scale, zero_point = np.empty((2, n, *(1,) * len(axes)))
    else:
        scale, zero_point = grid
    codes = np.empty(x.shape, np.float32) if out is None else out
    means = np.empty((n, 2, channels), np.float32)
    ones = np.ones(area, np.float32)
    per = max(1, CHUNK_BYTES // max(1, x[0].nbytes))
    step = per if per < 4 else per - per % 4
    largest = np.zeros(channels, np.float32) if magnitude else None
    for n0 in range(0, n, step):
        n1 = min(n, n0 + step)
        block = x[n0:n1]
        if grid is None:
            high = block.max(axes, keepdims=True)
            low = np.zeros_like(high) if non_negative else block.min(axes, keepdims=True)
            scale[n0:n1], zero_point[n0:n1] = quantization_grid(low, high, name)
        centered_codes(block, scale[n0:n1], zero_point[n0:n1], clip, out=codes[n0:n1])
        shape = (n1 - n0, channels)
        np.divide((block.reshape(-1, area) @ ones).reshape(shape), np.float32(area), out=means[n0:n1, 0])
        if code_means:
            fill_code_means(codes[n0:n1], scale[n0:n1], means[n0:n1, 1])
        if magnitude:
            per_image = codes[n0:n1].reshape(n1 - n0, channels, area)
            top = per_image.max(2)
            if zero_point[n0:n1].any():  # else no code is negative: one pass instead of two
                np.maximum(top, -per_image.min(2), out=top)
            np.maximum(largest, top.max(0), out=largest)
    return InputCodes(scale, zero_point, codes, means, None if largest is None else largest.astype(np.float64),
                      code_means)


# Ops that commute with quantization (they only move, select or drop values; Relu and MaxPool
# are monotonic): an int8 layer reading their output uses the range measured before them.
RANGE_OPS = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "MaxPool", "Relu"}
INT8_LAYERS = {"Conv", "Gemm", "MatMul"}


class Int8Interpreter(Interpreter):
    """The interpreter with 8-bit Conv/Gemm/MatMul (see the module docstring)."""

    def __init__(self, package: Package, ranges: dict[str, tuple[float, float]] | None = None,
                 max_bytes: int = MAX_VALUE_BYTES):
        super().__init__(package, max_bytes)
        self.ranges = ranges or {}  # calibrated activation ranges; otherwise measured per run
        self.stored = {}
        for t in package.tensors:
            form = quantized_form(t)
            if form is not None:
                self.stored[t.name] = Quantized(dense_codes(form), *(getattr(form.values, f) for f in
                                                ("scales", "zero_points", "bits", "channels", "inner", "symmetric")))
        self.layers: dict[int, QWeight] = {}  # id(node) -> prepared weight, cached per model
        self._measured: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # this run's per-image output ranges
        names = {}  # graph value -> table name, for stored codes (value names are unique across scopes)
        for graph in all_graphs(package.graph.graph):
            names.update(table_names(graph))
        plans = (self.plan, *self._subplans.values())
        for plan in plans:  # a subgraph's plan has the outer constants too
            for node, attrs in zip(plan.nodes, plan.attrs):
                prepared = self._prepare(node, attrs, plan.constants, names)
                if prepared is not None:
                    self.layers[id(node)] = prepared
        self._range_read = set()  # Conv outputs whose range an int8 Conv reads (through RANGE_OPS)
        self._reads_relu = set()  # int8 Convs whose input a Relu of their own graph makes (its grid starts at 0)
        self._readers = Counter()  # (value, slicing) -> int8 layers reading it that way (per plan run)
        self._shared: dict[tuple, list] = {}  # this run's InputCodes that more layers read
        # A Conv's codes buffer once it is done, for the next Conv of this run: a large batch's
        # fresh arrays would each start on untouched pages (page faults cost like a pass).
        self._spare: np.ndarray | None = None
        for plan in plans:
            producer = {o: n for n in plan.nodes for o in n.output}
            for node, attrs in zip(plan.nodes, plan.attrs):
                if id(node) in self.layers:
                    self._readers[self._slicing(node, attrs)] += 1
                if id(node) in self.layers and node.op_type == "Conv":
                    source = producer.get(node.input[0])
                    if source is not None and source.op_type == "Relu":
                        self._reads_relu.add(id(node))
                    while source is not None and source.op_type in RANGE_OPS and id(source) not in self.layers:
                        source = producer.get(source.input[0])
                    if source is not None and source.op_type == "Conv":
                        self._range_read.add(source.output[0])

    def _prepare(self, node, attrs, constants, names) -> QWeight | None:
        if node.op_type not in INT8_LAYERS or len(node.input) < 2 or node.input[1] not in constants:
            return None
        values = constants[node.input[1]]
        if values.dtype.kind != "f":
            return None
        if node.op_type == "Conv" and (attrs.get("group", 1) != 1 or values.ndim < 3):
            return None  # grouped convolutions run in float
        if node.op_type in ("Gemm", "MatMul") and values.ndim != 2:
            return None
        out_axis = output_channel_axis(node.op_type, attrs, 1, values.ndim)
        centered, scales = prepare_weight(values, self.stored.get(names.get(node.input[1])), out_axis)
        if node.op_type == "Conv":
            prepared = qweight(centered, scales, "conv")
            prepared.pointwise = (values[0, 0].size == 1 and set(attrs.get("strides", [1])) == {1}
                                  and not any(attrs.get("pads", [0])))
            dequantized = centered * scales.reshape(-1, *(1,) * (values.ndim - 1))
            prepared.sums = np.vstack([w.reshape(*w.shape[:2], -1).sum(2).T for w in (values, dequantized)]
                                      ).astype(np.float32)
            return prepared
        return qweight(centered.T if out_axis == 0 else centered, scales, "gemm")  # Gemm transB: [N, K] -> [K, N]

    # ------------------------------------------------------------------------------ dispatch

    def kernel_for(self, node):
        if id(node) in self.layers:
            layer = self._conv if node.op_type == "Conv" else self._gemm
            return lambda inputs, attrs, ctx: layer(node, inputs, attrs)
        kernel = KERNELS[kernel_name(node)]
        if node.op_type in RANGE_OPS:
            def keep_range(inputs, attrs, ctx):
                outputs = kernel(inputs, attrs, ctx)
                measured = self._measured.get(node.input[0])
                if measured is not None and node.output[0]:
                    low, high = measured
                    if node.op_type == "Relu":
                        low, high = np.maximum(low, 0), np.maximum(high, 0)
                    if not _keeps_images(node, attrs, inputs[0], outputs[0]):  # one range for the tensor
                        low, high = low.min(keepdims=True), high.max(keepdims=True)
                    self._measured[node.output[0]] = (low, high)
                return outputs
            return keep_range
        return kernel

    def run(self, feeds):
        self._measured, self._shared = {}, {}
        try:
            return super().run(feeds)
        finally:
            self._measured, self._shared, self._spare = {}, {}, None

    def _codes_buffer(self, shape: tuple) -> np.ndarray:
        """A float32 array of `shape` for a Conv's codes: the spare buffer when large enough."""
        spare, self._spare = self._spare, None
        size = int(np.prod(shape))
        if spare is None or spare.size < size:
            return np.empty(shape, np.float32)
        return spare[:size].reshape(shape)

    @staticmethod
    def _slicing(node, attrs) -> tuple:
        """What an int8 layer quantizes: its input value, per image (Conv) or per row of the input
        or of its transpose (Gemm transA)."""
        kind = "image" if node.op_type == "Conv" else "column" if attrs.get("transA", 0) else "row"
        return node.input[0], kind

    def _input_codes(self, node, attrs, x: np.ndarray, rows: np.ndarray | None = None,
                     code_means: bool = True) -> InputCodes:
        """The 8-bit form of input x (of `rows`, its [rows, K] view, for Gemm/MatMul), shared by
        the layers reading the same array the same way in this run (`x is` the one quantized: a
        loop body's next iteration is a new array).  `code_means`: a Conv's need (quantize_images)."""
        key = self._slicing(node, attrs)
        shared = self._shared.get(key)
        if shared is not None and shared[1] is x:
            shared[0] -= 1
            if not shared[0]:
                del self._shared[key]
            return shared[2]
        name = node.input[0]
        clip = name in self.ranges
        if rows is None and x.size:  # per image
            codes = quantize_images(x, name, self._known_grid(x, name, tuple(range(1, x.ndim)), True), clip,
                                    self.layers[id(node)].worst_bound >= EXACT_FLOAT32, code_means,
                                    self._codes_buffer(x.shape), id(node) in self._reads_relu)
        else:  # per row (token, sample); an empty Conv input has nothing to correct
            values = x if rows is None else rows
            scale, zero_point = self._grid(values, name, tuple(range(1, values.ndim)), rows is None)
            codes = InputCodes(scale, zero_point, centered_codes(values, scale, zero_point, clip))
        if self._readers[key] > 1:
            self._shared[key] = [self._readers[key] - 1, x, codes]  # readers left, the array they must read
        return codes

    def _grid(self, x: np.ndarray, name: str, axes: tuple, whole_tensor_ok: bool) -> tuple[np.ndarray, np.ndarray]:
        """(scale, zero point) for x, one per slice left after reducing `axes` (kept as 1s):
        calibrated, else the range the producing Conv measured (per image when the slices are
        those images; for the whole tensor if `whole_tensor_ok`), else measured here."""
        known = self._known_grid(x, name, axes, whole_tensor_ok)
        return known if known is not None else quantization_grid(*activation_range(x, axes), name)

    def _known_grid(self, x: np.ndarray, name: str, axes: tuple, whole_tensor_ok: bool) -> tuple | None:
        """`_grid` when calibrated or carried from the producing Conv, else None (to measure)."""
        if name in self.ranges:
            return quantization_grid(*activation_range(x, axes, self.ranges[name]), name)
        measured = self._measured.get(name)
        if measured is not None and axes == tuple(range(1, x.ndim)) \
                and len(measured[0]) in ((1, x.shape[0]) if whole_tensor_ok else (x.shape[0],)):
            shape = (x.shape[0],) + (1,) * len(axes)
            if len(measured[0]) == x.shape[0]:
                return quantization_grid(*(v.reshape(shape) for v in measured), name)
            return quantization_grid(*(np.broadcast_to(v.reshape(-1, *(1,) * len(axes)), shape) for v in measured), name)
        return None

    def _conv(self, node, inputs, attrs) -> list:
        weight = self.layers[id(node)]
        x = inputs[0]
        bias = inputs[2] if len(inputs) > 2 else None
        if x.ndim != weight.matrix.ndim:
            raise DczError(f"Conv node {node.name!r}: input {list(x.shape)} does not fit weight "
                           f"{list(weight.matrix.shape)}")
        n, channels, outputs = len(x), x.shape[1], len(weight.scales)
        addend = inputs[3] if attrs.get(FUSED_RESIDUAL) else None
        if addend is not None and (addend.dtype != np.float32 or addend.shape != (
                n, outputs, *conv_output_spatial(x.shape, weight.matrix.shape, attrs))):
            return self._conv_then_add(node, inputs, attrs)
        area = x[0, 0].size if x.size else 0
        # A pointwise layer's 8-bit half: its output's mean, or the codes' mean on the 8-bit weight
        # sums, whichever reads fewer floats (the output when it is narrower or the batch small).
        output_mean = weight.pointwise and n * outputs * area < n * channels * area + channels * outputs
        quantized = self._input_codes(node, attrs, x, code_means=not output_mean)
        scale, c = quantized.scale, quantized.codes
        spatial = (1,) * (x.ndim - 2)
        factor = (scale.reshape(-1, 1) * weight.scales).astype(np.float32).reshape(len(x), -1, *spatial)
        shaped_bias = None if bias is None else bias.astype(np.float32).reshape(1, -1, *spatial)
        if c.size:  # rounding's bias on each image's mean input (see the module docstring)
            means = quantized.means  # [mean of x, -mean of its 8-bit values] per image
            if not (output_mean or quantized.code_means):  # the first reader of a shared input did not need them
                fill_code_means(c, scale, means[:, 1])
                quantized.code_means = True
            correction = means[:, 0] @ weight.sums[:channels] if output_mean else means.reshape(n, -1) @ weight.sums
            correction = correction.reshape(n, -1, *spatial)
            shaped_bias = correction if shaped_bias is None else correction + shaped_bias
        bounds = attrs.get(FUSED_CLAMP)
        measure = node.output[0] in self._range_read
        non_negative = bounds is not None and bounds[0] >= 0  # a Relu's output: its grid starts at 0
        if measure:
            low = np.full(len(x), 0.0 if non_negative else np.inf)
            high = np.full(len(x), -np.inf)

        def rescale(block, n0, n1, band, source):  # int32 accumulators -> float output, its range per image
            np.multiply(block if source is None else source, factor[n0:n1], out=block)
            offset = shaped_bias if shaped_bias is None or len(shaped_bias) == 1 else shaped_bias[n0:n1]
            if output_mean and block.size:  # conv() hands it whole images: their spatial mean is the
                rows = block.reshape(block.shape[0] * block.shape[1], -1)  # 8-bit weights on the codes' mean
                offset = offset - (rows @ np.full(rows.shape[1], 1 / rows.shape[1], np.float32)).reshape(
                    *block.shape[:2], *spatial)
            if offset is not None:
                block += offset
            if addend is not None:  # a shortcut the plan fused into this Conv, before its activation
                block += addend[n0:n1, :, band]
            clamp(block, bounds)
            if not measure:
                return
            axes = tuple(range(1, block.ndim))
            if not non_negative:
                np.minimum(low[n0:n1], block.min(axes), out=low[n0:n1])
            np.maximum(high[n0:n1], block.max(axes), out=high[n0:n1])

        y = integer_conv(c, weight, attrs, rescale, quantized.magnitude)
        if measure:
            self._measured[node.output[0]] = (low, high)
        if self._slicing(node, attrs) not in self._shared:  # no later reader: its buffer is free
            self._spare = (c if c.base is None else c.base).reshape(-1)
        return [y]

    def _conv_then_add(self, node, inputs, attrs) -> list:
        """A fused shortcut that broadcasts: the 8-bit Conv alone, then the Add and the activation
        in float (its output's range is then measured by its readers)."""
        alone = {k: v for k, v in attrs.items() if k not in (FUSED_RESIDUAL, FUSED_CLAMP)}
        y = self._conv(node, inputs[:3], alone)[0] + inputs[3]
        self._measured.pop(node.output[0], None)
        clamp(y, attrs.get(FUSED_CLAMP))
        return [y]

    def _gemm(self, node, inputs, attrs) -> list:
        weight = self.layers[id(node)]
        x = source = inputs[0]
        if node.op_type == "Gemm" and attrs.get("transA", 0):
            x = x.T
        k, n = weight.matrix.shape
        if x.ndim == 0 or x.shape[-1] != k:
            raise DczError(f"{node.op_type} node {node.name!r}: input {list(x.shape)} does not fit weight "
                           f"[{k}, {n}]")
        quantized = self._input_codes(node, attrs, source, x.reshape(-1, k))
        y = exact_matmul(quantized.codes, weight)
        factor = quantized.scale.astype(np.float32)
        if node.op_type == "Gemm":
            factor *= np.float32(attrs.get("alpha", 1.0))
        y *= weight.scales
        # float64 sums of K-chunks: rounded to float32 by the last multiply's output, one pass fewer
        y = np.multiply(y, factor, out=y if y.dtype == np.float32 else np.empty(y.shape, np.float32),
                        casting="same_kind")
        if node.op_type == "Gemm" and len(inputs) > 2 and inputs[2] is not None:
            y += np.float32(attrs.get("beta", 1.0)) * inputs[2]
        elif attrs.get(FUSED_BIAS):
            y += inputs[2]
        return [y.reshape(*x.shape[:-1], n)]
