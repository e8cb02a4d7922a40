"""`bench`: size, latency and accuracy (or fidelity) of models side by side, with CI gates."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .data import (InputSpec, batch_size, check_classes, check_labels, check_shapes, convert, declared_layout,
                   load_npz, pick, random_shapes, sample_count, sample_layout, shape_batch, take)
from .data import input_specs as data_specs
from .errors import DczError, GateFailed
from .files import check_decoded_size, decoded_bytes, read_model
from .graphs import index_bounds, window_reach
from .interp.ops import MAX_VALUE_BYTES

# Random inputs are sized by the shapes a model declares, which can be anything: all of them
# together stay below this (fewer samples then), so a few bytes of model cannot take gigabytes.
MAX_RANDOM_INPUT_BYTES = 64 << 20
# How many random samples the fidelity figures use: 64, fewer for big models, since a sample's
# compute grows with the weights (VGG-19's 143 M weights x 64 samples x 2 modes took minutes per
# model).  Samples x weights stay below RANDOM_SAMPLE_WEIGHTS, at least MIN_RANDOM_SAMPLES.
RANDOM_SAMPLES = 64
RANDOM_SAMPLE_WEIGHTS = 1 << 30
MIN_RANDOM_SAMPLES = 4


def random_sample_count(package) -> int:
    """Samples of random input for `package` (the baseline: every model compared uses as many)."""
    weights = sum(t.numel for t in package.tensors)
    return max(MIN_RANDOM_SAMPLES, min(RANDOM_SAMPLES, RANDOM_SAMPLE_WEIGHTS // max(weights, 1)))


@dataclass
class BenchConfig:
    runs: int = 10
    warmup: int = 2
    batch: int = 1
    seed: int = 0
    int8: bool = True
    ort: bool = False
    data: str | None = None
    calibrate: str | None = None
    baseline: str | None = None
    gates: dict = field(default_factory=dict)  # min_ratio, max_accuracy_drop (points), min_cosine, min_agreement (%)
    max_value_bytes: int = MAX_VALUE_BYTES  # one array an op sizes from tensor values (interp/ops)
    max_data_bytes: int | None = None  # cap on the decoded --data/--calibrate arrays (data.MAX_DATA_BYTES)
    max_decoded_bytes: int | None = None  # cap on a model's decoded tensors (files.check_decoded_size)
    shapes: dict = field(default_factory=dict)  # --shape: input name -> its shape for random inputs


def graph_specs(interp) -> list[InputSpec]:
    """The `data.InputSpec` of each graph input the data feeds (not a constant)."""
    return [InputSpec.of(i.name, i.type.tensor_type) for i in interp.model.graph.input
            if i.name not in interp.plan.constants]


def make_inputs(interp, data: dict | None, count: int, seed: int, max_bytes: int = MAX_RANDOM_INPUT_BYTES,
                option: str = "--data", shapes: dict | None = None) -> dict[str, np.ndarray]:
    """`count` samples per input: the arrays of `data` (checked against the inputs, in their
    dtypes), or seeded random ones laid out as `data.declared_layout` says and shaped as
    `data.random_shapes` says (`shapes`: --shape; as many of `count` samples as fit in
    `max_bytes`; not even one is a one-line error). Random floats are standard normal; integers
    index within the table a Gather reads them into (token ids), are all 1 for a mask, else 0 or 1.
    `option`: the data option the messages name (bench's --data, compress's --calibrate)."""
    specs = graph_specs(interp)
    if data is not None:
        sample_layout(specs, data, option)  # names, shapes and dtypes, one line each
        return {s.name: convert(data[s.name], s) for s in specs}
    shapes = shapes or {}
    check_shapes(specs, shapes)
    layout = declared_layout(specs)
    scalar = next((s for s in specs if layout[s.name] is None and not s.dims), None)
    if scalar is not None:
        raise DczError(f"random inputs: the model's input {scalar.name!r} is a scalar {scalar.dtype}, a setting "
                       "shared by every sample (such as a sample rate) that random numbers cannot stand for: give "
                       f"{option} with a 0-d array {scalar.name!r}")
    text = next((s.name for s in specs if s.dtype.kind not in "biuf"), None)
    if text is not None:
        raise DczError(f"random inputs: input {text!r} is not numeric; give {option}")
    stride, reach = window_reach(interp.model)

    def shape_of(n):
        return random_shapes(specs, layout, n, shapes, stride, reach)

    one = shape_of(1)
    sample_bytes = sum(math.prod(one[s.name]) * s.dtype.itemsize for s in specs
                       if layout[s.name] is not None)  # exact ints
    if sample_bytes * count > max_bytes:
        count = max_bytes // sample_bytes
        if count == 0:
            spec = max((s for s in specs if layout[s.name] is not None),
                       key=lambda s: math.prod(one[s.name]) * s.dtype.itemsize)
            raise DczError(f"random inputs: one sample takes {sample_bytes:,} bytes (input {spec.name!r} is "
                           f"{one[spec.name]} {spec.dtype}), over the {max_bytes:,}-byte limit: give {option}")
    rng = np.random.default_rng(seed)
    bounds = index_bounds(interp.model)
    feeds = {}
    for spec, dims in zip(specs, shape_of(count).values()):
        if spec.dtype == np.float32:  # drawn in float32 directly: no float64 copy twice the size
            feeds[spec.name] = rng.standard_normal(dims, dtype=np.float32)
        elif spec.dtype.kind in "iu" and "mask" in spec.name.lower():
            feeds[spec.name] = np.ones(dims, spec.dtype)
        elif spec.dtype.kind in "iu":
            high = min(bounds.get(spec.name, 2), int(np.iinfo(spec.dtype).max) + 1)
            feeds[spec.name] = rng.integers(0, high, dims).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.standard_normal(dims).astype(spec.dtype)
    return feeds


def _shape_batch(interp, config: BenchConfig) -> int | None:
    """The batch of each run that --shape sets (its size on the sample axis), if it sets one;
    a --batch-size that says otherwise is an error."""
    specs = graph_specs(interp)
    batch = shape_batch(specs, declared_layout(specs), config.shapes)
    if batch is not None and config.batch not in (1, batch):
        raise DczError(f"--shape sets a batch of {batch} (the size on the sample axis) but --batch-size is "
                       f"{config.batch}")
    return batch


def feeds_layout(interp, feeds: dict, random: bool = False) -> dict[str, int | None]:
    """The sample layout of `feeds` (from `make_inputs`): random ones as they were made."""
    specs = graph_specs(interp)
    return declared_layout(specs) if random else sample_layout(specs, feeds)


def fixed_batch(interp, layout: dict | None = None) -> int | None:
    """The batch size the model fixes on its inputs' sample axis (None: any)."""
    specs = graph_specs(interp)
    return batch_size(specs, declared_layout(specs) if layout is None else layout)


