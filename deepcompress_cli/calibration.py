"""Calibration statistics of each layer: H = mean of x xᵀ over the layer's own input columns.

Layer-wise reconstruction (GPTQ, SparseGPT: `reconstruct.py`) needs, for every weight W of a
Conv/Gemm/MatMul, the second moment H of the columns x it multiplies (y = W x): the local
output error of a changed weight is tr(ΔW H ΔWᵀ).  One float run of the interpreter over the
calibration samples, `batch` at a time, feeds every layer's *input value* to an accumulator
(Interpreter.observe): nothing but one batch's activations and the H matrices is ever held.

Columns: a Conv's are its im2col patches (C/group · kh · kw values, one H per group: a depthwise
conv is C groups of K = kh · kw); a Gemm's or MatMul's are the rows of its data input.  Big
feature maps have far more columns than H needs: at most `max_columns` per layer and batch are
drawn (seeded, so the same data gives the same H).

Not covered (no entry in the result, so those weights take the data-free path): weights inside
subgraphs (If/Loop/Scan bodies), weights also read by something that is not a layer weight input,
weights shared by layers whose matrices disagree in shape, ConvTranspose, batched (> 2-D) MatMul
weights, layers of more than MAX_INPUTS inputs per group (H would not fit in memory), and layers
whose input never reached the observer (a constant input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .blas import single_threaded
from .data import sample_count, take
from .graphs import output_channel_axis, table_names
from .interp.ops.conv import patch_view, conv_attrs, conv_output_shape, pad_spatial
from .tensors import Package

# Columns drawn per layer and batch: H of a K-input layer converges long before this many
# columns (K <= 1280 on EfficientNet-Lite0), while its 112 x 112 maps have 200 000 per batch.
MAX_COLUMNS = 4096
# ... but copying the columns out costs as much as their H on depthwise convs (K = 25, C = 1152):
# fewer there, down to MIN_COLUMNS, so that one batch's columns of a layer stay below MAX_GATHER
# values.  A 25 x 25 H from 512 columns a batch is still hundreds of samples per entry.
MAX_GATHER = 1 << 23
MIN_COLUMNS = 512
# H is K x K float64 per group: a layer with more inputs than this (VGG's 25088-input fc6 would
# take 5 GB) is left to the data-free path.
MAX_INPUTS = 8192
SEED = 0
MIN_DAMPING = 0.01  # GPTQ's own choice, for H from many more columns than inputs


@dataclass
class LayerStats:
    name: str  # the weight tensor's name in the Package
    op: str  # "Conv" | "Gemm" | "MatMul"
    axis: int  # output-channel axis of the stored weight
    groups: int  # conv groups (1 for Gemm/MatMul)
    hessian: np.ndarray | None  # (G, K, K) float64: mean of x xᵀ over the sampled input columns
    mean: np.ndarray  # (G, K) float64: mean input column (for bias correction)
    count: int  # columns accumulated
    bias: str | None  # the bias tensor (Conv input 2, Gemm C, the Add after a MatMul) if stored
    # Σ_g tr(W_g H_g W_gᵀ): the mean squared output of the stored weight, in the units of
    # reconstruct.layer_error (divide one by the other for a layer's relative error).
    output_energy: float = 0.0
    # (G, R) factor by which the network scales each output row of the stored weight (batch
    # norm folded by the interpreter); None when it runs the stored weight as is.
    row_scale: np.ndarray | None = None

    def covariance(self) -> np.ndarray:
        """(G, K, K) H − μμᵀ: the H to reconstruct with when the bias will absorb the mean shift
        (reconstruct.bias_shift), since the output error left after that is tr(ΔW (H − μμᵀ) ΔWᵀ).
        On EfficientNet-Lite0 at 4 bits it leaves less such error than H on 49 of the 50 layers,
        but end to end it measured no better (logit cosine 0.938 vs 0.940 on 100 eval crops)."""
        return self.hessian - self.mean[:, :, None] * self.mean[:, None, :]


def damping(stats: LayerStats) -> float:
    """GPTQ's damping λ/mean(diag H) for H estimated from `stats.count` columns of K inputs.

    H from fewer columns than inputs is rank-deficient: GPTQ then hides the rounding error in
    directions the calibration set never excites, and other inputs do.  Fitting on one half of
    EfficientNet-Lite0's 224 calibration images and judging on the other, the classifier (K = 1280,
    112 columns) left 13x more error out of sample than in it at λ = 1 %, and least out of sample at
    λ = 100 %; its 1x1 convs at 7x7 (K = 1152, 5 488 columns) did best at 10 %, those with
    K / count near 0.03 at 1 %.  K / (2 · count), clipped to [1 %, 100 %], follows them all."""
    if stats.hessian is None:
        return MIN_DAMPING
    k = stats.hessian.shape[-1]
    return float(min(max(k / (2 * max(stats.count, 1)), MIN_DAMPING), 1.0))


def to_matrix(weight: np.ndarray, stats: LayerStats) -> np.ndarray:
    """The stored weight as (G, R, K) float64 rows: y_g = W_g x_g, R output channels per group."""
    w = np.asarray(weight, dtype=np.float64)
    rows = w.reshape(w.shape[0], -1) if stats.axis == 0 else w.T
    return np.ascontiguousarray(rows).reshape(stats.groups, rows.shape[0] // stats.groups, rows.shape[1])


def from_matrix(matrix: np.ndarray, shape, stats: LayerStats) -> np.ndarray:
    """Inverse of `to_matrix`: (G, R, K) rows back to the weight's own layout and `shape`."""
    shape = tuple(shape)
    rows = np.asarray(matrix).reshape(-1, matrix.shape[-1])
    return np.ascontiguousarray(rows.reshape(shape) if stats.axis == 0 else rows.T.reshape(shape))


