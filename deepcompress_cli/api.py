"""The Python API: one function per command, keyword names as the command's options.

    import deepcompress_cli as dc
    report = dc.compress("model.onnx", "model.dcz", sparsity={"fc": 0.95}, train="train.npz")
    print(report["totals"]["ratio_weights"])
    dc.export("model.dcz", "small.onnx")
    print(dc.bench("model.onnx", "model.dcz", data="test.npz")["models"][1]["ratio_file"])

Every writing function returns the report that `--json` prints (a dict); bad input raises
`DczError` (nothing is written). The CLI's commands are these functions plus formatting.

`progress`: None shows tqdm bars on stderr when it is a terminal, False never, True always.
`jobs`: threads that encode tensors (default: the CPU count; the output does not depend on it).
"""

from __future__ import annotations

import os
import sys

from .errors import DczError

__all__ = ["load", "info", "pack", "export", "prune", "share", "quantize", "huffman", "svd", "compress", "bench",
           "prepare_data"]

# Bounds of one `metadata` entry, in UTF-8 bytes, and of the entries of a file (the reader's are wider).
METADATA_KEY_BYTES = 256
METADATA_VALUE_BYTES = 4096
METADATA_ENTRIES = 64


# ----------------------------------------------------------------------------------- reading

def load(path, include=(), exclude=()):
    """The model at `path` (.onnx or .dcz, '-' for stdin) as a `tensors.Package`."""
    from .files import read_model

    include, exclude = _globs(include), _globs(exclude)
    package = read_model(_path(path), include, exclude)
    names = [t.name for t in package.tensors]
    _check_patterns("--include", include, names)
    _check_patterns("--exclude", exclude, names)
    return package


def info(path) -> dict:
    """What `info --json` prints: every tensor's encoding, size and ratio, and the totals."""
    from .report import summary

    package = load(path)
    return summary(package, package.file_bytes)


# ----------------------------------------------------------------------------------- writing

def pack(model, output, *, include=(), exclude=(), metadata=None, format=None) -> dict:
    """Store `model` losslessly (as .dcz unless `output` ends in .onnx or `format` says otherwise)."""
    metadata = check_metadata(metadata)
    package = load(model, include, exclude)
    size, fmt = _write(package, model, output, format, metadata)
    weights = [t for t in package.tensors if t.is_weight]
    return {"output": _path(output), "format": fmt, "bytes": size, "tensors": len(package.tensors),
            "weights": len(weights), "weight_bytes": sum(t.nbytes for t in weights)}


def export(model, output, *, qdq=False, metadata=None, format=None, max_decoded_bytes=None) -> dict:
    """`model` back as a runnable ONNX model (unless `output` ends in .dcz or `format` says otherwise).
    `max_decoded_bytes`: refuse a model that decodes to more (default: files.default_max_decoded_bytes)."""
    from .files import check_decoded_size

    metadata = check_metadata(metadata)
    package = load(model)
    decoded = check_decoded_size(package, max_decoded_bytes, _path(model))
    size, fmt = _write(package, model, output, format, metadata, qdq=qdq, default="onnx")
    return {"output": _path(output), "format": fmt, "bytes": size, "tensors": len(package.tensors),
            "decoded_bytes": decoded}