def run_batched(interp, feeds: dict, batch: int, progress=None, desc: str = "",
                layout: dict | None = None) -> np.ndarray:
    """The first numeric output over all samples, `batch` at a time (a progress bar per batch if
    given); each input sliced on its sample axis (`layout`, by default found from `feeds`)."""
    layout = feeds_layout(interp, feeds) if layout is None else layout
    n = sample_count(feeds, layout)
    starts = range(0, n, batch)
    if progress is not None:
        starts = progress(starts, desc=desc, total=len(starts), unit="batch")
    outs = [first_numeric(interp.run(take(feeds, layout, i, i + batch))) for i in starts]
    return samples_first(outs, [min(i + batch, n) - i for i in range(0, n, batch)])


def samples_first(outs: list, sizes: list) -> np.ndarray:
    """Per-batch outputs joined with the samples on axis 0: on the first axis whose length is each
    batch's sample count (a time-major [T, N, C] output, as CTC recognizers give, has them on
    axis 1); on axis 0 when no axis tells."""
    ndim = {np.ndim(o) for o in outs}
    if len(ndim) == 1 and min(ndim) > 0:
        for axis in range(min(ndim)):
            if all(np.shape(o)[axis] == size for o, size in zip(outs, sizes)):
                return np.moveaxis(np.concatenate(outs, axis=axis), axis, 0)
    return np.concatenate(outs)


def first_numeric(outputs: list) -> np.ndarray:
    """The output bench compares: the first float one, else the first numeric one (string outputs
    pass through unused, as do sequences and empty optionals).  Integer outputs before it are ids or
    labels that compression rarely moves (a sentence encoder echoing its int64 token ids first would
    score a perfect 1.0)."""
    values = [np.asarray(value) for value in outputs if value is not None and not isinstance(value, list)]
    for kinds in ("f", "biuf"):
        for value in values:
            if value.dtype.kind in kinds:
                return value
    raise DczError("bench: the model has no numeric output to compare")


