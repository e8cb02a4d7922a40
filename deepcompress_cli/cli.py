"""The `deepcompress` command line: a thin Click shell over the library.

Only click is imported at start-up; numpy and onnx are imported inside the commands so that
`deepcompress --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import click

from . import __version__
from .errors import DczError


class DczGroup(click.Group):
    """Turns library errors into one stderr line and the documented exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
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
            click.echo(f"deepcompress: error: {message}", err=True)
            ctx.exit(code)


def _set_flag(name):
    def callback(ctx, param, value):
        if value:
            ctx.ensure_object(dict)[name] = True
    return callback


def json_option(f):
    """`--json` accepted after the subcommand too (`deepcompress info m.dcz --json`)."""
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


def emit(ctx, data: dict, text: str, stdout_taken: bool = False) -> None:
    """Report a result: JSON or text, on stdout unless stdout carries the output file."""
    options = ctx.find_root().obj or {}
    err = stdout_taken
    if options.get("json"):
        click.echo(json.dumps(data, sort_keys=True), err=err)
    elif not options.get("quiet"):
        click.echo(text, err=err)


@click.group(cls=DczGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="deepcompress")
@click.option("--json", "json_", is_flag=True, help="Print one JSON object on stdout instead of text.")
@click.option("-q", "--quiet", is_flag=True, help="No report and no progress bars.")
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
@json_option
@click.pass_context
def export(ctx, model, output):
    """Turn IN (.dcz or .onnx) back into a runnable ONNX model with plain float weights.

    Models with more than 1 GiB of weights get an external data file OUTPUT.data beside OUTPUT.

    \b
    Example:
      deepcompress export model.dcz -o model.onnx
    """
    from .files import read_model, write_onnx
    from .report import human_bytes

    package = read_model(model)
    size = write_onnx(package, output, inputs=[model])
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
    size = os.path.getsize(model) if model != "-" else 0
    data = summary(package, size)
    emit(ctx, data, format_summary(data))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