def prune(model, output, *, sparsity=None, layer_sparsity=None, index_bits=None, layer_index_bits=None,
          threshold_std=None, train=None, val=None, epochs=None, lr=None, batch_size=None, logits=None, augment=False,
          optimizer=None, seed=0, steps=None, calibrate=None, min_cosine=None, min_agreement=None,
          max_accuracy_drop=None, plan=None, plan_out=None, include=(), exclude=(), metadata=None, format=None,
          max_data_bytes=None, jobs=None, progress=None) -> dict:
    """Magnitude pruning; `sparsity` is one fraction or {"conv": .., "fc": ..}, `layer_sparsity`
    {glob: fraction}; with `train="train.npz"` prune -> retrain in `steps` steps (`val=` early stop,
    `augment=True` flips and crops image inputs: train/retrain.py, train/augment.py).
    With `calibrate="calib.npz"` SparseGPT masks and updates (data-aware); with a target
    (`min_cosine`, `min_agreement`, `max_accuracy_drop`) the kept fraction of every layer is searched."""
    from .stages.prune import DEFAULT_TRAIN_STEPS
    from .stages.prune import prune as prune_stage
    from .stages.retraining import prune_retrain

    config = _prune_config(sparsity, layer_sparsity, index_bits, layer_index_bits, threshold_std)
    planned = _planning(calibrate, min_cosine, min_agreement, max_accuracy_drop, plan, plan_out, train)
    if planned is not None:
        if config.threshold_std is not None:
            raise DczError("--threshold-std is magnitude pruning: not with --calibrate, a target or --plan")

        def given(package):
            from .planning import Setting

            resolved = config.resolved(train=False)
            return {t.name: Setting(density=1 - resolved.sparsity.value(t)) for t in package.tensors}

        return _planned("prune", model, output, planned, given if config.sparsity.given or not planned["goal"]
                        else None, [config], include, exclude, metadata, format, max_data_bytes, jobs, progress)
    training = _train_config(train, val, epochs, lr, batch_size, seed, logits, max_data_bytes, augment, optimizer)
    steps = _steps(steps, training, DEFAULT_TRAIN_STEPS)

    def apply(package, bar):
        if training is None:  # without retraining the steps' masks equal the final one's: nothing to repeat
            return prune_stage(package, config, bar, _jobs(jobs)), None
        return prune_retrain(package, config, training, steps, bar)

    return _stage(model, output, include, exclude, metadata, format, progress, apply, [config],
                  _data_files(training))


def share(model, output, *, bits=None, layer_bits=None, init="linear", max_iter=100, tol=1e-6, seed=0,
          per_channel=False, train=None, val=None, epochs=None, lr=None, batch_size=None, logits=None, augment=False,
          optimizer=None, calibrate=None, min_cosine=None, min_agreement=None, max_accuracy_drop=None, plan=None,
          plan_out=None, include=(), exclude=(), metadata=None, format=None, max_data_bytes=None, jobs=None,
          progress=None) -> dict:
    """k-means weight sharing: `bits` one integer or {"conv": .., "fc": ..}, `layer_bits` {glob: bits};
    `per_channel` channel-scaled codebooks; with `train=` the centroids are then trained. With `calibrate=` the weights are assigned to
    per-channel scaled centroids by GPTQ; with a target each layer's bits are searched."""
    from .stages.retraining import share_retrain
    from .stages.share import share as share_stage

    config = _share_config(bits, layer_bits, init, max_iter, tol, seed, per_channel)
    planned = _planning(calibrate, min_cosine, min_agreement, max_accuracy_drop, plan, plan_out, train)
    if planned is not None:
        def given(package):
            from .planning import Setting

            resolved = config.resolved(train=False)
            return {t.name: Setting(bits=int(resolved.bits.value(t))) for t in package.tensors}

        return _planned("share", model, output, planned, given if config.bits.given or not planned["goal"] else None,
                        [config], include, exclude, metadata, format, max_data_bytes, jobs, progress)
    training = _train_config(train, val, epochs, lr, batch_size, seed, logits, max_data_bytes, augment, optimizer)
    _no_trained_per_channel(config, training)

    def apply(package, bar):
        if training is None:
            return share_stage(package, config, bar, _jobs(jobs)), None
        return share_retrain(package, config, training, bar)

    return _stage(model, output, include, exclude, metadata, format, progress, apply, [config],
                  _data_files(training))


