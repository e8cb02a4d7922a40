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


def jobs(ctx) -> int:
    return (ctx.find_root().obj or {}).get("jobs") or os.cpu_count() or 1


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


def output_option(f):
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
        name, sep, number = value.rpartition("=")
        try:
            if not (sep and name):
                raise ValueError
            return name, self.cast(number)
        except ValueError:
            self.fail(f"{value!r} is not NAME=VALUE", param, ctx)


def per_kind(defaults, given, layers):
    from .stages import PerKind

    values = {"conv": defaults[0], "fc": defaults[1], **(given or {})}
    return PerKind(values["conv"], values["fc"], list(layers))


def prune_options(f):
    f = click.option("--threshold-std", type=float, metavar="Q",
                     help="Paper's rule: drop |w| <= Q x the layer's std (replaces --sparsity/--layer-sparsity).")(f)
    f = click.option("--index-bits", type=PerKindValue(int), metavar="B|conv=B,fc=B",
                     help="Bits per relative index (gap) [default conv=8,fc=5; with --train conv=5,fc=8].")(f)
    f = click.option("--layer-sparsity", type=LayerValue(float), multiple=True,
                     help="Per-layer sparsity override, NAME (or glob) = fraction pruned (repeatable).")(f)
    return click.option("--sparsity", type=PerKindValue(float), metavar="S|conv=S,fc=S",
                        help="Fraction of weights pruned per layer [default conv=0.6,fc=0.9; with --train "
                             "a layer of n weights keeps 12/sqrt(n)].")(f)


def share_options(f):
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seed for --init forgy and for the data order of --train.")(f)
    f = click.option("--tol", type=float, default=1e-6, show_default=True,
                     help="Stop when no centroid moves more than TOL x the value range.")(f)
    f = click.option("--max-iter", type=click.IntRange(1, 10000), default=100, show_default=True,
                     help="Most k-means iterations.")(f)
    f = click.option("--init", type=click.Choice(["linear", "density", "forgy"]), default="linear",
                     show_default=True, help="Centroid initialization (the paper found linear best).")(f)
    f = click.option("--layer-bits", type=LayerValue(int), multiple=True,
                     help="Per-layer index width override, NAME (or glob) = bits (repeatable).")(f)
    return click.option("--bits", type=PerKindValue(int), metavar="B|conv=B,fc=B",
                        help="Index bits: 2^B shared weights per layer [default conv=8,fc=5; with --train 4].")(f)


TRAIN_DEFAULTS = {"epochs": 2.0, "lr": 0.01, "batch_size": 64}


def train_options(with_seed: bool, with_steps: bool):
    """Retraining (`--train`) options shared by prune, share and compress."""
    def decorate(f):
        if with_steps:
            f = click.option("--steps", type=click.IntRange(1, 100), metavar="N",
                             help="Prune towards the target in N increasing steps, retraining after each "
                                  "[default: 4 with --train, else 1].")(f)
        if with_seed:
            f = click.option("--seed", type=int, default=0, show_default=True, help="Seed of the data order.")(f)
        f = click.option("--logits", metavar="NAME",
                         help="Value the loss is computed on [default: the first float output, before a Softmax].")(f)
        f = click.option("--batch-size", type=click.IntRange(1, 1 << 20), metavar="N",
                         help=f"Minibatch size for --train [default: {TRAIN_DEFAULTS['batch_size']}].")(f)
        f = click.option("--lr", type=float, metavar="LR",
                         help=f"SGD learning rate (momentum 0.9); a centroid moves by lr x its weights' summed "
                              f"gradients [default: {TRAIN_DEFAULTS['lr']}].")(f)
        f = click.option("--epochs", type=float, metavar="E",
                         help=f"Epochs of retraining per step (and for the centroids) [default: {TRAIN_DEFAULTS['epochs']:g}].")(f)
        f = click.option("--val", metavar="DATA.npz", help="Report top-1 on this data after each step (needs labels).")(f)
        f = data_bytes_option(f)
        return click.option("--train", "train_data", metavar="DATA.npz",
                            help="Retrain on this data (inputs by graph input name, optional `labels`; "
                                 "without labels: distillation to the original model).")(f)
    return decorate


