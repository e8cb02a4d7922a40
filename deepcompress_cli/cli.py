"""The `deepcompress` command line: a thin Click shell over the library.

Only click is imported at start-up; numpy and onnx are imported inside the commands so that
`deepcompress --help` stays fast.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback

import click

from . import __version__, blas
from .errors import DczError
from .text import printable

blas.tune()  # before anything imports numpy


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of our stdout went away (`| head`)


def error_line(message: str) -> None:
    """One stderr line; nothing from a hostile file may drive the terminal."""
    click.echo(f"deepcompress: error: {printable(message)}", err=True)


class DczGroup(click.Group):
    """Turns every error, usage errors included, into one stderr line and the documented exit code."""

    def main(self, args=None, prog_name=None, **extra):
        extra["standalone_mode"] = False  # we print errors ourselves, one line each
        try:
            code = super().main(args, prog_name or "deepcompress", **extra)
        except click.ClickException as e:
            hint = ""
            if isinstance(e, click.UsageError) and e.ctx is not None:
                hint = f" (see '{e.ctx.command_path} --help')"
            error_line(e.format_message() + hint)
            sys.exit(e.exit_code)
        except (click.Abort, KeyboardInterrupt):
            error_line("interrupted")
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except BrokenPipeError:
            # quietly, and without Python complaining again when it flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_BROKEN_PIPE)
        except Exception as e:  # noqa: BLE001 - the user sees one line, never a traceback
            options = ctx.obj or {}
            if options.get("debug"):
                traceback.print_exc()
            if isinstance(e, DczError):
                message, code = str(e), e.exit_code
            elif isinstance(e, MemoryError):
                message, code = "out of memory", 2
            else:
                message, code = f"internal error ({type(e).__name__}: {e}); rerun with --debug", 2
            error_line(message)
            ctx.exit(code)


def _set_flag(name):
    def callback(ctx, param, value):
        if value:
            ctx.ensure_object(dict)[name] = True
    return callback


def _set_jobs(ctx, param, value):
    if value is not None:
        ctx.ensure_object(dict)["jobs"] = value


JOBS_HELP = "Encode tensors on N threads [default: the CPU count]; the output does not depend on N."


_BYTE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _set_max_data_bytes(ctx, param, value, key="max_data_bytes"):
    if value is None:
        return
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in _BYTE_UNITS else ""
    number = text[:len(text) - len(unit)]
    if not number.isdigit() or int(number) < 1:
        raise click.BadParameter(f"a size such as 8G or 500M (binary units) or a byte count, got {value!r}",
                                 ctx, param)
    ctx.ensure_object(dict)[key] = int(number) * _BYTE_UNITS[unit]


def data_bytes_option(f):
    """`--max-data-bytes`: the cap on what one data file may decode to (data.MAX_DATA_BYTES)."""
    return click.option("--max-data-bytes", "max_data_bytes_", metavar="SIZE", expose_value=False,
                        callback=_set_max_data_bytes,
                        help="Refuse a data file whose arrays for the model decode to more than SIZE "
                             "(e.g. 16G) [default: 4G].")(f)


def max_data_bytes(ctx) -> int | None:
    return (ctx.find_root().obj or {}).get("max_data_bytes")


def decoded_bytes_option(f):
    """`--max-decoded-bytes`: the cap on what a model's tensors may decode to (files.check_decoded_size)."""
    return click.option("--max-decoded-bytes", "max_decoded_bytes_", metavar="SIZE", expose_value=False,
                        callback=lambda ctx, param, value: _set_max_data_bytes(ctx, param, value, "max_decoded_bytes"),
                        help="Refuse a model whose tensors decode to more than SIZE (e.g. 32G) "
                             "[default: 1024 x its stored tensor bytes, at least 256M].")(f)


def max_decoded_bytes(ctx) -> int | None:
    return (ctx.find_root().obj or {}).get("max_decoded_bytes")


def json_option(f):
    """`--json`, `-q` and `-j` accepted after the subcommand too (`deepcompress info m.dcz --json`)."""
    f = click.option("-j", "--jobs", "jobs_", type=click.IntRange(1, 256), expose_value=False, callback=_set_jobs,
                     metavar="N", help=JOBS_HELP)(f)
    f = click.option("-q", "--quiet", "quiet_", is_flag=True, expose_value=False, callback=_set_flag("quiet"),
                     help="No report and no progress bars.")(f)
    return click.option("--json", "json_", is_flag=True, expose_value=False, callback=_set_flag("json"),
                        help="Print one JSON object on stdout instead of text.")(f)


def selection_options(f):
    f = click.option("--exclude", multiple=True, metavar="GLOB",
                     help="Never treat tensors matching GLOB as weights (repeatable).")(f)
    return click.option("--include", multiple=True, metavar="GLOB",
                        help="Treat float tensors matching GLOB as weights (repeatable).")(f)