def quantize(model, output, *, bits=None, layer_bits=None, per_channel=False, symmetric=False, calibrate=None,
             min_cosine=None, min_agreement=None, max_accuracy_drop=None, plan=None, plan_out=None, include=(),
             exclude=(), metadata=None, format=None, max_data_bytes=None, jobs=None, progress=None) -> dict:
    """Linear quantization: `bits` (default 8) one integer or {"conv": .., "fc": ..}, `layer_bits` {glob: bits}.
    With `calibrate=` GPTQ rounding on a per-channel grid; with a target each layer's step is searched."""
    from .stages import per_kind
    from .stages.quantize import QuantizeConfig
    from .stages.quantize import quantize as quantize_stage

    planned = _planning(calibrate, min_cosine, min_agreement, max_accuracy_drop, plan, plan_out, None)
    if planned is not None:
        explicit = bits is not None or bool(layer_bits)
        config = QuantizeConfig(per_kind(8 if bits is None else bits, layer_bits, "--bits").with_defaults((8, 8)))

        def given(package):
            from .planning import Setting

            return {t.name: Setting(bits=int(config.bits.value(t))) for t in package.tensors}

        return _planned("quantize", model, output, planned, given if explicit or not planned["goal"] else None,
                        [config], include, exclude, metadata, format, max_data_bytes, jobs, progress)
    bits = 8 if bits is None else bits
    if layer_bits:
        bits = per_kind(bits, layer_bits, "--bits")
    config = QuantizeConfig(bits, bool(per_channel), bool(symmetric))

    def apply(package, bar):
        return quantize_stage(package, config, bar, _jobs(jobs)), None

    return _stage(model, output, include, exclude, metadata, format, progress, apply, [config])


def huffman(model, output, *, metadata=None, format=None, jobs=None, progress=None) -> dict:
    """Lossless canonical Huffman coding of every index, gap and code stream."""
    from .stages.entropy import huffman as huffman_stage

    def apply(package, bar):
        return huffman_stage(package, bar, _jobs(jobs)), None

    return _stage(model, output, (), (), metadata, format, progress, apply, [])


def svd(model, output, *, rank=None, energy=None, ratio=None, layer_rank=None, include=(), exclude=(),
        layers=(), seed=0, metadata=None, format=None, progress=None) -> dict:
    """Low-rank fully-connected layers; `include`/`exclude` (`layers` is the old name of `include`)
    are globs over node or weight names, `layer_rank` {glob: rank}."""
    from .stages.svd import SvdConfig
    from .stages.svd import svd as svd_stage

    metadata = check_metadata(metadata)
    layer_ranks = list(layer_rank.items()) if isinstance(layer_rank, dict) else list(layer_rank or ())
    config = SvdConfig(rank, energy, ratio, layer_ranks, [*_globs(include), *_globs(layers)], seed, _globs(exclude))
    package = load(model)
    rows = svd_stage(package, config, progress_bar(progress))
    size, fmt = _write(package, model, output, format, metadata)
    return {"output": _path(output), "format": fmt, "bytes": size, "layers": rows}