# ------------------------------------------------------------------------------ the layers

@dataclass
class _Use:
    """One node reading a weight: how to turn its input value into columns."""
    node: object
    op: str
    axis: int
    groups: int
    k: int  # inputs per group
    bias: str | None
    attrs: dict


class _Accumulator:
    def __init__(self, name: str, uses: list[_Use], index: int, hessian: bool = True):
        first = uses[0]
        self.name, self.op, self.axis, self.groups, self.uses, self.index = \
            name, first.op, first.axis, first.groups, uses, index
        biases = {u.bias for u in uses}
        self.bias = first.bias if len(biases) == 1 else None
        self.h = np.zeros((first.groups, first.k, first.k)) if hessian else None
        self.sum = np.zeros((first.groups, first.k))
        self.count = 0
        self.batch = 0  # batches seen, for the sampling seed

    def add(self, cols: np.ndarray) -> None:
        """cols (G, S, K) float32 columns of one batch."""
        if cols.shape[1] == 0:
            return
        # float32 BLAS over one batch (a few thousand columns), float64 across batches.
        if self.h is None:
            pass
        elif cols.shape[0] == 1:
            self.h[0] += cols[0].T @ cols[0]
        else:
            with single_threaded():  # one small product per group (blas.single_threaded)
                self.h += np.matmul(cols.transpose(0, 2, 1), cols)
        self.sum += cols.sum(axis=1)
        self.count += cols.shape[1]

    def stats(self, weight: np.ndarray, folded: np.ndarray | None) -> LayerStats:
        n = max(self.count, 1)
        hessian, mean = None if self.h is None else self.h / n, self.sum / n
        if hessian is not None:
            hessian = (hessian + hessian.transpose(0, 2, 1)) / 2  # exactly symmetric
        s = LayerStats(self.name, self.op, self.axis, self.groups, hessian, mean, self.count, self.bias)
        w = to_matrix(weight, s)
        if hessian is not None:
            s.output_energy = float((np.matmul(w, hessian) * w).sum())
        if folded is not None:
            f = to_matrix(folded, s)
            norm = (w * w).sum(-1)
            s.row_scale = np.where(norm > 0, (f * w).sum(-1) / np.where(norm > 0, norm, 1), 1.0)
        return s


def _gemm_bias(graph, node, stored: dict, n_out: int) -> str | None:
    attrs = {a.name: (a.f if a.type == a.FLOAT else a.i) for a in node.attribute}
    if len(node.input) < 3 or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        return None
    return stored.get(node.input[2]) if _numel(graph, node.input[2]) == n_out else None