class KeyValue(click.ParamType):
    """`KEY=VALUE` (split at the first '=')."""

    name = "KEY=VALUE"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        key, sep, text = value.partition("=")
        if not (sep and key):
            self.fail(f"{value!r} is not KEY=VALUE", param, ctx)
        return key, text


def output_option(f):
    """-o, --format and --metadata: what every writing command takes."""
    f = click.option("--metadata", type=KeyValue(), multiple=True,
                     help="Record KEY=VALUE in the file's metadata (repeatable; existing entries are kept).")(f)
    f = click.option("--format", "fmt", type=click.Choice(["auto", "dcz", "onnx"]), default="auto", show_default=True,
                     help="Output format; auto: by the suffix of OUTPUT (.onnx or .dcz), else the command's own.")(f)
    return click.option("-o", "--output", required=True, metavar="PATH",
                        help="Output file ('-' for stdout). Written atomically; never the input.")(f)


class PerKindValue(click.ParamType):
    """`0.9` (both kinds) or `conv=0.6,fc=0.9` (either or both) -> {"conv": .., "fc": ..}."""

    name = "V|conv=V,fc=V"

    def __init__(self, cast):
        self.cast = cast

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        try:
            if "=" not in value:
                return {"conv": self.cast(value), "fc": self.cast(value)}
            pairs = dict(item.split("=", 1) for item in value.split(","))
            if not pairs or set(pairs) - {"conv", "fc"}:
                raise ValueError
            return {kind: self.cast(v) for kind, v in pairs.items()}
        except ValueError:
            self.fail(f"{value!r} is not a number or conv=V,fc=V", param, ctx)


class LayerValue(click.ParamType):
    """`NAME=V` where NAME is a tensor name or glob."""

    name = "NAME=V"

    def __init__(self, cast):
        self.cast = cast

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        name, sep, number = value.rpartition("=")
        try:
            if not (sep and name):
                raise ValueError
            return name, self.cast(number)
        except ValueError:
            self.fail(f"{value!r} is not NAME=VALUE", param, ctx)


def prune_options(f):
    f = click.option("--threshold-std", type=float, metavar="Q",
                     help="Paper's rule: drop |w| <= Q x the layer's std (replaces --sparsity/--layer-sparsity).")(f)
    f = click.option("--layer-index-bits", type=LayerValue(int), multiple=True,
                     help="Per-layer index bits override, NAME (or glob) = bits (repeatable).")(f)
    f = click.option("--index-bits", type=PerKindValue(int), metavar="B|conv=B,fc=B",
                     help="Bits per relative index (gap) [default conv=8,fc=5; with --train conv=5,fc=8].")(f)
    f = click.option("--layer-sparsity", type=LayerValue(float), multiple=True,
                     help="Per-layer sparsity override, NAME (or glob) = fraction pruned (repeatable).")(f)
    return click.option("--sparsity", type=PerKindValue(float), metavar="S|conv=S,fc=S",
                        help="Fraction of weights pruned per layer [default conv=0.6,fc=0.9; with --train "
                             "a layer of n weights keeps 12/sqrt(n)].")(f)


def share_options(f):
    f = click.option("--per-channel", is_flag=True,
                     help="Channel-scaled codebooks: each output channel divided by its max |w| (stored, one "
                          "float per channel), one codebook for the normalized values.")(f)
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seed for --init forgy and for the data order of --train.")(f)
    f = click.option("--tol", type=float, default=1e-6, show_default=True,
                     help="Stop when no centroid moves more than TOL x the value range.")(f)
    f = click.option("--max-iter", type=int, default=100, show_default=True, help="Most k-means iterations (1..10000).")(f)
    f = click.option("--init", type=click.Choice(["linear", "density", "forgy"]), default="linear",
                     show_default=True, help="Centroid initialization (the paper found linear best).")(f)
    f = click.option("--layer-bits", type=LayerValue(int), multiple=True,
                     help="Per-layer index width override, NAME (or glob) = bits (repeatable).")(f)
    return click.option("--bits", type=PerKindValue(int), metavar="B|conv=B,fc=B",
                        help="Index bits: 2^B shared weights per layer [default conv=8,fc=5; with --train 4].")(f)