def compress(model, output, *, sparsity=None, layer_sparsity=None, index_bits=None, layer_index_bits=None,
             threshold_std=None, bits=None, layer_bits=None, init="linear", max_iter=100, tol=1e-6, seed=0,
             per_channel=False, train=None, val=None, epochs=None, lr=None, batch_size=None, logits=None,
             augment=False, optimizer=None, steps=None, report=False, calibrate=None, min_cosine=None,
             min_agreement=None, max_accuracy_drop=None, plan=None, plan_out=None, include=(), exclude=(),
             metadata=None, format=None, max_data_bytes=None, jobs=None, progress=None) -> dict:
    """The smallest file meeting a quality target, or the paper's recipe.

    - a target (`min_cosine`, `min_agreement` in %, `max_accuracy_drop` in points) with
      `calibrate="calib.npz"`: per-layer kept fraction x step searched (planning.py), verified on
      the data; `plan="plan.json"` applies a saved plan, `plan_out=` saves the chosen one;
    - none of these, no `train=` and no explicit `sparsity`/`bits`/... settings: the default
      target, min cosine 0.995 on `calibrate` data, or 0.999 on synthesized inputs without it;
    - explicit settings (no target) or `train=`: prune -> share -> huffman, the paper's recipe
      (`per_channel`: channel-scaled codebooks, not with `train=`)
      (with retraining between the stages when `train=` is given), fidelity then reported.
    `report=True` adds gzip -9 of the plain .onnx (`onnx_bytes`, `gzip9_bytes`)."""
    import zlib

    from .container import serialize
    from .onnx_io import to_onnx
    from .stages.compress import compress as compress_stage
    from .stages.compress import compress_retrain, totals
    from .stages.prune import DEFAULT_TRAIN_STEPS

    metadata = check_metadata(metadata)
    p_config = _prune_config(sparsity, layer_sparsity, index_bits, layer_index_bits, threshold_std)
    s_config = _share_config(bits, layer_bits, init, max_iter, tol, seed, per_channel)
    explicit = p_config.sparsity.given or p_config.index_bits.given or threshold_std is not None or s_config.bits.given \
        or bool(per_channel)
    searching = _planning(calibrate, min_cosine, min_agreement, max_accuracy_drop, plan, plan_out, train,
                          default=not explicit, retrains=True)
    if searching is not None and explicit and (searching["goal"] or plan is not None):
        raise DczError("--sparsity/--bits/--index-bits/--threshold-std/--per-channel set the paper's fixed recipe; a target or "
                       "--plan searches the settings: give one or the other")
    if searching is not None and not explicit and train is not None and optimizer is None and lr is None:
        from .train.targeted import FINE_TUNE_LR, FINE_TUNE_OPTIMIZER

        optimizer, lr = FINE_TUNE_OPTIMIZER, FINE_TUNE_LR
    training = _train_config(train, val, epochs, lr, batch_size, seed, logits, max_data_bytes, augment, optimizer)
    if searching is not None and not explicit:
        searching["train"] = training  # with a target: fine-tuned plans (train/targeted.py)
        return _planned("compress", model, output, searching, None, [p_config, s_config], include, exclude,
                        metadata, format, max_data_bytes, jobs, progress, report=report)
    _no_trained_per_channel(s_config, training)
    steps = _steps(steps, training, DEFAULT_TRAIN_STEPS)
    package = load(model, include, exclude)
    _check_names(package, [p_config, s_config])
    input_bytes = package.file_bytes
    probe, not_measured = _probe(package, calibrate, max_data_bytes)
    onnx_bytes = gzip_bytes = None
    if report:  # the peer: gzip of the model as a plain .onnx
        original = serialize(to_onnx(package), "ONNX model")  # over 2 GiB: one line, not EncodeError
        onnx_bytes, gzip_bytes = len(original), len(zlib.compress(original, 9))
        del original
    bar = progress_bar(progress)
    history = None
    if training is None:
        rows = compress_stage(package, p_config, s_config, bar, _jobs(jobs))
    else:
        rows, history = compress_retrain(package, p_config, s_config, training, steps, bar)
    fidelity = probe.finish(package) if probe is not None else {"measured": False, "reason": not_measured}
    reads = _data_files(training) + ([_path(calibrate)] if calibrate is not None else [])
    size, fmt = _write(package, model, output, format, metadata, reads=reads)
    sums = totals(rows, package)
    sums["ratio_file"] = _ratio(input_bytes, size)
    data = {"output": _path(output), "format": fmt, "bytes": size, "input_bytes": input_bytes, "layers": rows,
            "totals": sums, "onnx_bytes": onnx_bytes, "gzip9_bytes": gzip_bytes, "mode": "recipe",
            "ratio_file": sums["ratio_file"], "fidelity": fidelity, "warnings": []}
    if fidelity.get("measured") and not fidelity["cosine"] >= WARN_COSINE:
        data["warnings"].append(f"output cosine {fidelity['cosine']:.4f} on {fidelity['described']}: the fixed "
                                "recipe damaged the model; use a target (--calibrate DATA.npz --min-agreement 95) "
                                "or --train")
    if history is not None:
        data["training"] = history
    return data


# ----------------------------------------------------------------------------------- planning

WARN_COSINE = 0.99  # the fixed recipe warns below this output cosine


def _planning(calibrate, min_cosine, min_agreement, max_accuracy_drop, plan, plan_out, train, default=False,
              retrains=False):
    """What a writing command's target options ask for (None: the plain stage); `retrains`:
    the command can fine-tune towards a target (compress)."""
    from .planning import targets

    goal = targets(min_cosine, min_agreement, max_accuracy_drop)
    asked = calibrate is not None or goal or plan is not None or plan_out is not None
    if not asked and not (default and train is None):
        return None
    if train is not None:
        if not asked:
            return None
        if not retrains:
            raise DczError("--calibrate, a target and --plan compress without retraining: not with --train "
                           "(compress --train takes a target)")
        if not goal or calibrate is not None or plan is not None or plan_out is not None:
            raise DczError("with --train, a target (--min-cosine, --min-agreement, --max-accuracy-drop) is measured on "
                           "the --train data's held-out samples; --calibrate, --plan and --plan-out go without --train")
    if plan is not None and plan_out is not None and _path(plan) == _path(plan_out):
        raise DczError("--plan-out must not overwrite the --plan it applies")
    return {"calibrate": _opt_path(calibrate), "goal": goal, "plan": _opt_path(plan),
            "plan_out": _opt_path(plan_out), "default": default and not goal and plan is None, "train": None}


