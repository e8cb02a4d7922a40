"""Quality-targeted compression without retraining: sensitivity -> candidates -> allocation ->
plan -> apply -> verify.

The question a user asks is "the smallest file that still does its job", not "60 % sparsity and
5 bits". Answering it by trying whole settings end to end would take hundreds of model runs; here
each layer is looked at on its own, and the whole model runs only to verify:

1. **Statistics.** One float pass over the calibration inputs collects, for every Conv/Gemm/MatMul
   weight, the Hessian H = E[x xᵀ] of its layer inputs and their mean (calibration.py).
2. **Candidates.** Per layer, settings from the mode's space (kept fraction × per-row step for
   `compress`; kept fraction for `prune`; step for `quantize`; codebook bits for `share`), each with
   its stored bytes (exact canonical-Huffman sizes of its code and gap histograms plus side info)
   and its local distortion D = ‖(W − Ŵ)X‖² / ‖WX‖², the layer's own relative output error.
3. **Sensitivity.** What a unit of local distortion costs at the output: one noise-injection run
   per layer on a few calibration samples gives g_l = output NSR / D_l, so a plan's predicted
   output noise-to-signal ratio is Σ g_l D_l.
4. **Allocation.** Lagrangian: each layer takes the candidate minimizing g·D + λ·bytes, λ bisected
   to meet a predicted-NSR budget. The fewest bytes for a given predicted damage.
5. **Verify and adjust.** The plan's weights are made as the file will decode them (GPTQ codes,
   SparseGPT masks, bias correction), the whole model runs on all calibration samples, and the
   budget moves (bracketing, then bisection on its log) until the target is just met: the smallest
   verified plan is kept. A target the finest plan misses falls back to the lossless form; one not
   met even losslessly is a GateFailed (exit 1), nothing written.

A `Plan` (JSON, sorted keys) records each layer's setting with the model's and the data's SHA-256:
`--plan` applies it without searching and, with the same data, writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .data import pick
from .errors import DczError, GateFailed
from .stages import compressible, no_progress

MODES = ("compress", "prune", "share", "quantize")
TARGET_KINDS = ("min_cosine", "min_agreement", "max_accuracy_drop")
PLAN_VERSION = 1

# compress's default targets (no --train, no target, no explicit --sparsity/--bits): on real data a
# cosine of 0.995 keeps top-1 agreement in the high 90s on the models tried; synthesized inputs are
# no evidence of real use, so they must pass a stricter 0.999.
DEFAULT_MIN_COSINE = 0.995
DEFAULT_MIN_COSINE_SYNTHESIZED = 0.999
SYNTHESIZED_SAMPLES = 32
WARN_COSINE = 0.99  # the fixed recipe (explicit --sparsity/--bits) warns below this
# On synthesized inputs only settings that are safe whatever the real data: fine steps (at most
# RMS/16 per channel), no pruning (prune: at most half), nearest rounding, no bias correction.
# At RMS/8 PP-OCR's text-line classifier met 0.999 on random 224 x 224 inputs and gave 0.978 on
# real 48 x 192 lines (0.9943 at RMS/16).
SYNTHESIZED_MIN_STEP = 8
SYNTHESIZED_MIN_BITS = 5
SYNTHESIZED_MIN_DENSITY = 0.5

# The candidate spaces. A step is the row's RMS × 2^(-j/2): j = 0 is about 3 levels per row, each
# +2 halves the step (one more bit); codes are exact integers n, |n| <= LEVELS.
DENSITIES = (1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.12, 0.08, 0.05, 0.03, 0.02)
STEP_EXPONENTS = tuple(range(0, 19))
SHARE_BITS = tuple(range(1, 9))
LEVELS = (1 << 15) - 1
SAFE_STEP = 12  # the data-free setting: RMS/64 per output channel (~10 bits), no pruning
SAFE_SHARE_BITS = 8
INDEX_BITS = tuple(range(2, 13))

SENSITIVITY_SAMPLES = 4  # samples per noise-injection run (each sample has many outputs)
SEARCH_SAMPLES = 64  # at least this many samples in the budget search's subset
# A subset's figures are noisy (on 512 samples accuracy moves in 0.2-point steps and mnist_cnn's
# search stopped at 31x after one such miss): the search uses all judged samples when a pass over
# them costs at most this many multiply-adds (mnist_cnn's 1 536: 6.5e9; a count, not a clock, so
# that the same inputs give the same file on any machine under any load).
FULL_SEARCH_MACS = 2e10
# Samples used of a big calibration set, evenly spaced: H of a layer converges long before 1024
# samples; verification resolves a twentieth of a top-1 point on 2048 (more only costs run time).
STATS_SAMPLES = 1024
VERIFY_SAMPLES = 2048
# The grid on which GPTQ's gain over the nearest-rounding estimate is measured per layer, and the
# least of that ratio believed (a layer whose held-out error is that low is at float precision).
RATIO_STEP = 2
MIN_GPTQ_RATIO = 0.01
SENSITIVITY_NOISE = 1e-3  # local distortion injected: small enough to stay in the linear regime
MAX_VERIFIES = 7
STREAM_OVERHEAD = 40  # header bytes a stream adds, roughly (its row, slot and reference, deflated)


# ------------------------------------------------------------------------------------- targets

@dataclass(frozen=True)
class Target:
    """A quality target, measured against the original model's outputs on the calibration data.

    min_cosine: cosine of all first-numeric outputs taken as one vector (what `bench` reports);
    min_agreement: top-1 agreement with the original, in %; max_accuracy_drop: top-1 points
    below the original's accuracy against the data's `labels`."""
    kind: str
    value: float

    def __post_init__(self):
        if self.kind not in TARGET_KINDS:
            raise DczError(f"unknown target {self.kind!r} (choose from {', '.join(TARGET_KINDS)})")
        option = self.option
        try:
            value = float(self.value)
        except (TypeError, ValueError):
            raise DczError(f"{option} must be a number, got {self.value!r}") from None
        if isinstance(self.value, bool) or not math.isfinite(value):
            raise DczError(f"{option} must be a finite number, got {self.value!r}")
        if self.kind == "min_cosine" and not -1 <= value <= 1:
            raise DczError(f"{option} must be in [-1, 1], got {self.value!r}")
        if self.kind == "min_agreement" and not 0 <= value <= 100:
            raise DczError(f"{option} is a percentage in [0, 100], got {self.value!r}")
        object.__setattr__(self, "value", value)

    @property
    def option(self) -> str:
        return "--" + self.kind.replace("_", "-")

    def reached(self, fid: dict) -> float:
        return {"min_cosine": fid["cosine"], "min_agreement": 100 * fid["top1_agreement"],
                "max_accuracy_drop": fid.get("accuracy_drop")}[self.kind]

    def met(self, fid: dict) -> bool:
        value = self.reached(fid)
        if value is None or not math.isfinite(value):
            return False
        return value <= self.value if self.kind == "max_accuracy_drop" else value >= self.value

    def to_json(self) -> dict:
        return {"kind": self.kind, "value": self.value}

    def __str__(self) -> str:
        unit = " points" if self.kind == "max_accuracy_drop" else " %" if self.kind == "min_agreement" else ""
        return f"{self.option[2:]} {self.value:g}{unit}"


def targets(min_cosine=None, min_agreement=None, max_accuracy_drop=None) -> list[Target]:
    given = {"min_cosine": min_cosine, "min_agreement": min_agreement, "max_accuracy_drop": max_accuracy_drop}
    return [Target(kind, value) for kind, value in given.items() if value is not None]


# ------------------------------------------------------------------------------------- evidence

@dataclass
class Evidence:
    """The inputs fidelity is measured on: calibration data, or synthesized inputs."""
    feeds: dict
    layout: dict  # input name -> sample axis (None: shared by every sample)
    count: int
    kind: str  # "calibration" | "synthesized"
    source: str | None = None
    sha256: str | None = None
    labels: np.ndarray | None = None
    total: int | None = None  # samples in the file, when only `count` of them are used

    def describe(self) -> str:
        if self.kind == "calibration":
            of = f" of {self.total}" if self.total else ""
            return f"{self.count}{of} calibration samples ({self.source})"
        return f"{self.count} synthesized inputs, not real data — pass --calibrate DATA.npz"

    def to_json(self) -> dict:
        return {"kind": self.kind, "samples": self.count, "source": self.source, "sha256": self.sha256,
                "file_samples": self.total}


def file_sha256(path: str) -> str | None:
    if path in (None, "-"):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def calibration_evidence(package, path: str, max_bytes: int | None = None, option: str = "--calibrate") -> Evidence:
    """The calibration file's inputs (checked against the graph: exit 2, one line) and labels."""
    from . import data as data_mod

    specs = data_mod.input_specs(package.graph.graph)
    arrays = data_mod.load_npz(path, specs, option, max_bytes)
    labels = arrays.pop(data_mod.LABELS, None)
    layout = data_mod.sample_layout(specs, arrays, option)
    labels = data_mod.check_labels(labels, arrays, option, layout)
    count = data_mod.sample_count(arrays, layout)
    evidence = Evidence(arrays, layout, count, "calibration", path, file_sha256(path), labels)
    if count > VERIFY_SAMPLES:  # evenly spaced, so a file sorted by class keeps every class
        index = spaced(count, VERIFY_SAMPLES)
        evidence = Evidence(pick(arrays, layout, index), layout, len(index), "calibration", path,
                            evidence.sha256, None if labels is None else labels[index], total=count)
    return evidence