def train_config(train_data, val, epochs, lr, batch_size, seed, logits):
    from .train.retrain import TrainConfig

    given = {"--val": val, "--epochs": epochs, "--lr": lr, "--batch-size": batch_size, "--logits": logits,
             "--max-data-bytes": max_data_bytes(click.get_current_context())}
    if train_data is None:
        for option, value in given.items():
            if value is not None:
                raise click.BadParameter("needs --train", param_hint=option)
        return None
    epochs = TRAIN_DEFAULTS["epochs"] if epochs is None else epochs
    lr = TRAIN_DEFAULTS["lr"] if lr is None else lr
    for option, value, high in (("--epochs", epochs, 10000), ("--lr", lr, 1e6)):
        if not (math.isfinite(value) and 0 < value <= high):
            raise click.BadParameter(f"must be a number in (0, {high:g}], got {value}", param_hint=option)
    return TrainConfig(train_data, epochs, lr, batch_size or TRAIN_DEFAULTS["batch_size"], seed, val=val, logits=logits,
                       max_data_bytes=given["--max-data-bytes"])


def prune_config(sparsity, layer_sparsity, index_bits, threshold_std, train=False):
    from .stages import SparsityBySize
    from .stages.prune import DEFAULT_INDEX_BITS, DEFAULT_SPARSITY, DEFAULT_TRAIN_INDEX_BITS, PruneConfig

    if threshold_std is not None and (sparsity or layer_sparsity):
        raise click.BadParameter("give either --threshold-std or --sparsity/--layer-sparsity, not both",
                                 param_hint="--threshold-std")
    if threshold_std is not None and not (threshold_std >= 0 and math.isfinite(threshold_std)):
        raise click.BadParameter("must be a finite number >= 0", param_hint="--threshold-std")
    if train:  # retraining allows far more: sparsity by layer size, for each kind not given
        given = sparsity or {}
        rule = SparsityBySize(given.get("conv"), given.get("fc"), list(layer_sparsity))
    else:
        rule = per_kind(DEFAULT_SPARSITY, sparsity, layer_sparsity)
    config = PruneConfig(rule, per_kind(DEFAULT_TRAIN_INDEX_BITS if train else DEFAULT_INDEX_BITS, index_bits, ()),
                         threshold_std)
    for value in (config.sparsity.conv, config.sparsity.fc, *(v for _, v in config.sparsity.layers)):
        if value is not None and not 0 <= value < 1:  # also rejects nan
            raise click.BadParameter(f"sparsity must be in [0, 1), got {value}", param_hint="--sparsity")
    for value in (config.index_bits.conv, config.index_bits.fc):
        if not 1 <= value <= 16:
            raise click.BadParameter("index bits must be 1..16", param_hint="--index-bits")
    return config


def share_config(bits, layer_bits, init, max_iter, tol, seed, train=False):
    from .stages.share import DEFAULT_BITS, DEFAULT_TRAIN_BITS, ShareConfig

    config = ShareConfig(per_kind(DEFAULT_TRAIN_BITS if train else DEFAULT_BITS, bits, layer_bits),
                         init, max_iter, tol, seed)
    for value in (config.bits.conv, config.bits.fc, *(v for _, v in config.bits.layers)):
        if not 1 <= value <= 16:
            raise click.BadParameter("bits must be 1..16", param_hint="--bits")
    return config


def format_training(history: list[dict]) -> str:
    from .report import format_table

    rows = [[h["phase"], h.get("steps", ""), h.get("loss", ""),
             "" if h.get("val_accuracy_before") is None else f"{100 * h['val_accuracy_before']:.2f}%",
             "" if h.get("val_accuracy") is None else f"{100 * h['val_accuracy']:.2f}%"] for h in history]
    return format_table(["phase", "sgd steps", "loss", "val top-1 before", "val top-1 after"], rows, right={1, 2, 3, 4})


def progress_bar(ctx):
    """tqdm on stderr (never stdout), hidden with -q and when stderr is not a terminal."""
    quiet = (ctx.find_root().obj or {}).get("quiet")

    def bar(items, desc="", total=None):
        from tqdm import tqdm

        return tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False, unit="tensor",
                    disable=True if quiet else None)
    return bar