def _probe(package, calibrate, max_data_bytes):
    """(Probe, None) measuring fidelity on --calibrate data or synthesized inputs, or (None, why)."""
    from .planning import Probe, evidence_for

    evidence, why = evidence_for(package, _opt_path(calibrate), max_data_bytes)
    if evidence is None:
        return None, why
    try:
        return Probe(package, evidence), None
    except DczError as e:
        if calibrate is not None:
            raise
        return None, str(e)


def _planned(mode, model, output, searching, given_fn, configs, include, exclude, metadata, fmt,
             max_data_bytes, jobs, progress, report=False) -> dict:
    """A command with targets, calibration data or a plan: planning.run, then write and report."""
    from . import planning

    metadata = check_metadata(metadata)
    package = load(model, include, exclude)
    _check_names(package, configs)
    input_bytes = package.file_bytes
    before = sum(t.stored_bytes for t in package.tensors)
    peer = None
    if report:  # the peer: gzip of the model as a plain .onnx (over 2 GiB: one line, nothing written)
        import zlib

        from .container import serialize
        from .onnx_io import to_onnx

        original = serialize(to_onnx(package), "ONNX model")
        peer = len(original), len(zlib.compress(original, 9))
        del original
    plan = planning.read_plan(searching["plan"]) if searching["plan"] else None
    goal, default = list(searching["goal"]), searching["default"]
    calibrate = searching["calibrate"]
    evidence, why = None, None
    synthesized_plan = plan is not None and (plan.get("data") or {}).get("kind") == "synthesized"
    training = searching.get("train")
    if training is None and (calibrate is not None or default or goal or synthesized_plan):
        evidence, why = planning.evidence_for(package, calibrate, max_data_bytes)
        if evidence is None and goal:
            raise DczError(f"cannot measure {goal[0].option} without data ({why}): pass --calibrate DATA.npz")
    if default and evidence is not None:
        value = planning.DEFAULT_MIN_COSINE if evidence.kind == "calibration" else planning.DEFAULT_MIN_COSINE_SYNTHESIZED
        goal = [planning.Target("min_cosine", value)]
    given = given_fn(package) if given_fn is not None else None
    options = dict(progress=progress_bar(progress), jobs=_jobs(jobs), log=planning.progress_log(progress),
                   model_sha256=planning.file_sha256(_path(model)))
    try:
        if training is not None:
            from .train import targeted

            evidence = planning.calibration_evidence(package, training.data, max_data_bytes, "--train")
            outcome = targeted.run(package, goal, evidence, training, **options)
        else:
            outcome = planning.run(package, mode, goal=goal, evidence=evidence, given=given, plan=plan,
                                   not_measured=why, **options)
    except DczError as e:
        if not default or calibrate is not None:
            raise
        # the default never fails a model it cannot run: the data-free safe setting, said so
        package = load(model, include, exclude)
        goal, evidence = [], None
        outcome = planning.run(package, mode, goal=[], evidence=None, not_measured=str(e), **options)
    reads = [p for p in (calibrate, searching["plan"]) if p is not None] + _data_files(training)
    size, fmt = _write(package, model, output, fmt, metadata, reads=reads)
    outcome.plan["bytes"] = size
    if searching["plan_out"] is not None:
        planning.write_plan(searching["plan_out"], outcome.plan)
    after = sum(t.nbytes if fmt == "onnx" else t.stored_bytes for t in package.tensors)
    rows = outcome.rows
    weights_before = sum(r["bytes_original"] for r in rows)
    weights_after = sum(r["bytes"] for r in rows)
    totals = {"weights": sum(r["weights"] for r in rows), "kept": sum(r["kept"] for r in rows),
              "bytes_original": weights_before, "bytes_stored": weights_after,
              "ratio_weights": _ratio(weights_before, weights_after), "ratio_tensors": _ratio(before, after),
              "ratio_file": _ratio(input_bytes, size)}
    fidelity = outcome.fidelity if outcome.fidelity is not None else \
        {"measured": False, "reason": next((n.split(": ", 1)[1] for n in outcome.notes
                                            if n.startswith("fidelity not measured")), why)}
    if outcome.fidelity is not None:
        fidelity = {**fidelity, "measured": True}
    data = {"output": _path(output), "format": fmt, "bytes": size, "input_bytes": input_bytes, "mode": mode,
            "tensor_bytes_before": before, "tensor_bytes_after": after, "ratio_tensors": _ratio(before, after),
            "ratio_file": _ratio(input_bytes, size), "layers": rows, "totals": totals, "fidelity": fidelity,
            "target": [t.to_json() for t in goal], "default_target": bool(default and goal),
            "target_met": bool(goal) and outcome.fidelity is not None and all(t.met(outcome.fidelity) for t in goal),
            "lossless": outcome.lossless, "notes": outcome.notes, "phases": outcome.phases,
            "verify_runs": outcome.verifies, "plan_out": searching["plan_out"], "plan": searching["plan"],
            "warnings": []}
    if peer is not None:
        data["onnx_bytes"], data["gzip9_bytes"] = peer
    if outcome.training is not None:
        data["training"] = outcome.training
    return data