def spaced(count: int, wanted: int) -> np.ndarray:
    return np.unique(np.linspace(0, count - 1, min(wanted, count)).round().astype(np.int64))


def _stats_samples(count: int) -> np.ndarray:
    return np.arange(count) if count <= STATS_SAMPLES else spaced(count, STATS_SAMPLES)


def fit_split(count: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(samples the rounding is fitted to, held-out samples whose statistics judge it).

    Every other sample of the (at most STATS_SAMPLES) used for statistics is fitted to; the
    fidelity of a plan is measured on all the others, so the file written is judged on data it
    was not fitted to.  In sample, EfficientNet-Lite0 looked 96 % agreed where new images gave
    90 %.  A single sample is fitted to and judged on as it is (nothing to hold out)."""
    used = _stats_samples(count)
    if len(used) < 2:
        return used, None
    return used[0::2], used[1::2]


def synthesized_evidence(package, count: int = SYNTHESIZED_SAMPLES, seed: int = 0) -> Evidence:
    """Seeded random inputs shaped as the graph declares (benchmarking.make_inputs); DczError when
    they cannot be made (non-numeric inputs, too large) or the interpreter cannot run the model."""
    from .benchmarking import feeds_layout, make_inputs
    from .data import sample_count
    from .interp.graph import Interpreter

    interp = Interpreter(package)
    feeds = make_inputs(interp, None, count, seed)
    layout = feeds_layout(interp, feeds, random=True)
    return Evidence(feeds, layout, sample_count(feeds, layout), "synthesized")


# ------------------------------------------------------------------------------------- running

class Runner:
    """The model on the evidence, with some weights swapped for others (the plan's decoded ones)."""

    def __init__(self, package, evidence: Evidence, batch: int = 16):
        from .benchmarking import fixed_batch
        from .interp.graph import Interpreter

        self.interp = Interpreter(package)
        self.base = dict(self.interp.weights)
        self.evidence = evidence
        self.batch = fixed_batch(self.interp, evidence.layout) or batch
        self.runs = 0

    def run(self, weights: dict | None = None, index: np.ndarray | None = None, progress=None,
            desc: str = "") -> np.ndarray:
        interp = self.interp
        interp.weights = {**self.base, **(weights or {})}
        interp._subplans = {}  # _plan makes the subgraphs' plans anew, with these weights
        interp.plan = interp._plan(interp.model.graph)  # the plan holds the weights (BN folded in)
        from .benchmarking import run_batched

        ev = self.evidence
        feeds = ev.feeds if index is None else pick(ev.feeds, ev.layout, index)
        self.runs += 1
        return run_batched(interp, feeds, self.batch, progress, desc, layout=ev.layout)

    def macs_per_sample(self) -> float:
        """Multiply-adds per sample of the Conv/Gemm/MatMul nodes of the main graph (one run of a
        batch that records the shapes of the values those nodes read and write)."""
        from .data import take

        nodes = self.interp.plan.nodes  # as run: a batch norm folded into its conv renames it
        wanted = {name for node in nodes if node.op_type in ("Conv", "Gemm", "MatMul")
                  for name in (*node.input[:2], node.output[0])}
        shapes = {}
        interp = self.interp
        interp.observe = lambda name, value: shapes.__setitem__(name, np.shape(value)) if name in wanted else None
        try:
            interp.run(take(self.evidence.feeds, self.evidence.layout, 0, self.batch))
        finally:
            interp.observe = None
        for name in wanted:  # weights are constants: never observed
            if name not in shapes and name in interp.plan.constants:
                shapes[name] = np.shape(interp.plan.constants[name])
        total = 0.0
        for node in nodes:
            if node.op_type not in ("Conv", "Gemm", "MatMul") or node.output[0] not in shapes:
                continue
            out, a, b = shapes[node.output[0]], shapes.get(node.input[0]), shapes.get(node.input[1])
            if node.op_type == "Conv" and b is not None:
                k = math.prod(b[1:])  # inputs per output of its group
            elif node.op_type == "Gemm" and a is not None:
                k = a[0] if any(x.name == "transA" and x.i for x in node.attribute) else a[-1]
            elif a is not None and len(a):
                k = a[-1]
            else:
                continue
            total += float(math.prod(out)) * k
        return total / max(1, min(self.batch, self.evidence.count))


@np.errstate(all="ignore")
def measure(out: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Fidelity of `out` against the original's `reference` (cosine as `bench` computes it)."""
    a = out.astype(np.float64).reshape(len(out), -1)
    b = reference.astype(np.float64).reshape(len(reference), -1)
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    cosine = float((a * b).sum() / denominator) if denominator else 1.0
    signal = float((b * b).sum())
    nsr = float(((a - b) ** 2).sum() / signal) if signal else 0.0
    fid = {"cosine": cosine, "nsr": nsr, "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
           "samples": len(a)}
    if labels is not None:
        accuracy = float((a.argmax(1) == labels).mean())
        base = float((b.argmax(1) == labels).mean())
        fid.update(accuracy=accuracy, original_accuracy=base, accuracy_drop=round(100 * (base - accuracy), 4))
    return fid


def rounded(fid: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) and k != "accuracy_drop" else v) for k, v in fid.items()}


# ------------------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class Setting:
    """One layer's choice. `step`: exponent j of the per-row step RMS·2^(-j/2) (None: values kept
    as floats, or given by `bits`); `bits`: codebook bits (share) or linear bits (quantize by
    --bits: step max|w|/(2^(bits-1)-1) per row); `density`: kept fraction; `data_aware`: GPTQ /
    SparseGPT with the layer's Hessian (else nearest rounding, magnitude pruning)."""
    density: float = 1.0
    step: int | None = None
    bits: int | None = None
    data_aware: bool = True

    def to_json(self) -> dict:
        return {"density": self.density, "step": self.step, "bits": self.bits, "data_aware": self.data_aware}

    @classmethod
    def from_json(cls, value: dict, where: str) -> "Setting":
        try:
            density = float(value["density"])
            step = None if value.get("step") is None else int(value["step"])
            bits = None if value.get("bits") is None else int(value["bits"])
            aware = bool(value.get("data_aware", True))
        except (KeyError, TypeError, ValueError):
            raise DczError(f"{where}: a layer setting needs density, step, bits") from None
        if not 0 < density <= 1 or (step is not None and not 0 <= step <= 64) or \
                (bits is not None and not 1 <= bits <= 16):
            raise DczError(f"{where}: setting out of range: {value!r}")
        return cls(density, step, bits, aware)


def default_setting(mode: str) -> Setting:
    """The data-free safe setting of a mode: a fine per-channel grid, nothing pruned."""
    if mode == "share":
        return Setting(bits=SAFE_SHARE_BITS, data_aware=False)
    if mode == "prune":
        return Setting(data_aware=False)  # nothing to prune safely without data
    return Setting(step=SAFE_STEP, data_aware=False)


# ------------------------------------------------------------------------------------- layers

@dataclass
class Layer:
    """One compressible weight with its statistics and the matrices the math works on."""
    index: int  # position in package.tensors
    tensor: object
    weight: np.ndarray  # decoded, in its own layout
    axis: int | None  # output-channel axis
    stats: object = None  # calibration.LayerStats, None without data
    matrix: np.ndarray | None = None  # (G, R, K) float64
    base: float = 0.0  # tr(W H Wᵀ): the layer's output energy
    rms: np.ndarray | None = None  # (G, R) row RMS
    gain: float | None = None
    candidates: list = field(default_factory=list)  # [(Setting, bytes, D)]
    factor: object = None  # reconstruct.Factor of its H, once needed
    held: object = None  # LayerStats of the held-out samples (not fitted to), None without them

    @property
    def name(self) -> str:
        return self.tensor.name


def _layers(package, stats: dict, held: dict | None = None) -> list[Layer]:
    from .onnx_io import weight_consumers
    from .graphs import output_channel_axis

    consumers = weight_consumers(package.graph)
    layers = []
    for i, t in enumerate(package.tensors):
        if not compressible(t):
            continue
        weight = t.decode().reshape(t.shape)
        if not np.isfinite(weight).all():
            raise DczError(f"tensor {t.name!r} has NaN or infinite weights; fix the model first")
        axis = None
        if t.name in consumers:
            node, where = consumers[t.name]
            attributes = {a.name: a.i for a in node.attribute if a.type == a.INT}
            axis = output_channel_axis(node.op_type, attributes, where, len(t.shape))
        layer = Layer(i, t, weight, axis, stats.get(t.name), held=(held or {}).get(t.name))
        if layer.stats is not None:
            from .calibration import to_matrix

            layer.axis = layer.stats.axis
            layer.matrix = to_matrix(weight, layer.stats).astype(np.float64)
            layer.base = float(layer.stats.output_energy) or _error(layer, np.zeros_like(layer.matrix))
            layer.rms = np.sqrt(np.mean(layer.matrix ** 2, axis=2))
        layers.append(layer)
    return layers


def _factor(layer: Layer):
    """H's damped inverse Cholesky factor, computed once per layer for every setting tried; the
    damping grows as H's columns get few (calibration.damping)."""
    if layer.factor is None:
        from .calibration import damping
        from .reconstruct import factor

        layer.factor = factor(layer.stats.hessian, damp=damping(layer.stats))
    return layer.factor


def _error(layer: Layer, W_hat: np.ndarray, stats=None) -> float:
    """The layer's output error of Ŵ on the fitted samples (or on those of `stats`), rows
    weighted by what a folded batch norm does to them."""
    from .reconstruct import layer_error

    stats = stats or layer.stats
    return float(layer_error(layer.matrix, W_hat, stats.hessian, stats.row_scale))


def _judged(layer: Layer) -> tuple[object, float]:
    """(statistics to judge a fit's error on, their output energy): the held-out samples' when
    there are any, since in sample GPTQ and SparseGPT look several times better than they are on
    a layer with few columns; else the fitted ones'."""
    stats = layer.held or layer.stats
    return stats, max(float(stats.output_energy) if layer.held is not None else layer.base, 1e-300)


def _row_rms(layer: Layer) -> np.ndarray:
    """Per output channel RMS in channel order (C,), or the tensor's (1,) without an axis."""
    w = layer.weight.astype(np.float64)
    if layer.axis is None:
        return np.sqrt(np.mean(w ** 2)).reshape(1)
    moved = np.moveaxis(w, layer.axis, 0).reshape(w.shape[layer.axis], -1)
    return np.sqrt(np.mean(moved ** 2, axis=1))


def _channel_steps(rms: np.ndarray, j: int) -> np.ndarray:
    """Steps RMS·2^(-j/2) as float32 values (what the file stores), as float64."""
    step = (rms * 2.0 ** (-j / 2)).astype(np.float32)
    step[~(step > 0) | ~np.isfinite(step)] = 1.0  # an all-zero row: any step, its codes are 0
    return step.astype(np.float64)


def _matrix_rows(layer: Layer, per_channel: np.ndarray) -> np.ndarray:
    """A per-channel vector (channel order) as (G, R) rows of the layer's matrix."""
    from .calibration import to_matrix

    shape = layer.weight.shape
    full = np.broadcast_to(per_channel.reshape([-1 if a == layer.axis else 1 for a in range(len(shape))]), shape)
    return to_matrix(np.ascontiguousarray(full), layer.stats)[..., 0]


def _channel_layout(layer: Layer) -> tuple[int, int]:
    from .codecs import linear

    return linear.channel_layout(layer.weight.shape, layer.axis)


# ------------------------------------------------------------------------------------- byte costs

def huffman_bytes(counts: np.ndarray) -> int:
    """Stored bytes of a stream with this symbol histogram: canonical Huffman (code, length table,
    block table) or fixed width, whichever is smaller (as encoding.build chooses)."""
    from .codecs.huffman import block_size, code_lengths

    counts = np.trim_zeros(np.asarray(counts, dtype=np.int64), "b")
    n = int(counts.sum())
    if n == 0:
        return 0
    width = max(1, (len(counts) - 1).bit_length())
    packed = (n * width + 7) // 8
    lengths = code_lengths(counts).astype(np.int64)
    coded = (int((counts * lengths).sum()) + 7) // 8 + len(counts) + 2 * -(-n // block_size(n)) + 2 * STREAM_OVERHEAD
    return min(coded, packed + STREAM_OVERHEAD)


def gap_cost(keep_flat: np.ndarray) -> tuple[int, int, int]:
    """(bytes of the gap stream, index bits, filler entries) of the best index width for a mask."""
    from .codecs import sparse

    dummy = np.zeros(keep_flat.size, dtype=np.uint8)
    best = None
    for bits in INDEX_BITS:
        gaps, _ = sparse.encode(dummy, keep_flat, bits)
        fillers = len(gaps) - int(np.count_nonzero(keep_flat))
        cost = huffman_bytes(np.bincount(gaps)) + fillers // 4  # a filler costs a code too (~2 bits)
        if best is None or cost < best[0]:
            best = (cost, bits, fillers)
        if fillers == 0:
            break  # wider gaps only cost more
    return best


# ------------------------------------------------------------------------------------- candidates

def _candidates(layer: Layer, mode: str, scale_codec: bool, synthesized: bool = False) -> list:
    """[(Setting, bytes, D)] of one layer: D from the layer's Hessian, bytes from exact histograms.

    To stay fast the quantization part is estimated with nearest rounding of the (SparseGPT-updated)
    weights and a diagonal H, scaled by what GPTQ really leaves of that estimate on this layer
    (`_gptq_ratio`).  Pruning's part is measured: SparseGPT run per kept fraction, its error
    judged on the held-out samples."""
    from .calibration import from_matrix
    from .reconstruct import reconstruct

    W, H = layer.matrix, layer.stats.hessian
    diag = np.einsum("gkk->gk", H)[:, None, :]
    if layer.stats.row_scale is not None:
        diag = diag * (np.asarray(layer.stats.row_scale, np.float64) ** 2)[..., None]
    base = max(layer.base, 1e-300)
    shape = layer.weight.shape
    channels, _ = _channel_layout(layer)
    rms_c = _row_rms(layer)
    judged, judged_base = _judged(layer)
    ratio = 1.0 if synthesized or mode in ("share", "prune") else _gptq_ratio(layer, diag, base)
    out = []
    densities = DENSITIES if mode in ("compress", "prune") else (1.0,)
    if mode == "compress" and not scale_codec:
        densities = (1.0,)  # sparse codes with per-channel steps need the scale codec
    if synthesized:  # random inputs say nothing about which weights real data needs: no pruning
        densities = (1.0,) if mode != "prune" else tuple(d for d in DENSITIES if d >= SYNTHESIZED_MIN_DENSITY)
    for d in densities:
        if d < 1 and d * W.size < 1:
            continue
        if d >= 1:
            Wd, keep, Dp = W, np.ones(W.shape, dtype=bool), 0.0
        else:
            res = reconstruct(W, _factor(layer), None, density=d)
            Wd, keep = res.weights, res.keep
            Dp = _error(layer, Wd, judged) / judged_base
        if d < 1:
            keep_flat = from_matrix(keep.astype(np.uint8), shape, layer.stats).reshape(-1).astype(bool)
            gap_bytes, _, fillers = gap_cost(keep_flat)
        else:
            gap_bytes, fillers = 0, 0
        kept = int(np.count_nonzero(keep))
        if mode == "prune":
            out.append((Setting(density=d), gap_bytes + 4 * (kept + fillers) + STREAM_OVERHEAD, Dp))
            continue
        if mode == "share":
            out.extend(_share_candidates(layer, Wd, keep, diag, base, rms_c, scale_codec, synthesized))
            continue
        for j in STEP_EXPONENTS:
            if synthesized and j < SYNTHESIZED_MIN_STEP:
                continue
            step = _matrix_rows(layer, _channel_steps(rms_c, j))[..., None]
            n = np.clip(np.rint(Wd / step), -LEVELS, LEVELS)
            n[~keep] = 0
            err = n * step - Wd
            err[~keep] = 0
            Dq = ratio * float((err * err * diag).sum()) / base
            codes = (n[keep] if d < 1 else n.reshape(-1)).astype(np.int64)
            low = int(codes.min(initial=0))
            counts = np.bincount(codes - low, minlength=1 - low)  # code 0 counted even if unused: fillers
            if fillers:
                counts[-low] += fillers
            nbytes = huffman_bytes(counts) + gap_bytes + 4 * channels + 2 * STREAM_OVERHEAD
            out.append((Setting(density=d, step=j), nbytes, Dp + Dq))
            if Dq < 1e-9 * max(Dp, 1e-12) or Dq < 1e-12:
                break  # finer steps cost bytes and change nothing measurable
    return out


def _gptq_ratio(layer: Layer, diag: np.ndarray, base: float, j: int = RATIO_STEP) -> float:
    """GPTQ's output error (judged on held-out samples when there are) over the nearest-rounding,
    diagonal-H estimate, on one mid-range grid (step RMS·2^(-j/2), all weights kept): on mnist_cnn
    and EfficientNet-Lite0 the estimate is 3-17x too high, by a factor that differs from layer to
    layer (depthwise more than pointwise) but hardly with the step."""
    from .reconstruct import Grid, reconstruct

    step = _matrix_rows(layer, _channel_steps(_row_rms(layer), j))
    n = np.clip(np.rint(layer.matrix / step[..., None]), -LEVELS, LEVELS)
    err = n * step[..., None] - layer.matrix
    estimate = float((err * err * diag).sum()) / base
    if not estimate > 0:
        return 1.0
    judged, judged_base = _judged(layer)
    res = reconstruct(layer.matrix, _factor(layer), Grid(step=step, levels=LEVELS))
    return float(min(max(_error(layer, res.weights, judged) / judged_base / estimate, MIN_GPTQ_RATIO), 1.0))


def _share_candidates(layer, Wd, keep, diag, base, rms_c, scale_codec, synthesized=False):
    from .kmeans import kmeans_1d

    scale = _matrix_rows(layer, rms_c.astype(np.float32).astype(np.float64))[..., None] if scale_codec \
        else np.ones(Wd.shape[:2] + (1,))
    scale[scale <= 0] = 1.0
    scaled = Wd / scale
    channels, _ = _channel_layout(layer)
    out = []
    for bits in SHARE_BITS:
        if synthesized and bits < SYNTHESIZED_MIN_BITS:
            continue
        centroids, labels, _ = kmeans_1d(scaled.reshape(-1), 1 << bits)
        centroids = np.asarray(centroids, dtype=np.float32).astype(np.float64)
        err = (centroids[labels].reshape(Wd.shape) - scaled) * scale
        D = float((err * err * diag).sum()) / base
        nbytes = huffman_bytes(np.bincount(labels)) + 4 * len(centroids) + (4 * channels if scale_codec else 0) \
            + 3 * STREAM_OVERHEAD
        out.append((Setting(bits=bits), nbytes, D))
    return out


# ------------------------------------------------------------------------------------- sensitivity

def _gains(layers: list[Layer], runner: Runner, reference: np.ndarray, progress, seed: int = 0) -> None:
    """g_l = output NSR / local D of one run with white noise (per row ∝ its RMS, as quantization
    noise is) in layer l alone, on SENSITIVITY_SAMPLES evenly spaced calibration samples."""
    from .calibration import from_matrix

    count = runner.evidence.count
    index = np.unique(np.linspace(0, count - 1, min(SENSITIVITY_SAMPLES, count)).round().astype(np.int64))
    ref = reference[index].astype(np.float64)
    signal = float((ref ** 2).sum()) or 1.0
    rng = np.random.default_rng(seed)
    measured = [layer for layer in layers if layer.stats is not None and layer.base > 0]
    for layer in progress(measured, desc="sensitivity", total=len(measured), unit="layer"):
        W = layer.matrix
        noise = rng.standard_normal(W.shape) * layer.rms[..., None]
        D = _error(layer, W + noise) / layer.base
        if not D > 0:
            layer.gain = 0.0
            continue
        noise *= math.sqrt(SENSITIVITY_NOISE / D)
        noisy = from_matrix(W + noise, layer.weight.shape, layer.stats).astype(layer.weight.dtype)
        out = runner.run({layer.name: noisy}, index).astype(np.float64)
        nsr = float(((out - ref) ** 2).sum()) / signal
        layer.gain = max(nsr / SENSITIVITY_NOISE, 1e-12)


# ------------------------------------------------------------------------------------- allocation

def allocate(layers: list[Layer], budget: float) -> dict[str, int]:
    """Layer name -> index of its candidate: the fewest total bytes whose predicted output NSR
    Σ g·D stays within `budget` (Lagrangian: each layer minimizes g·D + λ·bytes; λ bisected on
    its log). A budget below the finest plan's prediction gives the finest plan."""
    active = [layer for layer in layers if layer.candidates and layer.gain is not None]
    tables = [(np.array([c[1] for c in layer.candidates], dtype=np.float64),
               layer.gain * np.array([c[2] for c in layer.candidates], dtype=np.float64)) for layer in active]

    def choose(lam):
        picks = [int(np.argmin(dist + lam * nbytes)) for nbytes, dist in tables]
        return picks, sum(float(dist[p]) for p, (_, dist) in zip(picks, tables))

    lo, hi = -60.0, 20.0  # log10 λ
    best, nsr = choose(10.0 ** hi)
    if nsr > budget:
        best = choose(10.0 ** lo)[0]
        for _ in range(64):
            mid = (lo + hi) / 2
            picks, nsr = choose(10.0 ** mid)
            if nsr <= budget:
                lo, best = mid, picks
            else:
                hi = mid
            if hi - lo < 1e-4:
                break
    return {layer.name: p for layer, p in zip(active, best)}


def predicted(layers: list[Layer], choice: dict[str, int]) -> float:
    return sum(layer.gain * layer.candidates[choice[layer.name]][2] for layer in layers if layer.name in choice)


# ------------------------------------------------------------------------------------- applying

def scale_codec_available() -> bool:
    """Whether encoding knows the `scale` step (per-channel steps under sparse / codebook)."""
    from dataclasses import fields

    from .encoding import WeightForm

    return "scales" in {f.name for f in fields(WeightForm)}


def apply_layer(layer: Layer, setting: Setting, mode: str, scale_codec: bool):
    """(new weight entry, decoded weight, report facts) of `layer` under `setting`."""
    from .encoding import build, dense_form, readable, sparse_form

    t, W0 = layer.tensor, layer.weight
    shape, dtype = W0.shape, t.dtype
    aware = setting.data_aware and layer.stats is not None
    facts = {"levels": None, "index_bits": None}
    if mode == "prune" or (setting.step is None and setting.bits is None):
        if setting.density >= 1:
            return t, W0, facts
        dense, keep = _pruned(layer, setting.density, aware)
        best = None
        for bits in _index_widths(keep):
            new = build(t, sparse_form(dense, keep, bits, dtype).with_(entropy="huffman"))
            if readable(new) and (best is None or new.stored_bytes < best.stored_bytes):
                best = new
        if best is None or best.stored_bytes >= t.nbytes:
            best = build(t, dense_form(np.where(keep, dense, 0), dtype))
        facts["index_bits"] = best.chain[0].params.get("index_bits") if best.chain[0].codec == "sparse" else None
        return best, best.decode().reshape(shape), facts
    if mode == "share":
        return _apply_share(layer, setting, aware, scale_codec)
    steps, levels = linear_grid(layer, setting)  # linear codes n on a per-channel step grid
    n, keep = _codes(layer, steps, levels, setting.density, aware)
    return encode_codes(layer, n, keep, steps, setting.density < 1 and scale_codec)


def linear_grid(layer: Layer, setting: Setting) -> tuple[np.ndarray, int] | None:
    """(per-channel steps, largest |code|) of a linear setting, None for float or shared ones."""
    if setting.step is not None:
        return _channel_steps(_row_rms(layer), setting.step), LEVELS
    if setting.bits is not None:
        levels = (1 << (setting.bits - 1)) - 1
        return _max_steps(layer, levels), levels
    return None


def encode_codes(layer: Layer, n: np.ndarray, keep: np.ndarray, steps: np.ndarray, sparse_ok: bool):
    """(entry, decoded weight, facts) of integer codes n (0 where not `keep`) on per-channel
    `steps`: sparse positions plus codes when `sparse_ok` and smaller, else dense codes."""
    from .encoding import Quantized, WeightForm, build, dense_form, readable

    t = layer.tensor
    shape, dtype = layer.weight.shape, t.dtype
    channels, inner = _channel_layout(layer)
    facts = {"levels": int(np.abs(n).max(initial=0)), "index_bits": None}
    low, high = int(n.min(initial=0)), int(n.max(initial=0))
    bits = max(2, (high - low).bit_length())
    udtype = np.uint8 if bits <= 8 else np.uint16
    new = None
    if sparse_ok:
        best = None
        for ib in _index_widths(keep):
            from .codecs import sparse

            gaps, entries = sparse.encode(n.reshape(-1), keep.reshape(-1), ib)  # fillers: n = 0
            q = Quantized((entries - low).astype(udtype), np.ones(1, np.float32), np.array([-low], udtype), bits)
            form = WeightForm(shape, dtype, q, gaps=gaps, index_bits=ib, entropy="huffman",
                              scales=steps.astype(np.float32), channels=channels, inner=inner)
            candidate = build(t, form)
            if readable(candidate) and (best is None or candidate.stored_bytes < best.stored_bytes):
                best = candidate
        new = best
        facts["index_bits"] = None if new is None else next(s.params["index_bits"] for s in new.chain
                                                             if s.codec == "sparse")
    if new is None:  # dense: one linear step with a scale per channel
        q = Quantized((n - low).reshape(-1).astype(udtype), steps.astype(np.float32),
                      np.full(channels, -low, dtype=udtype), bits, channels, inner, False)
        new = build(t, WeightForm(shape, dtype, q, entropy="huffman"))
        if not readable(new):
            new = build(t, dense_form((n * steps_full(layer, steps)).astype(dtype), dtype))
    return new, new.decode().reshape(shape), facts


def _index_widths(keep: np.ndarray):
    """The two or three index widths around the best estimated one (building each is exact)."""
    _, bits, _ = gap_cost(keep.reshape(-1))
    return [b for b in (bits - 1, bits, bits + 1) if INDEX_BITS[0] <= b <= 16]


def steps_full(layer: Layer, steps: np.ndarray) -> np.ndarray:
    shape = layer.weight.shape
    if layer.axis is None:
        return np.full(shape, steps[0])
    return np.broadcast_to(steps.reshape([-1 if a == layer.axis else 1 for a in range(len(shape))]), shape)


def _max_steps(layer: Layer, levels: int) -> np.ndarray:
    w = np.abs(layer.weight.astype(np.float64))
    top = w.max().reshape(1) if layer.axis is None else \
        np.moveaxis(w, layer.axis, 0).reshape(w.shape[layer.axis], -1).max(axis=1)
    step = (top / levels).astype(np.float32)
    step[~(step > 0)] = 1.0
    return step.astype(np.float64)


def _codes(layer: Layer, steps: np.ndarray, levels: int, density: float, aware: bool):
    """(integer codes n, keep mask) in the weight's layout: GPTQ (+ SparseGPT) with the layer's
    Hessian when `aware`, else nearest rounding after magnitude pruning."""
    full = steps_full(layer, steps)
    if aware:
        from .calibration import from_matrix
        from .reconstruct import Grid, reconstruct

        grid = Grid(step=_matrix_rows(layer, steps), levels=levels)
        res = reconstruct(layer.matrix, _factor(layer), grid, density=density)
        n = np.rint(from_matrix(res.codes.astype(np.float64), layer.weight.shape, layer.stats)).astype(np.int64)
        keep = from_matrix(res.keep.astype(np.uint8), layer.weight.shape, layer.stats).astype(bool)
        n[~keep] = 0
        return n, keep
    w = layer.weight.astype(np.float64)
    keep = np.ones(w.shape, dtype=bool)
    if density < 1:
        from .stages.prune import magnitude_mask

        keep, _ = magnitude_mask(layer.weight, 1 - density)
    n = np.clip(np.rint(w / full), -levels, levels).astype(np.int64)
    n[~keep] = 0
    return n, keep


def _pruned(layer: Layer, density: float, aware: bool):
    if aware:
        from .calibration import from_matrix
        from .reconstruct import reconstruct

        res = reconstruct(layer.matrix, _factor(layer), None, density=density)
        shape = layer.weight.shape
        keep = from_matrix(res.keep.astype(np.uint8), shape, layer.stats).astype(bool)
        dense = from_matrix(res.weights, shape, layer.stats).astype(layer.weight.dtype)
        return np.where(keep, dense, 0).astype(layer.weight.dtype), keep
    from .stages.prune import magnitude_mask

    keep, _ = magnitude_mask(layer.weight, 1 - density)
    return np.where(keep, layer.weight, 0).astype(layer.weight.dtype), keep


def _apply_share(layer: Layer, setting: Setting, aware: bool, scale_codec: bool):
    """k-means centroids of the channel-scaled weights (w / row RMS), assigned by GPTQ with the
    layer's Hessian on the grid centroid × row scale (nearest without data)."""
    from .encoding import Shared, WeightForm, build, dense_form, readable
    from .kmeans import kmeans_1d
    from .tensors import uint_dtype

    t, W0 = layer.tensor, layer.weight
    shape, dtype = W0.shape, t.dtype
    channels, inner = _channel_layout(layer)
    scales = _row_rms(layer).astype(np.float32) if scale_codec else np.ones(1, np.float32)
    scales[~(scales > 0)] = 1.0
    full = steps_full(layer, scales.astype(np.float64)) if scale_codec else np.ones(shape)
    scaled = W0.astype(np.float64) / full
    centroids, labels, _ = kmeans_1d(scaled.reshape(-1), 1 << setting.bits)
    centroids = np.asarray(centroids, dtype=np.float32)
    if aware:
        from .calibration import from_matrix
        from .reconstruct import Grid, reconstruct

        rows = _matrix_rows(layer, scales.astype(np.float64)) if scale_codec else None
        grid = Grid(step=rows, levels=None, codebook=np.sort(centroids.astype(np.float64)))
        res = reconstruct(layer.matrix, _factor(layer), grid)
        centroids = np.sort(centroids)
        labels = np.rint(from_matrix(res.codes.astype(np.float64), shape, layer.stats)).astype(np.int64).reshape(-1)
    used = np.flatnonzero(np.bincount(labels, minlength=len(centroids)))
    renumber = np.zeros(len(centroids), dtype=np.int64)
    renumber[used] = np.arange(len(used))
    centroids, labels = centroids[used], renumber[labels]
    indices = labels.astype(uint_dtype(setting.bits))
    extra = {"scales": scales, "channels": channels, "inner": inner} if scale_codec else {}
    new = build(t, WeightForm(shape, dtype, Shared(centroids, indices, setting.bits), entropy="huffman", **extra))
    if not readable(new) or new.stored_bytes >= t.nbytes:
        new = build(t, dense_form((centroids[labels].reshape(shape) * full).astype(dtype), dtype))
    return new, new.decode().reshape(shape), {"levels": len(centroids), "index_bits": None}


def bias_corrections(layers: list[Layer], decoded: dict[str, np.ndarray], package,
                     settings: dict | None = None) -> dict[str, np.ndarray]:
    """Bias name -> corrected bias: each output's mean shift (W − Ŵ)·μ over the calibration inputs
    moved into the layer's stored bias. A layer without a stored bias is left as it is (adding
    one would change the graph, for an error GPTQ already keeps small)."""
    from .calibration import to_matrix
    from .reconstruct import bias_shift

    by_name = {t.name: t for t in package.tensors}
    out = {}
    for layer in layers:
        stats = layer.stats
        if stats is None or stats.bias is None or stats.bias not in by_name or layer.name not in decoded:
            continue
        if settings is not None and layer.name in settings and not settings[layer.name].data_aware:
            continue
        bias_t = by_name[stats.bias]
        bias = out.get(stats.bias, bias_t.decode()).astype(np.float64).reshape(-1)
        shift = bias_shift(layer.matrix, to_matrix(decoded[layer.name].astype(np.float64), stats), stats.mean)
        shift = np.asarray(shift, dtype=np.float64).reshape(-1)
        if shift.shape != bias.shape or not np.isfinite(shift).all():
            continue
        out[stats.bias] = (bias + shift).astype(bias_t.decode().dtype)
    return out


# ------------------------------------------------------------------------------------- the plan

@dataclass
class Outcome:
    """What a planned run did: per-layer rows, what it reached on what data, the plan's JSON."""
    rows: list
    fidelity: dict | None
    plan: dict
    lossless: bool = False
    notes: list = field(default_factory=list)
    phases: dict = field(default_factory=dict)
    verifies: int = 0
    training: list | None = None  # the fine-tunes of a search with retraining (train/targeted.py)


class Planner:
    """One planned compression of `package` (modified in place) in `mode`."""

    def __init__(self, package, mode: str, evidence: Evidence | None, progress=no_progress, jobs: int = 1,
                 log=None, model_sha256: str | None = None):
        if mode not in MODES:
            raise DczError(f"unknown planning mode {mode!r}")
        self.package, self.mode, self.evidence = package, mode, evidence
        self.progress, self.jobs = progress, max(1, jobs or 1)
        self.log = log or (lambda message: None)
        self.model_sha256 = model_sha256
        self.phases: dict[str, float] = {}
        self.scale_codec = scale_codec_available()
        self.originals = {t.name: t for t in package.tensors}
        self.runner = None
        self.reference = None
        self.layers: list[Layer] = []
        # The samples fidelity is judged on: those the rounding was not fitted to (None: all).
        self.judged: np.ndarray | None = None

    # -- phases
    def _phase(self, name: str, start: float) -> None:
        self.phases[name] = round(time.perf_counter() - start, 2)
        self.log(f"{name}: {self.phases[name]:.1f} s")

    def prepare(self, need_candidates: bool = True, names: set | None = None) -> None:
        """Reference outputs, layer statistics, sensitivities and candidates (as far as needed)."""
        start = time.perf_counter()
        stats, held_stats = {}, None
        ev = self.evidence
        if ev is not None:
            self.runner = Runner(self.package, ev)
            self.reference = self.runner.run(progress=self.progress, desc="reference")
            if np.ndim(self.reference) == 0 or len(self.reference) != ev.count:
                raise DczError(f"the model's output {list(np.shape(self.reference))} does not hold its {ev.count} "
                               f"input samples on one axis, so fidelity cannot be measured per sample")
            self._phase("reference run", start)
            start = time.perf_counter()
            from .calibration import collect

            wanted = {t.name for t in self.package.tensors if compressible(t)}
            if names is not None:
                wanted &= names
            fitted, held = fit_split(ev.count) if ev.kind == "calibration" else (_stats_samples(ev.count), None)
            if wanted:
                stats = collect(self.package, pick(ev.feeds, ev.layout, fitted), progress=self.progress, names=wanted)
                if held is not None:
                    held_stats = collect(self.package, pick(ev.feeds, ev.layout, held), progress=self.progress,
                                         names=wanted)
                    self.judged = np.setdiff1d(np.arange(ev.count), fitted)
            self._phase("layer statistics", start)
        self.layers = _layers(self.package, stats, held_stats)
        if not need_candidates or ev is None:
            return
        start = time.perf_counter()
        _gains(self.layers, self.runner, self.reference, self.progress)
        self._phase("sensitivity", start)
        start = time.perf_counter()
        work = [layer for layer in self.layers if layer.stats is not None and layer.gain is not None and layer.base > 0]

        synthesized = ev.kind == "synthesized"

        def evaluate(layer):
            layer.candidates = _candidates(layer, self.mode, self.scale_codec, synthesized)
            if synthesized:  # GPTQ/SparseGPT would fit the random inputs: nearest rounding, magnitude
                layer.candidates = [(Setting(c[0].density, c[0].step, c[0].bits, False), *c[1:])
                                    for c in layer.candidates]
            return layer

        self._map(evaluate, work, "candidates")
        self._phase("candidates", start)

    def _map(self, fn, layers: list, desc: str) -> None:
        """fn(layer) for every layer, largest first, on `jobs` threads, with a progress bar."""
        layers = sorted(layers, key=lambda layer: -layer.weight.size)
        if self.jobs > 1 and len(layers) > 1:
            with ThreadPoolExecutor(min(self.jobs, len(layers))) as pool:
                for _ in self.progress(pool.map(fn, layers), desc=desc, total=len(layers), unit="layer"):
                    pass
        else:
            for layer in self.progress(layers, desc=desc, total=len(layers), unit="layer"):
                fn(layer)

    # -- making a plan's weights
    def settings_for(self, choice: dict[str, int]) -> dict[str, Setting]:
        out = {}
        for layer in self.layers:
            if layer.name in choice:
                out[layer.name] = layer.candidates[choice[layer.name]][0]
            else:
                out[layer.name] = default_setting(self.mode)
        return out

    def realize(self, settings: dict[str, Setting]):
        """(entries by name, decoded weights by name, facts by name, corrected biases)."""
        entries, decoded, facts = {}, {}, {}

        def one(layer):
            return layer.name, apply_layer(layer, settings[layer.name], self.mode, self.scale_codec)

        work = [layer for layer in self.layers if layer.name in settings]
        if self.jobs > 1 and len(work) > 1:
            with ThreadPoolExecutor(min(self.jobs, len(work))) as pool:
                results = list(pool.map(one, sorted(work, key=lambda layer: -layer.weight.size)))
        else:
            results = [one(layer) for layer in work]
        for name, (entry, weight, fact) in results:
            entries[name], decoded[name], facts[name] = entry, weight, fact
        aware = self.evidence is not None and self.evidence.kind == "calibration"
        biases = bias_corrections(self.layers, decoded, self.package, settings) if aware else {}
        return entries, decoded, facts, biases

    def verify(self, decoded: dict, biases: dict, index: np.ndarray | None = None) -> dict | None:
        """Fidelity of these weights on the judged samples (or those of them at `index`): every
        sample when nothing was fitted to the data, else those the fit did not see."""
        if self.runner is None:
            return None
        if self.judged is not None:
            index = self.judged if index is None else np.intersect1d(index, self.judged)
        out = self.runner.run({**decoded, **biases}, index, progress=self.progress, desc="verify")
        ev = self.evidence
        if index is None:
            return measure(out, self.reference, ev.labels)
        fid = measure(out, self.reference[index], None if ev.labels is None else ev.labels[index])
        if self.judged is not None:
            fid["held_out"] = True
        return fid

    def size(self, entries: dict, biases: dict) -> int:
        from .encoding import file_cost

        total = 0
        for t in self.package.tensors:
            if t.name in entries:
                total += file_cost(entries[t.name])
            elif t.name in biases:
                total += t.stored_bytes
        return total

    # -- the search
    def search(self, goal: list[Target]):
        """(best, fidelity, tried): the smallest plan meeting every target in `goal` on all the
        samples, best = (settings, (entries, decoded, facts, biases), bytes, fidelity), or None
        when only the lossless form meets it; raises GateFailed when not even that does.

        The budget is bracketed and bisected on all judged samples when a pass over them is cheap
        (FULL_SEARCH_MACS), else on an evenly spaced subset (a quarter of them, at
        least SEARCH_SAMPLES); the winner is then confirmed on all of them, backing
        off to the next larger passing plan, then to tighter budgets, when it falls short."""
        start = time.perf_counter()
        ev = self.evidence
        tried = []  # (budget, passed, bytes, fidelity)
        passing = []  # (bytes, budget, choice) that met the target on the search subset
        lossless_fid = measure(self.reference, self.reference, ev.labels)
        pool = self.judged if self.judged is not None else np.arange(ev.count)
        cheap = self.runner.macs_per_sample() * len(pool) <= FULL_SEARCH_MACS
        subset = None if cheap or len(pool) <= 2 * SEARCH_SAMPLES else \
            pool[spaced(len(pool), max(SEARCH_SAMPLES, len(pool) // 4))]
        budget = initial_budget(goal)
        lo = hi = None
        seen = []

        def attempt(choice, index, label):
            settings = self.settings_for(choice)
            entries, decoded, facts, biases = self.realize(settings)
            fid = self.verify(decoded, biases, index)
            nbytes = self.size(entries, biases)
            passed = all(t.met(fid) for t in goal)
            where = "all samples" if index is None else f"{len(index)} samples"
            self.log(f"{label}: predicted NSR {predicted(self.layers, choice):.3g}, measured {fid['nsr']:.3g} on "
                     f"{where}, {nbytes:,} bytes, cosine {fid['cosine']:.5f}, agreement "
                     f"{100 * fid['top1_agreement']:.1f} %"
                     + (f", accuracy drop {fid['accuracy_drop']:.2f}" if "accuracy_drop" in fid else "")
                     + (" -> met" if passed else " -> not met"))
            tried.append((budget, passed, nbytes, fid))
            return passed, nbytes, fid, (settings, (entries, decoded, facts, biases), nbytes, fid)

        for step in range(MAX_VERIFIES):
            choice = allocate(self.layers, budget)
            for _ in range(8):  # unbracketed, a budget that gives a tried plan moves on the same way
                if choice not in seen or (lo is not None and hi is not None):
                    break
                budget = budget * 2 if hi is None else budget / 2
                choice = allocate(self.layers, budget)
            if choice in seen:
                break  # the budget moved, the plan did not: nothing more to learn this way
            seen.append(choice)
            passed, nbytes, fid, result = attempt(choice, subset, f"search {step + 1} (budget {budget:.3g})")
            if passed:
                lo = budget if lo is None else max(lo, budget)
                passing.append((nbytes, budget, choice, result))
            else:
                hi = budget if hi is None else min(hi, budget)
            if lo is not None and hi is not None:
                if hi / lo < 1.25:
                    break
                budget = math.sqrt(lo * hi)
            elif lo is not None:
                budget = lo * _expansion(goal, fid)
            else:
                budget = hi / _expansion(goal, fid, shrink=True)
        best = None
        passing.sort(key=lambda p: p[0])
        if subset is None:
            best = passing[0][3] if passing else None
        else:
            for nbytes, budget, choice, _ in passing[:2]:
                passed, _, _, result = attempt(choice, None, "confirm")
                if passed:
                    best = result
                    break
            if best is None and passing:  # tighter budgets, on all samples
                budget = min(p[1] for p in passing)
                for _ in range(2):
                    budget /= 2
                    choice = allocate(self.layers, budget)
                    if choice in seen:
                        continue
                    seen.append(choice)
                    passed, _, _, result = attempt(choice, None, f"confirm (budget {budget:.3g})")
                    if passed:
                        best = result
                        break
        if best is None:  # the finest candidates, then the lossless form
            choice = {layer.name: _finest(layer) for layer in self.layers if layer.candidates}
            passed, _, _, result = attempt(choice, None, "finest")
            if passed:
                best = result
        self._phase("allocate and verify", start)
        if best is None:
            if all(t.met(lossless_fid) for t in goal):
                return None, lossless_fid, tried
            figures = ", ".join(f"{t.option[2:]} {_figure(t, max((r[3] for r in tried), key=lambda f: _score(t, f)))}"
                                for t in goal)
            losslessly = ", ".join(f"{t.option[2:]} {_figure(t, lossless_fid)}" for t in goal)
            raise GateFailed(f"target {', '.join(map(str, goal))} not met: best compressed {figures}; "
                             f"losslessly {losslessly} (on {self.evidence.describe()}); nothing written")
        return best, best[3], tried

    # -- writing the result into the package
    def commit(self, entries: dict, biases: dict) -> None:
        from .encoding import build, dense_form
        from .codecs import validate_chain

        for i, t in enumerate(self.package.tensors):
            if t.name in entries:
                validate_chain(entries[t.name])
                self.package.tensors[i] = entries[t.name]
            elif t.name in biases:
                self.package.tensors[i] = build(t, dense_form(biases[t.name].reshape(t.shape), t.dtype))

    def rows(self, settings: dict, entries: dict, facts: dict, choice_d: dict | None = None) -> list[dict]:
        from .encoding import file_cost

        shares = {}
        if choice_d:
            total = sum(choice_d.values()) or 1.0
            shares = {name: value / total for name, value in choice_d.items()}
        rows = []
        for layer in self.layers:
            s = settings.get(layer.name)
            entry = entries.get(layer.name, layer.tensor)
            fact = facts.get(layer.name, {})
            kept = int(np.count_nonzero(entry.decode())) if s is not None and s.density < 1 else layer.weight.size
            rows.append({
                "name": layer.name, "kind": layer.tensor.kind, "weights": int(layer.weight.size), "kept": kept,
                "kept_fraction": round(kept / layer.weight.size, 6) if layer.weight.size else 0.0,
                "density": None if s is None else s.density, "step": None if s is None else s.step,
                "bits": None if s is None else s.bits, "levels": fact.get("levels"),
                "index_bits": fact.get("index_bits"), "data_aware": bool(s and s.data_aware and layer.stats is not None),
                "chain": entry.chain_label, "bytes_original": layer.tensor.nbytes, "bytes": entry.stored_bytes,
                "file_bytes": file_cost(entry),
                "bits_per_weight": round(8 * entry.stored_bytes / layer.weight.size, 3) if layer.weight.size else 0.0,
                "gain": None if layer.gain is None else round(layer.gain, 6),
                "distortion_share": round(shares[layer.name], 4) if layer.name in shares else None,
            })
        return rows


def initial_budget(goal: list[Target]) -> float:
    """A first predicted-NSR budget: for a cosine, the NSR it allows (cos ≈ 1 − NSR/2); for
    agreement and accuracy a guess the verification corrects."""
    budgets = []
    for t in goal:
        if t.kind == "min_cosine":
            budgets.append(max(2 * (1 - t.value), 1e-7))
        elif t.kind == "min_agreement":
            budgets.append(max(0.25 * (1 - t.value / 100), 1e-5))
        else:
            budgets.append(0.05 * max(t.value, 0.01))
    return min(budgets) if budgets else 0.01


def _expansion(goal: list[Target], fid: dict, shrink: bool = False) -> float:
    """How far to move the budget after a run that met (or missed) the target: for a cosine the
    measured NSR says how much room is left; otherwise a factor 4."""
    cos = [t for t in goal if t.kind == "min_cosine"]
    if len(cos) == len(goal) and fid.get("nsr", 0) > 0:
        allowed = max(min(2 * (1 - t.value) for t in cos), 1e-9)
        factor = allowed / fid["nsr"]
        factor = 1 / factor if shrink else factor
        return float(min(max(factor, 1.3), 16))
    return 4.0


def _finest(layer: Layer) -> int:
    return int(np.argmin([c[2] for c in layer.candidates]))


def _score(t: Target, fid: dict) -> float:
    value = t.reached(fid)
    if value is None or not math.isfinite(value):
        return -math.inf
    return -value if t.kind == "max_accuracy_drop" else value


def _figure(t: Target, fid: dict) -> str:
    value = t.reached(fid)
    if t.kind == "min_cosine":
        return f"{value:.6f}"
    if t.kind == "min_agreement":
        return f"{value:.2f} %"
    return "n/a" if value is None else f"{value:.2f} points"


# ------------------------------------------------------------------------------------- entry point

def run(package, mode: str, *, goal: list[Target], evidence: Evidence | None, given: dict | None = None,
        plan: dict | None = None, progress=no_progress, jobs: int = 1, log=None, model_sha256: str | None = None,
        not_measured: str | None = None) -> Outcome:
    """Compress `package` in place in `mode`:

    - `plan`: apply its settings (no search);
    - `goal` (targets) with `evidence`: search the smallest verified plan;
    - `given`: {name: Setting} applied as they are (data-aware with evidence), fidelity reported;
    - no evidence: the data-free safe setting (`not_measured` says why)."""
    planner = Planner(package, mode, evidence, progress, jobs, log, model_sha256)
    if plan is not None:
        settings = check_plan(plan, package, mode, model_sha256, evidence)
        if plan.get("lossless"):
            planner.prepare(need_candidates=False, names=set())
            fid = planner.verify({}, {}) if evidence is not None else None
            return finish(planner, {}, {}, {}, {}, fid, goal, lossless=True, notes=["applied --plan (lossless)"])
        planner.prepare(need_candidates=False)  # statistics of every weight, as the search had them
        missing = [layer.name for layer in planner.layers if layer.name not in settings]
        if missing:
            raise DczError(f"--plan has no setting for weight {missing[0]!r}: it was made for another model")
        start = time.perf_counter()
        entries, decoded, facts, biases = planner.realize(settings)
        planner._phase("apply plan", start)
        fid = planner.verify(decoded, biases) if evidence is not None else None
        _enforce(goal, fid, evidence, "--plan")
        return finish(planner, settings, entries, facts, biases, fid, goal, notes=["applied --plan"])
    if evidence is None:
        planner.prepare(need_candidates=False)
        settings = {layer.name: (given or {}).get(layer.name) or default_setting(mode) for layer in planner.layers}
        settings = {name: Setting(s.density, s.step, s.bits, False) for name, s in settings.items()}
        entries, decoded, facts, biases = planner.realize(settings)
        outcome = finish(planner, settings, entries, facts, biases, None, goal)
        outcome.notes.append(f"fidelity not measured: {not_measured or 'no data'}")
        return outcome
    if given is not None or not goal:  # the given settings, data-aware where the layer has statistics
        planner.prepare(need_candidates=False)
        settings = {layer.name: (given or {}).get(layer.name) or default_setting(mode) for layer in planner.layers}
        start = time.perf_counter()
        entries, decoded, facts, biases = planner.realize(settings)
        planner._phase("apply", start)
        fid = planner.verify(decoded, biases)
        _enforce(goal, fid, evidence, "the given settings")  # a target with settings: a gate
        return finish(planner, settings, entries, facts, biases, fid, goal)
    if any(t.kind == "max_accuracy_drop" for t in goal) and evidence.labels is None:
        raise DczError("--max-accuracy-drop needs `labels` in the --calibrate data")
    planner.prepare()
    best, fid, tried = planner.search(goal)
    if best is None:
        outcome = finish(planner, {}, {}, {}, {}, fid, goal, lossless=True)
        outcome.notes.append("the target is met only losslessly: the weights are stored as they were (pack)")
        outcome.verifies = len(tried)
        return outcome
    settings, (entries, decoded, facts, biases), _, fid = best
    d_by_layer = {}
    for layer in planner.layers:
        s = settings.get(layer.name)
        for c in layer.candidates:
            if c[0] == s and layer.gain is not None:
                d_by_layer[layer.name] = layer.gain * c[2]
    outcome = finish(planner, settings, entries, facts, biases, fid, goal, d_by_layer=d_by_layer)
    outcome.verifies = len(tried)
    return outcome


def _enforce(goal, fid, evidence, what: str) -> None:
    if goal and fid is not None and not all(t.met(fid) for t in goal):
        failed = next(t for t in goal if not t.met(fid))
        raise GateFailed(f"{what} reach {failed.option[2:]} {_figure(failed, fid)}, short of {failed} "
                         f"(on {evidence.describe()}); nothing written")


def finish(planner: Planner, settings, entries, facts, biases, fid, goal, lossless=False, notes=None,
             d_by_layer=None) -> Outcome:
    planner.commit(entries, biases)
    rows = planner.rows(settings, entries, facts, d_by_layer)
    ev = planner.evidence
    fidelity = None
    if fid is not None:
        described = ev.describe()
        if fid.get("held_out"):
            described = f"the {fid['samples']} held out from fitting the rounding, of {described}"
        fidelity = {**rounded(fid), "data": ev.kind, "source": ev.source, "described": described}
    plan = {
        "deepcompress_plan": PLAN_VERSION, "mode": planner.mode, "model_sha256": planner.model_sha256,
        "data": None if ev is None else ev.to_json(), "target": [t.to_json() for t in goal],
        "lossless": lossless, "reached": None if fid is None else rounded(fid),
        "bytes": None,  # set by the caller once the file is written
        "layers": {name: {**s.to_json(), "index_bits": facts.get(name, {}).get("index_bits")}
                   for name, s in sorted(settings.items())},
    }
    return Outcome(rows, fidelity, plan, lossless, list(notes or []), dict(planner.phases))


# ------------------------------------------------------------------------------------- plan files

def read_plan(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            plan = json.load(f)
    except FileNotFoundError:
        raise DczError(f"--plan {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DczError(f"--plan {path}: not a readable plan ({str(e)[:80]})") from None
    if not isinstance(plan, dict) or plan.get("deepcompress_plan") != PLAN_VERSION or \
            not isinstance(plan.get("layers"), dict):
        raise DczError(f"--plan {path}: not a deepcompress plan (version {PLAN_VERSION})")
    plan["_path"] = path
    return plan


def write_plan(path: str, plan: dict) -> None:
    import os
    import tempfile

    text = json.dumps({k: v for k, v in plan.items() if not k.startswith("_")}, sort_keys=True, indent=1,
                      allow_nan=False) + "\n"
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".plan-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_plan(plan: dict, package, mode: str, model_sha256: str | None, evidence: Evidence | None) -> dict:
    where = f"--plan {plan.get('_path', '')}".rstrip()
    if plan.get("mode") != mode:
        raise DczError(f"{where} is a {plan.get('mode')!r} plan, not one for {mode}")
    if model_sha256 and plan.get("model_sha256") and plan["model_sha256"] != model_sha256:
        raise DczError(f"{where} was made for another model (SHA-256 {str(plan['model_sha256'])[:12]}..., "
                       f"this one is {model_sha256[:12]}...)")
    data = plan.get("data") or {}
    aware = any(isinstance(v, dict) and v.get("data_aware") for v in plan["layers"].values())
    if aware and data.get("kind") == "calibration" and (evidence is None or evidence.kind != "calibration"):
        raise DczError(f"{where} was made with calibration data ({data.get('source')}): pass --calibrate")
    settings = {}
    names = {t.name for t in package.tensors if compressible(t)}
    for name, value in plan["layers"].items():
        if name not in names:
            raise DczError(f"{where} names weight {name!r}, which this model does not have")
        if not isinstance(value, dict):
            raise DczError(f"{where}: the setting of {name!r} is not an object")
        settings[name] = Setting.from_json(value, where)
    return settings


def progress_log(enabled) -> callable:
    """Phase timings on stderr: when progress bars would show (a terminal, or progress=True)."""
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return lambda message: None
    return lambda message: print(f"deepcompress: {message}", file=sys.stderr, flush=True)


class Probe:
    """Fidelity of a stage's result against the model before it: the reference outputs are taken
    first (the stage changes the package in place), the compressed weights are run after."""

    def __init__(self, package, evidence: Evidence):
        self.evidence = evidence
        self.runner = Runner(package, evidence)
        self.reference = self.runner.run()

    def finish(self, package) -> dict:
        weights = {t.name: t.decode().reshape(t.shape) for t in package.tensors}
        fid = measure(self.runner.run(weights), self.reference, self.evidence.labels)
        ev = self.evidence
        return {**rounded(fid), "measured": True, "data": ev.kind, "source": ev.source, "described": ev.describe()}


def evidence_for(package, calibrate: str | None, max_bytes: int | None = None) -> tuple[Evidence | None, str | None]:
    """(evidence, None) from --calibrate, else synthesized inputs; (None, why) when neither can be
    had (bad --calibrate data is an error instead: exit 2)."""
    if calibrate is not None:
        return calibration_evidence(package, calibrate, max_bytes), None
    try:
        return synthesized_evidence(package), None
    except DczError as e:
        return None, str(e)