def latency(fn, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(float(np.median(times)), 3), "p90_ms": round(float(np.percentile(times, 90)), 3)}


@np.errstate(all="ignore")  # Inf - Inf is NaN: the figures say so, without a warning
def fidelity(out: np.ndarray, reference: np.ndarray) -> dict:
    a, b = out.astype(np.float64).reshape(len(out), -1), reference.astype(np.float64).reshape(len(reference), -1)
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return {"cosine": round(float((a * b).sum() / denominator), 6) if denominator else 1.0,
            "max_abs_error": float(np.abs(a - b).max()),
            "top1_agreement": round(float((a.argmax(1) == b.argmax(1)).mean()), 6)}


def calibrate(package, data: dict, batch: int, max_bytes: int = MAX_VALUE_BYTES) -> dict[str, tuple[float, float]]:
    """min/max of every value over `data`, from a float run (the ranges int8 mode then uses)."""
    from .interp.graph import Interpreter

    ranges: dict[str, list] = {}

    def observe(name, value):
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size:
            low, high = float(value.min()), float(value.max())
            r = ranges.setdefault(name, [low, high])
            r[0], r[1] = min(r[0], low), max(r[1], high)

    interp = Interpreter(package, max_bytes)
    interp.observe = observe
    run_batched(interp, make_inputs(interp, data, 0, 0), batch)
    return {k: (v[0], v[1]) for k, v in ranges.items()}


def _read(path: str, config: BenchConfig):
    """A model to run, refused before decoding when its tensors would decode past the cap."""
    package = read_model(path)
    check_decoded_size(package, config.max_decoded_bytes, path)
    return package


def bench(paths: list[str], config: BenchConfig, progress=lambda items, **kw: items) -> dict:
    from .interp.graph import Interpreter
    from .interp.quant import Int8Interpreter

    baseline_path = config.baseline or paths[0]
    models = [baseline_path] + [p for p in paths if p != baseline_path]
    first = _read(baseline_path, config)  # its inputs say which arrays of --data to read, and how big
    specs = data_specs(first.graph.graph)
    data = load_npz(config.data, specs, "--data", config.max_data_bytes) if config.data else None
    labels = layout = None
    if data is not None:
        labels = data.pop("labels", None)
        layout = sample_layout(specs, data)
        labels = check_labels(labels, data, "--data", layout)
    check_gates_can_run(paths, config, labels)
    if config.shapes and data is not None:
        raise DczError("--shape sizes random inputs; with --data the arrays give the shapes")
    count = sample_count(data, layout) if data is not None else random_sample_count(first)
    results, reference = [], None
    for path in models:
        package, first = (first if first is not None else _read(path, config)), None
        fp32 = Interpreter(package, config.max_value_bytes)
        feeds = make_inputs(fp32, data, count, config.seed, shapes=config.shapes)
        layout = feeds_layout(fp32, feeds, random=data is None)
        batch = fixed_batch(fp32, layout) or _shape_batch(fp32, config) or config.batch
        one_batch = pick(feeds, layout, np.arange(batch) % sample_count(feeds, layout))  # repeated if too few
        size = package.file_bytes or 0
        row = {"model": path, "file_bytes": size, "decoded_bytes": decoded_bytes(package),
               "weight_bytes": sum(t.stored_bytes for t in package.tensors if t.is_weight),
               "batch": batch, "modes": {}}
        ranges = None
        if config.int8 and config.calibrate:  # activation ranges: calibrated, or measured per run
            calibration = load_npz(config.calibrate, data_specs(package.graph.graph), "--calibrate",
                                   config.max_data_bytes, labels=False)
            ranges = calibrate(package, calibration, batch, config.max_value_bytes)
        for mode in ("fp32", "int8") if config.int8 else ("fp32",):
            # One interpreter at a time: each holds its own decoded (or int8-prepared) weights.
            interp, fp32 = fp32, None
            if mode == "int8":
                interp = None  # the float one's weights go before the int8 ones are made
                interp = Int8Interpreter(package, ranges, config.max_value_bytes)
            out = run_batched(interp, feeds, batch, progress, f"{path} {mode}", layout)
            if labels is not None and not results and mode == "fp32":  # class ids past the logits
                check_classes(out, labels, "--data")
            stats = {"latency": latency(lambda: interp.run(one_batch), config.runs, config.warmup)}
            if labels is not None:
                stats["accuracy"] = round(float((out.reshape(len(out), -1).argmax(1) == labels).mean()), 6)
            if reference is None and mode == "fp32":
                reference = out
            stats["fidelity"] = fidelity(out, reference)
            row["modes"][mode] = stats
        if config.ort:
            row["modes"]["ort"] = {"latency": ort_latency(package, one_batch, config)}
        results.append(row)
        # Let this model's weights and prepared int8 matrices go before the next model is read:
        # otherwise two big models are in memory at once.
        package = interp = None
    base = results[0]
    for row in results:  # named for what they divide: whole files (external data included), weights
        row["ratio_file"] = round(base["file_bytes"] / row["file_bytes"], 3) if row["file_bytes"] else None
        row["ratio_weights"] = round(base["weight_bytes"] / row["weight_bytes"], 3) if row["weight_bytes"] else None
    report = {"baseline": base["model"], "models": results}
    report["gates"] = check_gates(report, config.gates)
    return report