# ----------------------------------------------------------------------------------- bench

def bench(*models, baseline=None, data=None, calibrate=None, runs=10, warmup=2, batch_size=1, seed=0, int8=True,
          ort=False, min_ratio=None, max_accuracy_drop=None, min_cosine=None, min_agreement=None, check=False,
          max_data_bytes=None, max_decoded_bytes=None, shapes=None, progress=None) -> dict:
    """Size, latency and accuracy (or fidelity) of `models`, as `bench --json` prints it.

    `shapes`: the shapes of random inputs, {input name: dims} or `--shape` strings "NAME=D0,D1,...";
    inputs not named get the default rule (data.random_shapes).

    `min_agreement`: top-1 agreement with the baseline's float32 outputs, in % (like `min_cosine`).
    Gates are evaluated (`report["gates"]`, `report["passed"]`) but do not raise: the caller decides
    (the CLI exits 1). `check=True` only lists the ops the interpreter lacks: {"unsupported": {..}}.
    """
    from .benchmarking import BenchConfig
    from .benchmarking import bench as run_bench

    if len(models) == 1 and isinstance(models[0], (list, tuple)):
        models = tuple(models[0])
    models = [_path(m) for m in models]
    if not models:
        raise DczError("bench needs at least one model")
    if check:
        from .interp.graph import unsupported_ops

        return {"unsupported": {m: sorted(unsupported_ops(load(m).graph)) for m in models}}
    gates = {"min_ratio": min_ratio, "max_accuracy_drop": max_accuracy_drop, "min_cosine": min_cosine,
             "min_agreement": min_agreement}
    config = BenchConfig(runs, warmup, batch_size, seed, int8, ort, _opt_path(data), _opt_path(calibrate),
                         _opt_path(baseline), gates, max_data_bytes=max_data_bytes,
                         max_decoded_bytes=max_decoded_bytes, shapes=_shapes(shapes))
    report = run_bench(models, config, progress_bar(progress))
    report["passed"] = all(g["passed"] for g in report["gates"])
    return report


def _shapes(shapes) -> dict[str, tuple[int, ...]]:
    """--shape values (strings "NAME=D0,D1,...", or a dict) as {name: dims}; one input twice is an error."""
    from .data import parse_shape

    if isinstance(shapes, dict):
        return {name: tuple(int(d) for d in dims) for name, dims in shapes.items()}
    parsed = {}
    for text in shapes or ():
        name, dims = parse_shape(text)
        if name in parsed:
            raise DczError(f"--shape {name}: given twice")
        parsed[name] = dims
    return parsed


# ----------------------------------------------------------------------------------- data