def train_options(with_seed: bool, with_steps: bool):
    """Retraining (`--train`) options shared by prune, share and compress."""
    # TrainConfig's defaults (not imported: start-up time)
    from_class = {"epochs": 2.0, "lr": 0.01, "batch_size": 64, "clip_norm": 5.0}

    def decorate(f):
        if with_steps:
            f = click.option("--steps", type=int, metavar="N",
                             help="Prune towards the target in N (1..100) increasing steps, retraining after each "
                                  "[default: 4 with --train, else 1].")(f)
        if with_seed:
            f = click.option("--seed", type=int, default=0, show_default=True, help="Seed of the data order.")(f)
        f = click.option("--logits", metavar="NAME",
                         help="Value the loss is computed on [default: the first float output, before a Softmax].")(f)
        f = click.option("--batch-size", type=int, metavar="N",
                         help=f"Minibatch size for --train [default: {from_class['batch_size']}].")(f)
        f = click.option("--lr", type=float, metavar="LR",
                         help=f"SGD learning rate (momentum 0.9, gradient norm clipped to "
                              f"{from_class['clip_norm']:g}); a centroid moves by lr x its weights' summed "
                              f"gradients; halved when the loss diverges [default: {from_class['lr']}].")(f)
        f = click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default=None,
                         help="sgd: momentum SGD (the paper's); adam: per-weight steps from the gradients' moments "
                              "[default: sgd; compress with a target: adam, at a rate of 0.05 of each weight's "
                              "grid step].")(f)
        f = click.option("--epochs", type=float, metavar="E",
                         help=f"Epochs of retraining per step (and for the centroids) [default: {from_class['epochs']:g}].")(f)
        f = click.option("--augment", is_flag=True,
                         help="Random horizontal flips and crops (reflection padding, 1/8 of the side) of image "
                              "inputs, per sample; with distillation the original model runs on the same batch.")(f)
        f = click.option("--val", metavar="DATA.npz",
                         help="Early stop: keep the parameters (checked each epoch, each half epoch for long ones) "
                              "with the best top-1 on this data (agreement with the original without labels).")(f)
        f = data_bytes_option(f)
        return click.option("--train", "train", metavar="DATA.npz",
                            help="Retrain on this data (inputs by graph input name, optional `labels`; "
                                 "without labels: distillation to the original model).")(f)
    return decorate


def target_options(f):
    """Quality targets and plans: compress, prune, share and quantize (see planning.py)."""
    f = click.option("--plan", "plan", metavar="PLAN.json",
                     help="Apply the per-layer settings of this plan (from --plan-out) without searching; "
                          "with the same --calibrate data the output is byte-identical.")(f)
    f = click.option("--plan-out", metavar="PLAN.json",
                     help="Write the chosen per-layer settings (with the model's and data's SHA-256) here.")(f)
    f = click.option("--max-accuracy-drop", type=float, metavar="P",
                     help="Target: top-1 at most P points below the original on the --calibrate labels.")(f)
    f = click.option("--min-agreement", type=float, metavar="PCT",
                     help="Target: top-1 agreement with the original model >= PCT % on the calibration inputs.")(f)
    f = click.option("--min-cosine", type=float, metavar="C",
                     help="Target: cosine of the outputs (all samples as one vector, as bench reports) >= C.")(f)
    return click.option("--calibrate", metavar="DATA.npz",
                        help="Calibration inputs (by graph input name, optional `labels`): data-aware rounding and "
                             "pruning (GPTQ, SparseGPT, bias correction); targets are measured on them.")(f)


def target_kwargs(calibrate, min_cosine, min_agreement, max_accuracy_drop, plan_out, plan) -> dict:
    return {"calibrate": calibrate, "min_cosine": min_cosine, "min_agreement": min_agreement,
            "max_accuracy_drop": max_accuracy_drop, "plan_out": plan_out, "plan": plan}


def emit_planned(ctx, data: dict, formatter) -> None:
    """A stage's report: the plan's table when it was planned, else the stage's own."""
    from .report import format_planned

    for warning in data.get("warnings") or ():
        click.echo(printable(f"deepcompress: warning: {warning}"), err=True)
    if "fidelity" in data and data.get("mode") != "recipe":
        emit(ctx, data, format_planned(data), stdout_taken=data["output"] == "-")
    else:
        emit_stage(ctx, data, formatter)


def settings(ctx) -> dict:
    """The global options the API takes: threads and progress bars."""
    options = ctx.find_root().obj or {}
    return {"jobs": options.get("jobs"), "progress": False if options.get("quiet") else None}


def format_training(history: list[dict]) -> str:
    """The per-step history: loss, speed, --val score before and after (early stop: the epoch
    kept), and the learning rate where divergence halved it."""
    from .report import format_table

    key = "val_agreement" if any("val_agreement" in h for h in history) else "val_accuracy"

    def percent(value):
        return "" if value is None else f"{100 * value:.2f}%"

    def lr(h):
        halved = h.get("lr_halved_at") or ()
        return f"{h['lr']:g} (halved {len(halved)}x)" if halved else ""

    rows = [[h["phase"], h.get("steps", ""), h.get("loss", ""), h.get("samples_per_s") or "",
             percent(h.get(f"{key}_before")), percent(h.get(key)),
             "" if h.get("epoch_kept") is None else f"{h['epoch_kept']:g}", lr(h)] for h in history]
    what = "val agreement" if key == "val_agreement" else "val top-1"
    return format_table(["phase", "sgd steps", "loss", "samples/s", f"{what} before", f"{what} after",
                         "epoch kept", "lr"], rows, right={1, 2, 3, 4, 5, 6})