def _matmul_bias(graph, node, stored: dict, readers: dict, n_out: int) -> str | None:
    """The stored addend of the one Add that reads a MatMul's output, if it is a row of n_out."""
    after = readers.get(node.output[0], [])
    if len(after) != 1 or after[0].op_type != "Add":
        return None
    other = next((n for n in after[0].input if n != node.output[0]), None)
    return stored.get(other) if other and _numel(graph, other) == n_out else None


def _numel(graph, value: str) -> int | None:
    for t in graph.initializer:
        if t.name == value:
            return math.prod(t.dims)
    for n in graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == value:
            for a in n.attribute:
                if a.name == "value":
                    return math.prod(a.t.dims)
    return None


def layer_uses(package: Package, names: set[str] | None = None) -> dict[str, list[_Use]]:
    """table name -> the main-graph nodes that read it as a layer weight (only weights all of whose
    uses are such, with matrices of one shape)."""
    from .graphs import all_graphs, node_subgraphs

    graph = package.graph.graph
    stored = table_names(graph)  # value name -> table name
    shapes = {t.name: t.shape for t in package.tensors if t.is_weight}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    in_subgraphs = set()
    for node in graph.node:
        for sub in node_subgraphs(node):
            for g in all_graphs(sub):
                for n in g.node:
                    in_subgraphs.update(n.input)
    uses: dict[str, list] = {}
    bad: set[str] = set()
    for node in graph.node:
        for index, value in enumerate(node.input):
            table = stored.get(value)
            if table is None or table not in shapes:
                continue
            use = _use(graph, node, index, shapes[table], stored, readers)
            if use is None:
                if node.op_type != "Shape":
                    bad.add(table)
            else:
                uses.setdefault(table, []).append(use)
    for value in in_subgraphs:
        if value in stored:
            bad.add(stored[value])
    result = {}
    for table, found in uses.items():
        if table in bad or (names is not None and table not in names):
            continue
        if len({(u.op, u.axis, u.groups, u.k) for u in found}) == 1 and found[0].k <= MAX_INPUTS:
            result[table] = found
    return result


def _use(graph, node, index: int, shape: tuple, stored: dict, readers: dict) -> _Use | None:
    from .interp.graph import attribute_values

    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return None
    attrs = attribute_values(node)
    if op == "Conv" and index == 1 and len(shape) >= 3:
        group = int(attrs.get("group", 1))
        if shape[0] % group:
            return None
        bias = stored.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return _Use(node, op, 0, group, math.prod(shape[1:]), bias, attrs)
    if op == "Gemm" and index == 1 and len(shape) == 2:
        axis = output_channel_axis(op, attrs, index, 2)
        return _Use(node, op, axis, 1, shape[1 - axis], _gemm_bias(graph, node, stored, shape[axis]), attrs)
    if op == "MatMul" and len(shape) == 2 and index in (0, 1) and node.input[1 - index] not in stored:
        axis = 1 if index == 1 else 0  # x @ W: W is [K, N]; W @ x: W is [M, K]
        return _Use(node, op, axis, 1, shape[1 - axis], _matmul_bias(graph, node, stored, readers, shape[axis]),
                    {"weight_input": index})
    return None