def prepare_data(source, output, *, model=None, input=None, key=None, labels=None, layout=None,
                 source_layout="NHWC", size=None, scale=1.0, mean=0.0, std=1.0, dtype=None, take=None,
                 max_data_bytes=None, progress=None) -> dict:
    """The `data` command: raw arrays (`source` an .npz/.npy) or a folder of image files (with
    Pillow) -> a model-ready .npz at `output`, value = (x * scale - mean) / std, as `data --json`
    reports it. `model` fills in the input name, layout, size and dtype its graph input declares.
    `size` is H, (H, W) or "H,W"; `mean`/`std` one number or one per channel. See preprocess.py."""
    from .preprocess import PrepConfig, prepare

    config = PrepConfig(input, key, labels, layout, source_layout, size, scale, mean, std, dtype, take)
    bar = progress_bar(progress)
    return prepare(_path(source), _path(output), config, _opt_path(model), max_data_bytes,
                   lambda items, **kw: bar(items, **kw))


# ----------------------------------------------------------------------------------- helpers

def progress_bar(enabled: bool | None = None):
    """tqdm on stderr (never stdout): None = only when stderr is a terminal, False = never.

    Bars over tensors vanish when done; bars over training steps and sample batches stay.
    """
    from .stages import no_progress

    if enabled is False:
        return no_progress

    def bar(items, desc="", total=None, unit="tensor"):
        from tqdm import tqdm

        return tqdm(items, desc=desc, total=total, file=sys.stderr, unit=unit, leave=unit != "tensor",
                    disable=None if enabled is None else not enabled)
    return bar


def check_metadata(metadata) -> dict[str, str]:
    """`metadata` ({key: value} or [(key, value)]) checked: printable strings of bounded size."""
    if not metadata:
        return {}
    pairs = metadata.items() if isinstance(metadata, dict) else metadata
    checked = {}
    for pair in pairs:
        try:
            key, value = pair
        except (TypeError, ValueError):
            raise DczError(f"--metadata: {pair!r} is not a KEY=VALUE pair") from None
        if not isinstance(key, str) or not isinstance(value, str):
            raise DczError(f"--metadata {key!r}: key and value must be strings")
        if not key or not key.isprintable() or "=" in key:
            raise DczError(f"--metadata {key!r}: the key must be non-empty printable text without '='")
        if not value.isprintable():
            raise DczError(f"--metadata {key}: the value must be printable text (no newlines or control characters)")
        for what, text, cap in (("key", key, METADATA_KEY_BYTES), ("value", value, METADATA_VALUE_BYTES)):
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError:
                raise DczError(f"--metadata {key!r}: the {what} is not valid Unicode text") from None
            if size > cap:
                raise DczError(f"--metadata {key[:40]}: the {what} is {size} bytes, at most {cap}")
        checked[key] = value
    return checked


def output_format(output: str, fmt: str | None, default: str = "dcz") -> str:
    """The one rule of every writing command: the suffix decides (.onnx -> ONNX, .dcz -> .dcz);
    stdout and other names get the command's own format; `fmt` ("dcz"/"onnx") overrides."""
    if fmt not in (None, "auto"):
        if fmt not in ("dcz", "onnx"):
            raise DczError(f"--format must be auto, dcz or onnx, got {fmt!r}")
        return fmt
    lower = output.lower()
    if lower.endswith(".onnx"):
        return "onnx"
    if lower.endswith(".dcz"):
        return "dcz"
    return default


def _write(package, model, output, fmt, metadata, qdq=False, default="dcz", reads=()) -> tuple[int, str]:
    """`reads`: the data files the command read besides the model, which the output must not replace."""
    from .files import write_dcz, write_onnx

    output = _path(output)
    fmt = output_format(output, fmt, default)
    merged = {**package.metadata, **metadata}  # existing notes are kept; a given key is replaced
    if len(merged) > METADATA_ENTRIES:
        raise DczError(f"--metadata: {len(merged)} entries, at most {METADATA_ENTRIES}")
    package.metadata = merged
    if fmt == "onnx":
        if merged:  # ONNX's own key/value notes carry them
            props = package.graph.metadata_props
            kept = [(p.key, p.value) for p in props if p.key not in merged]
            del props[:]
            for key, value in [*kept, *merged.items()]:
                props.add(key=key, value=value)
        return write_onnx(package, output, inputs=[_path(model), *reads], qdq=qdq), fmt
    if qdq:
        raise DczError("--qdq writes ONNX: give an output ending in .onnx (or --format onnx)")
    return write_dcz(package, output, inputs=[_path(model), *reads]), fmt