def run_stage(ctx, model, output, include, exclude, apply, formatter, **extra):
    """Read, apply a stage, write atomically, report: the shape every stage command shares."""
    from .files import read_model, write_dcz
    from .report import human_bytes

    package = read_model(model, include, exclude)
    before = sum(t.stored_bytes for t in package.tensors)
    rows = apply(package, progress_bar(ctx))
    history = None
    if isinstance(rows, tuple):  # a stage with retraining: (rows, training history)
        rows, history = rows
    size = write_dcz(package, output, inputs=[model])
    after = sum(t.stored_bytes for t in package.tensors)
    data = {"output": output, "bytes": size, "tensor_bytes_before": before, "tensor_bytes_after": after,
            "layers": rows, **extra}
    text = f"{formatter(rows)}\n\n{output}: {human_bytes(size)} (tensors {human_bytes(before)} -> {human_bytes(after)})"
    if history is not None:
        data["training"] = history
        text = f"{format_training(history)}\n\n{text}"
    emit(ctx, data, text, stdout_taken=output == "-")
    return package, rows


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

    Every command reads an .onnx or .dcz file and writes a .dcz container (or ONNX, for export).
    Exit status: 0 ok, 1 a quality gate failed, 2 bad usage or bad input.
    """
    obj = ctx.ensure_object(dict)
    obj.update(quiet=quiet or obj.get("quiet", False), debug=debug)
    obj["json"] = json_ or obj.get("json", False)


@main.command()
@click.argument("model", metavar="MODEL")
@output_option
@selection_options
@json_option
@click.pass_context
def pack(ctx, model, output, include, exclude):
    """Store MODEL (.onnx) losslessly as a .dcz container.

    \b
    Example:
      deepcompress pack model.onnx -o model.dcz
    """
    from .files import read_model, write_dcz
    from .report import human_bytes

    package = read_model(model, include, exclude)
    size = write_dcz(package, output, inputs=[model])
    weights = [t for t in package.tensors if t.is_weight]
    data = {"output": output, "bytes": size, "tensors": len(package.tensors), "weights": len(weights),
            "weight_bytes": sum(t.nbytes for t in weights)}
    emit(ctx, data, f"{output}: {human_bytes(size)}, {len(package.tensors)} tensors "
                    f"({len(weights)} weights, {human_bytes(data['weight_bytes'])})",
         stdout_taken=output == "-")


@main.command()
@click.argument("model", metavar="IN")
@output_option
@click.option("--qdq", is_flag=True, help="Keep quantized weights as integers behind DequantizeLinear nodes.")
@decoded_bytes_option
@json_option
@click.pass_context
def export(ctx, model, output, qdq):
    """Turn IN (.dcz or .onnx) back into a runnable ONNX model with plain float weights.

    Models with more than 1 GiB of weights get an external data file OUTPUT.data beside OUTPUT.

    \b
    Examples:
      deepcompress export model.dcz -o model.onnx
      deepcompress export quantized.dcz -o model.qdq.onnx --qdq
    """
    from .files import check_decoded_size, read_model, write_onnx
    from .report import human_bytes

    package = read_model(model)
    check_decoded_size(package, max_decoded_bytes(ctx), model)
    size = write_onnx(package, output, inputs=[model], qdq=qdq)
    emit(ctx, {"output": output, "bytes": size, "tensors": len(package.tensors)},
         f"{output}: {human_bytes(size)}, {len(package.tensors)} tensors", stdout_taken=output == "-")


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
    from .files import read_model
    from .report import format_summary, summary

    package = read_model(model)
    data = summary(package, package.file_bytes)
    emit(ctx, data, format_summary(data))


@main.command()
@click.argument("model", metavar="IN")
@output_option
@prune_options
@train_options(with_seed=True, with_steps=True)
@selection_options
@json_option
@click.pass_context
def prune(ctx, model, output, sparsity, layer_sparsity, index_bits, threshold_std, train_data, val, epochs, lr,
          batch_size, logits, seed, steps, include, exclude):
    """Magnitude-prune each weight layer; store survivors with relative indices.

    Each kept weight is stored with the gap to the previous one in --index-bits bits; a longer
    run of pruned weights gets filler entries (value 0). Kept values stay exact floats.
    With --train, prune -> retrain in --steps increasing steps (pruned weights stay 0); the
    defaults then become: a layer of n weights keeps 12/sqrt(n) of them, index bits conv=5,fc=8.

    \b
    Examples:
      deepcompress prune model.onnx -o pruned.dcz
      deepcompress prune model.onnx -o pruned.dcz --sparsity conv=0.5,fc=0.9 --layer-sparsity 'fc3*=0.75'
      deepcompress prune model.onnx -o pruned.dcz --train train.npz --val test.npz --steps 4
    """
    from .report import format_prune
    from .stages.prune import DEFAULT_TRAIN_STEPS
    from .stages.prune import prune as prune_stage
    from .stages.retraining import prune_retrain

    train = train_config(train_data, val, epochs, lr, batch_size, seed, logits)
    config = prune_config(sparsity, layer_sparsity, index_bits, threshold_std, train is not None)
    if train is None:  # without retraining the steps' masks equal the final one's: nothing to repeat
        apply = lambda p, bar: prune_stage(p, config, bar, jobs(ctx))  # noqa: E731
    else:
        apply = lambda p, bar: prune_retrain(p, config, train, steps or DEFAULT_TRAIN_STEPS, bar)  # noqa: E731
    run_stage(ctx, model, output, include, exclude, apply, format_prune)


@main.command()
@click.argument("model", metavar="IN")
@output_option
@share_options
@train_options(with_seed=False, with_steps=False)
@selection_options
@json_option
@click.pass_context
def share(ctx, model, output, bits, layer_bits, init, max_iter, tol, seed, train_data, val, epochs, lr, batch_size,
          logits, include, exclude):
    """Weight sharing: k-means per layer, weights replaced by 2^bits centroid indices.

    Only the kept weights of a pruned layer are clustered; zeros stay exactly zero. With
    --train, the centroids are then fine-tuned (each moves by lr x the summed gradients of its
    weights; indices stay fixed) and --bits defaults to conv=4,fc=4.

    \b
    Examples:
      deepcompress share pruned.dcz -o shared.dcz
      deepcompress share model.onnx -o shared.dcz --bits 4 --init density
      deepcompress share pruned.dcz -o shared.dcz --train train.npz --epochs 1
    """
    from .report import format_share
    from .stages.retraining import share_retrain
    from .stages.share import share as share_stage

    train = train_config(train_data, val, epochs, lr, batch_size, seed, logits)
    config = share_config(bits, layer_bits, init, max_iter, tol, seed, train is not None)
    if train is None:
        apply = lambda p, bar: share_stage(p, config, bar, jobs(ctx))  # noqa: E731
    else:
        apply = lambda p, bar: share_retrain(p, config, train, bar)  # noqa: E731
    run_stage(ctx, model, output, include, exclude, apply, format_share)


@main.command()
@click.argument("model", metavar="IN")
@output_option
@click.option("--bits", type=click.IntRange(2, 16), default=8, show_default=True, help="Bits per weight code.")
@click.option("--per-channel", is_flag=True, help="One range per output channel (Conv axis 0, ConvTranspose "
                                                   "axis 1, Gemm by transB, MatMul the last axis) instead of one per tensor.")
@click.option("--symmetric", is_flag=True, help="Range +-max|w| with zero point 0 (int8 values, stored offset "
                                                 "by 128) instead of [min, max].")
@selection_options
@json_option
@click.pass_context
def quantize(ctx, model, output, bits, per_channel, symmetric, include, exclude):
    """Linear quantization of each weight tensor from its min/max (TensorFlow style).

    The range always includes 0.0, which stays exact; the zero point is rounded before use,
    so rounding errors do not accumulate in one direction. Chains with huffman.

    \b
    Examples:
      deepcompress quantize model.onnx -o q.dcz
      deepcompress quantize model.onnx -o q.dcz --per-channel --symmetric
    """
    from .report import format_quantize
    from .stages.quantize import QuantizeConfig
    from .stages.quantize import quantize as quantize_stage

    config = QuantizeConfig(bits, per_channel, symmetric)
    run_stage(ctx, model, output, include, exclude, lambda p, bar: quantize_stage(p, config, bar, jobs(ctx)),
              format_quantize)


@main.command()
@click.argument("model", metavar="IN")
@output_option
@click.option("--rank", type=click.IntRange(1), metavar="T", help="Keep rank T in every layer.")
@click.option("--energy", type=float, metavar="E", help="Smallest rank keeping fraction E of the sum of sigma^2.")
@click.option("--ratio", type=float, metavar="R", help="Largest rank keeping at most fraction R of the parameters.")
@click.option("--layer-rank", type=LayerValue(int), multiple=True, help="Per-layer rank, NAME (node or weight, or glob) = T.")
@click.option("--layers", multiple=True, metavar="GLOB", help="Only these layers (node or weight name; repeatable).")
@click.option("--format", "fmt", type=click.Choice(["auto", "dcz", "onnx"]), default="auto", show_default=True,
              help="Output format; auto: ONNX when OUTPUT ends in .onnx, else .dcz.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs of the error report.")
@json_option
@click.pass_context
def svd(ctx, model, output, rank, energy, ratio, layer_rank, layers, fmt, seed):
    """Factor fully-connected weights W ~ U S V^T: each Gemm/MatMul becomes two thinner ones.

    Layers whose factorization would not shrink them, or whose weight is not a constant, are
    skipped and reported. Chains with prune/share/quantize/huffman.

    \b
    Examples:
      deepcompress svd model.onnx -o small.onnx --energy 0.9
      deepcompress svd model.onnx -o small.dcz --ratio 0.25 --layer-rank fc3=16
    """
    from .files import read_model, write_dcz, write_onnx
    from .report import format_svd, human_bytes
    from .stages.svd import SvdConfig
    from .stages.svd import svd as svd_stage

    config = SvdConfig(rank, energy, ratio, list(layer_rank), list(layers), seed)
    package = read_model(model)
    rows = svd_stage(package, config, progress_bar(ctx))
    as_onnx = fmt == "onnx" or (fmt == "auto" and output.lower().endswith(".onnx"))
    size = (write_onnx if as_onnx else write_dcz)(package, output, inputs=[model])
    data = {"output": output, "format": "onnx" if as_onnx else "dcz", "bytes": size, "layers": rows}
    emit(ctx, data, f"{format_svd(rows)}\n\n{output}: {human_bytes(size)}", stdout_taken=output == "-")


@main.command()
@click.argument("model", metavar="IN")
@output_option
@json_option
@click.pass_context
def huffman(ctx, model, output):
    """Lossless canonical Huffman coding of every index, gap and code stream.

    \b
    Example:
      deepcompress huffman shared.dcz -o model.dcz
    """
    from .report import format_huffman
    from .stages.entropy import huffman as huffman_stage

    run_stage(ctx, model, output, (), (), lambda p, bar: huffman_stage(p, bar, jobs(ctx)), format_huffman)


@main.command()
@click.argument("model", metavar="IN")
@output_option
@prune_options
@share_options
@train_options(with_seed=False, with_steps=True)
@click.option("--report", is_flag=True, help="Print the paper's table (P, P+Q, P+Q+H per layer) and gzip -9 of the plain .onnx.")
@selection_options
@json_option
@click.pass_context
def compress(ctx, model, output, sparsity, layer_sparsity, index_bits, threshold_std, bits, layer_bits,
             init, max_iter, tol, seed, train_data, val, epochs, lr, batch_size, logits, steps, report, include,
             exclude):
    """The whole recipe: prune -> share -> huffman, with the same options as those commands.

    With --train: prune -> retrain in --steps steps, share -> train the centroids, huffman; the
    defaults then are those of `prune --train` and `share --train`.

    \b
    Examples:
      deepcompress compress model.onnx -o model.dcz --report
      deepcompress compress model.onnx -o model.dcz --sparsity fc=0.95 --bits conv=6,fc=4
      deepcompress compress model.onnx -o model.dcz --train train.npz --val test.npz --report
    """
    import zlib

    from .container import serialize
    from .files import read_model, write_dcz
    from .onnx_io import to_onnx
    from .report import format_compress, human_bytes
    from .stages.compress import compress as compress_stage
    from .stages.compress import totals

    from .stages.compress import compress_retrain
    from .stages.prune import DEFAULT_TRAIN_STEPS

    train = train_config(train_data, val, epochs, lr, batch_size, seed, logits)
    p_config = prune_config(sparsity, layer_sparsity, index_bits, threshold_std, train is not None)
    s_config = share_config(bits, layer_bits, init, max_iter, tol, seed, train is not None)
    package = read_model(model, include, exclude)
    onnx_bytes = gzip_bytes = None
    if report:  # the peer: gzip of the model as a plain .onnx
        original = serialize(to_onnx(package), "ONNX model")  # over 2 GiB: one line, not EncodeError
        onnx_bytes, gzip_bytes = len(original), len(zlib.compress(original, 9))
        del original
    history = None
    if train is None:
        rows = compress_stage(package, p_config, s_config, progress_bar(ctx), jobs(ctx))
    else:
        rows, history = compress_retrain(package, p_config, s_config, train, steps or DEFAULT_TRAIN_STEPS,
                                         progress_bar(ctx))
    size = write_dcz(package, output, inputs=[model])
    sums = totals(rows, package)
    data = {"output": output, "bytes": size, "layers": rows, "totals": sums,
            "onnx_bytes": onnx_bytes, "gzip9_bytes": gzip_bytes}
    if history is not None:
        data["training"] = history
    if report:
        text = format_compress(rows, sums, gzip_bytes, onnx_bytes) + f"\n{output}: {human_bytes(size)}"
    else:
        text = (f"{output}: {human_bytes(size)}; weights {human_bytes(sums['bytes_original'])} -> "
                f"{human_bytes(sums['bytes_pqh'])} ({sums['ratio_weights'] or '-'}x)")
    if history is not None:
        text = f"{format_training(history)}\n\n{text}"
    emit(ctx, data, text, stdout_taken=output == "-")


@main.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option("--baseline", metavar="FILE", help="Model the others are compared with [default: the first].")
@click.option("--data", metavar="DATA.npz", help="Inputs keyed by graph input name, optional `labels` (class ids).")
@click.option("--calibrate", metavar="DATA.npz", help="Fix int8 activation ranges from this data (default: measured per run).")
@click.option("--runs", type=click.IntRange(1), default=10, show_default=True, help="Timed runs per mode.")
@click.option("--warmup", type=click.IntRange(0), default=2, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True, help="Batch size (fixed-batch models keep theirs).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs used without --data.")
@click.option("--int8/--no-int8", default=True, show_default=True, help="Also run the int8 interpreter.")
@click.option("--ort", is_flag=True, help="Add onnxruntime's latency (when installed).")
@click.option("--min-ratio", type=float, help="Gate: each model at least R times smaller than the baseline.")
@click.option("--max-accuracy-drop", type=float, metavar="P", help="Gate: top-1 at most P points below the baseline.")
@click.option("--min-cosine", type=float, metavar="C", help="Gate: output cosine similarity to the baseline >= C.")
@click.option("--check", is_flag=True, help="Only list ops the interpreter does not support (exit 2 if any).")
@data_bytes_option
@decoded_bytes_option
@json_option
@click.pass_context
def bench(ctx, models, baseline, data, calibrate, runs, warmup, batch, seed, int8, ort, min_ratio,
          max_accuracy_drop, min_cosine, check):
    """Size, latency (fp32 and int8) and accuracy or fidelity of models, side by side.

    Exit status 1 when a gate (--min-ratio, --max-accuracy-drop, --min-cosine) fails.

    \b
    Examples:
      deepcompress bench model.onnx model.dcz --data test.npz
      deepcompress bench model.onnx small.dcz --min-ratio 20 --max-accuracy-drop 0.5 --data test.npz
    """
    from . import bench as bench_lib
    from .report import format_bench

    if check:
        from .files import read_model
        from .interp.graph import unsupported_ops

        missing = {m: sorted(unsupported_ops(read_model(m).graph)) for m in models}
        emit(ctx, {"unsupported": missing}, "\n".join(printable(f"{m}: {', '.join(ops) or 'all ops supported'}")
                                                     for m, ops in missing.items()))
        if any(missing.values()):
            raise DczError("unsupported ops: " + ", ".join(sorted({o for ops in missing.values() for o in ops})))
        return
    gates = {"min_ratio": min_ratio, "max_accuracy_drop": max_accuracy_drop, "min_cosine": min_cosine}
    config = bench_lib.BenchConfig(runs, warmup, batch, seed, int8, ort, data, calibrate, baseline, gates)
    config.max_data_bytes = max_data_bytes(ctx)
    config.max_decoded_bytes = max_decoded_bytes(ctx)
    report = bench_lib.bench(list(models), config, progress_bar(ctx))
    emit(ctx, report, format_bench(report))
    bench_lib.enforce(report)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