def _columns(use: _Use, x: np.ndarray, weight_shape: tuple, rng: np.random.Generator,
             max_columns: int) -> np.ndarray:
    """(G, S, K) float32 columns of one batch of a layer's input, at most `max_columns` of them."""
    x = np.asarray(x, dtype=np.float32)
    if use.op == "Conv":
        kernel_shape, strides, pads, dilations, group = conv_attrs(use.attrs, x.shape, weight_shape)
        out_spatial = conv_output_shape(x.shape[2:], kernel_shape, strides, pads, dilations)
        view = patch_view(pad_spatial(x, pads), kernel_shape, strides, dilations, out_spatial)
        n, c, nk = x.shape[0], x.shape[1], len(kernel_shape)
        out_axes, k_axes = tuple(range(2 + nk, 2 + 2 * nk)), tuple(range(2, 2 + nk))
        # A column is (input channel, kernel offset) as in im2col.  [N, C, *k, *out] is read as
        # [N, *out, C, *k] (one group: rows are columns) or [C, N, *out, *k] (groups first).
        if group == 1:
            view, lead = view.transpose(0, *out_axes, 1, *k_axes), ()
        else:
            view, lead = view.transpose(1, 0, *out_axes, *k_axes), (slice(None),)
        total = n * math.prod(out_spatial)
        limit = min(max_columns, max(MIN_COLUMNS, MAX_GATHER // (c * math.prod(kernel_shape))))
        if total <= limit:
            cols = view.reshape(*(c,) * len(lead), total, -1)  # copies: every column
        else:  # positions drawn without replacement
            picked = np.sort(rng.choice(total, limit, replace=False))
            cols = view[(*lead, *np.unravel_index(picked, (n, *out_spatial)))].reshape(*(c,) * len(lead), limit, -1)
        if group == 1:
            return cols[None]
        if group == c:  # depthwise: already [G, S, K]
            return cols
        s = cols.shape[1]
        return np.ascontiguousarray(cols.reshape(group, c // group, s, -1).transpose(0, 2, 1, 3)).reshape(group, s, -1)
    if use.op == "Gemm":
        a = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
        cols = a.T if use.attrs.get("transA", 0) else a
    elif use.attrs["weight_input"] == 1:  # x [..., K] @ W
        cols = x.reshape(-1, x.shape[-1])
    else:  # W @ x [..., K, N]: columns are x[..., :, n]
        cols = np.swapaxes(x, -1, -2).reshape(-1, x.shape[-2])
    if cols.shape[0] > max_columns:
        cols = cols[np.sort(rng.choice(cols.shape[0], max_columns, replace=False))]
    return np.ascontiguousarray(cols)[None]


# ------------------------------------------------------------------------------ collecting

def collect(package: Package, feeds: dict[str, np.ndarray], batch: int = 16, progress=None,
            names: set[str] | None = None, max_columns: int = MAX_COLUMNS,
            hessians: bool = True) -> dict[str, LayerStats]:
    """LayerStats of every Conv/Gemm/MatMul weight of `package` (or of `names`) over `feeds`.

    One float pass of the interpreter, `batch` samples at a time (the model's own batch size if
    it fixes one), each input sliced on its sample axis (data.sample_layout); `progress(iterable,
    desc=, total=, unit=)` wraps the batches when given.  Layers no sample reached are left out.
    `hessians=False`: the mean input columns only (hessian None), e.g. to see how far a
    compressed model shifts its layers' inputs.
    """
    from .benchmarking import feeds_layout, fixed_batch, make_inputs
    from .interp.graph import Interpreter

    uses = layer_uses(package, names)
    interp = Interpreter(package)
    feeds = make_inputs(interp, feeds, 0, 0, option="--calibrate")
    shapes = {t.name: t.shape for t in package.tensors}
    accumulators = {name: _Accumulator(name, found, i, hessians)
                    for i, (name, found) in enumerate(sorted(uses.items()))}
    by_value: dict[str, list] = {}  # input value -> (accumulator, use)
    for acc in accumulators.values():
        for use in acc.uses:
            data_input = use.node.input[1 - use.attrs["weight_input"]] if use.op == "MatMul" else use.node.input[0]
            by_value.setdefault(data_input, []).append((acc, use))

    def observe(name, value):
        for acc, use in by_value.get(name, ()):
            if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or not value.size:
                continue
            rng = np.random.default_rng([SEED, acc.index, acc.batch])
            acc.batch += 1
            acc.add(_columns(use, value, shapes[acc.name], rng, max_columns))

    interp.observe = observe
    layout = feeds_layout(interp, feeds)
    batch = fixed_batch(interp, layout) or batch
    starts = range(0, sample_count(feeds, layout), batch)
    if progress is not None:
        starts = progress(starts, desc="calibrate", total=len(starts), unit="batch")
    for start in starts:
        interp.run(take(feeds, layout, start, start + batch))
    folded = _folded_weights(package, interp, uses)
    weights = {t.name: t for t in package.tensors}
    return {name: acc.stats(interp.weights[name] if name in interp.weights else weights[name].decode(),
                            folded.get(name))
            for name, acc in accumulators.items() if acc.count}


def _folded_weights(package: Package, interp, uses: dict) -> dict[str, np.ndarray]:
    """table name -> the weight the interpreter runs instead (batch norm folded in), if any."""
    folded = {}
    for name, found in uses.items():
        if len(found) != 1 or found[0].op != "Conv":
            continue
        array = interp.plan.constants.get(f"{found[0].node.output[0]}::folded_w")
        if array is not None:
            folded[name] = array
    return folded