def _stage(model, output, include, exclude, metadata, fmt, progress, apply, configs, reads=()) -> dict:
    """Read, apply a stage, write atomically, report: the shape every stage command shares."""
    metadata = check_metadata(metadata)
    package = load(model, include, exclude)
    _check_names(package, configs)
    input_bytes = package.file_bytes
    before = sum(t.stored_bytes for t in package.tensors)
    rows, history = apply(package, progress_bar(progress))
    size, fmt = _write(package, model, output, fmt, metadata, reads=reads)
    # an ONNX output holds the decoded tensors, whatever the stage stored
    after = sum(t.nbytes if fmt == "onnx" else t.stored_bytes for t in package.tensors)
    data = {"output": _path(output), "format": fmt, "bytes": size, "input_bytes": input_bytes,
            "tensor_bytes_before": before, "tensor_bytes_after": after,
            "ratio_tensors": _ratio(before, after), "ratio_file": _ratio(input_bytes, size), "layers": rows}
    if history is not None:
        data["training"] = history
    return data


def _check_names(package, configs) -> None:
    weights = [t.name for t in package.tensors if t.is_weight]
    for config in configs:
        config.check_names(weights)


def _check_patterns(option, patterns, names) -> None:
    from .stages import check_patterns

    check_patterns(option, patterns, names)


def _prune_config(sparsity, layer_sparsity, index_bits, layer_index_bits, threshold_std):
    from .stages import per_kind
    from .stages.prune import PruneConfig

    return PruneConfig(per_kind(sparsity, layer_sparsity, "--sparsity"),
                       per_kind(index_bits, layer_index_bits, "--index-bits"), threshold_std)


def _share_config(bits, layer_bits, init, max_iter, tol, seed, per_channel=False):
    from .stages import per_kind
    from .stages.share import ShareConfig

    return ShareConfig(per_kind(bits, layer_bits, "--bits"), init, max_iter, tol, seed, per_channel)


def _no_trained_per_channel(config, training) -> None:
    """Before any work: the trainer ties each weight to one centroid, with no channel factor."""
    if config.per_channel and training is not None:
        raise DczError("--per-channel sharing cannot be combined with --train (trained centroids are per layer)")


def _train_config(train, val, epochs, lr, batch_size, seed, logits, max_data_bytes=None, augment=False,
                  optimizer=None):
    from .train.retrain import TrainConfig

    options = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "max_data_bytes": max_data_bytes,
               "optimizer": optimizer}
    if train is None:
        for option, value in (("--val", val), ("--epochs", epochs), ("--lr", lr), ("--batch-size", batch_size),
                              ("--logits", logits), ("--max-data-bytes", max_data_bytes),
                              ("--augment", augment or None), ("--optimizer", optimizer)):
            if value is not None:
                raise DczError(f"{option} needs --train")
        return None
    return TrainConfig(_path(train), seed=seed, val=_opt_path(val), logits=logits, augment=augment,
                       **{k: v for k, v in options.items() if v is not None})


def _data_files(training) -> list[str]:
    return [] if training is None else [p for p in (training.data, training.val) if p is not None]


def _steps(steps, training, default: int) -> int:
    import numbers

    if steps is None:
        return default if training is not None else 1
    if not isinstance(steps, numbers.Integral) or not 1 <= steps <= 100:
        raise DczError(f"--steps must be an integer 1..100, got {steps!r}")
    return int(steps)


def _jobs(jobs) -> int:
    return jobs or os.cpu_count() or 1


def _globs(globs) -> list[str]:
    if globs is None:
        return []
    return [globs] if isinstance(globs, str) else list(globs)


def _ratio(original, stored):
    return round(original / stored, 3) if original and stored else None


def _path(path) -> str:
    try:
        return os.fspath(path)
    except TypeError:
        raise DczError(f"{path!r} is not a file path") from None


def _opt_path(path):
    return None if path is None else _path(path)