def emit_stage(ctx, data: dict, formatter) -> None:
    """A stage's report: its table, the training history, and what was written."""
    from .report import format_written

    text = f"{formatter(data['layers'])}\n\n{format_written(data)}"
    if "training" in data:
        text = f"{format_training(data['training'])}\n\n{text}"
    emit(ctx, data, text, stdout_taken=data["output"] == "-")


def emit(ctx, data: dict, text: str, stdout_taken: bool = False) -> None:
    """Report a result: JSON or text, on stdout unless stdout carries the output file."""
    options = ctx.find_root().obj or {}
    err = stdout_taken
    if options.get("json"):  # strict JSON: NaN/Infinity (not JSON) become null
        click.echo(json.dumps(finite_or_null(data), sort_keys=True, allow_nan=False), err=err)
    elif not options.get("quiet"):
        click.echo(printable(text, keep_newlines=True), err=err)


def finite_or_null(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


@click.group(cls=DczGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="deepcompress")
@click.option("--json", "json_", is_flag=True, help="Print one JSON object on stdout instead of text.")
@click.option("-q", "--quiet", is_flag=True, help="No report and no progress bars.")
@click.option("-j", "--jobs", "jobs_", type=click.IntRange(1, 256), expose_value=False, callback=_set_jobs,
              metavar="N", help=JOBS_HELP)
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error.")
@click.pass_context
def main(ctx, json_, quiet, debug):
    """Compress ONNX models: Deep Compression (prune, share, Huffman) and 8-bit quantization.

    Every command reads an .onnx or .dcz file. Writing commands write what -o's suffix says:
    .onnx a runnable ONNX model, .dcz a container; other names and '-' (stdout) the command's
    own format (.dcz; ONNX for export), and --format dcz|onnx overrides.
    Exit status: 0 ok, 1 a quality gate failed, 2 bad usage or bad input.
    """
    from . import allocator
    allocator.keep_freed_memory()  # every command's arrays: reuse freed memory (see allocator.py)
    obj = ctx.ensure_object(dict)
    obj.update(quiet=quiet or obj.get("quiet", False), debug=debug)
    obj["json"] = json_ or obj.get("json", False)


@main.command()
@click.argument("model", metavar="MODEL")
@output_option
@selection_options
@json_option
@click.pass_context
def pack(ctx, model, output, fmt, metadata, include, exclude):
    """Store MODEL (.onnx) losslessly as a .dcz container.

    \b
    Example:
      deepcompress pack model.onnx -o model.dcz --metadata source=model.onnx
    """
    from . import api
    from .report import human_bytes

    data = api.pack(model, output, include=include, exclude=exclude, metadata=metadata, format=fmt)
    emit(ctx, data, f"{output}: {human_bytes(data['bytes'])}, {data['tensors']} tensors "
                    f"({data['weights']} weights, {human_bytes(data['weight_bytes'])})", stdout_taken=output == "-")


@main.command()
@click.argument("model", metavar="IN")
@output_option
@click.option("--qdq", is_flag=True, help="Keep quantized weights as integers behind DequantizeLinear nodes.")
@decoded_bytes_option
@json_option
@click.pass_context
def export(ctx, model, output, fmt, metadata, qdq):
    """Turn IN (.dcz or .onnx) back into a runnable ONNX model with plain float weights.

    Models with more than 1 GiB of weights get an external data file OUTPUT.data beside OUTPUT.
    --metadata goes into the ONNX model's metadata_props.

    \b
    Examples:
      deepcompress export model.dcz -o model.onnx
      deepcompress export quantized.dcz -o model.qdq.onnx --qdq
    """
    from . import api
    from .report import human_bytes

    data = api.export(model, output, qdq=qdq, metadata=metadata, format=fmt,
                      max_decoded_bytes=max_decoded_bytes(ctx))
    emit(ctx, data, f"{output}: {human_bytes(data['bytes'])}, {data['tensors']} tensors "
                    f"(decoded {human_bytes(data['decoded_bytes'])})", stdout_taken=output == "-")


@main.command()
@click.argument("model", metavar="FILE")
@json_option
@click.pass_context
def info(ctx, model):
    """Show every tensor of FILE (.onnx or .dcz): op, shape, encoding, bits per weight, sparsity, size.

    \b
    Example:
      deepcompress info model.dcz --json
    """
    from . import api
    from .report import format_summary

    data = api.info(model)
    emit(ctx, data, format_summary(data))


@main.command()
@click.argument("model", metavar="IN")
@output_option
@prune_options
@train_options(with_seed=True, with_steps=True)
@target_options
@selection_options
@json_option
@click.pass_context
def prune(ctx, model, output, fmt, metadata, sparsity, layer_sparsity, index_bits, layer_index_bits, threshold_std,
          train, val, augment, optimizer, epochs, lr, batch_size, logits, seed, steps, calibrate, min_cosine, min_agreement,
          max_accuracy_drop, plan_out, plan, include, exclude):
    """Magnitude-prune each weight layer; store survivors with relative indices.

    Each kept weight is stored with the gap to the previous one in --index-bits bits; a longer
    run of pruned weights gets filler entries (value 0). Kept values stay exact floats.
    With --train, prune -> retrain in --steps increasing steps (pruned weights stay 0); the
    defaults then become: a layer of n weights keeps 12/sqrt(n) of them, index bits conv=5,fc=8.
    A NAME glob that matches no weight is an error.
    With --calibrate: SparseGPT masks (the weights kept are updated to make up for those
    pruned); with a target the kept fraction of each layer is searched (see compress).

    \b
    Examples:
      deepcompress prune model.onnx -o pruned.dcz
      deepcompress prune model.onnx -o pruned.dcz --calibrate calib.npz --min-cosine 0.99
      deepcompress prune lenet300.onnx -o pruned.dcz --sparsity conv=0.5,fc=0.9 --layer-sparsity 'fc3*=0.75'
      deepcompress prune model.onnx -o pruned.dcz --train train.npz --val test.npz --steps 4
    """
    from . import api
    from .report import format_prune

    data = api.prune(model, output, sparsity=sparsity, layer_sparsity=layer_sparsity, index_bits=index_bits,
                     layer_index_bits=layer_index_bits, threshold_std=threshold_std, train=train, val=val,
                     augment=augment, optimizer=optimizer, epochs=epochs, lr=lr, batch_size=batch_size, logits=logits, seed=seed, steps=steps,
                     include=include, exclude=exclude, metadata=metadata, format=fmt, max_data_bytes=max_data_bytes(ctx),
                     **target_kwargs(calibrate, min_cosine, min_agreement, max_accuracy_drop, plan_out, plan),
                     **settings(ctx))
    emit_planned(ctx, data, format_prune)


@main.command()
@click.argument("model", metavar="IN")
@output_option
@share_options
@train_options(with_seed=False, with_steps=False)
@target_options
@selection_options
@json_option
@click.pass_context
def share(ctx, model, output, fmt, metadata, bits, layer_bits, init, max_iter, tol, seed, per_channel, train, val, augment, optimizer, epochs,
          lr, batch_size, logits, calibrate, min_cosine, min_agreement, max_accuracy_drop, plan_out, plan, include, exclude):
    """Weight sharing: k-means per layer, weights replaced by 2^bits centroid indices.

    Only the kept weights of a pruned layer are clustered; zeros stay exactly zero. With
    --train, the centroids are then fine-tuned (each moves by lr x the summed gradients of its
    weights; indices stay fixed) and --bits defaults to conv=4,fc=4. --per-channel suits
    layers whose channels differ in range (batch norm folded into convs, depthwise convs).
    With --calibrate: centroids per layer on channel-scaled weights, assigned by GPTQ; with a
    target each layer's bits are searched (see compress).

    \b
    Examples:
      deepcompress share pruned.dcz -o shared.dcz
      deepcompress share model.onnx -o shared.dcz --bits 4 --init density
      deepcompress share model.onnx -o shared.dcz --bits 5 --per-channel
      deepcompress share pruned.dcz -o shared.dcz --train train.npz --epochs 1
    """
    from . import api
    from .report import format_share

    data = api.share(model, output, bits=bits, layer_bits=layer_bits, init=init, max_iter=max_iter, tol=tol,
                     seed=seed, per_channel=per_channel, train=train, val=val, augment=augment, optimizer=optimizer, epochs=epochs, lr=lr, batch_size=batch_size, logits=logits,
                     include=include, exclude=exclude, metadata=metadata, format=fmt, max_data_bytes=max_data_bytes(ctx),
                     **target_kwargs(calibrate, min_cosine, min_agreement, max_accuracy_drop, plan_out, plan),
                     **settings(ctx))
    emit_planned(ctx, data, format_share)


@main.command()
@click.argument("model", metavar="IN")
@output_option
@click.option("--bits", type=PerKindValue(int), metavar="B|conv=B,fc=B", help="Bits per weight code, 2..16 [default: 8].")
@click.option("--layer-bits", type=LayerValue(int), multiple=True,
              help="Per-layer bits override, NAME (or glob) = bits (repeatable).")
@click.option("--per-channel", is_flag=True, help="One range per output channel (Conv axis 0, ConvTranspose "
                                                   "axis 1, Gemm by transB, MatMul the last axis) instead of one per tensor; "
                                                   "a pruned tensor's channels are scaled to one range first.")
@click.option("--symmetric", is_flag=True, help="Range +-max|w| with zero point 0 (int8 values, stored offset "
                                                 "by 128) instead of [min, max].")
@target_options
@data_bytes_option
@selection_options
@json_option
@click.pass_context
def quantize(ctx, model, output, fmt, metadata, bits, layer_bits, per_channel, symmetric, calibrate, min_cosine,
             min_agreement, max_accuracy_drop, plan_out, plan, include, exclude):
    """Linear quantization of each weight tensor from its min/max (TensorFlow style).

    The range always includes 0.0, which stays exact; the zero point is rounded before use,
    so rounding errors do not accumulate in one direction. Chains with huffman.
    With --calibrate: GPTQ rounding on a symmetric per-channel grid, bias correction; with a
    target each layer's step is searched (see compress).

    \b
    Examples:
      deepcompress quantize model.onnx -o q.dcz
      deepcompress quantize model.onnx -o q.dcz --per-channel --symmetric --bits conv=8,fc=6
    """
    from . import api
    from .report import format_quantize

    data = api.quantize(model, output, bits=bits, layer_bits=layer_bits, per_channel=per_channel,
                        symmetric=symmetric, include=include, exclude=exclude, metadata=metadata, format=fmt,
                        max_data_bytes=max_data_bytes(ctx),
                        **target_kwargs(calibrate, min_cosine, min_agreement, max_accuracy_drop, plan_out, plan),
                        **settings(ctx))
    emit_planned(ctx, data, format_quantize)


@main.command()
@click.argument("model", metavar="IN")
@output_option
@click.option("--rank", type=int, metavar="T", help="Keep rank T in every layer.")
@click.option("--energy", type=float, metavar="E", help="Smallest rank keeping fraction E of the sum of sigma^2.")
@click.option("--ratio", type=float, metavar="R", help="Largest rank keeping at most fraction R of the parameters.")
@click.option("--layer-rank", type=LayerValue(int), multiple=True, help="Per-layer rank, NAME (node or weight, or glob) = T.")
@click.option("--include", "--layers", "include", multiple=True, metavar="GLOB",
              help="Only these layers (node or weight name; repeatable). --layers is the old spelling.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Never these layers (node or weight name; repeatable).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs of the error report.")
@json_option
@click.pass_context
def svd(ctx, model, output, fmt, metadata, rank, energy, ratio, layer_rank, include, exclude, seed):
    """Factor fully-connected weights W ~ U S V^T: each Gemm/MatMul becomes two thinner ones.

    Layers whose factorization would not shrink them, or whose weight is not a constant, are
    skipped and reported. Chains with prune/share/quantize/huffman.

    \b
    Examples:
      deepcompress svd model.onnx -o small.onnx --energy 0.9
      deepcompress svd lenet300.onnx -o small.dcz --ratio 0.25 --layer-rank fc3=16
    """
    from . import api
    from .report import format_svd, human_bytes

    data = api.svd(model, output, rank=rank, energy=energy, ratio=ratio, layer_rank=layer_rank, include=include,
                   exclude=exclude, seed=seed, metadata=metadata, format=fmt, progress=settings(ctx)["progress"])
    emit(ctx, data, f"{format_svd(data['layers'])}\n\n{output}: {human_bytes(data['bytes'])}",
         stdout_taken=output == "-")


@main.command()
@click.argument("model", metavar="IN")
@output_option
@json_option
@click.pass_context
def huffman(ctx, model, output, fmt, metadata):
    """Lossless canonical Huffman coding of every index, gap and code stream.

    \b
    Example:
      deepcompress huffman shared.dcz -o model.dcz
    """
    from . import api
    from .report import format_huffman

    emit_stage(ctx, api.huffman(model, output, metadata=metadata, format=fmt, **settings(ctx)), format_huffman)


@main.command()
@click.argument("model", metavar="IN")
@output_option
@prune_options
@share_options
@train_options(with_seed=False, with_steps=True)
@click.option("--report", is_flag=True, help="Print the paper's table (P, P+Q, P+Q+H per layer) and gzip -9 of the plain .onnx.")
@target_options
@selection_options
@json_option
@click.pass_context
def compress(ctx, model, output, fmt, metadata, sparsity, layer_sparsity, index_bits, layer_index_bits,
             threshold_std, bits, layer_bits, init, max_iter, tol, seed, per_channel, train, val, augment, optimizer, epochs, lr, batch_size,
             logits, steps, report, calibrate, min_cosine, min_agreement, max_accuracy_drop, plan_out, plan, include, exclude):
    """The smallest file that meets a quality target; or the paper's recipe (prune -> share -> huffman).

    With a target (--min-cosine, --min-agreement, --max-accuracy-drop) measured on --calibrate
    data: per layer, kept fraction x per-channel step are chosen from each layer's sensitivity
    and exact Huffman sizes, rounded and pruned by GPTQ/SparseGPT, and verified end to end.
    Exit 1 (nothing written) when not even the lossless form meets the target.

    Default (no target, no --train, no --sparsity/--bits/--index-bits/--threshold-std): the
    target min cosine 0.995 on --calibrate data, or 0.999 on synthesized inputs without it (the
    report says so); a model the interpreter cannot run gets a fine per-channel grid, no pruning.

    Explicit --sparsity/--bits (no target): the paper's fixed recipe, fidelity reported on
    synthesized inputs (or --calibrate data), a warning below cosine 0.99. With --train:
    prune -> retrain in --steps steps, share -> train the centroids, huffman; the defaults then
    are those of `prune --train` and `share --train`.

    \b
    Examples:
      deepcompress compress model.onnx -o model.dcz --calibrate calib.npz --min-agreement 95
      deepcompress compress model.onnx -o model.dcz --calibrate calib.npz --plan-out plan.json
      deepcompress compress model.onnx -o model.dcz --calibrate calib.npz --plan plan.json
      deepcompress compress model.onnx -o model.dcz --sparsity fc=0.95 --bits conv=6,fc=4
      deepcompress compress model.onnx -o model.dcz --train train.npz --val test.npz --report
    """
    from . import api
    from .report import format_compress, format_compress_line, format_fidelity

    data = api.compress(model, output, sparsity=sparsity, layer_sparsity=layer_sparsity, index_bits=index_bits,
                        layer_index_bits=layer_index_bits, threshold_std=threshold_std, bits=bits,
                        layer_bits=layer_bits, init=init, max_iter=max_iter, tol=tol, seed=seed,
                        per_channel=per_channel, train=train,
                        val=val, augment=augment, optimizer=optimizer, epochs=epochs, lr=lr, batch_size=batch_size, logits=logits, steps=steps,
                        report=report, include=include, exclude=exclude, metadata=metadata, format=fmt,
                        max_data_bytes=max_data_bytes(ctx),
                        **target_kwargs(calibrate, min_cosine, min_agreement, max_accuracy_drop, plan_out, plan),
                        **settings(ctx))
    for warning in data.get("warnings") or ():
        click.echo(printable(f"deepcompress: warning: {warning}"), err=True)
    if data.get("mode") == "compress":
        from .report import format_planned

        emit(ctx, data, format_planned(data), stdout_taken=output == "-")
        return
    text = format_compress(data) if report else format_compress_line(data)
    text += "\n" + format_fidelity(data.get("fidelity"))
    if "training" in data:
        text = f"{format_training(data['training'])}\n\n{text}"
    emit(ctx, data, text, stdout_taken=output == "-")


@main.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option("--baseline", metavar="FILE", help="Model the others are compared with [default: the first].")
@click.option("--data", metavar="DATA.npz", help="Inputs keyed by graph input name, optional `labels` (class ids).")
@click.option("--calibrate", metavar="DATA.npz", help="Fix int8 activation ranges from this data (default: measured per run).")
@click.option("--runs", type=click.IntRange(1), default=10, show_default=True, help="Timed runs per mode.")
@click.option("--warmup", type=click.IntRange(0), default=2, show_default=True)
@click.option("--batch-size", "--batch", "batch_size", type=click.IntRange(1), default=1, show_default=True,
              help="Batch size (fixed-batch models keep theirs); --batch is the old spelling.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs used without --data.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=D0,D1,...",
              help="Shape of input NAME's random inputs (repeatable); its size on the sample axis is the batch. "
                   "[default: the rule above]")
@click.option("--int8/--no-int8", default=True, show_default=True, help="Also run the int8 interpreter.")
@click.option("--ort", is_flag=True, help="Add onnxruntime's latency (when installed).")
@click.option("--min-ratio", type=float, help="Gate: each model's file (external data included) at least R times "
                                              "smaller than the baseline's.")
@click.option("--max-accuracy-drop", type=float, metavar="P", help="Gate: top-1 at most P points below the baseline.")
@click.option("--min-cosine", type=float, metavar="C", help="Gate: output cosine similarity to the baseline >= C.")
@click.option("--min-agreement", type=float, metavar="PCT",
              help="Gate: top-1 agreement with the baseline's float32 outputs >= PCT percent.")
@click.option("--check", is_flag=True, help="Only list ops the interpreter does not support (exit 2 if any).")
@data_bytes_option
@decoded_bytes_option
@json_option
@click.pass_context
def bench(ctx, models, baseline, data, calibrate, runs, warmup, batch_size, seed, shapes, int8, ort, min_ratio,
          max_accuracy_drop, min_cosine, min_agreement, check):
    """Size, latency (fp32 and int8) and accuracy or fidelity of models, side by side.

    Exit status 1 when a gate (--min-ratio, --max-accuracy-drop, --min-cosine, --min-agreement) fails.

    Without --data, inputs are seeded random numbers (floats standard normal; integer token ids
    within the embedding they index, masks all 1). Symbolic dims not set by --shape: the sample
    axis takes the batch; a dim named like one already sized takes its size; batch-like names
    (batch, N) 1; sequence-like (seq, length, time, frames, tokens) 16 for integer inputs, 128
    for float ones; spatial (height, width, h, w) 224; unnamed dims spatial in inputs of rank
    >= 4, else sequence-like. Spatial and float sequence sizes grow to what the model's
    convolutions and pools need and round up to a multiple of their total stride.

    \b
    Examples:
      deepcompress bench model.onnx model.dcz --data test.npz
      deepcompress bench detector.onnx --shape images=1,3,640,640
      deepcompress bench model.onnx small.dcz --min-ratio 20 --max-accuracy-drop 0.5 --data test.npz
    """
    from . import api
    from .benchmarking import enforce
    from .report import format_bench

    report = api.bench(*models, baseline=baseline, data=data, calibrate=calibrate, runs=runs, warmup=warmup,
                       batch_size=batch_size, seed=seed, int8=int8, ort=ort, min_ratio=min_ratio,
                       max_accuracy_drop=max_accuracy_drop, min_cosine=min_cosine, min_agreement=min_agreement,
                       check=check, shapes=shapes,
                       max_data_bytes=max_data_bytes(ctx), max_decoded_bytes=max_decoded_bytes(ctx),
                       progress=settings(ctx)["progress"])
    if check:
        missing = report["unsupported"]
        emit(ctx, report, "\n".join(printable(f"{m}: {', '.join(ops) or 'all ops supported'}")
                                    for m, ops in missing.items()))
        if any(missing.values()):
            raise DczError("unsupported ops: " + ", ".join(sorted({o for ops in missing.values() for o in ops})))
        return
    emit(ctx, report, format_bench(report))
    enforce(report)


@main.command("data")
@click.argument("source", metavar="SRC")
@click.option("-o", "--output", required=True, metavar="OUT.npz",
              help="Output .npz ('-' for stdout). Written atomically; never the source, an image or the model.")
@click.option("--model", metavar="MODEL", help="Take the input name, layout, size and dtype from this model's graph "
                                               "input when not given, and check the result against it.")
@click.option("--input", "input_name", metavar="NAME", help="Name of the output array: the model's input.")
@click.option("--key", metavar="KEY", help="The array of SRC (.npz) to convert [default: the only one besides the labels].")
@click.option("--labels", metavar="KEY", help="SRC's array of class ids, written as `labels` [default: `labels` if present].")
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"], case_sensitive=False),
              help="Axis order of the output [default: the model's, else the source's].")