def ort_latency(package, feeds, config) -> dict | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from .container import serialize
    from .onnx_io import to_onnx

    session = ort.InferenceSession(serialize(to_onnx(package), "ONNX model"), providers=["CPUExecutionProvider"])
    return latency(lambda: session.run(None, feeds), config.runs, config.warmup)


def check_gates_can_run(paths: list[str], config: BenchConfig, labels) -> None:
    """A gate that cannot be evaluated is a usage error, not a silent pass."""
    gates = config.gates
    others = len(set(paths) | {config.baseline or paths[0]}) - 1
    if gates.get("min_ratio") is not None and others == 0:
        raise DczError("--min-ratio needs a second model to compare with the baseline")
    if gates.get("max_accuracy_drop") is not None and labels is None:
        raise DczError("--max-accuracy-drop needs --data with `labels`")
    agreement = gates.get("min_agreement")
    if agreement is not None and not (isinstance(agreement, (int, float)) and 0 <= agreement <= 100):
        raise DczError(f"--min-agreement is a percentage 0..100, got {agreement!r}")
    quality = any(gates.get(g) is not None for g in ("max_accuracy_drop", "min_cosine", "min_agreement"))
    if quality and others == 0 and not config.int8:
        raise DczError("quality gates need a second model, or int8 mode of the baseline")


def check_gates(report: dict, gates: dict) -> list[dict]:
    """Each gate against every model and mode but the baseline's fp32 run (so the baseline's
    int8 run is gated too): [{gate, model, mode, value, limit, passed}]."""
    checks = []
    base = report["models"][0]
    base_accuracy = base["modes"]["fp32"].get("accuracy")
    for row in report["models"]:
        if row is not base and gates.get("min_ratio") is not None:
            passed = row["ratio_file"] is not None and row["ratio_file"] >= gates["min_ratio"]
            checks.append(_gate("min-ratio", row, row["ratio_file"], gates["min_ratio"], passed))
        for mode, stats in row["modes"].items():
            if mode == "ort" or (row is base and mode == "fp32"):
                continue
            if gates.get("max_accuracy_drop") is not None:
                drop = round(100 * (base_accuracy - stats["accuracy"]), 4)
                checks.append(_gate("max-accuracy-drop", row, drop, gates["max_accuracy_drop"],
                                    drop <= gates["max_accuracy_drop"], mode))
            if gates.get("min_cosine") is not None:
                cosine = stats["fidelity"]["cosine"]
                checks.append(_gate("min-cosine", row, cosine, gates["min_cosine"],
                                    bool(cosine >= gates["min_cosine"]), mode))  # NaN fails
            if gates.get("min_agreement") is not None:  # in %, as the option takes it
                agreement = round(100 * stats["fidelity"]["top1_agreement"], 4)
                checks.append(_gate("min-agreement", row, agreement, gates["min_agreement"],
                                    agreement >= gates["min_agreement"], mode))
    return checks


def _gate(name, row, value, limit, passed, mode=None) -> dict:
    return {"gate": name, "model": row["model"], "mode": mode, "value": value, "limit": limit, "passed": bool(passed)}


def enforce(report: dict) -> None:
    failed = [g for g in report["gates"] if not g["passed"]]
    if failed:
        g = failed[0]
        where = f"{g['model']}" + (f" ({g['mode']})" if g["mode"] else "")
        raise GateFailed(f"gate {g['gate']} failed for {where}: {g['value']} vs limit {g['limit']}"
                         + (f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""))