@click.option("--source-layout", type=click.Choice(["NHWC", "NCHW"], case_sensitive=False), default="NHWC",
              show_default=True, help="Axis order of 4-D source arrays (N x H x W arrays are gray images).")
@click.option("--size", metavar="H[,W]", help="Center-crop to this aspect ratio and resize (antialiased bilinear) "
                                              "[default: the model's fixed H and W, else no resize].")
@click.option("--scale", type=float, default=1.0, show_default=True, help="value = (x * SCALE - MEAN) / STD.")
@click.option("--mean", default="0", show_default=True, metavar="M[,M,M]", help="One value, or one per channel.")
@click.option("--std", default="1", show_default=True, metavar="S[,S,S]", help="One value, or one per channel.")
@click.option("--dtype", metavar="DTYPE", help="float32, float16, float64, uint8, int8, int16, int32 or int64 "
                                               "[default: the model's input dtype, else float32].")
@click.option("--take", type=int, metavar="N", help="Only the first N samples (images: by sorted path).")
@data_bytes_option
@json_option
@click.pass_context
def data_command(ctx, source, output, model, input_name, key, labels, layout, source_layout, size, scale, mean, std,
                 dtype, take):
    """Turn raw arrays or image files (SRC) into a model-ready .npz for --data, --calibrate, --train.

    SRC is an .npz or .npy of raw samples (e.g. uint8 images N x H x W x 3) or, with Pillow
    (pip install 'deepcompress[images]'), a folder of image files, sorted by path, labelled by
    their sub-folder when they are in sub-folders. value = (x * scale - mean) / std, computed in
    float64 and cast once to --dtype. The same command writes the same bytes.

    \b
    Examples:
      deepcompress data photos.npz --key images -o calib.npz --model efficientnet_lite0.onnx --mean 127 --std 128
      deepcompress data mnist.npz --key images -o test.npz --input input --layout NCHW --scale 0.00392156862745098 --mean 0.5 --std 0.5
      deepcompress data images/ -o calib.npz --model resnet50.onnx --size 224 --scale 0.00392156862745098 \\
          --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --take 256
    """
    from . import api
    from .report import human_bytes

    data = api.prepare_data(source, output, model=model, input=input_name, key=key, labels=labels, layout=layout,
                            source_layout=source_layout, size=size, scale=scale, mean=mean, std=std, dtype=dtype,
                            take=take, max_data_bytes=max_data_bytes(ctx), progress=settings(ctx)["progress"])
    layout_text = f" ({data['layout']})" if data["layout"] else ""
    labels_text = (f"labels ({len(data['classes'])} classes: {', '.join(data['classes'][:5])}"
                   f"{', ...' if len(data['classes']) > 5 else ''})" if data.get("classes")
                   else "labels" if data["labels"] else "no labels")
    size_text = human_bytes(data["bytes"]) if data["bytes"] is not None else "written"
    emit(ctx, data, f"{output}: {data['samples']} samples, {data['input']!r} {data['dtype']} {data['shape']}"
                    f"{layout_text}, {labels_text}, {size_text}", stdout_taken=output == "-")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
